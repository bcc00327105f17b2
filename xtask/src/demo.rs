//! `cargo xtask demo`: boots a stock Debian guest under hotmem and resizes its memory live,
//! 1 GiB → 4 GiB → 1 GiB, printing a timeline of what the guest and the host see.
//!
//! Where the host CPU has hardware virtualization (vmx/svm), hotmem runs the guest directly;
//! otherwise (as on machines whose KVM only emulates guest code) the guest runs inside the
//! nested harness: L0 QEMU (TCG) → L1 Linux with KVM → hotmem → L2 Linux.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::e2e::serial::Source;
use crate::e2e::timeline::{DeviceStatus, Timeline};
use crate::e2e::{self, E2eArgs};
use crate::guest::{self, GuestPaths, Vmm};

const GIB: u64 = 1 << 30;

#[derive(Args)]
pub struct DemoArgs {
    /// Use the nested harness even where the host could run the guest directly.
    #[arg(long)]
    nested: bool,
    /// Print the timeline of an earlier nested run's console log instead of running.
    #[arg(long, value_name = "LOG")]
    replay: Option<PathBuf>,
}

pub fn run(args: &DemoArgs) -> Result<(), String> {
    if let Some(log) = &args.replay {
        let console =
            std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
        print_timeline(&Timeline::parse(&console));
        return Ok(());
    }
    if !args.nested && host_has_hardware_virtualization() {
        println!(
            "demo: this host has hardware virtualization: running the guest directly under hotmem"
        );
        direct()
    } else {
        println!(
            "demo: this host's KVM has no hardware virtualization (no vmx/svm in /proc/cpuinfo), so \
             the guest runs nested: L0 QEMU (TCG) → L1 Debian + KVM → hotmem → L2 Debian"
        );
        nested()
    }
}

fn host_has_hardware_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    }) && Path::new("/dev/kvm").exists()
}

fn nested() -> Result<(), String> {
    let args = E2eArgs {
        vmm: Some(Vmm::Hotmem),
        scenario: Some("grow-shrink".into()),
        kernel_package: guest::DEFAULT_KERNEL_PACKAGE.into(),
        json: false,
        compare: false,
        jobs: 1,
    };
    let results = e2e::run_scenarios(&args)?;
    let log = newest_console_log("hotmem-grow-shrink")?;
    let console = std::fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    print_timeline(&Timeline::parse(&console));
    match results.first() {
        Some(r) if r.failures.is_empty() => {
            println!(
                "demo: done in {:.0} s (console log: {})",
                r.duration_s,
                log.display()
            );
            Ok(())
        }
        Some(r) => Err(format!("the demo run failed: {}", r.failures.join("; "))),
        None => Err("the demo scenario did not run".into()),
    }
}

/// The most recent console log of `name` (the harness keeps one directory per run).
fn newest_console_log(name: &str) -> Result<PathBuf, String> {
    let root = GuestPaths::new().workspace().join("target/e2e");
    let newest = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|run| std::fs::read_dir(run.path()).ok())
        .flatten()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().starts_with(name))
        .filter_map(|f| Some((f.metadata().ok()?.modified().ok()?, f.path())))
        .max();
    newest
        .map(|(_, path)| path)
        .ok_or_else(|| format!("no console log of {name} under {}", root.display()))
}

/// Prints guest MemTotal changes, resizes and, at each labelled point, the L1 snapshot with the
/// VMM's report taken right after it, in time order.
fn print_timeline(t: &Timeline) {
    println!(
        "\n{:>8}  {:<24} {:>14} {:>10} {:>10} {:>6} {:>10} {:>10}",
        "time_s", "event", "guest_MemTotal", "requested", "plugged", "slots", "VMM_RSS", "L1_free"
    );
    let gib = |b: u64| format!("{:.2}G", b as f64 / GIB as f64);
    let mut snap = None;
    for e in &t.events {
        let time = format!("{:8.1}", e.at_ms as f64 / 1000.0);
        match (e.source, e.key.as_str()) {
            (Source::L2, "memtotal_kib") => {
                let kib: u64 = e.word(0).and_then(|w| w.parse().ok()).unwrap_or(0);
                println!(
                    "{time}  {:<24} {:>13}M",
                    "guest MemTotal changed",
                    kib / 1024
                );
            }
            (Source::L1, "resize_request") => {
                let bytes: u64 = e.word(0).and_then(|w| w.parse().ok()).unwrap_or(0);
                println!(
                    "{time}  {:<24} {:>14} {:>10}",
                    "resize requested",
                    "",
                    gib(bytes)
                );
            }
            (Source::L1, "snap") => snap = Some(e.clone()),
            (Source::L1, "hotmem_status") => {
                let json = e.rest.split_once(' ').map_or("", |(_, j)| j);
                let (Some(sn), Ok(s)) = (snap.take(), DeviceStatus::from_hotmem(json)) else {
                    continue;
                };
                println!(
                    "{:8.1}  {:<24} {:>13}M {:>10} {:>10} {:>6} {:>9}M {:>9}M",
                    sn.at_ms as f64 / 1000.0,
                    format!("status: {}", sn.word(0).unwrap_or("?")),
                    sn.field_u64("guest_memtotal_kib").unwrap_or(0) / 1024,
                    gib(s.requested_bytes),
                    gib(s.plugged_bytes),
                    s.slots_mapped.map_or("-".into(), |v| v.to_string()),
                    sn.field_u64("rss_kib").unwrap_or(0) / 1024,
                    sn.field_u64("memfree_kib").unwrap_or(0) / 1024,
                );
            }
            _ => {}
        }
    }
    println!(
        "(slots = KVM memslots mapped; VMM_RSS and L1_free are measured in L1, the host of hotmem)\n"
    );
}

/// Runs hotmem on this host with the harness's L2 kernel and initramfs, driving the guest agent
/// over the console and resizing through the API.
fn direct() -> Result<(), String> {
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
