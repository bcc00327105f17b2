//! Live migration between two `hotmem` processes on this machine's KVM, through their real
//! command lines and APIs (no guest code beyond a halting stub kernel, so nothing plugs: the
//! nested e2e scenarios cover guests that use their memory). Needs /dev/kvm.
//!
//! - A destination that cannot take the VM (an override names a device the VM lacks) exits 2
//!   naming it; the source's migration fails with a reason and its VM keeps running.
//! - A retry to a good destination with another slot policy completes: the source exits 0, the
//!   destination runs the VM with the requested size set on the source (a PATCH made before
//!   the migration), under its own slot policy, with nothing mapped (nothing is plugged).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use api::client::Client;

const LIMIT: Duration = Duration::from_secs(60);

struct Vmm {
    child: Child,
    api: Client,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str], socket: &Path) -> Vmm {
    let child = Command::new(env!("CARGO_BIN_EXE_hotmem"))
        .args(args)
        .args(["--serial", "file=/dev/null", "--api-socket"])
        .arg(socket)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Vmm {
        child,
        api: Client::new(socket).with_timeout(Duration::from_secs(10)),
    }
}

fn stderr_of(vmm: &mut Vmm) -> String {
    let mut s = String::new();
    if let Some(mut e) = vmm.child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

fn wait_exit(vmm: &mut Vmm) -> Option<ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < LIMIT {
        if let Some(status) = vmm.child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// `GET path` as JSON, once the API answers 200.
fn get(vmm: &mut Vmm, path: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        if let Ok(answer) = vmm.api.request("GET", path, None)
            && answer.status == 200
        {
            return serde_json::from_str(&answer.body).unwrap();
        }
        if let Some(status) = vmm.child.try_wait().unwrap() {
            panic!("hotmem ended ({status}): {}", stderr_of(vmm));
        }
        assert!(started.elapsed() < LIMIT, "no answer to GET {path}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls the source's migration status until it leaves setup/active/final.
fn migration_outcome(source: &mut Vmm) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let status = get(source, "/v1/vm/migration");
        let state = status["state"].as_str().unwrap_or_default().to_string();
        if !matches!(state.as_str(), "setup" | "active" | "final") {
            return status;
        }
        assert!(started.elapsed() < LIMIT, "migration still {state}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn migrate(source: &Vmm, destination: &str) {
    let body = format!(r#"{{"destination": "{destination}", "max_downtime_ms": 300}}"#);
    let answer = source
        .api
        .request("PUT", "/v1/vm/migrate", Some(&body))
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
}

/// Waits until `path` exists (a destination listening on a Unix socket).
fn wait_path(path: &Path, vmm: &mut Vmm) {
    let started = Instant::now();
    while !path.exists() {
        if let Some(status) = vmm.child.try_wait().unwrap() {
            panic!("destination ended ({status}): {}", stderr_of(vmm));
        }
        assert!(
            started.elapsed() < LIMIT,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_refused_migration_keeps_the_vm_and_a_retry_moves_it() {
    let name = "a_refused_migration_keeps_the_vm_and_a_retry_moves_it";
    if !test_support::require_kvm(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let at = |f: &str| -> PathBuf { dir.path().join(f) };
    let kernel = at("bzImage");
    common::stub_bzimage(&kernel);
    let mut source = spawn(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--mem-device",
            "id=mem0,size=64G,requested=0",
        ],
        &at("source.sock"),
    );
    assert_eq!(get(&mut source, "/v1/vm")["state"], "running");
    let patch = source
        .api
        .request(
            "PATCH",
            "/v1/memory-devices/mem0",
            Some(r#"{"requested_size": "1G"}"#),
        )
        .unwrap();
    assert_eq!(patch.status, 200, "{patch:?}");

    // A destination that cannot take this VM.
    let listen = at("migration.sock");
    let address = format!("unix:{}", listen.display());
    let mut refusing = spawn(
        &[
            "--incoming",
            &address,
            "--mem-device",
            "id=nope,slots=fixed",
        ],
        &at("refusing.sock"),
    );
    wait_path(&listen, &mut refusing);
    migrate(&source, &address);
    let failed = migration_outcome(&mut source);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );
    let refused = wait_exit(&mut refusing);
    let why = stderr_of(&mut refusing);
    assert_eq!(refused.and_then(|s| s.code()), Some(2), "{why}");
    assert!(why.contains("'nope'"), "{why}");
    assert_eq!(get(&mut source, "/v1/vm")["state"], "running");

    // A good destination, with another slot policy.
    let _ = std::fs::remove_file(&listen);
    let mut destination = spawn(
        &[
            "--incoming",
            &address,
            "--mem-device",
            "id=mem0,slots=fixed",
        ],
        &at("destination.sock"),
    );
    wait_path(&listen, &mut destination);
    migrate(&source, &address);
    let done = migration_outcome(&mut source);
    assert_eq!(done["state"], "completed", "{done}");
    assert!(done["transferred_bytes"].as_u64().unwrap() > 0, "{done}");
    assert!(done["downtime_ms"].as_u64().is_some(), "{done}");
    let ended = wait_exit(&mut source);
    let source_log = stderr_of(&mut source);
    assert!(
        ended.is_some_and(|s| s.success()),
        "{ended:?}: {source_log}"
    );

    assert_eq!(get(&mut destination, "/v1/vm")["state"], "running");
    let device = get(&mut destination, "/v1/memory-devices/mem0");
    assert_eq!(device["requested_bytes"], 1u64 << 30, "{device}");
    assert_eq!(device["plugged_bytes"], 0, "{device}");
    assert_eq!(device["slot_policy"], "fixed", "{device}");
    assert_eq!(device["slots_mapped"], 0, "{device}");
    assert_eq!(device["mapped_bytes"], 0, "{device}");
    let stop = destination
        .api
        .request("PUT", "/v1/vm/shutdown", None)
        .unwrap();
    assert!(stop.status < 300, "{stop:?}");
    let ended = wait_exit(&mut destination);
    let log = stderr_of(&mut destination);
    assert!(ended.is_some_and(|s| s.success()), "{ended:?}: {log}");
}
