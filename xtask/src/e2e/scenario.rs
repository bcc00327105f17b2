//! The scenarios and what must hold after each, judged from the timeline alone.

use serde::Serialize;

use super::bounds;
use super::serial::Source;
use super::timeline::{DeviceStatus, Timeline};
use crate::guest::Vmm;

const GIB: u64 = 1 << 30;
/// How much host memory a shrink after touching 1.5 GiB must give back at least.
const MIN_RETURNED_KIB: u64 = 256 * 1024;

pub use super::catalog::{
    SCENARIOS, full_tier_only, hotmem_only, l1_memory, timeout, uses_legacy_kernel,
};

/// How long the guest took to show one resize.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settle {
    pub target_bytes: u64,
    pub settle_ms: Option<u64>,
}

/// Numbers worth comparing between VMMs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Metrics {
    pub settles: Vec<Settle>,
    /// Mapped slots after the initial 1 GiB plug.
    pub slots_mapped_at_boot: Option<u64>,
    /// The most slots mapped at any snapshot.
    pub slots_mapped_peak: Option<u64>,
    /// L1 MemFree drop from before the VMM started to after the boot plug.
    pub l1_memfree_delta_kib: Option<i64>,
    /// L1 VmallocUsed growth over the same span (KVM memslot metadata).
    pub l1_vmalloc_delta_kib: Option<i64>,
    pub vmm_rss_kib_at_boot: Option<u64>,
    /// The VMM's own resident memory (outside guest RAM) after the boot plug.
    pub vmm_own_kib_at_boot: Option<u64>,
}

/// Collects failures with their context.
#[derive(Default)]
pub(super) struct Checks {
    pub(super) failures: Vec<String>,
}

impl Checks {
    pub(super) fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }

    fn status(&mut self, t: &Timeline, label: &str) -> Option<DeviceStatus> {
        t.status(label).map_err(|e| self.failures.push(e)).ok()
    }

    /// The VMM reports `plugged` at `label` with slots to match.
    pub(super) fn plugged(&mut self, t: &Timeline, label: &str, plugged: u64, requested: u64) {
        let Some(s) = self.status(t, label) else {
            return;
        };
        self.expect(
            s.plugged_bytes == plugged && s.requested_bytes == requested,
            || {
                format!(
                    "{label}: VMM reports plugged {} requested {}, wanted {plugged} / {requested}",
                    s.plugged_bytes, s.requested_bytes
                )
            },
        );
        // `slots=single` maps its one static slot whatever is plugged.
        if let Some(slots) = s
            .slots_mapped
            .filter(|_| s.slot_policy.as_deref() != Some("single"))
        {
            self.expect((slots == 0) == (plugged == 0), || {
                format!("{label}: {slots} slots mapped with {plugged} bytes plugged")
            });
        }
        if let Some(mapped) = s.mapped_bytes {
            self.expect(mapped >= plugged, || {
                format!("{label}: {mapped} bytes mapped < {plugged} plugged")
            });
        }
    }

    /// The guest sees `plugged` bytes more than its boot memory at `label`.
    pub(super) fn guest_sees(
        &mut self,
        t: &Timeline,
        label: &str,
        plugged: u64,
        base_kib: Option<u64>,
    ) {
        let (Some(snap), Some(base)) = (t.snapshot(label), base_kib) else {
            self.failures
                .push(format!("{label}: no snapshot or no guest base MemTotal"));
            return;
        };
        self.expect(snap.guest_memtotal_kib == base + plugged / 1024, || {
            format!(
                "{label}: guest MemTotal {} KiB, wanted {} + {} KiB",
                snap.guest_memtotal_kib,
                base,
                plugged / 1024
            )
        });
    }
}

/// The guest's MemTotal before its virtio-mem driver loaded, for boot `n` (1-based).
fn base_kib(t: &Timeline, boot: usize) -> Option<u64> {
    t.all(Source::L1, "guest_base_kib")
        .nth(boot - 1)?
        .word(0)?
        .parse()
        .ok()
}

