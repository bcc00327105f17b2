//! `cargo xtask bench start`: what starting a VM with a huge, empty virtio-mem device costs, for
//! hotmem and (when installed, ≥ 8.2) QEMU with `dynamic-memslots` on and off.
//!
//! Each VMM starts with 512 MiB of boot memory and a 1 TiB device with nothing plugged, on this
//! machine's KVM, and is measured until its control interface answers: the host memory it took
//! (the VMM's resident memory and page tables plus KVM's vmalloc'ed metadata), the KVM memslot
//! metadata alone (`VmallocUsed` growth) and the time to get there.
//!
//! Both VMMs are measured at the same point: **first vCPU entry with the kernel loaded** — hotmem
//! once `GET /v1/vm` reports the first boot running (the kernel is in guest memory and the vCPU
//! threads start), QEMU (same kernel, `-kernel`, not paused) once `query-status` reports
//! `running`. Memory deltas are signed: a VMM that gave memory back shows a negative number.
//! A VMM that cannot be measured fails the benchmark; it never becomes a silent row.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::measure::{meminfo_kib, vmalloc_used_bytes};

const TIB: u64 = 1 << 40;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct StartArgs {
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
    /// Device region size in GiB.
    #[arg(long, default_value_t = 1024)]
    region_gib: u64,
    /// How many times to start each VMM (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

#[derive(Serialize, Clone)]
struct Row {
    vmm: String,
    /// Where the VMM was measured (the same for every row).
    measured_at: &'static str,
    region_bytes: u64,
    runs: usize,
    host_memory_bytes: i64,
    kvm_metadata_bytes: i64,
    vmm_rss_bytes: i64,
    memfree_drop_bytes: i64,
    ready_ms: f64,
}

const MEASURED_AT: &str = "first vCPU entry, kernel loaded";

struct Sample {
    host_memory_bytes: i64,
    memfree_drop_bytes: i64,
    kvm_metadata_bytes: i64,
    vmm_rss_bytes: i64,
    ready_ms: f64,
}

pub fn run(args: &StartArgs) -> Result<(), String> {
    let region = args.region_gib << 30;
    let kernel = find_kernel()?;
    let hotmem = build_hotmem()?;
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let (major, minor) = qemu_version().ok_or(
        "qemu-system-x86_64 is not installed: `cargo xtask guest-image` installs QEMU ≥ 8.2",
    )?;
    if (major, minor) < (8, 2) {
        return Err(format!(
            "QEMU {major}.{minor} has no dynamic-memslots (needs ≥ 8.2): run `cargo xtask guest-image`"
        ));
    }
    let mut rows = vec![measure_rows(args, "hotmem", region, |sock| {
        hotmem_command(&hotmem, &kernel, region, sock)
    })?];
    for dynamic in ["on", "off"] {
        let name = format!("qemu-{major}.{minor} dynamic-memslots={dynamic}");
        rows.push(measure_rows(args, &name, region, |sock| {
            qemu_command(&kernel, region, dynamic, sock)
        })?);
    }
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).map_err(|e| e.to_string())?);
        }
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn measure_rows(
    args: &StartArgs,
    vmm: &str,
    region: u64,
    command: impl Fn(&Path) -> Command,
) -> Result<Row, String> {
    let mut samples = Vec::new();
    for i in 0..args.runs {
        let sock =
            std::env::temp_dir().join(format!("hotmem-bench-{}-{i}.sock", std::process::id()));
        let sample = measure_once(command(&sock), &sock, vmm)
            .map_err(|e| format!("{vmm}: run {} of {}: {e}", i + 1, args.runs))?;
        samples.push(sample);
    }
    let median = |f: &dyn Fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    Ok(Row {
        vmm: vmm.into(),
        measured_at: MEASURED_AT,
        region_bytes: region,
        runs: samples.len(),
        host_memory_bytes: median(&|s| s.host_memory_bytes as f64) as i64,
        kvm_metadata_bytes: median(&|s| s.kvm_metadata_bytes as f64) as i64,
        vmm_rss_bytes: median(&|s| s.vmm_rss_bytes as f64) as i64,
        memfree_drop_bytes: median(&|s| s.memfree_drop_bytes as f64) as i64,
        ready_ms: median(&|s| s.ready_ms),
    })
}

fn measure_once(mut command: Command, sock: &Path, vmm: &str) -> Result<Sample, String> {
    let _ = std::fs::remove_file(sock);
    settle();
    let free_before = meminfo_kib("MemFree:") * 1024;
    let vmalloc_before = vmalloc_used_bytes();
    let start = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {vmm}: {e}"))?;
    let mut child = KillOnDrop(child);
    let ready = wait_ready(sock, vmm, &mut child.0);
    let ready_ms = start.elapsed().as_secs_f64() * 1e3;
    ready?;
    let pid = child.0.id();
    let rss = status_kib(pid, "VmRSS:")? * 1024;
    let pte = status_kib(pid, "VmPTE:")? * 1024;
    let kvm = vmalloc_used_bytes() as i64 - vmalloc_before as i64;
    let sample = Sample {
        // The VMM's resident memory and page tables plus KVM's vmalloc'ed metadata; the
        // MemFree drop is printed for reference but other processes make it noisy.
        host_memory_bytes: (rss + pte) as i64 + kvm,
        memfree_drop_bytes: free_before as i64 - (meminfo_kib("MemFree:") * 1024) as i64,
        kvm_metadata_bytes: kvm,
        vmm_rss_bytes: rss as i64,
        ready_ms,
    };
    drop(child);
    let _ = std::fs::remove_file(sock);
    Ok(sample)
}

