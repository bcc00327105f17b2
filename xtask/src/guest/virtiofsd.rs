//! The Rust `virtiofsd` (no Debian package ships it): built once from the crate registry into
//! `<workspace>/target/tools` and reused. The vhost-frontend tests and the e2e image use it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::apt;
use crate::test::run_step;

/// The virtiofsd release line the harness builds (`cargo install --version`).
pub const VERSION_REQ: &str = "~1.14";
/// What `virtiofsd --version` must start with for a built binary to be reused.
const VERSION_PREFIX: &str = "virtiofsd 1.14.";
/// Debian packages virtiofsd links against (libcap-ng, libseccomp headers).
const BUILD_PACKAGES: [&str; 2] = ["libcap-ng-dev", "libseccomp-dev"];

/// Where the harness keeps virtiofsd: `<workspace>/target/tools/bin/virtiofsd`.
pub fn path(workspace: &Path) -> PathBuf {
    tools_root(workspace).join("bin/virtiofsd")
}

fn tools_root(workspace: &Path) -> PathBuf {
    workspace.join("target/tools")
}

/// Whether `binary` runs and reports the wanted release.
fn usable(binary: &Path) -> bool {
    apt::output("virtiofsd --version", Command::new(binary).arg("--version"))
        .is_ok_and(|v| is_wanted_version(&v))
}

fn is_wanted_version(version_output: &str) -> bool {
    version_output.trim_start().starts_with(VERSION_PREFIX)
}

/// Returns a working virtiofsd 1.14, building it first when `target/tools` has none: installs
/// the build dependencies with apt, then `cargo install virtiofsd --locked`.
pub fn ensure(workspace: &Path) -> Result<PathBuf, String> {
    let binary = path(workspace);
    if usable(&binary) {
        return Ok(binary);
    }
    apt::ensure_installed(&BUILD_PACKAGES)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_step(
        &format!("cargo install virtiofsd {VERSION_REQ}"),
        Command::new(cargo)
            .args(["install", "--locked", "virtiofsd", "--version", VERSION_REQ])
            .arg("--root")
            .arg(tools_root(workspace)),
    )?;
    if usable(&binary) {
        Ok(binary)
    } else {
        Err(format!(
            "cargo install left no working virtiofsd {VERSION_REQ} at {}",
            binary.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_1_14_release_line_is_reused() {
        assert!(is_wanted_version("virtiofsd 1.14.0\n"));
        assert!(!is_wanted_version("virtiofsd 1.13.2\n"));
        assert!(!is_wanted_version("virtiofsd 1.140.0\n"));
        assert!(!is_wanted_version(""));
    }

    #[test]
    fn a_missing_binary_is_not_usable() {
        assert!(!usable(Path::new("/nonexistent/virtiofsd")));
    }
}