/// For each accepted resize: time from the request to the first guest sample at the target.
pub fn settles(t: &Timeline) -> Vec<Settle> {
    let mut result = Vec::new();
    for ok in t.all(Source::L1, "resize_ok") {
        let Some(target_bytes) = ok.word(0).and_then(|w| w.parse::<u64>().ok()) else {
            continue;
        };
        let request = t
            .all(Source::L1, "resize_request")
            .filter(|r| r.at_ms <= ok.at_ms)
            .last();
        let base = t
            .all(Source::L1, "guest_base_kib")
            .filter(|b| b.at_ms <= ok.at_ms)
            .last()
            .and_then(|b| b.word(0)?.parse::<u64>().ok());
        let (Some(request), Some(base)) = (request, base) else {
            continue;
        };
        let want = base + target_bytes / 1024;
        let settle_ms = t
            .memtotal_kib()
            .find(|&(at, kib)| at >= request.at_ms && kib == want)
            .map(|(at, _)| at - request.at_ms);
        result.push(Settle {
            target_bytes,
            settle_ms,
        });
    }
    result
}

fn metrics(t: &Timeline) -> Metrics {
    let idle = t.first(Source::L1, "l1_idle");
    let boot = t.snapshot("boot1-plugged");
    let delta = |name: &str, pick: fn(&super::timeline::Snapshot) -> u64| {
        let before = idle?.field_u64(name)? as i64;
        Some(pick(boot.as_ref()?) as i64 - before)
    };
    Metrics {
        settles: settles(t),
        slots_mapped_at_boot: t.status("boot1-plugged").ok().and_then(|s| s.slots_mapped),
        slots_mapped_peak: t
            .all(Source::L1, "snap")
            .filter_map(|e| t.status(e.word(0)?).ok()?.slots_mapped)
            .max(),
        l1_memfree_delta_kib: delta("memfree_kib", |s| s.l1_memfree_kib).map(|d| -d),
        l1_vmalloc_delta_kib: delta("vmalloc_kib", |s| s.l1_vmalloc_kib),
        vmm_rss_kib_at_boot: boot.as_ref().map(|s| s.vmm_rss_kib),
        vmm_own_kib_at_boot: boot.map(|s| s.vmm_own_kib).filter(|&k| k > 0),
    }
}

