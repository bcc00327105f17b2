//! `cargo xtask e2e`: every scenario in its own nested L0 → L1 (VMM) → L2 (Linux) boot.

mod bounds;
mod catalog;
mod events_check;
pub mod l0;
mod migrate_check;
mod numa_check;
pub mod report;
pub mod scenario;
pub mod serial;
mod snapshot_check;
pub mod timeline;
mod vhost_check;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use clap::Args;

use crate::guest::{self, GuestPaths, L1Image, Vmm};
use report::{RunResult, Verdict};
use timeline::Timeline;

/// How long one scenario's L0 may run.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(480);
/// No scenario starts after this long, so a hanging VMM cannot push CI past its limit.
const STAGE_DEADLINE: Duration = Duration::from_secs(35 * 60);
/// Lines of each log printed for a failed run.
const LOG_TAIL_LINES: usize = 40;

#[derive(Args, Clone)]
pub struct E2eArgs {
    /// The VMM to run the scenarios against (default: QEMU; with --compare: both).
    #[arg(long, value_enum)]
    pub vmm: Option<Vmm>,
    /// Run only this scenario (default: all).
    #[arg(long)]
    pub scenario: Option<String>,
    /// Debian kernel package for the L2 guest (legacy-guest always uses bullseye's 5.10).
    #[arg(long, default_value = guest::DEFAULT_KERNEL_PACKAGE)]
    pub kernel_package: String,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run both VMMs and print them side by side.
    #[arg(long)]
    pub compare: bool,
    /// L0 machines run at once.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Full tier: full-size workloads where CI runs smaller ones (vhost-user writes 1.5 GiB
    /// instead of 256 MiB).
    #[arg(long)]
    pub full: bool,
    /// hotmem's `--seccomp` in L1 (kill, log or off; default: hotmem's own default, kill).
    /// Either way a call outside a thread's allow list fails the scenario: L1 reports the
    /// kernel's seccomp audit lines (`dmesg`, type=1326) at the end of every scenario.
    #[arg(long)]
    pub seccomp: Option<String>,
}

impl E2eArgs {
    /// Every scenario against QEMU and hotmem, compared.
    pub fn all_vmms() -> Self {
        E2eArgs {
            vmm: None,
            scenario: None,
            kernel_package: guest::DEFAULT_KERNEL_PACKAGE.into(),
            json: false,
            compare: true,
            jobs: 2,
            full: false,
            seccomp: None,
        }
    }
}

/// One scenario run to do.
struct Job {
    vmm: Vmm,
    scenario: &'static str,
    image_key: (Vmm, bool),
    full: bool,
    /// hotmem's `--seccomp`, when not the default.
    seccomp: Option<String>,
}

fn selected_scenarios(args: &E2eArgs) -> Result<Vec<&'static str>, String> {
    match &args.scenario {
        None => Ok(scenario::SCENARIOS.to_vec()),
        Some(name) => scenario::SCENARIOS
            .iter()
            .find(|s| **s == name.as_str())
            .map(|s| vec![*s])
            .ok_or_else(|| format!("unknown scenario {name}; known: {:?}", scenario::SCENARIOS)),
    }
}

