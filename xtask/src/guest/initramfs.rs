//! Initramfs staging: a directory tree packed as an uncompressed newc cpio archive.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::test::run_step;

use super::apt::output;

/// A directory that becomes an initramfs.
pub struct Staging {
    root: PathBuf,
}

fn io_err(what: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", what.display())
}

impl Staging {
    /// Starts an empty tree at `root` (removing what was there) with the directories and the
    /// console device every init needs.
    pub fn new(root: &Path) -> Result<Self, String> {
        if root.exists() {
            std::fs::remove_dir_all(root).map_err(io_err(root))?;
        }
        for dir in [
            "bin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "etc",
            "lib/modules",
            "run",
        ] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        run_step(
            "mknod dev/console",
            Command::new("mknod")
                .arg(root.join("dev/console"))
                .args(["c", "5", "1"]),
        )?;
        Ok(Staging {
            root: root.to_path_buf(),
        })
    }

    fn target(&self, dest: &str) -> Result<PathBuf, String> {
        let path = self.root.join(dest.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        Ok(path)
    }

    /// The staging path of `dest` (a path inside the initramfs), with its parent created.
    pub fn path(&self, dest: &str) -> Result<PathBuf, String> {
        self.target(dest)
    }

    /// Copies `source` (following symlinks) to `dest`, keeping its permissions.
    pub fn add_file(&self, source: &Path, dest: &str) -> Result<(), String> {
        let target = self.target(dest)?;
        std::fs::copy(source, &target).map_err(io_err(source))?;
        Ok(())
    }

    /// Writes `contents` to `dest` with Unix permissions `mode`.
    pub fn add_bytes(&self, dest: &str, contents: &[u8], mode: u32) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let target = self.target(dest)?;
        std::fs::write(&target, contents).map_err(io_err(&target))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(&target))
    }

    /// Copies a dynamically linked program and every library `ldd` lists, at the same paths.
    pub fn add_program(&self, program: &Path) -> Result<(), String> {
        self.add_program_as(program, &program.to_string_lossy())
    }

    /// Copies a dynamically linked program to `dest` and every library `ldd` lists at its own
    /// path.
    pub fn add_program_as(&self, program: &Path, dest: &str) -> Result<(), String> {
        self.add_file(program, dest)?;
        let listing =
            output(&format!("ldd {dest}"), Command::new("ldd").arg(program)).unwrap_or_default();
        for library in ldd_paths(&listing) {
            self.add_file(Path::new(&library), &library)?;
        }
        Ok(())
    }

    /// Packs the tree into `archive` (newc cpio, owned by root, uncompressed: the kernel
    /// unpacks it faster than it would inflate it under emulation).
    pub fn pack(self, archive: &Path) -> Result<(), String> {
        // Written aside and renamed: a run booting the previous archive keeps a whole file.
        let temporary = super::unique_sibling(archive);
        let script = format!(
            "cd '{}' && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet > '{}'",
            self.root.display(),
            temporary.display()
        );
        run_step(
            &format!("pack {}", archive.display()),
            Command::new("sh").args(["-c", &script]),
        )?;
        std::fs::rename(&temporary, archive).map_err(io_err(archive))?;
        std::fs::remove_dir_all(&self.root).map_err(io_err(&self.root))
    }
}

/// The library paths in `ldd` output (both "name => /path (addr)" and "/path (addr)" lines).
pub fn ldd_paths(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| {
            let candidate = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            candidate.starts_with('/').then(|| candidate.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths_keeps_resolved_libraries_and_the_loader_only() {
        let listing = "\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)
\tlibmissing.so => not found
\t/lib64/ld-linux-x86-64.so.2 (0x00007f)
";
        assert_eq!(
            ldd_paths(listing),
            [
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
}
