//! `cargo xtask fuzz`: build the libFuzzer targets in `fuzz/` and run each for a while.
//!
//! Uses `cargo fuzz` (installed from crates.io when missing) on the nightly toolchain when
//! rustup has one, otherwise on the current toolchain with `RUSTC_BOOTSTRAP=1` (libFuzzer's
//! instrumentation needs `-Z` flags). New inputs go to `target/fuzz-corpus/<target>/`; the
//! committed seeds in `fuzz/corpus/<target>/` are only read. A crash fails the run and names
//! the reproducer under `fuzz/artifacts/<target>/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;

/// Every fuzz target, in the order they run.
pub const TARGETS: &[&str] = &[
    "virtio_mem_device",
    "virtio_mem_queue",
    "virtio_pci",
    "api_request",
    "mem_device_option",
    "snapshot_reader",
];

#[derive(Args, Clone)]
pub struct FuzzArgs {
    /// Seconds to run each target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Run only this target (repeatable); default: all of them.
    #[arg(long = "target")]
    pub targets: Vec<String>,
}

impl FuzzArgs {
    /// Every target for `seconds` each.
    pub fn all(seconds: u64) -> Self {
        FuzzArgs {
            seconds,
            targets: Vec::new(),
        }
    }
}

/// How `cargo fuzz` is invoked.
struct Toolchain {
    /// `+nightly` or nothing.
    plus: Option<&'static str>,
    /// Whether `RUSTC_BOOTSTRAP=1` is needed.
    bootstrap: bool,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The rustup proxy `cargo` (so `+nightly` works), not the toolchain binary in `$CARGO`.
fn cargo_proxy(toolchain: &Toolchain) -> Command {
    let mut cmd = Command::new("cargo");
    if let Some(plus) = toolchain.plus {
        cmd.arg(plus);
    }
    if toolchain.bootstrap {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    cmd.env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

fn pick_toolchain() -> Toolchain {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if nightly {
        Toolchain {
            plus: Some("+nightly"),
            bootstrap: false,
        }
    } else {
        eprintln!("== fuzz: no nightly toolchain; using this one with RUSTC_BOOTSTRAP=1");
        Toolchain {
            plus: None,
            bootstrap: true,
        }
    }
}

fn ensure_cargo_fuzz() -> Result<(), String> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    crate::test::run_step(
        "install cargo-fuzz",
        Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]),
    )
}

/// `stat::number_of_executed_units: N` from libFuzzer's final stats.
fn executed_units(log: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The reproducer libFuzzer wrote, if any.
fn artifact(log: &str) -> Option<&str> {
    log.lines()
        .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
}

fn run_target(toolchain: &Toolchain, target: &str, seconds: u64) -> Result<u64, String> {
    let root = root();
    let scratch = root.join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let seeds = root.join("fuzz/corpus").join(target);
    let output = cargo_proxy(toolchain)
        .current_dir(root.join("fuzz"))
        .args(["fuzz", "run", "-O", "-a", target])
        .arg(&scratch)
        .arg(&seeds)
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-print_final_stats=1",
            "-rss_limit_mb=2048",
        ])
        .output()
        .map_err(|e| format!("fuzz {target}: cannot start cargo fuzz: {e}"))?;
    let log = String::from_utf8_lossy(&output.stderr);
    let log_path = root
        .join("target/fuzz-corpus")
        .join(format!("{target}.log"));
    let _ = std::fs::write(&log_path, log.as_bytes());
    if !output.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        eprintln!("{}", tail.join("\n"));
        return Err(format!(
            "fuzz {target} failed ({}); reproducer: {}; log: {}",
            output.status,
            artifact(&log).unwrap_or("none written"),
            log_path.display()
        ));
    }
    executed_units(&log).ok_or_else(|| {
        format!(
            "fuzz {target}: no execution count in the log {}",
            log_path.display()
        )
    })
}

pub fn run(args: &FuzzArgs) -> Result<(), String> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(t)) {
        return Err(format!(
            "unknown fuzz target {unknown}; targets: {}",
            TARGETS.join(", ")
        ));
    }
    ensure_cargo_fuzz()?;
    let toolchain = pick_toolchain();
    crate::test::run_step(
        "fuzz: build targets",
        cargo_proxy(&toolchain)
            .current_dir(root().join("fuzz"))
            .args(["fuzz", "build", "-O", "-a"]),
    )?;
    let mut results = Vec::new();
    for target in targets {
        eprintln!("== fuzz {target} for {} s", args.seconds);
        let execs = run_target(&toolchain, target, args.seconds)?;
        eprintln!("   {target}: {execs} executions, no crash");
        results.push((target, execs));
    }
    eprintln!("== fuzz summary ({} s per target)", args.seconds);
    for (target, execs) in results {
        eprintln!("   {target:<20} {execs:>12} execs");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_give_the_execution_count() {
        let log = "#1 INITED\nDone 123 runs in 2 second(s)\nstat::number_of_executed_units: 4567\nstat::average_exec_per_sec:     2283\n";
        assert_eq!(executed_units(log), Some(4567));
        assert_eq!(executed_units("no stats"), None);
    }

    #[test]
    fn the_crash_reproducer_path_is_found() {
        let log = "==1== ERROR: libFuzzer: deadly signal\nartifact_prefix='x/'; Test unit written to fuzz/artifacts/api_request/crash-abc\nBase64: AA==";
        assert_eq!(artifact(log), Some("fuzz/artifacts/api_request/crash-abc"));
    }

    #[test]
    fn every_target_has_a_source_file_and_seeds() {
        for target in TARGETS {
            let src = root()
                .join("fuzz/fuzz_targets")
                .join(format!("{target}.rs"));
            assert!(src.is_file(), "{}", src.display());
            let seeds = root().join("fuzz/corpus").join(target);
            assert!(
                std::fs::read_dir(&seeds).is_ok_and(|mut d| d.next().is_some()),
                "{} has no seeds",
                seeds.display()
            );
        }
    }
}
