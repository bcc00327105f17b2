//! `cargo xtask demo`: boots a stock Debian guest under hotmem and resizes its memory live,
//! 1 GiB → 4 GiB → 1 GiB, printing each timeline line as it happens.
//!
//! Where the host CPU has hardware virtualization (vmx/svm), hotmem runs the guest directly
//! ([`direct`]); otherwise (as on machines whose KVM only emulates guest code) the guest runs
//! inside the nested harness: L0 QEMU (TCG) → L1 Linux with KVM → hotmem → L2 Linux.

mod direct;
mod live;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

use crate::e2e::l0::{self, L0Run};
use crate::e2e::scenario;
use crate::e2e::serial::{SerialLine, parse_line};
use crate::e2e::timeline::Timeline;
use crate::guest::{self, GuestPaths, Vmm};
use live::{LiveTimeline, Screen};

/// What the guest fills between the grow and the shrink: enough to show host memory move.
/// Linux uses freshly plugged memory last, so the fill must outgrow boot memory and the first
/// GiB before it touches blocks the shrink unplugs.
const DEMO_FILL_MIB: u64 = 1536;
/// The demo's L0 is stopped after this long.
const DEMO_TIMEOUT: Duration = Duration::from_secs(300);

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
        let mut live = LiveTimeline::default();
        println!("{}", live::header());
        for line in console.lines() {
            if let SerialLine::Event(e) = parse_line(line)
                && let Some(text) = live.feed(&e)
            {
                println!("{text}");
            }
        }
        println!("summary: {}", live.summary()?);
        return Ok(());
    }
    if !args.nested && host_has_hardware_virtualization() {
        println!(
            "demo: this host has hardware virtualization: running the guest directly under hotmem"
        );
        direct::run()
    } else {
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
    println!(
        "demo: hotmem boots a stock Debian 6.1 guest with 512 MiB of boot memory and a 64 GiB \
         virtio-mem device,\n      \
         then resizes the device live: 1 GiB → 4 GiB, the guest fills {DEMO_FILL_MIB} MiB and \
         deletes it, → 1 GiB.\n      \
         You will see the guest's MemTotal, the plugged bytes, the KVM memslots hotmem maps and \
         the host memory\n      \
         (hotmem's RSS, L1's free memory) follow each step.\n      \
         This host's KVM has no vmx/svm, so the guest runs nested: L0 QEMU (TCG) → L1 Debian + \
         KVM → hotmem → L2 Debian.\n      \
         It takes about 1–2 minutes here (plus a few minutes on the first run to download \
         Debian packages and build hotmem)."
    );
    let paths = GuestPaths::new();
    let started = Instant::now();
    println!("… preparing guest images and hotmem (reused after the first run)");
    let image = guest::build_images(&paths, guest::DEFAULT_KERNEL_PACKAGE, Vmm::Hotmem)?;
    println!(
        "… images ready after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let log_dir = paths.workspace().join("target/e2e");
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let console_log = log_dir.join(format!("demo-{}.log", std::process::id()));
    let spec = L0Run {
        image: &image,
        cmdline_extra: format!("hm.scenario=grow-shrink hm.vmm=hotmem hm.fill_mib={DEMO_FILL_MIB}"),
        console_log: console_log.clone(),
        timeout: DEMO_TIMEOUT,
        memory: "4G",
    };
    let screen = Screen::start("booting L1 (Debian + KVM) under QEMU TCG");
    screen.line(&live::header());
    let mut live = LiveTimeline::default();
    let booted = Instant::now();
    let outcome = std::thread::scope(|scope| {
        let l0 = scope.spawn(|| l0::run(&spec));
        let mut tail = LogTail::default();
        loop {
            let finished = l0.is_finished();
            for line in tail.read_new_lines(&console_log) {
                if let SerialLine::Event(e) = parse_line(&line) {
                    if let Some(phase) = LiveTimeline::phase(&e) {
                        screen.phase(&phase);
                    }
                    if let Some(text) = live.feed(&e) {
                        screen.line(&text);
                    }
                }
            }
            if finished {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        l0.join()
            .map_err(|_| "the L0 thread panicked".to_string())?
    });
    screen.finish();
    let outcome = outcome?;
    println!(
        "(slots = KVM memslots hotmem maps; VMM_RSS and L1_free are measured in L1, hotmem's host)"
    );
    let timeline = Timeline::parse(&outcome.console);
    let (mut failures, _) = scenario::check("grow-shrink", Vmm::Hotmem, &timeline);
    if outcome.timed_out {
        failures.insert(0, format!("stopped after {DEMO_TIMEOUT:?}"));
    }
    if !failures.is_empty() {
        return Err(format!(
            "the demo run failed (console log {}): {}",
            console_log.display(),
            failures.join("; ")
        ));
    }
    println!("summary: {}", live.summary()?);
    println!(
        "demo: done in {:.0} s (guest run {:.0} s; console log {})",
        started.elapsed().as_secs_f64(),
        booted.elapsed().as_secs_f64(),
        console_log.display()
    );
    Ok(())
}

/// Reads the lines a growing file gained since the last call.
#[derive(Default)]
struct LogTail {
    offset: u64,
    partial: String,
}

impl LogTail {
    fn read_new_lines(&mut self, path: &Path) -> Vec<String> {
        let Ok(mut file) = std::fs::File::open(path) else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let complete: String = self.partial.drain(..=end).collect();
        complete.lines().map(str::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_log_tail_returns_each_complete_line_once() {
        let path = std::env::temp_dir().join(format!("hotmem-tail-{}", std::process::id()));
        let mut file = std::fs::File::create(&path).unwrap();
        let mut tail = LogTail::default();
        write!(file, "one\ntw").unwrap();
        assert_eq!(tail.read_new_lines(&path), vec!["one"]);
        write!(file, "o\nthree\n").unwrap();
        assert_eq!(tail.read_new_lines(&path), vec!["two", "three"]);
        assert!(tail.read_new_lines(&path).is_empty());
        let _ = std::fs::remove_file(&path);
    }
}
