//! `cargo xtask bench restore`: time from `hotmem --restore DIR --resume` to vCPUs running,
//! against the plugged size, on this machine's KVM (no guest code needs to run).
//!
//! A real snapshot is taken of a hotmem VM right after its start (a 64 GiB device, nothing
//! plugged: no guest driver runs at this machine's emulated speed). For each plugged size the
//! snapshot is then made to say that the first N GiB of the device are plugged (the device
//! state's bitmap, sizes and the memory file: `--data-kib` of data at the start of every plugged
//! block, so the file has one data extent per block, the most mappings lazy restore makes).
//! Each restore is timed from the process start until `GET /v1/vm` reports the VM running
//! (its vCPU threads started), with `--restore-memory lazy` (the default) and `eager`.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use snapshot::{Component, SnapshotDir};
use virtio_mem::DeviceState;
use virtio_mem::state::BlockRun;

use super::start::{KillOnDrop, build_hotmem, find_kernel, hotmem_command};

const GIB: u64 = 1 << 30;
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The saved device state's component (vmm's `MEM_DEVICE_COMPONENT`, version 1).
const MEM_DEVICE_COMPONENT: &str = "virtio-mem";

#[derive(Args)]
pub struct RestoreArgs {
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
    /// Plugged sizes in GiB.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    plugged_gib: Vec<u64>,
    /// Device region size in GiB.
    #[arg(long, default_value_t = 64)]
    region_gib: u64,
    /// Data written at the start of each plugged block, in KiB.
    #[arg(long, default_value_t = 64)]
    data_kib: u64,
    /// Restores per size and mode (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where to write the snapshots (a disk, not tmpfs: the files are sparse but large).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Eager restores only up to this plugged size (each one allocates the plugged size).
    #[arg(long, default_value_t = 4)]
    eager_max_gib: u64,
}

#[derive(Serialize)]
struct Row {
    vmm: &'static str,
    restore_memory: &'static str,
    region_bytes: u64,
    plugged_bytes: u64,
    file_data_bytes: u64,
    runs: usize,
    /// Wall time from the process start to `GET /v1/vm` reporting running.
    restore_ready_ms: f64,
    /// CPU time the restoring process used until then (all its threads): what the restore
    /// costs, whatever else the machine is doing.
    restore_cpu_ms: f64,
}

pub fn run(args: &RestoreArgs) -> Result<(), String> {
    if args.runs == 0 || args.plugged_gib.iter().any(|&g| g > args.region_gib) {
        return Err("--runs must be ≥ 1 and every plugged size ≤ the region".into());
    }
    let hotmem = build_hotmem()?;
    let kernel = find_kernel()?;
    let base = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("hotmem-bench-restore-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let result = measure(args, &hotmem, &kernel, &base);
    let _ = std::fs::remove_dir_all(&base);
    let rows = result?;
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).map_err(|e| e.to_string())?);
        }
    } else {
        println!(
            "restore_memory  plugged_GiB  file_data_MiB  restore_ready_ms  restore_cpu_ms \
             (medians of {})",
            args.runs
        );
        for r in &rows {
            println!(
                "{:<15} {:>11} {:>14} {:>17.1} {:>15.1}",
                r.restore_memory,
                r.plugged_bytes / GIB,
                r.file_data_bytes >> 20,
                r.restore_ready_ms,
                r.restore_cpu_ms
            );
        }
    }
    Ok(())
}

