//! Host packages: installs what the nested harness needs and downloads Debian packages.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::test::run_step;

/// Where the extra apt sources this harness adds live (one file per suite).
const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
/// Debian's archive, as configured on this machine.
const DEBIAN_URI: &str = "http://deb.debian.org/debian";
/// The QEMU version the reference VMM needs (virtio-mem `dynamic-memslots`).
const MIN_QEMU_MAJOR_MINOR: (u32, u32) = (8, 2);

/// Runs a command and returns its standard output, failing with `what` in the message.
pub fn output(what: &str, command: &mut Command) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// Adds `suite` of Debian's archive as its own sources file; returns whether it was new.
fn ensure_suite(suite: &str) -> Result<bool, String> {
    let path = PathBuf::from(SOURCES_DIR).join(format!("hotmem-{suite}.sources"));
    if path.exists() {
        return Ok(false);
    }
    let text = format!(
        "Types: deb\nURIs: {DEBIAN_URI}\nSuites: {suite}\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    );
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    eprintln!("== added apt suite {suite} ({})", path.display());
    Ok(true)
}

/// Whether `suite` appears in apt's configured sources.
fn suite_configured(suite: &str) -> bool {
    let Ok(out) = output("apt-cache policy", Command::new("apt-cache").arg("policy")) else {
        return false;
    };
    out.lines().any(|l| {
        l.split_whitespace()
            .any(|w| w.starts_with(&format!("{suite}/")))
    })
}

/// Runs `apt-get update` once per xtask process.
fn apt_update() -> Result<(), String> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    run_step("apt-get update", apt_get().args(["-q", "update"]))?;
    let _ = DONE.set(());
    Ok(())
}

/// Runs `apt-get update` (at most once per xtask process).
pub fn refresh() -> Result<(), String> {
    apt_update()
}

/// Makes sure `suite` is configured and its package lists are present.
pub fn ensure_suite_ready(suite: &str) -> Result<(), String> {
    let added = ensure_suite(suite)?;
    if added || !suite_configured(suite) {
        apt_update()?;
    }
    Ok(())
}

fn installed_version(package: &str) -> Option<String> {
    let out = output(
        "dpkg-query",
        Command::new("dpkg-query").args(["-W", "-f=${Status}\t${Version}", package]),
    )
    .ok()?;
    let (status, version) = out.split_once('\t')?;
    status.ends_with(" installed").then(|| version.to_string())
}

/// Parses "1:10.0.2+ds-1~bpo12+1" into (10, 0).
pub fn qemu_major_minor(debian_version: &str) -> Option<(u32, u32)> {
    let upstream = debian_version
        .split_once(':')
        .map_or(debian_version, |(_, v)| v);
    let mut parts = upstream.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Installs cpio, busybox-static and a QEMU new enough for `dynamic-memslots`.
pub fn ensure_host_tools() -> Result<(), String> {
    let mut missing: Vec<&str> = ["cpio", "busybox-static", "kmod", "xz-utils", "zstd"]
        .into_iter()
        .filter(|p| installed_version(p).is_none())
        .collect();
    let qemu_ok = installed_version("qemu-system-x86")
        .and_then(|v| qemu_major_minor(&v))
        .is_some_and(|v| v >= MIN_QEMU_MAJOR_MINOR);
    if !missing.is_empty() {
        apt_update()?;
        let mut cmd = apt_get();
        cmd.args(["-q", "-y", "install", "--no-install-recommends"]);
        cmd.args(&missing);
        run_step("install host tools", &mut cmd)?;
        missing.clear();
    }
    if !qemu_ok {
        ensure_suite_ready("bookworm-backports")?;
        apt_update()?;
        run_step(
            "install qemu-system-x86 from bookworm-backports",
            apt_get().args([
                "-q",
                "-y",
                "install",
                "--no-install-recommends",
                "-t",
                "bookworm-backports",
                "qemu-system-x86",
            ]),
        )?;
    }
    Ok(())
}

/// The apt suite that carries kernels whose package name starts like `pattern`, when it is
/// not this machine's own release.
pub fn suite_for_kernel(pattern: &str) -> Option<&'static str> {
    if pattern.starts_with("linux-image-5.10.") {
        Some("bullseye")
    } else {
        None
    }
}

