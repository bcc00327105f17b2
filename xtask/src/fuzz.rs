//! `cargo xtask fuzz`: build the libFuzzer targets in `fuzz/` and run each for a while.
//!
//! Uses `cargo fuzz` (installed from crates.io when missing) on the nightly toolchain when
//! rustup has one, otherwise on the current toolchain with `RUSTC_BOOTSTRAP=1` (libFuzzer's
//! instrumentation needs `-Z` flags). New inputs go to `target/fuzz-corpus/<target>/`; the
//! committed seeds in `fuzz/corpus/<target>/` are only read. A crash fails the run and names
//! the reproducer under `fuzz/artifacts/<target>/`.

use std::path::PathBuf;
use std::process::Command;

use clap::Args;

/// The fuzz crate's manifest (outside the workspace, so `cargo test --workspace` skips it).
/// The fuzz crate's manifest, in the workspace around the current directory.
pub fn manifest() -> PathBuf {
    root().join("fuzz/Cargo.toml")
}

/// Targets whose fuzzed code holds no `unsafe` (the virtio-mem device over the fake backend and
/// memory, the `--mem-device` parser): AddressSanitizer can find nothing there and costs them
/// about 2.7× in executions, so they run without it (coverage and trace-compares stay on).
/// The others reach unsafe code (vm-memory's guest memory, the socket server) and keep ASan.
/// `migration_incoming` reaches no unsafe code either but keeps ASan for its allocator hooks:
/// libFuzzer's `-malloc_limit_mb` (see [`MALLOC_LIMIT_MB`]) only works through them.
const WITHOUT_SANITIZER: &[&str] = &["virtio_mem_device", "mem_device_option"];

/// Targets whose single allocations are capped (libFuzzer reports a larger one as a crash):
/// the migration receiver must not let a length field from the peer reserve memory that never
/// arrives (a page batch of 256 pages is 1 MiB).
const MALLOC_LIMIT_MB: &[(&str, u32)] = &[("migration_incoming", 64)];

/// `cargo fuzz` options for `target`'s sanitizer; ASan-free builds get their own target folder so
/// the two kinds of build do not rebuild each other.
fn sanitizer_args(target: &str) -> Vec<String> {
    if WITHOUT_SANITIZER.contains(&target) {
        vec![
            "-s".into(),
            "none".into(),
            "--target-dir".into(),
            root().join("target/fuzz-nosan").display().to_string(),
        ]
    } else {
        Vec::new()
    }
}

/// Every fuzz target, in the order they run.
pub const TARGETS: &[&str] = &[
    "virtio_mem_device",
    "virtio_mem_queue",
    "virtio_pci",
    "api_request",
    "mem_device_option",
    "snapshot_reader",
    "migration_incoming",
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
    crate::workspace::root()
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

/// What libFuzzer's final stats (`-print_final_stats=1`) say about one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FinalStats {
    /// `stat::number_of_executed_units`.
    executions: u64,
    /// `stat::average_exec_per_sec`.
    execs_per_sec: u64,
}

/// The value of the last `stat::<name>: N` line.
fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("stat::")?
                .strip_prefix(name)?
                .strip_prefix(':')
        })
        .and_then(|v| v.trim().parse().ok())
}

fn final_stats(log: &str) -> Option<FinalStats> {
    Some(FinalStats {
        executions: stat(log, "number_of_executed_units")?,
        execs_per_sec: stat(log, "average_exec_per_sec")?,
    })
}

/// The summary table: target, executions, executions per second.
fn summary(results: &[(&str, FinalStats)]) -> String {
    let mut table = format!("   {:<20} {:>12} {:>10}\n", "target", "execs", "execs/s");
    for (target, stats) in results {
        table += &format!(
            "   {target:<20} {:>12} {:>10}\n",
            stats.executions, stats.execs_per_sec
        );
    }
    table
}

/// The reproducer libFuzzer wrote, if any.
fn artifact(log: &str) -> Option<&str> {
    log.lines()
        .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
}

fn run_target(toolchain: &Toolchain, target: &str, seconds: u64) -> Result<FinalStats, String> {
    let root = root();
    let scratch = root.join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let seeds = root.join("fuzz/corpus").join(target);
    let output = cargo_proxy(toolchain)
        .current_dir(root.join("fuzz"))
        .args(["fuzz", "run", "-O", "-a"])
        .args(sanitizer_args(target))
        .arg(target)
        .arg(&scratch)
        .arg(&seeds)
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-print_final_stats=1",
            "-rss_limit_mb=2048",
        ])
        .args(
            MALLOC_LIMIT_MB
                .iter()
                .filter(|(t, _)| *t == target)
                .map(|(_, mb)| format!("-malloc_limit_mb={mb}")),
        )
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
    final_stats(&log).ok_or_else(|| {
        format!(
            "fuzz {target}: no final stats (executions, exec/s) in the log {}",
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
        "fuzz: build targets (AddressSanitizer)",
        cargo_proxy(&toolchain)
            .current_dir(root().join("fuzz"))
            .args(["fuzz", "build", "-O", "-a"]),
    )?;
    for target in targets.iter().filter(|t| WITHOUT_SANITIZER.contains(t)) {
        crate::test::run_step(
            &format!("fuzz: build {target} (no sanitizer)"),
            cargo_proxy(&toolchain)
                .current_dir(root().join("fuzz"))
                .args(["fuzz", "build", "-O", "-a"])
                .args(sanitizer_args(target))
                .arg(target),
        )?;
    }
    let mut results = Vec::new();
    for target in targets {
        eprintln!("== fuzz {target} for {} s", args.seconds);
        let stats = run_target(&toolchain, target, args.seconds)?;
        eprintln!(
            "   {target}: {} executions ({}/s), no crash",
            stats.executions, stats.execs_per_sec
        );
        results.push((target, stats));
    }
    eprintln!("== fuzz summary ({} s per target)", args.seconds);
    eprint!("{}", summary(&results));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_give_the_execution_count_and_rate() {
        let log = "#1 INITED\nDone 123 runs in 2 second(s)\nstat::number_of_executed_units: 4567\nstat::average_exec_per_sec:     2283\nstat::new_units_added: 9\n";
        assert_eq!(
            final_stats(log),
            Some(FinalStats {
                executions: 4567,
                execs_per_sec: 2283
            })
        );
        assert_eq!(final_stats("no stats"), None);
        assert_eq!(
            final_stats("stat::number_of_executed_units: 1\n"),
            None,
            "no rate"
        );
    }

    #[test]
    fn the_summary_has_a_row_per_target_with_its_rate() {
        let table = summary(&[
            (
                "virtio_mem_device",
                FinalStats {
                    executions: 120000,
                    execs_per_sec: 4000,
                },
            ),
            (
                "api_request",
                FinalStats {
                    executions: 360000,
                    execs_per_sec: 12000,
                },
            ),
        ]);
        let rows: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                vec!["target", "execs", "execs/s"],
                vec!["virtio_mem_device", "120000", "4000"],
                vec!["api_request", "360000", "12000"],
            ]
        );
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
