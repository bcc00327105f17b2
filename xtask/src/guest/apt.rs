//! Host packages: installs what the nested harness needs and downloads Debian packages.
//!
//! Every apt command goes through [`Apt`], which remembers what the package lists were last
//! refreshed against: a fingerprint of the configured sources. Adding a suite changes the
//! fingerprint, so the next step that needs the lists refreshes them, however many refreshes
//! ran earlier in the same process. A package that cannot be resolved forces a refresh too.
//! `Apt` honours `APT_CONFIG`, which is how a test points it at a throwaway state.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::test::run_step;

/// Debian's archive, as configured on this machine.
const DEBIAN_URI: &str = "http://deb.debian.org/debian";
/// The QEMU version the reference VMM needs (virtio-mem `dynamic-memslots`).
pub const MIN_QEMU_MAJOR_MINOR: (u32, u32) = (8, 2);
/// The suite that carries a QEMU new enough (bookworm itself has 7.2).
pub const QEMU_SUITE: &str = "bookworm-backports";

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

/// apt as configured for this process (the host's configuration, or `APT_CONFIG`'s).
pub struct Apt {
    /// An apt configuration file to use instead of the host's (`APT_CONFIG`).
    config: Option<PathBuf>,
    /// The sources fingerprint the package lists were last refreshed against.
    refreshed_for: Mutex<Option<u64>>,
}

