//! Benchmarks run inside the nested L1, whose KVM (kvm_amd, npt=1) uses the TDP MMU, unlike this
//! machine's: the same xtask binary, built static and put in the L1 image, runs the benchmark
//! there with `--json`, and each row comes back over the console as a `bench_row` event.

use std::time::Duration;

use crate::e2e::l0::{self, L0Run};
use crate::e2e::serial::{SerialLine, Source, parse_line};
use crate::guest::{self, GuestPaths, Vmm};

const BENCH_TIMEOUT: Duration = Duration::from_secs(900);

/// Runs `cargo xtask bench <args> --json` in L1 and prints its rows (JSON lines, or a table of
/// the JSON fields). Fails when L1 produced no row or reported an error.
pub fn run(args: &[&str], json: bool) -> Result<(), String> {
    let paths = GuestPaths::new();
    let image = guest::build_images(&paths, guest::DEFAULT_KERNEL_PACKAGE, Vmm::Hotmem)?;
    let log_dir = paths.workspace().join("target/e2e");
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let console_log = log_dir.join(format!("bench-{}-{}.log", args[0], std::process::id()));
    eprintln!(
        "== running `xtask bench {}` in the nested L1 (console: {})",
        args.join(" "),
        console_log.display()
    );
    let outcome = l0::run(&L0Run {
        image: &image,
        cmdline_extra: format!(
            "hm.scenario=bench hm.vmm=hotmem hm.bench={}",
            args.join(",")
        ),
        console_log: console_log.clone(),
        timeout: BENCH_TIMEOUT,
        memory: "4G",
    })?;
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for line in outcome.console.lines() {
        let SerialLine::Event(e) = parse_line(line) else {
            continue;
        };
        match (e.source, e.key.as_str()) {
            (Source::L1, "bench_row") => {
                let row: serde_json::Value = serde_json::from_str(&e.rest)
                    .map_err(|err| format!("L1 bench row is not JSON ({err}): {}", e.rest))?;
                rows.push(row);
            }
            (Source::L1, "bench_error" | "error") => errors.push(e.rest.clone()),
            _ => {}
        }
    }
    if !errors.is_empty() || rows.is_empty() || outcome.timed_out {
        return Err(format!(
            "the nested benchmark failed{}: {} (console {})",
            if outcome.timed_out {
                " (timed out)"
            } else {
                ""
            },
            if errors.is_empty() {
                "no rows".to_string()
            } else {
                errors.join("; ")
            },
            console_log.display()
        ));
    }
    for row in &rows {
        if json {
            println!("{row}");
        } else {
            let fields: Vec<String> = row
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("{}", fields.join(" "));
        }
    }
    Ok(())
}