/// Judges one run: the failures (empty when it passed) and its metrics.
pub fn check(scenario: &str, vmm: Vmm, t: &Timeline) -> (Vec<String>, Metrics) {
    let mut c = Checks::default();
    c.expect(t.first(Source::L1, "done").is_some(), || {
        "the scenario did not finish".into()
    });
    // `seccomp`: a call outside a hotmem thread's allow list (killed or, with --seccomp log,
    // logged), from the kernel's audit lines.
    for key in ["timeout", "error", "insmod_failed", "seccomp"] {
        for e in t.all(Source::L1, key).chain(t.all(Source::L2, key)) {
            c.failures.push(format!("{key}: {}", e.rest));
        }
    }
    for e in t.all(Source::L1, "resize_error") {
        if scenario != "bad-resize" {
            c.failures.push(format!("resize refused: {}", e.rest));
        }
    }
    let base1 = base_kib(t, 1);
    c.plugged(t, "boot1-pre-driver", 0, GIB);
    c.plugged(t, "boot1-plugged", GIB, GIB);
    c.guest_sees(t, "boot1-plugged", GIB, base1);
    for s in settles(t) {
        c.expect(s.settle_ms.is_some(), || {
            format!("guest never showed the resize to {} bytes", s.target_bytes)
        });
    }
    if vmm == Vmm::Hotmem {
        check_mapping_claims(&mut c, t);
        check_seccomp(&mut c, t);
    }
    match scenario {
        "grow-shrink" | "legacy-guest" | "events" | "smp-two-devices" | "jailed" => {
            c.plugged(t, "grown", 4 * GIB, 4 * GIB);
            c.guest_sees(t, "grown", 4 * GIB, base1);
            c.plugged(t, "shrunk", GIB, GIB);
            c.guest_sees(t, "shrunk", GIB, base1);
            if vmm == Vmm::Hotmem {
                let legacy = t.status("grown").ok().and_then(|s| s.legacy_mapping);
                let want = scenario == "legacy-guest";
                c.expect(legacy == Some(want), || {
                    format!("hotmem reports legacy_mapping {legacy:?}, wanted {want}")
                });
            }
            if scenario == "grow-shrink" {
                check_memory_returned(&mut c, t);
            }
            if scenario == "events" {
                super::events_check::check_events(&mut c.failures, t);
            }
            if scenario == "smp-two-devices" {
                check_two_devices(&mut c, t, base1);
            }
            if scenario == "jailed" {
                check_jail(&mut c, t);
            }
        }
        "to-zero" => {
            c.plugged(t, "zero", 0, 0);
            c.guest_sees(t, "zero", 0, base1);
        }
        "reboot" => {
            c.plugged(t, "before-reboot", 2 * GIB, 2 * GIB);
            c.plugged(t, "boot2-pre-driver", 0, 2 * GIB);
            c.plugged(t, "boot2-plugged", 2 * GIB, 2 * GIB);
            c.guest_sees(t, "boot2-plugged", 2 * GIB, base_kib(t, 2));
        }
        "bad-resize" => {
            let refused = t.all(Source::L1, "resize_error").count();
            c.expect(refused == 2, || {
                format!("{refused} of 2 bad resizes were refused")
            });
            for e in t.all(Source::L1, "resize_error") {
                // "<bytes> <message>": the interface must say why.
                let message = e.rest.split_once(' ').map_or("", |(_, m)| m.trim());
                c.expect(message.len() > 3, || {
                    format!("refusal of {} came without a message", e.rest)
                });
            }
            c.plugged(t, "after-bad", GIB, GIB);
            c.guest_sees(t, "after-bad", GIB, base1);
            let settled_at = t.snapshot("boot1-plugged").map_or(0, |s| s.at_ms);
            let changes = t.memtotal_kib().filter(|&(at, _)| at > settled_at).count();
            c.expect(changes == 0, || {
                format!("guest MemTotal changed {changes} times")
            });
        }
        "storm" => check_storm(&mut c, t, base1),
        "numa" => super::numa_check::check_numa(&mut c.failures, t, vmm),
        "numa-memory-only-node" => super::numa_check::check_memory_only_node(&mut c.failures, t),
        "vhost-user" | "vhost-user-small-budget" | "virtiofs-root" => {
            super::vhost_check::check_scenario(&mut c, scenario, vmm, t, base1)
        }
        "snapshot-restore" => super::snapshot_check::check_snapshot_restore(&mut c, t, base1),
        "snapshot-restore-legacy" => {
            super::snapshot_check::check_snapshot_restore_legacy(&mut c, t, base1)
        }
        m if m.starts_with("migrate") => {
            super::migrate_check::check_scenario(&mut c, m, vmm, t, base1)
        }
        "data-intact" => {
            c.expect(t.first(Source::L2, "filled").is_some(), || {
                "the guest filled nothing".into()
            });
            let verdicts: Vec<_> = t
                .all(Source::L2, "verify")
                .map(|e| e.rest.clone())
                .collect();
            c.expect(
                verdicts.len() == 2 && verdicts.iter().all(|v| v.starts_with("ok")),
                || format!("checksums after resizes: {verdicts:?}"),
            );
        }
        _ => {}
    }
    (without_consequences(c.failures), metrics(t))
}

/// At every snapshot, each device maps no more than its layout needs for what is plugged, and
/// L1's kernel memory grew no more than the mapped slots explain.
fn check_mapping_claims(c: &mut Checks, t: &Timeline) {
    let idle = t
        .first(Source::L1, "l1_idle")
        .and_then(|e| e.field_u64("vmalloc_kib"));
    c.expect(idle.is_some(), || "no l1_idle VmallocUsed sample".into());
    for e in t.all(Source::L1, "hotmem_status") {
        let Some(label) = e.word(0) else { continue };
        let json = e.rest[label.len()..].trim();
        let devices = match DeviceStatus::all_from_hotmem(json) {
            Ok(d) => d,
            Err(why) => {
                c.failures.push(format!("{label}: {why}"));
                continue;
            }
        };
        let mut total_mapped = 0;
        for (id, s) in &devices {
            c.failures
                .extend(bounds::check_mapped(&format!("{label} {id}"), s));
            total_mapped += s.mapped_bytes.unwrap_or(0);
        }
        match (t.snapshot(label), idle) {
            (Some(snap), Some(idle)) => {
                if let Some(f) = bounds::check_vmalloc(label, idle, &snap, total_mapped) {
                    c.failures.push(f);
                }
            }
            (None, _) => c
                .failures
                .push(format!("{label}: snapshot has missing numbers")),
            _ => {}
        }
    }
}