/// Runs the selected scenarios; returns every result (also the skipped ones).
pub fn run_scenarios(args: &E2eArgs) -> Result<Vec<RunResult>, String> {
    let paths = GuestPaths::new();
    let scenarios = selected_scenarios(args)?;
    let vmms = match (args.compare, args.vmm) {
        (true, _) => vec![Vmm::Qemu, Vmm::Hotmem],
        (false, Some(v)) => vec![v],
        (false, None) => vec![Vmm::Qemu],
    };
    let mut results = Vec::new();
    let mut jobs = Vec::new();
    for &vmm in &vmms {
        for &scenario in &scenarios {
            if vmm != Vmm::Hotmem && scenario::hotmem_only(scenario) {
                results.push(not_applicable(vmm, scenario));
                continue;
            }
            if !args.full && args.scenario.is_none() && scenario::full_tier_only(scenario, vmm) {
                results.push(RunResult {
                    verdict: Verdict::FullTierOnly,
                    failures: vec!["slow reference run: cargo xtask e2e --full".into()],
                    ..not_applicable(vmm, scenario)
                });
                continue;
            }
            let legacy = scenario::uses_legacy_kernel(scenario);
            jobs.push(Job {
                vmm,
                scenario,
                image_key: (vmm, legacy),
                full: args.full,
                seccomp: args.seccomp.clone(),
            });
        }
    }
    let mut images: HashMap<(Vmm, bool), Result<L1Image, String>> = HashMap::new();
    for job in &jobs {
        if images.contains_key(&job.image_key) {
            continue;
        }
        let (vmm, legacy) = job.image_key;
        let kernel = if legacy {
            guest::LEGACY_KERNEL_PACKAGE
        } else {
            &args.kernel_package
        };
        let image = guest::build_images(&paths, kernel, vmm);
        if let (Vmm::Qemu, Err(e)) = (vmm, &image) {
            // Without the reference VMM's image nothing can be judged.
            return Err(e.clone());
        }
        images.insert(job.image_key, image);
    }
    // One directory per run: runs started side by side must not share console logs.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let log_dir = paths
        .workspace()
        .join(format!("target/e2e/run-{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let queue = Mutex::new(jobs.into_iter());
    let done = Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.max(1) {
            scope.spawn(|| {
                // The closure consumes the guard: the lock is not held while a job runs.
                while let Some(job) = queue.lock().map(|mut q| q.next()).ok().flatten() {
                    let result = match &images[&job.image_key] {
                        _ if started.elapsed() > STAGE_DEADLINE => failed(
                            &job,
                            format!("not started: the e2e stage ran past {STAGE_DEADLINE:?}"),
                        ),
                        Ok(image) => run_with_retry(&job, image, &log_dir),
                        Err(e) => failed(&job, format!("building the image failed: {e}")),
                    };
                    eprintln!(
                        "== e2e {} {}: {} ({:.0} s)",
                        result.vmm,
                        result.scenario,
                        result.verdict.label(),
                        result.duration_s
                    );
                    if let Ok(mut done) = done.lock() {
                        done.push(result);
                    }
                }
            });
        }
    });
    results.extend(done.into_inner().unwrap_or_default());
    let order = |r: &RunResult| {
        let s = scenario::SCENARIOS.iter().position(|s| *s == r.scenario);
        (s, r.vmm != "qemu")
    };
    results.sort_by_key(order);
    Ok(results)
}

fn not_applicable(vmm: Vmm, scenario: &str) -> RunResult {
    RunResult {
        vmm: vmm.name().into(),
        scenario: scenario.into(),
        verdict: Verdict::NotApplicable,
        failures: vec!["hotmem's own interface".into()],
        attempts: 0,
        first_attempt_failures: Vec::new(),
        duration_s: 0.0,
        metrics: scenario::Metrics::default(),
    }
}

fn failed(job: &Job, why: String) -> RunResult {
    RunResult {
        vmm: job.vmm.name().into(),
        scenario: job.scenario.into(),
        verdict: Verdict::Fail,
        failures: vec![why],
        attempts: 0,
        first_attempt_failures: Vec::new(),
        duration_s: 0.0,
        metrics: scenario::Metrics::default(),
    }
}

/// Runs a job; a failed run is run once more, because nested guests under TCG on 2 shared cores
/// occasionally stall for tens of seconds. The first attempt's failures are printed, not hidden.
fn run_with_retry(job: &Job, image: &L1Image, log_dir: &std::path::Path) -> RunResult {
    let log =
        |attempt: u32| log_dir.join(format!("{}-{}-{attempt}.log", job.vmm.name(), job.scenario));
    let first = run_one(job, image, log(1));
    if first.failures.is_empty() {
        return first;
    }
    eprintln!(
        "== e2e {} {}: attempt 1 failed ({}); console {}; running it once more",
        first.vmm,
        first.scenario,
        first.failures.join("; "),
        log(1).display()
    );
    let mut second = run_one(job, image, log(2));
    second.attempts = 2;
    if second.failures.is_empty() {
        second.first_attempt_failures = first.failures;
    } else {
        second.failures.insert(
            0,
            format!(
                "both attempts failed; the first: {}",
                first.failures.join("; ")
            ),
        );
    }
    second
}