impl Apt {
    /// apt with the configuration the environment gives (the host's unless `APT_CONFIG` is set).
    pub fn host() -> &'static Apt {
        static HOST: OnceLock<Apt> = OnceLock::new();
        HOST.get_or_init(|| Apt::new(None))
    }

    /// apt with its configuration read from `config` when given.
    pub fn new(config: Option<PathBuf>) -> Self {
        Self {
            config,
            refreshed_for: Mutex::new(None),
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("DEBIAN_FRONTEND", "noninteractive");
        if let Some(config) = &self.config {
            c.env("APT_CONFIG", config);
        }
        c
    }

    pub fn apt_get(&self) -> Command {
        self.command("apt-get")
    }

    pub fn apt_cache(&self) -> Command {
        self.command("apt-cache")
    }

    /// One apt configuration value (`Dir::Etc::sourceparts/d` style keys give full paths).
    fn config_value(&self, key: &str) -> Result<String, String> {
        let out = output(
            "apt-config shell",
            self.command("apt-config").args(["shell", "V", key]),
        )?;
        let value = out
            .trim()
            .strip_prefix("V='")
            .and_then(|v| v.strip_suffix('\''))
            .ok_or_else(|| format!("apt-config has no value for {key}"))?;
        Ok(value.to_string())
    }

    /// The folder where this harness adds one sources file per suite.
    pub fn sources_dir(&self) -> Result<PathBuf, String> {
        self.config_value("Dir::Etc::sourceparts/d")
            .map(PathBuf::from)
    }

    /// A fingerprint of every configured sources file (names and contents).
    fn sources_fingerprint(&self) -> Result<u64, String> {
        let mut files = vec![PathBuf::from(self.config_value("Dir::Etc::sourcelist/f")?)];
        if let Ok(entries) = std::fs::read_dir(self.sources_dir()?) {
            files.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
        files.sort();
        let mut hasher = DefaultHasher::new();
        for file in files {
            if let Ok(text) = std::fs::read(&file) {
                file.hash(&mut hasher);
                text.hash(&mut hasher);
            }
        }
        Ok(hasher.finish())
    }

    /// Runs `apt-get update` now.
    pub fn refresh(&self) -> Result<(), String> {
        let fingerprint = self.sources_fingerprint()?;
        run_step("apt-get update", self.apt_get().args(["-q", "update"]))?;
        *self.refreshed_for.lock().unwrap_or_else(|p| p.into_inner()) = Some(fingerprint);
        Ok(())
    }

    /// Runs `apt-get update` unless the lists were refreshed against the sources as they are.
    pub fn refresh_if_sources_changed(&self) -> Result<(), String> {
        let now = self.sources_fingerprint()?;
        let last = *self.refreshed_for.lock().unwrap_or_else(|p| p.into_inner());
        if last == Some(now) {
            return Ok(());
        }
        self.refresh()
    }

    /// Adds `suite` of Debian's archive as its own sources file; returns whether it was new.
    fn add_suite(&self, suite: &str) -> Result<bool, String> {
        let dir = self.sources_dir()?;
        let path = dir.join(format!("hotmem-{suite}.sources"));
        if path.exists() {
            return Ok(false);
        }
        let text = format!(
            "Types: deb\nURIs: {DEBIAN_URI}\nSuites: {suite}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("== added apt suite {suite} ({})", path.display());
        Ok(true)
    }

    /// Whether apt's package lists know `suite` (it is configured and has been fetched).
    fn suite_known(&self, suite: &str) -> bool {
        let Ok(out) = output("apt-cache policy", self.apt_cache().arg("policy")) else {
            return false;
        };
        let wanted = format!("a={suite},");
        out.lines().any(|l| {
            l.split_whitespace()
                .any(|w| w.starts_with(&format!("{suite}/")))
                || l.contains(&wanted)
        })
    }

    /// Makes sure `suite` is configured and its package lists are present.
    pub fn ensure_suite_ready(&self, suite: &str) -> Result<(), String> {
        let added = self.add_suite(suite)?;
        if added {
            self.refresh_if_sources_changed()?;
        }
        if !self.suite_known(suite) {
            self.refresh()?;
        }
        if !self.suite_known(suite) {
            return Err(format!(
                "apt knows no suite {suite} even after apt-get update (is {DEBIAN_URI} reachable?)"
            ));
        }
        Ok(())
    }

    /// The version apt would install of `package` from `suite` (None: the suite has none).
    pub fn candidate_in_suite(&self, package: &str, suite: &str) -> Result<Option<String>, String> {
        let out = output(
            "apt-cache policy",
            self.apt_cache().args(["-t", suite, "policy", package]),
        )?;
        Ok(out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate: "))
            .filter(|v| *v != "(none)")
            .map(str::to_string))
    }

    /// Resolves a package name that may contain one `*` to the newest concrete package,
    /// adding the suite that carries it first and refreshing the lists when nothing matches.
    pub fn resolve_package(&self, pattern: &str) -> Result<String, String> {
        if let Some(suite) = suite_for_kernel(pattern) {
            self.ensure_suite_ready(suite)?;
        }
        if !pattern.contains('*') {
            return Ok(pattern.to_string());
        }
        let search = || {
            output(
                "apt-cache search",
                self.apt_cache()
                    .args(["search", "--names-only", &glob_to_regex(pattern)]),
            )
        };
        let mut names = search()?;
        if newest_matching(pattern, names.lines().filter_map(first_word)).is_none() {
            eprintln!("== no package matches {pattern}; refreshing package lists");
            self.refresh()?;
            names = search()?;
        }
        newest_matching(pattern, names.lines().filter_map(first_word))
            .ok_or_else(|| format!("no package matches {pattern}, even after apt-get update"))
    }
}

fn first_word(line: &str) -> Option<&str> {
    line.split_whitespace().next()
}

/// Runs `apt-get update` (see [`Apt::refresh`]).
pub fn refresh() -> Result<(), String> {
    Apt::host().refresh()
}

/// Resolves `pattern` with the host's apt (see [`Apt::resolve_package`]).
pub fn resolve_package(pattern: &str) -> Result<String, String> {
    Apt::host().resolve_package(pattern)
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

/// Installs those of `packages` that are not installed (from the configured suites).
pub fn ensure_installed(packages: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| installed_version(p).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let apt = Apt::host();
    apt.refresh_if_sources_changed()?;
    let mut cmd = apt.apt_get();
    cmd.args(["-q", "-y", "install", "--no-install-recommends"]);
    cmd.args(&missing);
    run_step(&format!("install {}", missing.join(" ")), &mut cmd)
}

/// Installs cpio, busybox-static and a QEMU new enough for `dynamic-memslots`.
pub fn ensure_host_tools() -> Result<(), String> {
    ensure_installed(&["cpio", "busybox-static", "kmod", "xz-utils", "zstd"])?;
    let qemu_ok = installed_version("qemu-system-x86")
        .and_then(|v| qemu_major_minor(&v))
        .is_some_and(|v| v >= MIN_QEMU_MAJOR_MINOR);
    if !qemu_ok {
        install_new_qemu_package(Apt::host(), "qemu-system-x86")?;
    }
    Ok(())
}

/// Installs `package` (a QEMU package) from bookworm-backports, after checking the suite offers
/// a version new enough for the harness.
fn install_new_qemu_package(apt: &Apt, package: &str) -> Result<(), String> {
    apt.ensure_suite_ready(QEMU_SUITE)?;
    let candidate = apt.candidate_in_suite(package, QEMU_SUITE)?;
    let new_enough = candidate
        .as_deref()
        .and_then(qemu_major_minor)
        .is_some_and(|v| v >= MIN_QEMU_MAJOR_MINOR);
    if !new_enough {
        let (major, minor) = MIN_QEMU_MAJOR_MINOR;
        return Err(format!(
            "{QEMU_SUITE} offers {package} {}, the harness needs ≥ {major}.{minor}",
            candidate.as_deref().unwrap_or("(none)")
        ));
    }
    run_step(
        &format!("install {package} from {QEMU_SUITE}"),
        apt.apt_get()
            .args([
                "-q",
                "-y",
                "install",
                "--no-install-recommends",
                "-t",
                QEMU_SUITE,
            ])
            .arg(package),
    )
}

/// Installs `qemu-utils` from bookworm-backports when missing: its `qemu-storage-daemon` is the
/// real vhost-user backend the vhost-frontend tests and `bench memslots --vhost` run against
/// (bookworm's own qemu-utils 7.2 does not ship it).
pub fn ensure_test_tools() -> Result<(), String> {
    let new_enough = installed_version("qemu-utils")
        .and_then(|v| qemu_major_minor(&v))
        .is_some_and(|v| v >= MIN_QEMU_MAJOR_MINOR);
    if new_enough {
        return Ok(());
    }
    install_new_qemu_package(Apt::host(), "qemu-utils")
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

/// Downloads `package` into `dir` (reusing an existing download); returns the .deb path.
pub fn download(package: &str, dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    if let Some(found) = find_deb(package, dir) {
        return Ok(found);
    }
    run_step(
        &format!("apt-get download {package}"),
        Apt::host()
            .apt_get()
            .current_dir(dir)
            .args(["-q", "download", package]),
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