fn measure(
    args: &RestoreArgs,
    hotmem: &Path,
    kernel: &Path,
    base: &Path,
) -> Result<Vec<Row>, String> {
    let region = args.region_gib * GIB;
    let template = base.join("template");
    take_snapshot(hotmem, kernel, region, &template)?;
    let mut rows = Vec::new();
    for &gib in &args.plugged_gib {
        let dir = base.join(format!("plugged-{gib}g"));
        let data = make_plugged(&template, &dir, gib * GIB, args.data_kib << 10)?;
        for mode in ["lazy", "eager"] {
            if mode == "eager" && gib > args.eager_max_gib {
                continue;
            }
            let mut samples = Vec::new();
            for _ in 0..args.runs {
                samples.push(time_restore(hotmem, &dir, mode)?);
            }
            let median = |pick: fn(&(f64, f64)) -> f64| {
                let mut v: Vec<f64> = samples.iter().map(pick).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            rows.push(Row {
                vmm: "hotmem",
                restore_memory: mode,
                region_bytes: region,
                plugged_bytes: gib * GIB,
                file_data_bytes: data,
                runs: samples.len(),
                restore_ready_ms: median(|s| s.0),
                restore_cpu_ms: median(|s| s.1),
            });
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(rows)
}

/// Starts hotmem (nothing plugged), pauses it and writes its snapshot to `dir`.
fn take_snapshot(hotmem: &Path, kernel: &Path, region: u64, dir: &Path) -> Result<(), String> {
    let sock = dir.with_extension("sock");
    let _ = std::fs::remove_file(&sock);
    let mut command = hotmem_command(hotmem, kernel, region, &sock);
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start hotmem: {e}"))?;
    let mut child = KillOnDrop(child);
    wait_running(&sock, &mut child)?;
    let (status, body) = http(&sock, "PUT", "/v1/vm/pause", "")?;
    if status / 100 != 2 {
        return Err(format!("pause: {status} {body}"));
    }
    let request = serde_json::json!({ "destination": dir }).to_string();
    let (status, body) = http(&sock, "PUT", "/v1/vm/snapshot", &request)?;
    if status / 100 != 2 {
        return Err(format!("snapshot: {status} {body}"));
    }
    drop(child);
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

/// A copy of the snapshot in `template` whose device has its first `plugged` bytes plugged,
/// each plugged block holding `data_per_block` bytes of data; returns the data written.
fn make_plugged(
    template: &Path,
    dir: &Path,
    plugged: u64,
    data_per_block: u64,
) -> Result<u64, String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{}: {what}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(|e| err("mkdir", &e))?;
    let status = Command::new("cp")
        .args(["-r", "--sparse=always", "-T"])
        .arg(template)
        .arg(dir)
        .status()
        .map_err(|e| err("cp", &e))?;
    if !status.success() {
        return Err(err("cp", &status));
    }
    let snap = SnapshotDir::new(dir);
    let decoded = snap.read_state().map_err(|e| err("state", &e))?;
    let written_by = decoded.hotmem_version;
    let mut vm = decoded.snapshot;
    let device = vm.devices.first_mut().ok_or("the snapshot has no device")?;
    let index = device
        .components
        .iter()
        .position(|c| c.name == MEM_DEVICE_COMPONENT)
        .ok_or("no virtio-mem component")?;
    let (version, mut state): (u32, DeviceState) = device.components[index]
        .decode(MEM_DEVICE_COMPONENT, 1..=1)
        .map_err(|e| err("device state", &e))?;
    let block = state.block_size_bytes;
    let blocks = plugged / block;
    state.requested_size_bytes = plugged;
    state.plugged_size_bytes = blocks * block;
    state.usable_region_size_bytes = state.region_size_bytes;
    state.plugged_runs = if blocks == 0 {
        Vec::new()
    } else {
        vec![BlockRun {
            first_block: 0,
            block_count: blocks,
        }]
    };
    device.components[index] = Component::encode(MEM_DEVICE_COMPONENT, version, &state)
        .map_err(|e| err("device state", &e))?;
    let id = device.id.clone();
    let region = vm
        .memory
        .regions
        .iter_mut()
        .find(|r| r.name == id)
        .ok_or("no memory file for the device")?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(&region.file_name))
        .map_err(|e| err("memory file", &e))?;
    let chunk = vec![0xA5u8; data_per_block.min(block) as usize];
    for b in 0..blocks {
        file.write_all_at(&chunk, b * block)
            .map_err(|e| err("memory file", &e))?;
    }
    file.sync_all().map_err(|e| err("memory file", &e))?;
    let data = blocks * chunk.len() as u64;
    region.data_bytes = data;
    snap.write_state(&vm, &written_by)
        .map_err(|e| err("state", &e))?;
    Ok(data)
}

/// Milliseconds from `hotmem --restore DIR --resume` to the VM reported running, and the CPU
/// milliseconds the process used until then.
fn time_restore(hotmem: &Path, dir: &Path, mode: &str) -> Result<(f64, f64), String> {
    let sock = dir.with_extension("sock");
    let _ = std::fs::remove_file(&sock);
    // Let the previous process's memory go back first.
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let child = Command::new(hotmem)
        .arg("--restore")
        .arg(dir)
        .args([
            "--resume",
            "--restore-memory",
            mode,
            "--serial",
            "file=/dev/null",
        ])
        .arg("--api-socket")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start hotmem --restore: {e}"))?;
    let mut child = KillOnDrop(child);
    wait_running(&sock, &mut child)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let cpu_ms = cpu_ns(child.0.id())? as f64 / 1e6;
    drop(child);
    let _ = std::fs::remove_file(&sock);
    Ok((ms, cpu_ms))
}

/// CPU time of every live thread of process `pid` (`/proc/PID/task/*/schedstat`, first field).
fn cpu_ns(pid: u32) -> Result<u64, String> {
    let tasks = format!("/proc/{pid}/task");
    let mut total = 0u64;
    for entry in std::fs::read_dir(&tasks).map_err(|e| format!("{tasks}: {e}"))? {
        let path = entry.map_err(|e| e.to_string())?.path().join("schedstat");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        total += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

fn wait_running(sock: &Path, child: &mut KillOnDrop) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!("hotmem exited early ({status})"));
        }
        if let Ok((200, body)) = http(sock, "GET", "/v1/vm", "")
            && serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|vm| vm["state"] == "running")
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Err(format!("hotmem was not running within {READY_TIMEOUT:?}"))
}

/// One HTTP/1.1 request over the API socket: (status, body).
fn http(sock: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut stream = UnixStream::connect(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no HTTP status")?;
    Ok((status, body.trim().to_string()))
}
