//! Results of scenario runs: one line each, the side-by-side comparison and JSON.

use serde::Serialize;

use super::scenario::Metrics;

/// How one (VMM, scenario) run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// The scenario exercises hotmem's own interface; the other VMM has no counterpart.
    NotApplicable,
    /// A slow reference run that only `--full` (or naming the scenario) runs; not a pass.
    FullTierOnly,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::NotApplicable => "n/a (hotmem only)",
            Verdict::FullTierOnly => "not run (full tier: e2e --full)",
        }
    }
}

/// One run's result.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub vmm: String,
    pub scenario: String,
    pub verdict: Verdict,
    pub failures: Vec<String>,
    /// How many times the scenario ran (a failed run is run once more).
    pub attempts: u32,
    /// Failures of the first attempt when the scenario passed only on its second.
    pub first_attempt_failures: Vec<String>,
    pub duration_s: f64,
    pub metrics: Metrics,
}

/// The verdict, marked when it took a second attempt.
pub fn verdict_label(r: &RunResult) -> String {
    if r.verdict == Verdict::Pass && r.attempts > 1 {
        "pass (2nd try)".into()
    } else {
        r.verdict.label().into()
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.2}G", bytes as f64 / (1u64 << 30) as f64)
}

/// "1G:0.9s 4G:5.2s" for the resizes of one run.
pub fn settle_summary(metrics: &Metrics) -> String {
    if metrics.settles.is_empty() {
        return "-".into();
    }
    metrics
        .settles
        .iter()
        .map(|s| match s.settle_ms {
            Some(ms) => format!("{}:{:.1}s", gib(s.target_bytes), ms as f64 / 1000.0),
            None => format!("{}:never", gib(s.target_bytes)),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn opt<T: std::fmt::Display>(value: Option<T>, unit: &str) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v}{unit}"))
}

/// One table row per run, grouped by scenario, VMMs side by side.
pub fn comparison_table(results: &[RunResult]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<13} {:<7} {:<17} {:>7} {:>10} {:>11} {:>11} {:>10} {:>9}  {}\n",
        "scenario",
        "vmm",
        "result",
        "time",
        "slots b/pk",
        "L1 MemFree",
        "L1 vmalloc",
        "VMM RSS",
        "VMM own",
        "settle after resize (target:time)"
    ));
    let mut scenarios: Vec<&str> = Vec::new();
    for r in results {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    for scenario in scenarios {
        for r in results.iter().filter(|r| r.scenario == scenario) {
            let m = &r.metrics;
            out.push_str(&format!(
                "{:<13} {:<7} {:<17} {:>6.0}s {:>10} {:>11} {:>11} {:>10} {:>9}  {}\n",
                r.scenario,
                r.vmm,
                verdict_label(r),
                r.duration_s,
                format!(
                    "{}/{}",
                    opt(m.slots_mapped_at_boot, ""),
                    opt(m.slots_mapped_peak, "")
                ),
                opt(m.l1_memfree_delta_kib.map(|k| k / 1024), "M"),
                opt(m.l1_vmalloc_delta_kib.map(|k| k / 1024), "M"),
                opt(m.vmm_rss_kib_at_boot.map(|k| k / 1024), "M"),
                opt(m.vmm_own_kib_at_boot.map(|k| k / 1024), "M"),
                settle_summary(m),
            ));
        }
    }
    out.push_str(
        "slots b/pk: mapped after the boot plug / most at any snapshot (QEMU: memslot aliases; \
         - with static memslots). L1 MemFree: drop from before the VMM started to after the boot \
         plug; L1 vmalloc: VmallocUsed growth (KVM memslot metadata) over the same span; VMM RSS: \
         after the boot plug; VMM own: the part of it outside guest RAM mappings (mappings of \
         256 MiB or more). Settle: resize request to first guest MemTotal sample at the \
         target.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::scenario::Settle;

    fn result(vmm: &str, verdict: Verdict) -> RunResult {
        RunResult {
            vmm: vmm.into(),
            scenario: "grow-shrink".into(),
            verdict,
            failures: vec![],
            attempts: 1,
            first_attempt_failures: vec![],
            duration_s: 61.0,
            metrics: Metrics {
                settles: vec![
                    Settle {
                        target_bytes: 4 << 30,
                        settle_ms: Some(900),
                    },
                    Settle {
                        target_bytes: 1 << 30,
                        settle_ms: None,
                    },
                ],
                slots_mapped_at_boot: Some(4),
                ..Metrics::default()
            },
        }
    }

    #[test]
    fn table_puts_both_vmms_of_a_scenario_together() {
        let table = comparison_table(&[
            result("qemu", Verdict::Pass),
            result("hotmem", Verdict::NotApplicable),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[1].contains("qemu") && lines[1].contains("pass"));
        assert!(lines[2].contains("n/a (hotmem only)"));
        assert!(lines[1].contains("4.00G:0.9s 1.00G:never"));
    }

    #[test]
    fn a_pass_on_the_second_attempt_is_marked_in_the_table_and_the_json() {
        let mut retried = result("hotmem", Verdict::Pass);
        retried.attempts = 2;
        retried.first_attempt_failures = vec!["guest MemTotal never reached 4G".into()];
        let table = comparison_table(std::slice::from_ref(&retried));
        assert!(table.contains("pass (2nd try)"), "{table}");
        let json = serde_json::to_value(&retried).unwrap();
        assert_eq!(json["attempts"], 2);
        assert_eq!(
            json["first_attempt_failures"][0],
            "guest MemTotal never reached 4G"
        );
    }

    #[test]
    fn verdicts_serialise_in_snake_case() {
        let json = serde_json::to_string(&Verdict::NotApplicable).unwrap();
        assert_eq!(json, "\"not_applicable\"");
    }
}
