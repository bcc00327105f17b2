//! hotmem needs no root: a user whose supplementary group may open /dev/kvm runs it (with the
//! default `--seccomp kill`) far enough to create the VM and answer on its API socket, and is
//! stopped through the API. Without that group it fails cleanly at /dev/kvm.
//!
//! The host's /dev/kvm is left alone: the child gets a mount namespace of its own in which a
//! device node for KVM, owned by root:KVM_GROUP with mode 0660, is bound over /dev/kvm. The
//! kernel is a stub bzImage whose code halts, so no Linux boots on this (emulating) machine.

mod common;

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const UID: u32 = 4243;
const GID: u32 = 4243;
const KVM_GROUP: u32 = 4242;

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

struct Setup {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    socket: PathBuf,
    kvm_node: CString,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel = dir.path().join("bzImage");
    common::stub_bzimage(&kernel);
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(UID), Some(GID)).unwrap();
    let node = dir.path().join("kvm");
    let c_node = cstr(&node);
    let dev = std::fs::metadata("/dev/kvm").unwrap();
    let rdev = std::os::unix::fs::MetadataExt::rdev(&dev);
    // SAFETY: mknod with a valid C path and the device number of the real /dev/kvm.
    let made = unsafe { libc::mknod(c_node.as_ptr(), libc::S_IFCHR | 0o660, rdev) };
    assert_eq!(made, 0, "mknod: {}", std::io::Error::last_os_error());
    std::os::unix::fs::chown(&node, Some(0), Some(KVM_GROUP)).unwrap();
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o660)).unwrap();
    Setup {
        socket: run.join("api.sock"),
        dir,
        kernel,
        kvm_node: c_node,
    }
}

/// Starts hotmem as UID:GID with `groups` as supplementary groups, in a mount namespace where
/// /dev/kvm is the node of `setup`.
fn start(setup: &Setup, groups: &'static [libc::gid_t]) -> Child {
    let node = setup.kvm_node.clone();
    let target = CString::new("/dev/kvm").unwrap();
    let root = CString::new("/").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hotmem"));
    cmd.args(["--kernel"])
        .arg(&setup.kernel)
        .args(["--serial", "file=/dev/null", "--api-socket"])
        .arg(&setup.socket)
        .args(["--mem-device", "id=mem0,size=1G,requested=0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let check = |ret: libc::c_int| {
        if ret == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: between fork and exec the closure makes only raw system calls on C strings
    // prepared before the fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                node.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setresgid(GID, GID, GID))?;
            check(libc::setresuid(UID, UID, UID))
        });
    }
    cmd.spawn().unwrap()
}

fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

#[test]
fn a_user_in_the_kvm_group_runs_hotmem_and_answers_on_the_api() {
    let name = "a_user_in_the_kvm_group_runs_hotmem_and_answers_on_the_api";
    if !test_support::require_root(name) || !test_support::require_kvm(name) {
        return;
    }
    let setup = setup();
    let mut child = start(&setup, &[KVM_GROUP]);
    let client = api::client::Client::new(&setup.socket).with_timeout(Duration::from_secs(10));
    let started = Instant::now();
    let vm = loop {
        if let Ok(answer) = client.request("GET", "/v1/vm", None) {
            break answer;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("hotmem ended ({status}): {}", stderr_of(&mut child));
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no API answer");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(vm.status, 200, "{vm:?}");
    assert!(vm.body.contains("\"vcpus\":1"), "{vm:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let line = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("Uid:").split_whitespace().skip(1).all(|u| u == "4243"),
        "{status}"
    );
    assert!(line("Groups:").contains("4242"), "{status}");
    assert!(line("CapEff:").ends_with("0000000000000000"), "{status}");
    assert_eq!(
        line("Seccomp:").split_whitespace().nth(1),
        Some("2"),
        "{status}"
    );
    let stop = client.request("PUT", "/v1/vm/shutdown", None).unwrap();
    assert!(stop.status < 300, "{stop:?}");
    let ended = wait_for(&mut child, Duration::from_secs(30));
    if ended.is_none() {
        let _ = child.kill();
    }
    let err = stderr_of(&mut child);
    assert!(ended.is_some_and(|s| s.success()), "{ended:?}: {err}");
    drop(setup.dir);
}

#[test]
fn without_the_kvm_group_hotmem_stops_at_dev_kvm() {
    let name = "without_the_kvm_group_hotmem_stops_at_dev_kvm";
    if !test_support::require_root(name) || !test_support::require_kvm(name) {
        return;
    }
    let setup = setup();
    let mut child = start(&setup, &[]);
    let ended = wait_for(&mut child, Duration::from_secs(30));
    if ended.is_none() {
        let _ = child.kill();
    }
    let err = stderr_of(&mut child);
    assert!(ended.is_some_and(|s| !s.success()), "{ended:?}: {err}");
    assert!(err.contains("ermission denied"), "{err}");
    assert!(!setup.socket.exists());
}
