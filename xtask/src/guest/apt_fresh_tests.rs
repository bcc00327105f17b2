//! The first-run path of the harness's apt code, proven against apt itself: a throwaway apt
//! state (sources, lists and cache in a temporary folder, through `APT_CONFIG`) that starts
//! with only the image's own sources, as on a fresh machine.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::apt::{Apt, MIN_QEMU_MAJOR_MINOR, QEMU_SUITE, output, qemu_major_minor};

/// A temporary apt configuration holding only the host's own sources (not the harness's).
struct ThrowawayApt {
    root: PathBuf,
    config: PathBuf,
}

impl ThrowawayApt {
    fn new(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("hotmem-apt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["sources.list.d", "lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let host = Apt::new(None);
        let host_parts = host.sources_dir().unwrap();
        for entry in std::fs::read_dir(&host_parts).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_source = name.ends_with(".sources") || name.ends_with(".list");
            if is_source && !name.starts_with("hotmem-") {
                std::fs::copy(entry.path(), root.join("sources.list.d").join(&name)).unwrap();
            }
        }
        let host_list = Path::new("/etc/apt/sources.list");
        let list = root.join("sources.list");
        if host_list.exists() {
            std::fs::copy(host_list, &list).unwrap();
        } else {
            std::fs::write(&list, "").unwrap();
        }
        let config = root.join("apt.conf");
        let r = root.display();
        std::fs::write(
            &config,
            format!(
                "Dir::Etc::sourcelist \"{r}/sources.list\";\n\
                 Dir::Etc::sourceparts \"{r}/sources.list.d\";\n\
                 Dir::State::lists \"{r}/lists\";\n\
                 Dir::Cache \"{r}/cache\";\n\
                 APT::Sandbox::User \"root\";\n"
            ),
        )
        .unwrap();
        Self { root, config }
    }
}

impl Drop for ThrowawayApt {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn registry_reachable() -> Result<(), String> {
    let addrs = ("deb.debian.org", 80)
        .to_socket_addrs()
        .map_err(|e| format!("deb.debian.org does not resolve: {e}"))?;
    for addr in addrs {
        if TcpStream::connect_timeout(&addr, Duration::from_secs(10)).is_ok() {
            return Ok(());
        }
    }
    Err("deb.debian.org:80 cannot be reached".into())
}

/// The bug this guards against: one `apt-get update` early in the process, then a suite added,
/// and no second update (apt then refuses `-t bookworm-backports` and finds no 5.10 kernel).
#[test]
fn fresh_apt_state_finds_backports_qemu_and_bullseye_kernel_after_an_earlier_refresh() {
    const TEST: &str =
        "fresh_apt_state_finds_backports_qemu_and_bullseye_kernel_after_an_earlier_refresh";
    if let Err(reason) = registry_reachable() {
        test_support::skip(TEST, &reason);
        return;
    }
    let state = ThrowawayApt::new("fresh");
    let apt = Apt::new(Some(state.config.clone()));
    assert!(
        !apt.sources_dir().unwrap().starts_with("/etc"),
        "APT_CONFIG must move the sources folder"
    );
    apt.refresh().expect("first apt-get update");

    let kernel = apt
        .resolve_package("linux-image-5.10.0-*-amd64")
        .expect("a 5.10 kernel from bullseye");
    assert!(kernel.starts_with("linux-image-5.10.0-"), "{kernel}");
    assert!(
        state
            .root
            .join("sources.list.d/hotmem-bullseye.sources")
            .exists()
    );

    apt.ensure_suite_ready(QEMU_SUITE).expect("backports ready");
    let candidate = apt
        .candidate_in_suite("qemu-system-x86", QEMU_SUITE)
        .unwrap()
        .expect("backports has qemu-system-x86");
    let version = qemu_major_minor(&candidate).unwrap();
    assert!(version >= MIN_QEMU_MAJOR_MINOR, "candidate {candidate}");

    // The exact command the harness runs to install QEMU, simulated against the same state.
    let simulated = output(
        "apt-get -s install",
        apt.apt_get()
            .args([
                "-s",
                "-q",
                "-t",
                QEMU_SUITE,
                "install",
                "--no-install-recommends",
            ])
            .arg("qemu-system-x86"),
    )
    .expect("apt accepts -t bookworm-backports");
    // "Inst qemu-system-x86 (1:10.0.2+ds-2+deb13u1~bpo12+1 Debian Backports:… [amd64])"
    let takes_backports = simulated
        .lines()
        .filter_map(|l| l.strip_prefix("Inst qemu-system-x86 ("))
        .filter_map(|rest| qemu_major_minor(rest.split_whitespace().next()?))
        .any(|v| v >= MIN_QEMU_MAJOR_MINOR);
    let already_there = simulated.contains("qemu-system-x86 is already the newest version");
    assert!(
        takes_backports || already_there,
        "simulated install does not take QEMU from {QEMU_SUITE}:\n{simulated}"
    );
}
