//! `hotmem --restore DIR` with a bad snapshot: exit status 2, a message naming the problem,
//! and nothing started (the API socket is never created).

use std::process::Command;

fn hotmem(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hotmem"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_snapshots_exit_2_with_a_clear_message_and_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let socket_arg = socket.to_str().unwrap();
    let snap = dir.path().join("snap");
    let snap_arg = snap.to_str().unwrap();

    let (code, err) = hotmem(&["--restore", snap_arg, "--api-socket", socket_arg]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--restore") && err.contains("state.bin"),
        "{err}"
    );

    std::fs::create_dir(&snap).unwrap();
    std::fs::write(snap.join("state.bin"), b"HOTMEMSN\x02\0\0\0").unwrap();
    let (code, err) = hotmem(&["--restore", snap_arg, "--api-socket", socket_arg]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("truncated"), "{err}");

    std::fs::write(snap.join("state.bin"), b"{\"not\": \"a snapshot\"}").unwrap();
    let (code, err) = hotmem(&["--restore", snap_arg, "--api-socket", socket_arg]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a hotmem snapshot state file"), "{err}");

    let (code, err) = hotmem(&["--restore", snap_arg, "--kernel", "/boot/vmlinuz"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");

    let (code, err) = hotmem(&["--restore", snap_arg, "--disk", "socket=/run/d.sock"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--disk and --fs cannot be used with --restore"),
        "{err}"
    );
    assert!(!socket.exists(), "nothing was started");
}