/// After 200 resizes the guest settled at 2 GiB with its files intact at every check, and the
/// VMM holds no more than boot memory + plugged memory + its own pre-plug footprint (+5 %).
fn check_storm(c: &mut Checks, t: &Timeline, base1: Option<u64>) {
    let done = t
        .first(Source::L1, "storm_done")
        .and_then(|e| e.word(0).map(str::to_string));
    c.expect(done.as_deref() == Some("200"), || {
        format!("storm ran {done:?} resizes, wanted 200")
    });
    let verdicts: Vec<String> = t
        .all(Source::L2, "verify")
        .map(|e| e.rest.clone())
        .collect();
    c.expect(
        verdicts.len() == 5 && verdicts.iter().all(|v| v.starts_with("ok")),
        || format!("checksums during/after the storm: {verdicts:?}"),
    );
    c.plugged(t, "storm-end", 2 * GIB, 2 * GIB);
    c.guest_sees(t, "storm-end", 2 * GIB, base1);
    let (Some(end), Some(pre)) = (t.snapshot("storm-end"), t.snapshot("boot1-pre-driver")) else {
        c.failures.push(
            "storm: the RSS bound cannot be judged: a snapshot is missing or incomplete".into(),
        );
        return;
    };
    {
        let boot_kib = 512 * 1024;
        let limit_kib = (boot_kib + 2 * GIB / 1024 + pre.vmm_rss_kib) * 105 / 100;
        c.expect(end.vmm_rss_kib <= limit_kib, || {
            format!(
                "VMM RSS {} KiB after the storm, over {limit_kib} KiB",
                end.vmm_rss_kib
            )
        });
    }
}

/// hotmem kept its seccomp filters: unless run with `--seccomp off`, its process is in filter
/// mode and every thread carries at least two filters (the process-wide clone3 one and its
/// own; a vCPU also its parent's).
fn check_seccomp(c: &mut Checks, t: &Timeline) {
    let Some(e) = t.first(Source::L1, "vmm_seccomp") else {
        if t.first(Source::L1, "done").is_some() {
            c.failures
                .push("no seccomp report for hotmem (was it still running?)".into());
        }
        return;
    };
    let mut words = e.rest.split_whitespace();
    let (mode, process) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if mode == "off" {
        return;
    }
    c.expect(process == "2", || {
        format!("hotmem is not in seccomp filter mode: {}", e.rest)
    });
    for thread in words {
        let filters = thread
            .rsplit(':')
            .next()
            .and_then(|n| n.parse::<u32>().ok());
        c.expect(filters.is_some_and(|n| n >= 2), || {
            format!("hotmem thread without its own seccomp filter: {thread}")
        });
    }
}

/// hotmem ran as uid/gid 1000 with no capabilities and `no_new_privs`, in namespaces of its own,
/// with only the planned entries in its root; the API answered from outside the jail.
fn check_jail(c: &mut Checks, t: &Timeline) {
    let Some(jail) = t.first(Source::L1, "jail") else {
        c.failures.push("no jail facts reported".into());
        return;
    };
    let zero_caps = "0000000000000000";
    for (key, want) in [
        ("uid", "1000"),
        ("gid", "1000"),
        ("capeff", zero_caps),
        ("capprm", zero_caps),
        ("capbnd", zero_caps),
        ("nnp", "1"),
        ("shared_ns", "none"),
    ] {
        let got = jail.field(key);
        c.expect(got == Some(want), || {
            format!("jailed hotmem: {key} = {got:?}, wanted {want}")
        });
    }
    let root = jail.field("root").unwrap_or("");
    for entry in root.split(',').filter(|e| !e.is_empty()) {
        c.expect(["dev", "l2", "run", "usr"].contains(&entry), || {
            format!("jailed hotmem sees /{entry} (root: {root})")
        });
    }
    let events = t
        .first(Source::L1, "jail_events")
        .and_then(|e| e.word(0)?.parse::<u64>().ok());
    c.expect(events.is_some_and(|n| n >= 4), || {
        format!("hotmem-ctl events from outside the jail gave {events:?} events")
    });
}