/// Turns a package name with `*` wildcards into an anchored apt-cache search regex.
pub fn glob_to_regex(pattern: &str) -> String {
    let mut re = String::from("^");
    for c in pattern.chars() {
        match c {
            '*' => re.push_str(".*"),
            '.' | '+' | '?' | '(' | ')' | '[' | ']' | '^' | '$' | '|' | '\\' => {
                re.push('\\');
                re.push(c);
            }
            _ => re.push(c),
        }
    }
    re.push('$');
    re
}

/// Splits a name into text and number runs so "x-10" sorts after "x-9".
fn natural_key(name: &str) -> Vec<(String, u64)> {
    let mut key = Vec::new();
    let mut text = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut digits = String::from(c);
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                digits.push(d);
            }
            key.push((
                std::mem::take(&mut text),
                digits.parse().unwrap_or(u64::MAX),
            ));
        } else {
            text.push(c);
        }
    }
    key.push((text, 0));
    key
}

/// Picks the newest of the package names matching `pattern` (natural order).
pub fn newest_matching<'a>(
    pattern: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let prefix_suffix = pattern.split_once('*');
    names
        .into_iter()
        .filter(|n| match prefix_suffix {
            Some((pre, suf)) => {
                n.len() >= pre.len() + suf.len()
                    && n.starts_with(pre)
                    && n.ends_with(suf)
                    && !n[pre.len()..n.len() - suf.len()].contains('-')
            }
            None => *n == pattern,
        })
        .max_by_key(|n| natural_key(n))
        .map(str::to_string)
}

/// Resolves a package name that may contain one `*` to the newest concrete package.
pub fn resolve_package(pattern: &str) -> Result<String, String> {
    if let Some(suite) = suite_for_kernel(pattern) {
        ensure_suite_ready(suite)?;
    }
    if !pattern.contains('*') {
        return Ok(pattern.to_string());
    }
    let search = || {
        output(
            "apt-cache search",
            Command::new("apt-cache").args(["search", "--names-only", &glob_to_regex(pattern)]),
        )
    };
    let mut out = search()?;
    if out.trim().is_empty() {
        apt_update()?;
        out = search()?;
    }
    let names = out.lines().filter_map(|l| l.split_whitespace().next());
    newest_matching(pattern, names).ok_or_else(|| format!("no package matches {pattern}"))
}

/// Downloads `package` into `dir` (reusing an existing download); returns the .deb path.
pub fn download(package: &str, dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    if let Some(found) = find_deb(package, dir) {
        return Ok(found);
    }
    run_step(
        &format!("apt-get download {package}"),
        apt_get().current_dir(dir).args(["-q", "download", package]),
    )?;
    find_deb(package, dir).ok_or_else(|| format!("apt-get download left no {package}_*.deb"))
}

fn find_deb(package: &str, dir: &Path) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_matching_orders_abi_numbers_naturally() {
        let names = [
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-56-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.1.0-47-amd64",
            "linux-image-6.1.0-56-rt-amd64",
        ];
        assert_eq!(
            newest_matching("linux-image-6.1.0-*-amd64", names).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(newest_matching("linux-image-5.10.0-*-amd64", names), None);
    }

    #[test]
    fn glob_to_regex_escapes_dots_and_anchors() {
        assert_eq!(
            glob_to_regex("linux-image-6.1.0-*-amd64"),
            "^linux-image-6\\.1\\.0-.*-amd64$"
        );
    }

    #[test]
    fn qemu_version_parses_epoch_and_backports_suffix() {
        assert_eq!(qemu_major_minor("1:10.0.2+ds-1~bpo12+1"), Some((10, 0)));
        assert_eq!(qemu_major_minor("1:7.2+dfsg-7+deb12u18"), Some((7, 2)));
        assert!(qemu_major_minor("1:7.2+dfsg").unwrap() < MIN_QEMU_MAJOR_MINOR);
    }

    #[test]
    fn bullseye_kernels_need_the_bullseye_suite() {
        assert_eq!(
            suite_for_kernel("linux-image-5.10.0-*-amd64"),
            Some("bullseye")
        );
        assert_eq!(suite_for_kernel("linux-image-6.1.0-*-amd64"), None);
    }
}