/// Lets the previous VMM's memory go back before the next measurement.
fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

pub(super) struct KillOnDrop(pub(super) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(sock: &Path, vmm: &str, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{vmm} exited early ({status})"));
        }
        if let Ok(stream) = UnixStream::connect(sock) {
            let answered = if vmm == "hotmem" {
                hotmem_answers(stream)
            } else {
                qmp_answers(stream)
            };
            if answered {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(format!("{vmm} did not answer within {READY_TIMEOUT:?}"))
}

/// hotmem answers and reports its first boot running (kernel loaded, vCPUs started).
fn hotmem_answers(mut stream: UnixStream) -> bool {
    let request =
        "GET /v1/vm HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        return false;
    };
    let Ok(vm) = serde_json::from_str::<serde_json::Value>(body.trim()) else {
        return false;
    };
    head.starts_with("HTTP/1.1 200") && vm["boots"].as_u64() >= Some(1) && vm["state"] == "running"
}

fn qmp_answers(stream: UnixStream) -> bool {
    let mut reader = BufReader::new(stream.try_clone().expect("clone socket"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || !line.contains("QMP") {
        return false;
    }
    let mut writer = stream;
    if writer
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .is_err()
    {
        return false;
    }
    line.clear();
    if reader.read_line(&mut line).is_err() || !line.contains("return") {
        return false;
    }
    // Running = the vCPU threads entered the guest (QEMU runs without -S).
    if writer
        .write_all(b"{\"execute\":\"query-status\"}\n")
        .is_err()
    {
        return false;
    }
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        if line.contains("\"return\"") {
            return line.contains("\"running\": true") || line.contains("\"running\":true");
        }
    }
}

fn status_kib(pid: u32, field: &str) -> Result<u64, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}

fn workspace() -> PathBuf {
    crate::workspace::root()
}

pub(super) fn find_kernel() -> Result<PathBuf, String> {
    let kernels = workspace().join("target/guest/kernels");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|pkg| std::fs::read_dir(pkg.path().join("boot")).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-6"))
        })
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        format!(
            "no Debian kernel under {}: run `cargo xtask guest-image` first",
            kernels.display()
        )
    })
}

pub(super) fn build_hotmem() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace())
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "vmm",
            "--bin",
            "hotmem",
        ])
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err("building hotmem failed".into());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    Ok(target_dir.join("release/hotmem"))
}

pub(super) fn hotmem_command(hotmem: &Path, kernel: &Path, region: u64, sock: &Path) -> Command {
    let mut c = Command::new(hotmem);
    c.arg("--kernel")
        .arg(kernel)
        .args([
            "--memory",
            "512M",
            "--cpus",
            "1",
            "--serial",
            "file=/dev/null",
        ])
        .arg("--mem-device")
        .arg(format!("id=mem0,size={}G,requested=0", region >> 30))
        .arg("--api-socket")
        .arg(sock);
    c
}

fn qemu_version() -> Option<(u32, u32)> {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split("version ").nth(1)?.split_whitespace().next()?;
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn qemu_command(kernel: &Path, region: u64, dynamic: &str, sock: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.arg("-kernel").arg(kernel);
    c.args([
        "-accel",
        "kvm",
        // The default CPU model's 40 physical address bits cannot reach a 1 TiB device.
        "-cpu",
        "qemu64,phys-bits=48",
        "-machine",
        "pc,smm=off",
        "-nodefaults",
        "-display",
        "none",
    ])
    .args([
        "-m",
        &format!("512M,slots=1,maxmem={}G", (region >> 30) + 1),
    ])
    .args([
        "-object",
        &format!(
            "memory-backend-ram,id=vmem0,size={}G,reserve=off",
            region >> 30
        ),
    ])
    .args([
        "-device",
        &format!("virtio-mem-pci,id=mem0,memdev=vmem0,requested-size=0,dynamic-memslots={dynamic}"),
    ])
    .arg("-qmp")
    .arg(format!("unix:{},server=on,wait=off", sock.display()));
    c
}

fn print_table(rows: &[Row]) {
    let mib = |b: i64| format!("{:.1}", b as f64 / (1 << 20) as f64);
    println!(
        "measured at {MEASURED_AT}; median of {} runs",
        rows.first().map_or(0, |r| r.runs)
    );
    println!(
        "{:<32} {:>8} {:>13} {:>13} {:>9} {:>14} {:>10}",
        "vmm", "region", "host_mem_MiB", "kvm_meta_MiB", "rss_MiB", "memfree_drop", "ready_ms"
    );
    for r in rows {
        println!(
            "{:<32} {:>7}T {:>13} {:>13} {:>9} {:>14} {:>10.1}",
            r.vmm,
            r.region_bytes / TIB,
            mib(r.host_memory_bytes),
            mib(r.kvm_metadata_bytes),
            mib(r.vmm_rss_bytes),
            mib(r.memfree_drop_bytes),
            r.ready_ms,
        );
    }
}