fn run_one(job: &Job, image: &L1Image, console_log: PathBuf) -> RunResult {
    let spec = l0::L0Run {
        image,
        cmdline_extra: format!(
            "hm.scenario={} hm.vmm={}{}{}",
            job.scenario,
            job.vmm.name(),
            job.seccomp
                .as_deref()
                .map(|m| format!(" hm.seccomp={m}"))
                .unwrap_or_default(),
            if job.full { " hm.full=1" } else { "" }
        ),
        console_log: console_log.clone(),
        timeout: scenario::timeout(job.scenario).unwrap_or(SCENARIO_TIMEOUT),
        memory: Some(scenario::l1_memory(job.scenario)),
    };
    let (mut failures, metrics, duration_s) = match l0::run(&spec) {
        Err(e) => (vec![e], scenario::Metrics::default(), 0.0),
        Ok(outcome) => {
            let timeline = Timeline::parse(&outcome.console);
            let (mut failures, metrics) = scenario::check(job.scenario, job.vmm, &timeline);
            if outcome.timed_out {
                failures.insert(0, format!("L0 timed out after {:?}", spec.timeout));
            }
            if !failures.is_empty() {
                failures.push(format!(
                    "console: {}\n--- last events ---\n{}\n--- guest (L2) log tail ---\n{}\n--- VMM log tail ---\n{}\n--- L1 log tail ---\n{}",
                    console_log.display(),
                    timeline.event_tail(LOG_TAIL_LINES / 4),
                    Timeline::tail(&timeline.guest_log, LOG_TAIL_LINES),
                    Timeline::tail(&timeline.vmm_log, LOG_TAIL_LINES),
                    Timeline::tail(&timeline.host_log, LOG_TAIL_LINES),
                ));
            }
            (failures, metrics, outcome.elapsed.as_secs_f64())
        }
    };
    failures.shrink_to_fit();
    RunResult {
        vmm: job.vmm.name().into(),
        scenario: job.scenario.into(),
        verdict: if failures.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        failures,
        attempts: 1,
        first_attempt_failures: Vec::new(),
        duration_s,
        metrics,
    }
}

/// Prints results; fails when any run failed.
pub fn report(args: &E2eArgs, results: &[RunResult]) -> Result<(), String> {
    if args.json {
        let json = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
        println!("{json}");
    }
    if args.compare || !args.json {
        eprint!("{}", report::comparison_table(results));
    }
    let failed: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.verdict == Verdict::Fail)
        .collect();
    for r in &failed {
        eprintln!(
            "\n=== {} {} FAILED ===\n{}",
            r.vmm,
            r.scenario,
            r.failures.join("\n")
        );
    }
    let passed = results
        .iter()
        .filter(|r| r.verdict == Verdict::Pass)
        .count();
    let retried: Vec<String> = results
        .iter()
        .filter(|r| r.verdict == Verdict::Pass && r.attempts > 1)
        .map(|r| format!("{} {}", r.vmm, r.scenario))
        .collect();
    let full_tier = results
        .iter()
        .filter(|r| r.verdict == Verdict::FullTierOnly)
        .count();
    let not_applicable = results.len() - passed - failed.len() - full_tier;
    let summary = format!(
        "e2e: {passed} passed ({} only on a second attempt{}), {} failed, {not_applicable} n/a, \
         {full_tier} left to the full tier (e2e --full)",
        retried.len(),
        if retried.is_empty() {
            String::new()
        } else {
            format!(": {}", retried.join(", "))
        },
        failed.len()
    );
    // With --json, standard output carries only the JSON document.
    if args.json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} end-to-end scenario(s) failed", failed.len()))
    }
}

pub fn run(args: &E2eArgs) -> Result<(), String> {
    let results = run_scenarios(args)?;
    report(args, &results)
}
