//! Tests that need something of the host (/dev/kvm, root, a package registry) must never pass
//! without running. When what they need is missing they call [`skip`], which
//!
//! - **fails the test** (panics with the reason) unless `HOTMEM_ALLOW_SKIP=1` is set, and
//! - otherwise prints `SKIPPED <test>: <reason>` and appends the same line to the file named by
//!   `HOTMEM_SKIP_LOG`, so `cargo xtask test --allow-skips` can list every skipped test in its
//!   summary instead of counting it as passed.
//!
//! ```ignore
//! let Some(kvm) = test_support::kvm_or_skip("vcpu_runs_tiny_guest") else { return };
//! ```

use std::io::Write;
use std::path::Path;

/// Environment variable that turns a missing requirement from a failure into a reported skip.
pub const ALLOW_SKIP_ENV: &str = "HOTMEM_ALLOW_SKIP";
/// Environment variable naming the file skipped tests are appended to.
pub const SKIP_LOG_ENV: &str = "HOTMEM_SKIP_LOG";

/// Whether skipping is allowed in this run (`HOTMEM_ALLOW_SKIP=1`).
pub fn skipping_allowed() -> bool {
    std::env::var(ALLOW_SKIP_ENV).is_ok_and(|v| v == "1")
}

/// Reports that `test` cannot run because of `reason`: panics unless skipping is allowed,
/// else records the skip. The caller returns right after.
pub fn skip(test: &str, reason: &str) {
    if !skipping_allowed() {
        panic!(
            "{test} cannot run: {reason} (set {ALLOW_SKIP_ENV}=1 to report it as skipped instead)"
        );
    }
    let line = format!("SKIPPED {test}: {reason}");
    eprintln!("{line}");
    if let Ok(path) = std::env::var(SKIP_LOG_ENV) {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            panic!("{test}: cannot record the skip in {path}: {e}");
        }
    }
}

/// Whether this process runs as root (effective uid 0), read from /proc.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Returns true when `/dev/kvm` can be opened read-write; otherwise reports the skip
/// (see [`skip`]) and returns false.
pub fn require_kvm(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new("/dev/kvm"))
    {
        Ok(_) => true,
        Err(e) => {
            skip(test, &format!("/dev/kvm cannot be opened: {e}"));
            false
        }
    }
}

/// Returns true when running as root; otherwise reports the skip and returns false.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(test, "needs root");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_read_from_the_effective_uid() {
        // The effective uid is the second field of `Uid:`; compare with the kernel's own answer.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let effective: u32 = uid_line.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert_eq!(is_root(), effective == 0);
    }
}