/// Two vCPUs came up, and the second device plugged its own 1 GiB next to mem0's.
fn check_two_devices(c: &mut Checks, t: &Timeline, base1: Option<u64>) {
    let cpus = t
        .first(Source::L2, "cpus")
        .and_then(|e| e.word(0).map(str::to_string));
    c.expect(cpus.as_deref() == Some("2"), || {
        format!("guest saw {cpus:?} CPUs, wanted 2")
    });
    let plugged = |id: &str| {
        t.all(Source::L1, "hotmem_status")
            .find(|e| e.word(0) == Some("both"))
            .and_then(|e| e.rest.split_once(' ').map(|(_, json)| json.to_string()))
            .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
            .and_then(|v| {
                v["memory_devices"]
                    .as_array()?
                    .iter()
                    .find(|d| d["id"] == id)?["plugged_bytes"]
                    .as_u64()
            })
    };
    for id in ["mem0", "mem1"] {
        let got = plugged(id);
        c.expect(got == Some(GIB), || {
            format!("{id} plugged {got:?} at 'both', wanted 1 GiB")
        });
    }
    c.guest_sees(t, "both", 2 * GIB, base1);
}

/// When the run stopped early (the script gave up), the checks of the steps it never reached
/// fail too; keep the cause and say once that the rest was not reached.
fn without_consequences(failures: Vec<String>) -> Vec<String> {
    let stopped_early = failures
        .iter()
        .any(|f| f.starts_with("timeout:") || f.starts_with("error:"));
    if !stopped_early {
        return failures;
    }
    let unreached = |f: &String| {
        f.starts_with("no VMM status at") || f.contains("no snapshot") || f.starts_with("no ")
    };
    let skipped = failures.iter().filter(|f| unreached(f)).count();
    let mut kept: Vec<String> = failures.into_iter().filter(|f| !unreached(f)).collect();
    if skipped > 0 {
        kept.push(format!("({skipped} checks of later steps not reached)"));
    }
    kept
}

