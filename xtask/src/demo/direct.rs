//! The demo where the host has hardware virtualization: hotmem runs the guest directly.
//! (Not yet exercised on such a host: this project's machines have no vmx/svm.)

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::e2e::timeline::DeviceStatus;
use crate::guest::{self, GuestPaths, Vmm};

const GIB: u64 = 1 << 30;

/// Runs hotmem on this host with the harness's L2 kernel and initramfs, driving the guest agent
/// over the console and resizing through the API.
pub fn run() -> Result<(), String> {
    let paths = GuestPaths::new();
    guest::build_images(&paths, guest::DEFAULT_KERNEL_PACKAGE, Vmm::Hotmem)?;
    let kernel = guest::prepare_kernel(&paths, guest::DEFAULT_KERNEL_PACKAGE)?;
    let initramfs = guest::build_l2_initramfs(&paths, &kernel)?;
    let bin = build_binaries(&paths.workspace())?;
    let socket = std::env::temp_dir().join(format!("hotmem-demo-{}.sock", std::process::id()));
    let mut child = Command::new(bin.join("hotmem"))
        .arg("--kernel")
        .arg(&kernel.vmlinuz)
        .arg("--initramfs")
        .arg(&initramfs)
        .args([
            "--cmdline",
            "console=ttyS0 quiet memhp_default_state=online_movable",
        ])
        .args([
            "--memory",
            "512M",
            "--cpus",
            "2",
            "--mem-device",
            "id=mem0,size=64G,requested=1G",
        ])
        .arg("--api-socket")
        .arg(&socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting hotmem: {e}"))?;
    let mut console_in = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let start = Instant::now();
    let result = (|| {
        wait_for(&rx, "ready", Duration::from_secs(120))?;
        writeln!(console_in, "go").map_err(|e| e.to_string())?;
        let ctl = bin.join("hotmem-ctl");
        for target in ["1G", "4G", "1G"] {
            run_ctl(&ctl, &socket, &["resize", "mem0", target])?;
            let want_gib: u64 = target.trim_end_matches('G').parse().unwrap_or(1);
            wait_plugged(&ctl, &socket, want_gib * GIB, &rx, start)?;
            run_ctl(&ctl, &socket, &["status"])?;
        }
        writeln!(console_in, "poweroff").map_err(|e| e.to_string())
    })();
    let _ = child.wait();
    result
}

fn build_binaries(workspace: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--release", "-p", "vmm"])
        .status()
        .map_err(|e| e.to_string())?
        .success();
    if !ok {
        return Err("building hotmem failed".into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from);
    Ok(target.join("release"))
}

fn wait_for(rx: &mpsc::Receiver<String>, key: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("@@HM") && line.split_whitespace().nth(2) == Some(key) => {
                return Ok(());
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Err(format!(
        "the guest did not report '{key}' within {timeout:?}"
    ))
}

fn run_ctl(ctl: &Path, socket: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(ctl)
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "hotmem-ctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    print!("{text}");
    Ok(text)
}

/// Waits until the device reports `bytes` plugged, printing guest MemTotal changes meanwhile.
fn wait_plugged(
    ctl: &Path,
    socket: &Path,
    bytes: u64,
    rx: &mpsc::Receiver<String>,
    start: Instant,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        while let Ok(line) = rx.try_recv() {
            if let Some(kib) = line.split("memtotal_kib ").nth(1) {
                println!(
                    "{:8.1} s  guest MemTotal {} MiB",
                    start.elapsed().as_secs_f64(),
                    kib.trim().parse::<u64>().unwrap_or(0) / 1024
                );
            }
        }
        let out = Command::new(ctl)
            .arg("--api-socket")
            .arg(socket)
            .args(["status", "--json"])
            .output()
            .map_err(|e| e.to_string())?;
        let status = DeviceStatus::from_hotmem(String::from_utf8_lossy(&out.stdout).trim())?;
        if status.plugged_bytes == bytes {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "the guest did not reach {bytes} plugged bytes in time"
    ))
}
