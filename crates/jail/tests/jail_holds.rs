//! The jail holds: a program started by `hotmem-jail` runs as the unprivileged user with no
//! capabilities and `no_new_privs`, sees only its planned files and a private /dev, cannot write
//! outside what was bound writable, is PID 2 of its own PID namespace, has no network but
//! loopback, and its exit status comes back. Needs root (namespaces, mounts).
//!
//! The program in the jail is this test binary itself, run as `probe_inside_the_jail` with
//! `JAIL_PROBE` set: it prints what it sees, and the outer test judges it.

use std::path::{Path, PathBuf};
use std::process::Command;

const PROBE_ENV: &str = "JAIL_PROBE_WRITABLE";
const UID: u32 = 4321;

/// Runs inside the jail (only when the outer test asks for it, with `--ignored`): one
/// `key=value` line per fact. Not a test of its own: it is ignored in normal runs.
#[test]
#[ignore = "entry point for the program inside the jail; run by the jail tests"]
fn probe_inside_the_jail() {
    let writable = std::env::var(PROBE_ENV).expect("run by the jail tests, which set the folder");
    let mut facts = Vec::new();
    // SAFETY: plain getters.
    let (uid, gid, euid) = unsafe { (libc::getuid(), libc::getgid(), libc::geteuid()) };
    facts.push(format!("ids={uid}:{gid}:{euid}"));
    let (eff, perm, inh) = jail::identity::current_capabilities().unwrap();
    facts.push(format!("caps={eff:x}:{perm:x}:{inh:x}"));
    // SAFETY: prctl reads with integer arguments only.
    let bounding: Vec<i32> = (0..41)
        .filter(|c| unsafe { libc::prctl(libc::PR_CAPBSET_READ, *c, 0, 0, 0) } == 1)
        .collect();
    facts.push(format!("bounding={bounding:?}"));
    // SAFETY: as above.
    facts.push(format!("nnp={}", unsafe {
        libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
    }));
    let mut root: Vec<String> = std::fs::read_dir("/")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    facts.push(format!("root={}", root.join(",")));
    let mut dev: Vec<String> = std::fs::read_dir("/dev")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dev.sort();
    facts.push(format!("dev={}", dev.join(",")));
    facts.push(format!("etc_passwd={}", Path::new("/etc/passwd").exists()));
    facts.push(format!(
        "write_root={}",
        std::fs::write("/escape", b"x").is_ok()
    ));
    facts.push(format!(
        "write_bound={}",
        std::fs::write(Path::new(&writable).join("inside"), b"x").is_ok()
    ));
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    facts.push(format!("kvm={}", kvm.is_ok()));
    facts.push(format!("pid={}", std::process::id()));
    let mut name = [0u8; 64];
    // SAFETY: `name` is a writable buffer of the given length.
    unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) };
    let name = String::from_utf8_lossy(&name)
        .trim_end_matches('\0')
        .to_string();
    facts.push(format!("hostname={name}"));
    facts.push(format!("interfaces={}", interfaces().join(",")));
    for f in facts {
        println!("FACT {f}");
    }
}

fn interfaces() -> Vec<String> {
    // SAFETY: if_nameindex returns a list ending with a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        let mut names = Vec::new();
        let mut p = list;
        while !p.is_null() && (*p).if_index != 0 {
            names.push(
                std::ffi::CStr::from_ptr((*p).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            p = p.add(1);
        }
        if !list.is_null() {
            libc::if_freenameindex(list);
        }
        names
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hotmem-jail-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_jailed_program_is_unprivileged_and_sees_only_its_root() {
    if !test_support::require_root("a_jailed_program_is_unprivileged_and_sees_only_its_root") {
        return;
    }
    let root = scratch("root");
    let writable = scratch("rw");
    std::fs::create_dir_all(&writable).unwrap();
    let me = std::env::current_exe().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hotmem-jail"))
        .arg("--jail")
        .arg(&root)
        .args(["--uid", &UID.to_string(), "--gid", &UID.to_string()])
        .arg("--exec")
        .arg(&me)
        .arg("--bind")
        .arg(format!("{}:rw", writable.display()))
        .args([
            "--",
            "--exact",
            "probe_inside_the_jail",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ENV, &writable)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "jail failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    let fact = |key: &str| {
        stdout
            .lines()
            .find_map(|l| {
                let at = l.find("FACT ")?;
                l[at + 5..].strip_prefix(key)?.strip_prefix('=')
            })
            .unwrap_or_else(|| panic!("no fact {key}:\n{stdout}\n{stderr}"))
            .to_string()
    };
    assert_eq!(fact("ids"), format!("{UID}:{UID}:{UID}"));
    assert_eq!(fact("caps"), "0:0:0");
    assert_eq!(fact("bounding"), "[]");
    assert_eq!(fact("nnp"), "1");
    // Only the folders leading to bound paths, and /dev: no etc, no home, no proc.
    let top = writable
        .iter()
        .nth(1)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let bin_top = me.iter().nth(1).unwrap().to_string_lossy().into_owned();
    for entry in fact("root").split(',') {
        assert!(
            ["dev", "lib", "lib64", "usr", top.as_str(), bin_top.as_str()].contains(&entry),
            "unexpected /{entry} in the jail's root: {}",
            fact("root")
        );
    }
    assert_eq!(fact("dev"), "kvm,null,urandom");
    assert_eq!(fact("etc_passwd"), "false");
    assert_eq!(fact("write_root"), "false");
    assert_eq!(fact("write_bound"), "true");
    assert_eq!(fact("kvm"), "true");
    assert_eq!(fact("pid"), "2");
    assert_eq!(fact("hostname"), "hotmem-jail");
    assert!(
        ["", "lo"].contains(&fact("interfaces").as_str()),
        "{}",
        fact("interfaces")
    );
    assert!(
        writable.join("inside").exists(),
        "the bound folder is the host's"
    );
    assert!(!root.join("escape").exists());
    let _ = std::fs::remove_dir_all(&writable);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_vmm_exit_status_comes_back_and_root_ids_are_refused() {
    if !test_support::require_root("the_vmm_exit_status_comes_back_and_root_ids_are_refused") {
        return;
    }
    let root = scratch("status");
    let me = std::env::current_exe().unwrap();
    // An unknown flag makes libtest exit 101: the jail must return exactly that.
    let status = Command::new(env!("CARGO_BIN_EXE_hotmem-jail"))
        .arg("--jail")
        .arg(&root)
        .args(["--uid", "4321", "--gid", "4321", "--exec"])
        .arg(&me)
        .args(["--", "--no-such-libtest-flag"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(101));
    let _ = std::fs::remove_dir_all(&root);
    let status = Command::new(env!("CARGO_BIN_EXE_hotmem-jail"))
        .arg("--jail")
        .arg(&root)
        .args(["--uid", "0", "--gid", "0", "--exec"])
        .arg(&me)
        .args(["--", "x"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2), "uid 0 must be refused");
}
