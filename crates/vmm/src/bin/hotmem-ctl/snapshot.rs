//! `hotmem-ctl snapshot DIR [--resume]`: pause, snapshot with a progress bar, resume if asked.

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use api::client::Client;
use api::model::{MemoryDeviceList, SnapshotAnswer, VmInfo, VmState};
use api::size::format_size_approx;

use super::{call, chain, parse, refusal};

/// How long the snapshot request may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Pauses the VM if it runs, writes the snapshot to `dir` (a progress bar on a terminal shows
/// the memory files growing against boot RAM plus plugged memory), and resumes it if `resume`
/// (or if it was running and `resume`; a VM that was paused before stays paused unless asked).
pub fn run(client: &Client, dir: &Path, resume: bool) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let vm: VmInfo = parse(&call(client, "GET", "/v1/vm", None)?)?;
    if vm.state == VmState::Running {
        call(client, "PUT", "/v1/vm/pause", None)?;
        eprintln!("paused");
    }
    let devices: MemoryDeviceList = parse(&call(client, "GET", "/v1/memory-devices", None)?)?;
    let at_most = vm.boot_memory_bytes
        + devices
            .memory_devices
            .iter()
            .map(|d| d.plugged_bytes)
            .sum::<u64>();
    let body = serde_json::json!({ "destination": dir.display().to_string() }).to_string();
    let snapshotter = client.clone().with_timeout(SNAPSHOT_TIMEOUT);
    let worker =
        std::thread::spawn(move || snapshotter.request("PUT", "/v1/vm/snapshot", Some(&body)));
    let bar = std::io::stderr().is_terminal();
    while !worker.is_finished() {
        if bar {
            eprint!("\r{}", progress_line(allocated_bytes(&dir), at_most));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let answer = worker
        .join()
        .map_err(|_| "the snapshot thread panicked".to_string())?
        .map_err(|e| chain(&e))?;
    if bar {
        eprintln!("\r{}", progress_line(allocated_bytes(&dir), at_most));
    }
    if answer.status != 200 {
        return Err(format!("snapshot: {}", refusal(&answer)));
    }
    let done: SnapshotAnswer = parse(&answer)?;
    println!(
        "snapshot {}: {} of memory written ({} examined) in {:.1} s",
        done.destination,
        format_size_approx(done.memory_data_bytes),
        format_size_approx(done.memory_scanned_bytes),
        done.duration_ms as f64 / 1000.0
    );
    if resume {
        call(client, "PUT", "/v1/vm/resume", None)?;
        eprintln!("resumed");
    }
    Ok(())
}

/// Bytes allocated by the memory files in `dir` (holes excluded).
fn allocated_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("memory-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// `[#######-------]  1.2G written (at most 3G)`.
fn progress_line(written: u64, at_most: u64) -> String {
    const WIDTH: u64 = 30;
    let filled = (written.min(at_most) * WIDTH)
        .checked_div(at_most)
        .unwrap_or(WIDTH);
    let filled = usize::try_from(filled).unwrap_or(0);
    format!(
        "[{}{}] {:>8} written (at most {})",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled),
        format_size_approx(written),
        format_size_approx(at_most)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_written_against_the_most_there_can_be() {
        assert!(progress_line(0, 4 << 30).starts_with("[------"));
        let half = progress_line(2 << 30, 4 << 30);
        assert!(half.starts_with(&format!("[{}-", "#".repeat(15))), "{half}");
        assert!(progress_line(5 << 30, 4 << 30).starts_with(&format!("[{}]", "#".repeat(30))));
    }
}
