//! The workspace xtask works on: found from the current directory with
//! `cargo locate-project --workspace`, never from where xtask was compiled (a second copy of
//! the tree sharing one `CARGO_TARGET_DIR` runs a binary built for the other copy).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The root of the workspace containing the current directory. Exits with a clear message
/// when there is none: no harness task means anything outside a workspace.
pub fn root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| match locate() {
        Ok(root) => root,
        Err(e) => {
            eprintln!("xtask: {e}");
            std::process::exit(2);
        }
    })
    .clone()
}

fn locate() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .output()
        .map_err(|e| format!("cargo locate-project: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "no cargo workspace around {}: {}",
            std::env::current_dir().unwrap_or_default().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let manifest = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    manifest
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{} has no parent folder", manifest.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_is_the_workspace_around_the_current_directory() {
        // Tests run in xtask/; the workspace is its parent, which has crates/ and xtask/.
        let root = super::root();
        assert!(root.join("crates").is_dir(), "{}", root.display());
        assert_eq!(
            std::env::current_dir().unwrap().parent(),
            Some(root.as_path())
        );
    }
}
