//! Optional cgroup v2 limits: the jail makes a cgroup of its own under the unified hierarchy,
//! writes the limits, and moves itself in before starting the VMM (which inherits it).

use std::path::{Path, PathBuf};

use crate::config::CgroupLimit;
use crate::{Error, error::Result};

/// Where cgroup v2 is mounted on Debian and most distributions.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup the jail made; removed again by [`JailCgroup::remove`] once the VMM is gone.
pub struct JailCgroup {
    path: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| Error::Sys {
        what: format!("writing {value:?} to {}", path.display()),
        source,
    })
}

impl JailCgroup {
    /// Creates `hotmem-jail-<pid>` with `limits` and moves the calling process into it.
    pub fn create(limits: &[CgroupLimit]) -> Result<Self> {
        let root = Path::new(CGROUP_ROOT);
        if !root.join("cgroup.controllers").exists() {
            return Err(Error::Config(format!(
                "--cgroup needs cgroup v2 mounted at {CGROUP_ROOT}; this host has none"
            )));
        }
        let controllers: Vec<&str> = limits
            .iter()
            .filter_map(|l| l.key.split('.').next())
            .collect();
        for c in &controllers {
            // Enabling an already enabled controller is harmless; a missing one fails below.
            let _ = std::fs::write(root.join("cgroup.subtree_control"), format!("+{c}"));
        }
        let path = root.join(format!("hotmem-jail-{}", std::process::id()));
        std::fs::create_dir(&path).map_err(|source| Error::Sys {
            what: format!("creating {}", path.display()),
            source,
        })?;
        let cgroup = JailCgroup { path };
        for l in limits {
            write(&cgroup.path.join(&l.key), &l.value)?;
        }
        write(
            &cgroup.path.join("cgroup.procs"),
            &std::process::id().to_string(),
        )?;
        Ok(cgroup)
    }

    /// The cgroup's folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the caller back to the root cgroup and removes the jail's (after the VMM ended).
    pub fn remove(self) {
        let _ = std::fs::write(
            Path::new(CGROUP_ROOT).join("cgroup.procs"),
            std::process::id().to_string(),
        );
        let _ = std::fs::remove_dir(&self.path);
    }
}