fn check_memory_returned(c: &mut Checks, t: &Timeline) {
    let (Some(filled), Some(shrunk)) = (t.snapshot("filled"), t.snapshot("shrunk")) else {
        c.failures.push("no filled/shrunk snapshots".into());
        return;
    };
    c.expect(
        filled.vmm_rss_kib >= shrunk.vmm_rss_kib + MIN_RETURNED_KIB,
        || {
            format!(
                "VMM RSS {} KiB after the shrink, {} KiB before: memory not returned",
                shrunk.vmm_rss_kib, filled.vmm_rss_kib
            )
        },
    );
    c.expect(
        shrunk.l1_memfree_kib >= filled.l1_memfree_kib + MIN_RETURNED_KIB,
        || {
            format!(
                "L1 MemFree {} KiB after the shrink, {} KiB before: memory not returned",
                shrunk.l1_memfree_kib, filled.l1_memfree_kib
            )
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE_KIB: u64 = 402_112;

    fn memdev(plugged: u64, requested: u64) -> String {
        format!(
            r#"{{"return": [{{"type": "virtio-mem", "data": {{"block-size": 2097152, "size": {plugged}, "max-size": 68719476736, "requested-size": {requested}, "id": "mem0"}}}}]}}"#
        )
    }

    /// A console like a passing QEMU boot-plugged run, with the plugged amount adjustable.
    fn boot_console(plugged: u64, slots: u64) -> String {
        let plugged_kib = BASE_KIB + plugged / 1024;
        format!(
            "@@HM 2720 l1_idle memfree_kib=3840660 vmalloc_kib=8864\n\
             @@L2 9420 @@HM 2550 memtotal_kib {BASE_KIB}\n\
             @@HM 10090 guest_base_kib {BASE_KIB}\n\
             @@HM 10200 snap boot1-pre-driver memfree_kib=3608988 vmalloc_kib=9328 rss_kib=246336 guest_memtotal_kib={BASE_KIB}\n\
             @@HM 10450 qemu_memdev boot1-pre-driver {}\n@@HM 10640 qemu_memslots boot1-pre-driver 0\n\
             @@L2 11000 @@HM 4120 memtotal_kib {plugged_kib}\n\
             @@HM 11300 snap boot1-plugged memfree_kib=3592604 vmalloc_kib=9848 rss_kib=262872 guest_memtotal_kib={plugged_kib}\n\
             @@HM 11330 qemu_memdev boot1-plugged {}\n@@HM 11520 qemu_memslots boot1-plugged {slots}\n",
            memdev(0, GIB),
            memdev(plugged, GIB)
        )
    }

    fn judge(scenario: &str, console: &str) -> (Vec<String>, Metrics) {
        check(scenario, Vmm::Qemu, &Timeline::parse(console))
    }

    #[test]
    fn a_complete_boot_plug_passes_with_its_metrics() {
        let (failures, metrics) = judge(
            "boot-plugged",
            &(boot_console(GIB, 1) + "@@HM 11800 done\n"),
        );
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(metrics.slots_mapped_at_boot, Some(1));
        assert_eq!(metrics.slots_mapped_peak, Some(1));
        assert_eq!(metrics.l1_memfree_delta_kib, Some(3_840_660 - 3_592_604));
        assert_eq!(metrics.l1_vmalloc_delta_kib, Some(9848 - 8864));
    }

    fn hotmem_judge(console: &str) -> Vec<String> {
        check("boot-plugged", Vmm::Hotmem, &Timeline::parse(console)).0
    }

    #[test]
    fn hotmem_threads_without_their_filters_fail_the_run() {
        let run = |report: &str| {
            let console = boot_console(GIB, 1) + report + "@@HM 11800 done\n";
            hotmem_judge(&console)
                .into_iter()
                .filter(|f| f.contains("seccomp"))
                .collect::<Vec<_>>()
        };
        let good = "@@HM 11700 vmm_seccomp kill 2 hotmem:2 vcpu0:3 api:2\n";
        assert!(run(good).is_empty(), "{:?}", run(good));
        assert_eq!(
            run("@@HM 11700 vmm_seccomp kill 2 hotmem:2 vcpu0:1\n").len(),
            1
        );
        assert_eq!(run("@@HM 11700 vmm_seccomp kill 0 hotmem:0\n").len(), 2);
        assert!(run("@@HM 11700 vmm_seccomp off 0 hotmem:0\n").is_empty());
        assert_eq!(run("").len(), 1);
    }

    #[test]
    fn a_call_outside_a_seccomp_list_fails_the_run() {
        let audit = "@@HM 11700 seccomp [ 88.1] audit: type=1326 audit(1.2:3): pid=210 \
                     comm=\"vcpu0\" sig=31 arch=c000003e syscall=41 code=0x80000000\n";
        let (failures, _) = judge(
            "boot-plugged",
            &(boot_console(GIB, 1) + audit + "@@HM 11800 done\n"),
        );
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("syscall=41"), "{failures:?}");
    }

    #[test]
    fn an_unfinished_run_fails() {
        let (failures, _) = judge("boot-plugged", &boot_console(GIB, 1));
        assert!(failures.iter().any(|f| f.contains("did not finish")));
    }

    #[test]
    fn a_short_plug_and_missing_slots_fail() {
        let (failures, _) = judge(
            "boot-plugged",
            &(boot_console(GIB / 2, 0) + "@@HM 1 done\n"),
        );
        assert!(
            failures.iter().any(|f| f.contains("VMM reports plugged")),
            "{failures:?}"
        );
        assert!(
            failures.iter().any(|f| f.contains("slots mapped")),
            "{failures:?}"
        );
        assert!(
            failures.iter().any(|f| f.contains("guest MemTotal")),
            "{failures:?}"
        );
    }

    #[test]
    fn an_early_stop_reports_its_cause_not_every_unreached_check() {
        let console = boot_console(GIB, 1).replace("snap boot1-plugged", "snap elsewhere")
            + "@@HM 12000 timeout waiting for 1 x modules_loaded\n@@HM 1 done\n";
        let (failures, _) = judge("grow-shrink", &console);
        assert_eq!(failures[0], "timeout: waiting for 1 x modules_loaded");
        assert!(
            failures
                .last()
                .unwrap()
                .contains("checks of later steps not reached")
        );
        assert!(
            !failures.iter().any(|f| f.contains("no VMM status")),
            "{failures:?}"
        );
    }

    #[test]
    fn script_timeouts_are_failures() {
        let console = boot_console(GIB, 1) + "@@HM 12000 timeout waiting for ready\n@@HM 1 done\n";
        let (failures, _) = judge("boot-plugged", &console);
        assert_eq!(failures, ["timeout: waiting for ready"]);
    }

    #[test]
    fn settle_time_runs_from_request_to_first_sample_at_the_target() {
        let console = format!(
            "{}@@HM 20000 resize_request 4294967296\n@@HM 20100 resize_ok 4294967296\n\
             @@L2 20500 @@HM 1 memtotal_kib {}\n@@L2 20900 @@HM 2 memtotal_kib {}\n",
            boot_console(GIB, 1),
            BASE_KIB + 2 * 1024 * 1024,
            BASE_KIB + 4 * 1024 * 1024
        );
        let settles = settles(&Timeline::parse(&console));
        assert_eq!(
            settles,
            [Settle {
                target_bytes: 4 * GIB,
                settle_ms: Some(900)
            }]
        );
    }

    #[test]
    fn bad_resize_needs_both_refusals_and_a_still_guest() {
        let console = boot_console(GIB, 1)
            + "@@HM 13000 resize_error 69793218560 {\"error\": {}}\n\
               @@HM 13100 snap after-bad memfree_kib=1 vmalloc_kib=1 rss_kib=1 guest_memtotal_kib=1450688\n\
               @@HM 13200 qemu_memdev after-bad "
            + &memdev(GIB, GIB)
            + "\n@@HM 13300 done\n";
        let (failures, _) = judge("bad-resize", &console);
        assert_eq!(failures, ["1 of 2 bad resizes were refused"]);
        let silent = console.replace("69793218560 {\"error\": {}}", "69793218560");
        let (failures, _) = judge("bad-resize", &silent);
        assert!(
            failures.iter().any(|f| f.contains("without a message")),
            "{failures:?}"
        );
    }

    #[test]
    fn hotmem_must_report_legacy_mapping_for_the_old_guest() {
        let status = |legacy: bool| {
            format!(
                r#"{{"memory_devices":[{{"id":"mem0","block_size_bytes":2097152,"region_bytes":68719476736,"requested_bytes":4294967296,"plugged_bytes":4294967296,"slots_mapped":4,"mapped_bytes":4294967296,"legacy_mapping":{legacy}}}]}}"#
            )
        };
        let console = |legacy| {
            format!(
                "@@HM 1 snap grown memfree_kib=1 vmalloc_kib=1\n@@HM 2 hotmem_status grown {}\n",
                status(legacy)
            )
        };
        let legacy_failure = |scenario: &str, legacy| {
            let (failures, _) = check(scenario, Vmm::Hotmem, &Timeline::parse(&console(legacy)));
            failures.iter().any(|f| f.contains("legacy_mapping"))
        };
        assert!(legacy_failure("legacy-guest", false));
        assert!(!legacy_failure("legacy-guest", true));
        assert!(legacy_failure("grow-shrink", true));
    }

    #[test]
    fn a_jailed_vmm_with_capabilities_or_host_files_fails() {
        let jail = |uid: &str, capeff: &str, root: &str| {
            format!(
                "@@HM 1 jail uid={uid} gid=1000 capeff={capeff} capprm=0000000000000000 \
                 capbnd=0000000000000000 nnp=1 shared_ns=none root={root}\n@@HM 2 jail_events 9\n"
            )
        };
        let failures = |console: String| {
            let mut c = Checks::default();
            check_jail(&mut c, &Timeline::parse(&console));
            c.failures
        };
        assert!(failures(jail("1000", "0000000000000000", "dev,l2,run,usr,")).is_empty());
        assert!(!failures(jail("0", "0000000000000000", "dev,l2,run,usr,")).is_empty());
        assert!(!failures(jail("1000", "000001ffffffffff", "dev,l2,run,usr,")).is_empty());
        let leaked = failures(jail("1000", "0000000000000000", "dev,etc,l2,run,usr,"));
        assert!(leaked.iter().any(|f| f.contains("/etc")), "{leaked:?}");
        assert!(!failures(String::new()).is_empty());
    }
}
