//! One L0 boot: QEMU with TCG emulating an SVM-capable EPYC, running L1 from the image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::guest::L1Image;

/// What to boot and where to keep its console.
pub struct L0Run<'a> {
    pub image: &'a L1Image,
    /// Extra L1 kernel command line words (the scenario and VMM selection).
    pub cmdline_extra: String,
    pub console_log: PathBuf,
    pub timeout: Duration,
    /// L0's memory as QEMU's `-m` takes it (`4G`).
    pub memory: &'a str,
}

/// How an L0 boot ended.
pub struct L0Outcome {
    pub console: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

/// Boots L0 and waits for it to power off (or kills it at the timeout).
pub fn run(spec: &L0Run) -> Result<L0Outcome, String> {
    let log = std::fs::File::create(&spec.console_log)
        .map_err(|e| format!("{}: {e}", spec.console_log.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let append = format!(
        "console=ttyS0 quiet loglevel=3 panic=-1 {}",
        spec.cmdline_extra
    );
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "EPYC,+svm,+npt",
            "-m",
            spec.memory,
            "-smp",
            "1",
        ])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&spec.image.vmlinuz)
        .arg("-initrd")
        .arg(&spec.image.initramfs)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot start L0 qemu-system-x86_64: {e}"))?;
    let mut timed_out = false;
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(_) => break,
            None if started.elapsed() > spec.timeout => {
                timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            None => std::thread::sleep(Duration::from_millis(250)),
        }
    }
    let console = read_lossy(&spec.console_log)?;
    Ok(L0Outcome {
        console,
        elapsed: started.elapsed(),
        timed_out,
    })
}

fn read_lossy(path: &Path) -> Result<String, String> {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .map_err(|e| format!("{}: {e}", path.display()))
}
