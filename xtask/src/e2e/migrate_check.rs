//! What the `migrate*` scenarios claim: the migration completed and the source exited with
//! status 0, the guest kept running (one boot, uptime grew), its files and the writer's log
//! (written during the migration) are intact on the destination. hotmem's sources log
//! "migration completed", and each of its pauses stayed within what was asked
//! (`max_downtime_ms`, with [`DOWNTIME_TOLERANCE_PERCENT`]); its destinations mapped their slots
//! while memory arrived. QEMU's (`migrate` only, the reference) must report `completed` with a
//! downtime and bytes sent in `query-migrate`, and its destination must be running.

use super::scenario::Checks;
use super::serial::Source;
use super::timeline::Timeline;
use crate::guest::Vmm;

const GIB: u64 = 1 << 30;

/// A measured pause may exceed the requested `max_downtime_ms` by half of it: the estimate the
/// pause is decided on comes from the previous round (bandwidth, dirty pages, a dry run of the
/// device state, a ping), and under TCG the L1 runs at the pace the other processes on the
/// shared L0 host leave it, which moves single steps by tens of milliseconds between one
/// round and the next. More than that is the estimate missing a cost, which this catches.
pub const DOWNTIME_TOLERANCE_PERCENT: u64 = 150;

/// `(downtime_ms, max_downtime_ms)` of a source's "migration completed: ... downtime D ms of
/// max M ms ..." log line.
pub fn downtime_claim(line: &str) -> Option<(u64, u64)> {
    let rest = line.split_once("migration completed:")?.1;
    let rest = rest.split_once(" downtime ")?.1;
    let (downtime, rest) = rest.split_once(" ms of max ")?;
    let (max, _) = rest.split_once(" ms")?;
    Some((downtime.trim().parse().ok()?, max.trim().parse().ok()?))
}

/// Failures for pauses longer than their max (with the tolerance), or completions without
/// the numbers.
pub fn check_downtime<'a>(failures: &mut Vec<String>, log: impl IntoIterator<Item = &'a String>) {
    for line in log
        .into_iter()
        .filter(|l| l.contains("migration completed:"))
    {
        match downtime_claim(line) {
            Some((downtime, max)) if downtime * 100 <= max * DOWNTIME_TOLERANCE_PERCENT => {}
            Some((downtime, max)) => failures.push(format!(
                "the migration paused the guest {downtime} ms, more than max_downtime_ms={max} \
                 (+{}% tolerance): the downtime estimate missed a cost",
                DOWNTIME_TOLERANCE_PERCENT - 100
            )),
            None => failures.push(format!("no downtime and max in {line:?}")),
        }
    }
}

/// The claims common to every migration scenario: `hops` migrations completed, each source
/// exited 0, `verifies` checksum passes all succeeded, and (hotmem) no pause exceeded its max.
pub fn check_migrate(
    failures: &mut Vec<String>,
    vmm: Vmm,
    t: &Timeline,
    hops: usize,
    verifies: usize,
) {
    let mut expect = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    let ok = t.all(Source::L1, "migrate_ok").count();
    expect(
        ok == hops,
        format!("{ok} migrations completed, wanted {hops}"),
    );
    let rcs: Vec<String> = t
        .all(Source::L1, "source_rc")
        .map(|e| e.rest.trim().to_string())
        .collect();
    expect(
        rcs.len() == hops && rcs.iter().all(|rc| rc == "0"),
        format!("the sources exited with {rcs:?}, wanted 0 each"),
    );
    let migrated = t.all(Source::L1, "vmm_migrated").count();
    expect(
        migrated == hops,
        format!("{migrated} destination APIs came up, wanted {hops}"),
    );
    if vmm == Vmm::Qemu {
        for f in check_qemu_migrations(t, hops) {
            expect(false, f);
        }
    } else {
        let completed = t
            .vmm_log
            .iter()
            .filter(|l| l.contains("migration completed:"))
            .count();
        expect(
            completed == hops,
            format!("the sources logged 'migration completed' {completed} times, wanted {hops}"),
        );
    }
    let verdicts: Vec<String> = t
        .all(Source::L2, "verify")
        .map(|e| e.rest.clone())
        .collect();
    expect(
        verdicts.len() == verifies && verdicts.iter().all(|v| v.starts_with("ok")),
        format!("checksums on the destination: {verdicts:?}"),
    );
    if t.first(Source::L2, "writer_started").is_some() {
        let writer = t.first(Source::L2, "writer").map(|e| e.rest.clone());
        expect(
            writer.as_deref().is_some_and(|w| w.starts_with("ok")),
            format!("the writer's log on the destination: {writer:?}"),
        );
    }
    let uptimes: Vec<f64> = t
        .all(Source::L2, "uptime")
        .filter_map(|e| e.word(0)?.parse().ok())
        .collect();
    expect(
        uptimes.len() >= 2 && uptimes.windows(2).all(|w| w[1] > w[0]),
        format!("guest uptime across the migration: {uptimes:?}"),
    );
    let boots = t.all(Source::L2, "boot").count();
    expect(boots == 1, format!("the guest booted {boots} times"));
    if vmm == Vmm::Hotmem {
        check_slots_mapped_while_receiving(failures, t, hops);
        check_downtime(failures, &t.vmm_log);
    }
}

/// Each destination mapped its device's slots while memory arrived (when a bitmap came, its
/// "slots mapped" line), before it logged the whole VM received, not at the switchover. Its
/// pages can only land after: the slots of unplugged blocks are PROT_NONE on the destination,
/// and the receiver refuses pages of blocks no bitmap has plugged.
fn check_slots_mapped_while_receiving(failures: &mut Vec<String>, t: &Timeline, hops: usize) {
    let mut mapped_since_last = false;
    let mut received = 0;
    for line in &t.vmm_log {
        if line.contains("slots mapped (") && line.contains("plugged blocks") {
            mapped_since_last = true;
        } else if line.contains("received ") && line.contains(" data pages, ") {
            received += 1;
            if !mapped_since_last {
                failures.push(format!(
                    "destination {received} received the VM without mapping slots while memory \
                     arrived: {line}"
                ));
            }
            mapped_since_last = false;
        }
    }
    if received != hops {
        failures.push(format!(
            "{received} destinations logged the VM received, wanted {hops}"
        ));
    }
}

/// QEMU's `query-migrate` answers after each of `hops` migrations (`qemu_migration N JSON`):
/// status `completed`, a downtime, RAM bytes sent and a sync count.
pub fn check_qemu_migrations(t: &Timeline, hops: usize) -> Vec<String> {
    let mut failures = Vec::new();
    let reports: Vec<&str> = t
        .all(Source::L1, "qemu_migration")
        .map(|e| e.rest.trim().split_once(' ').map_or("", |(_, json)| json))
        .collect();
    if reports.len() != hops {
        failures.push(format!(
            "{} query-migrate reports, wanted {hops}",
            reports.len()
        ));
    }
    for json in reports {
        let v: serde_json::Value = match serde_json::from_str(json) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("query-migrate answer is not JSON ({e}): {json}"));
                continue;
            }
        };
        let r = &v["return"];
        let ok = r["status"] == "completed"
            && r["downtime"].is_u64()
            && r["ram"]["transferred"].as_u64().is_some_and(|b| b > 0)
            && r["ram"]["dirty-sync-count"].is_u64();
        if !ok {
            failures.push(format!("QEMU's migration did not complete: {json}"));
        }
    }
    failures
}

/// The slot policy hotmem reported at snapshot `label`.
pub fn policy(t: &Timeline, label: &str) -> Option<String> {
    t.all(Source::L1, "hotmem_status")
        .find(|e| e.word(0) == Some(label))
        .and_then(|e| e.rest.split_once(' ').map(|(_, json)| json.to_string()))
        .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
        .and_then(|v| Some(v["memory_devices"][0]["slot_policy"].as_str()?.to_string()))
}

/// `migrate-faults`: the migration to a killed destination failed and the source kept the
/// guest; the retry (adaptive -> fixed) and the second hop (fixed -> adaptive) completed.
pub fn check_faults(failures: &mut Vec<String>, t: &Timeline) {
    if t.first(Source::L1, "migrate_failed_as_expected").is_none() {
        failures.push("the migration to the killed destination did not fail".into());
    }
    for (label, want) in [
        ("after-fault", "adaptive"),
        ("hop1", "fixed"),
        ("hop2", "adaptive"),
    ] {
        let got = policy(t, label);
        if got.as_deref() != Some(want) {
            failures.push(format!("slot policy at {label}: {got:?}, wanted {want}"));
        }
    }
}

/// `migrate-policy-differ`: one static 64 GiB slot on the source, only the slots holding the
/// plugged 2 GiB on the destination.
pub fn check_policy_differ(failures: &mut Vec<String>, t: &Timeline) {
    let device = |label: &str| {
        t.status(label)
            .ok()
            .map(|s| (s.slot_policy, s.slots_mapped, s.mapped_bytes))
    };
    let before = device("before-migration");
    let after = device("migrated");
    let gib = 1u64 << 30;
    let ok_before = before
        .as_ref()
        .is_some_and(|(p, _, m)| p.as_deref() == Some("single") && *m == Some(64 * gib));
    let ok_after = after.as_ref().is_some_and(|(p, slots, m)| {
        p.as_deref() == Some("adaptive") && *m == Some(2 * gib) && *slots == Some(2)
    });
    if !ok_before || !ok_after {
        failures.push(format!(
            "policy, slots, mapped bytes: {before:?} on the source, {after:?} on the destination; \
             wanted single with 64 GiB mapped, then adaptive with 2 slots / 2 GiB"
        ));
    }
}

/// The highest vCPU throttle in a source's "migration completed: ..., highest vCPU throttle
/// N %; ..." log line.
pub fn throttle_claim(line: &str) -> Option<u8> {
    let rest = line.split_once("migration completed:")?.1;
    let rest = rest.split_once("highest vCPU throttle ")?.1;
    rest.split_once(" %")?.0.trim().parse().ok()
}

/// `migrate-converge`: the guest dirtied faster than the capped link, so auto-converge must
/// have throttled it (a migration that completed unthrottled did not test anything), and
/// `hotmem-ctl` reported the throttle.
fn check_throttled(failures: &mut Vec<String>, t: &Timeline) {
    let throttles: Vec<Option<u8>> = t
        .vmm_log
        .iter()
        .filter(|l| l.contains("migration completed:"))
        .map(|l| throttle_claim(l))
        .collect();
    if !matches!(throttles.as_slice(), [Some(p)] if *p > 0) {
        failures.push(format!(
            "highest vCPU throttle of the completed migration: {throttles:?}; wanted one above 0 \
             (the writer dirties faster than 16 MB/s)"
        ));
    }
    let reported = t
        .first(Source::L1, "migrate_ok")
        .is_some_and(|e| e.rest.contains("highest vCPU throttle"));
    if !reported {
        failures.push("hotmem-ctl migrate did not report the vCPU throttle".into());
    }
}

/// Pages the source's vhost-user backends wrote during a migration, from its "vhost-user
/// backends wrote N pages" log line.
pub fn backend_pages_claim(line: &str) -> Option<u64> {
    let rest = line.split_once("vhost-user backends wrote ")?.1;
    rest.split_once(" pages")?.0.trim().parse().ok()
}

/// `migrate-vhost-user`: the guest's disk reader ran during the migration without a bad pass,
/// the backend wrote guest memory meanwhile (its dirty log had pages), and on the destination
/// the files verified from the page cache as it arrived, from the disk, and after a new write.
fn check_vhost_migrated(failures: &mut Vec<String>, t: &Timeline) {
    let reader = t.first(Source::L2, "dreader").map(|e| e.rest.clone());
    let passes: Option<(u64, u64)> = reader.as_deref().and_then(|r| {
        let mut w = r.split_whitespace();
        Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
    });
    if !matches!(passes, Some((n, 0)) if n >= 2) {
        failures.push(format!(
            "the disk reader (passes, bad passes): {reader:?}; wanted at least 2 passes, none bad"
        ));
    }
    let backend_pages: Vec<Option<u64>> = t
        .vmm_log
        .iter()
        .filter(|l| l.contains("vhost-user backends wrote"))
        .map(|l| backend_pages_claim(l))
        .collect();
    if !matches!(backend_pages.as_slice(), [Some(n)] if *n > 0) {
        failures.push(format!(
            "pages the backend wrote during the migration, as the source logged them: \
             {backend_pages:?}; wanted one count above 0"
        ));
    }
    let verdicts: Vec<String> = t
        .all(Source::L2, "dverify")
        .map(|e| e.rest.clone())
        .collect();
    let wanted = ["migrated cached ok", "migrated disk ok", "written disk ok"];
    let ok = verdicts.len() == wanted.len()
        && verdicts.iter().zip(wanted).all(|(v, w)| v.starts_with(w));
    if !ok {
        failures.push(format!(
            "disk checksums on the destination: {verdicts:?}; wanted {wanted:?}"
        ));
    }
}

/// The checks of one `migrate*` scenario.
pub(super) fn check_scenario(
    c: &mut Checks,
    scenario: &str,
    vmm: Vmm,
    t: &Timeline,
    base1: Option<u64>,
) {
    match scenario {
        "migrate-resizing" => {
            check_migrate(&mut c.failures, vmm, t, 1, 2);
            c.plugged(t, "before-migration", GIB, GIB);
            c.plugged(t, "grown", 4 * GIB, 4 * GIB);
            c.guest_sees(t, "grown", 4 * GIB, base1);
            c.plugged(t, "shrunk", GIB, GIB);
            c.guest_sees(t, "shrunk", GIB, base1);
        }
        "migrate-converge" => {
            check_migrate(&mut c.failures, vmm, t, 1, 1);
            check_throttled(&mut c.failures, t);
            c.plugged(t, "migrated", GIB, GIB);
        }
        "migrate-vhost-user" => {
            check_migrate(&mut c.failures, vmm, t, 1, 0);
            check_vhost_migrated(&mut c.failures, t);
        }
        "migrate-faults" => {
            check_migrate(&mut c.failures, vmm, t, 2, 3);
            check_faults(&mut c.failures, t);
            c.plugged(t, "after-fault", 2 * GIB, 2 * GIB);
            c.plugged(t, "hop1", 2 * GIB, 2 * GIB);
            c.plugged(t, "hop2", 2 * GIB, 2 * GIB);
            c.plugged(t, "grown", 3 * GIB, 3 * GIB);
            c.guest_sees(t, "grown", 3 * GIB, base1);
        }
        "migrate-policy-differ" => {
            check_migrate(&mut c.failures, vmm, t, 1, 2);
            check_policy_differ(&mut c.failures, t);
            c.plugged(t, "before-migration", 2 * GIB, 2 * GIB);
            c.plugged(t, "migrated", 2 * GIB, 2 * GIB);
            c.plugged(t, "grown", 3 * GIB, 3 * GIB);
            c.guest_sees(t, "grown", 3 * GIB, base1);
        }
        "migrate" => {
            check_migrate(&mut c.failures, vmm, t, 1, 2);
            c.plugged(t, "before-migration", 2 * GIB, 2 * GIB);
            c.plugged(t, "migrated", 2 * GIB, 2 * GIB);
            c.plugged(t, "grown", 4 * GIB, 4 * GIB);
            c.guest_sees(t, "grown", 4 * GIB, base1);
            c.plugged(t, "shrunk", GIB, GIB);
            c.guest_sees(t, "shrunk", GIB, base1);
        }
        other => c.failures.push(format!("no checks for scenario {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(vmm_log: &[&str]) -> Timeline {
        Timeline {
            vmm_log: vmm_log.iter().map(|l| l.to_string()).collect(),
            ..Timeline::default()
        }
    }

    const MAPPED: &str = "INFO vmm::migration::incoming] device 0: 2 slots mapped (2048 MiB) \
                          for 1024 plugged blocks";
    const RECEIVED: &str = "INFO vmm::migration::incoming] received 977983763 bytes (238751 \
                            data pages, 423742 zero pages) in 21515 ms";

    #[test]
    fn slots_mapped_while_receiving_passes_when_each_destination_mapped_first() {
        let mut failures = Vec::new();
        let t = timeline(&[MAPPED, RECEIVED, MAPPED, MAPPED, RECEIVED]);
        check_slots_mapped_while_receiving(&mut failures, &t, 2);
        assert!(failures.is_empty(), "{failures:?}");
    }

    #[test]
    fn a_destination_that_mapped_nothing_while_receiving_fails() {
        let mut failures = Vec::new();
        let t = timeline(&[MAPPED, RECEIVED, RECEIVED]);
        check_slots_mapped_while_receiving(&mut failures, &t, 2);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("destination 2"), "{failures:?}");
    }

    #[test]
    fn a_missing_destination_fails() {
        let mut failures = Vec::new();
        check_slots_mapped_while_receiving(&mut failures, &timeline(&[MAPPED, RECEIVED]), 2);
        assert_eq!(failures.len(), 1, "{failures:?}");
    }

    const COMPLETED: &str = r#"{"return": {"status": "completed", "setup-time": 12, "downtime": 180, "total-time": 30123, "ram": {"transferred": 901234567, "dirty-sync-count": 4}}}"#;

    fn qemu(report: &str) -> Vec<String> {
        check_qemu_migrations(
            &Timeline::parse(&format!("@@HM 10 qemu_migration 4 {report}\n")),
            1,
        )
    }

    #[test]
    fn qemus_migrate_runs_in_the_full_tier_and_hotmems_in_ci() {
        use crate::e2e::scenario::{full_tier_only, hotmem_only};
        assert!(!hotmem_only("migrate"));
        assert!(full_tier_only("migrate", Vmm::Qemu));
        assert!(!full_tier_only("migrate", Vmm::Hotmem));
        assert!(hotmem_only("migrate-resizing") && hotmem_only("migrate-faults"));
    }

    #[test]
    fn a_completed_qemu_migration_passes() {
        assert!(qemu(COMPLETED).is_empty(), "{:?}", qemu(COMPLETED));
    }

    #[test]
    fn a_failed_missing_or_empty_qemu_migration_fails() {
        assert_eq!(qemu(&COMPLETED.replace("completed", "failed")).len(), 1);
        assert_eq!(qemu(&COMPLETED.replace("\"downtime\": 180, ", "")).len(), 1);
        assert_eq!(qemu(&COMPLETED.replace("901234567", "0")).len(), 1);
        assert_eq!(qemu("not json").len(), 1);
        assert_eq!(check_qemu_migrations(&Timeline::parse(""), 1).len(), 1);
    }

    #[test]
    fn qemu_checksums_and_source_status_count() {
        let console = format!(
            "@@HM 10 qemu_migration 4 {COMPLETED}\n@@HM 11 migrate_ok 4 {COMPLETED}\n\
             @@HM 12 source_rc 0\n@@HM 13 vmm_migrated 4\n\
             @@L2 20 @@HM 1 boot x\n@@L2 21 @@HM 2 uptime 10.0\n@@L2 22 @@HM 3 uptime 50.0\n\
             @@L2 23 @@HM 4 verify ok 49\n@@L2 24 @@HM 5 verify ok 49\n"
        );
        let mut failures = Vec::new();
        check_migrate(&mut failures, Vmm::Qemu, &Timeline::parse(&console), 1, 2);
        assert!(failures.is_empty(), "{failures:?}");
        let bad = console.replace("verify ok 49\n@@L2 24", "verify bad 3\n@@L2 24");
        let mut failures = Vec::new();
        check_migrate(&mut failures, Vmm::Qemu, &Timeline::parse(&bad), 1, 2);
        assert_eq!(failures.len(), 1, "{failures:?}");
        let quit_failed = console.replace("source_rc 0", "source_rc missing");
        let mut failures = Vec::new();
        check_migrate(
            &mut failures,
            Vmm::Qemu,
            &Timeline::parse(&quit_failed),
            1,
            2,
        );
        assert_eq!(failures.len(), 1, "{failures:?}");
    }

    // The source's line from a nested `migrate` run (23:22:43Z, before the estimate counted
    // the machine state read and the destination's restore).
    const LINE: &str = "[2026-11-30T23:22:43Z INFO  vmm::migration::source] migration completed: \
        982370799 bytes in 3 rounds (238881 data pages, 423116 zero pages), downtime 181 ms of \
        max 300 ms (expected 90 ms, switchover 26 ms of it), total 23716 ms; stopping here";

    #[test]
    fn the_downtime_and_its_max_are_read_from_the_completion_line() {
        assert_eq!(downtime_claim(LINE), Some((181, 300)));
        assert_eq!(
            downtime_claim("migration completed: downtime 5 ms, total 9 ms"),
            None
        );
    }

    #[test]
    fn a_pause_past_the_max_and_its_tolerance_fails() {
        let mut failures = Vec::new();
        check_downtime(&mut failures, &[LINE.to_string()]);
        assert!(failures.is_empty(), "{failures:?}");
        let tight = LINE.replace("max 300 ms", "max 100 ms");
        check_downtime(&mut failures, &[tight]);
        assert_eq!(failures.len(), 1);
        assert!(failures[0].contains("paused the guest 181 ms, more than max_downtime_ms=100"));
        let old = "migration completed: 1 bytes in 3 rounds, downtime 181 ms, total 9 ms";
        check_downtime(&mut failures, &[old.to_string()]);
        assert_eq!(failures.len(), 2, "{failures:?}");
    }

    fn converge_timeline(throttle: u8, ctl_reports: bool) -> Timeline {
        let ctl = if ctl_reports {
            format!(", highest vCPU throttle {throttle} %")
        } else {
            String::new()
        };
        let mut t = Timeline::parse(&format!(
            "@@HM 11 migrate_ok 4 migration completed: 1 GB sent in 9 rounds{ctl}\n"
        ));
        t.vmm_log = vec![format!(
            "[2026-12-01T03:00:00Z INFO  vmm::migration::source] migration completed: 1 bytes \
             in 9 rounds (1 data pages, 1 zero pages), downtime 90 ms of max 300 ms (expected \
             80 ms, switchover 60 ms of it), total 30000 ms, highest vCPU throttle {throttle} \
             %; stopping here"
        )];
        t
    }

    #[test]
    fn a_converge_run_passes_only_when_the_guest_was_throttled_and_it_was_reported() {
        let mut failures = Vec::new();
        check_throttled(&mut failures, &converge_timeline(60, true));
        assert!(failures.is_empty(), "{failures:?}");
        let mut failures = Vec::new();
        check_throttled(&mut failures, &converge_timeline(0, true));
        assert_eq!(failures.len(), 1, "{failures:?}");
        let mut failures = Vec::new();
        check_throttled(&mut failures, &converge_timeline(60, false));
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(
            throttle_claim(LINE),
            None,
            "a line from before auto-converge"
        );
    }

    fn vhost_timeline(cached: &str, backend_pages: u64) -> Timeline {
        let mut t = Timeline::parse(&format!(
            "@@L2 20 @@HM 1 dreader 7 0\n@@L2 21 @@HM 2 dverify migrated cached {cached} 8\n\
             @@L2 22 @@HM 3 dverify migrated disk ok 8\n@@L2 23 @@HM 4 dverify written disk ok 9\n"
        ));
        t.vmm_log = vec![format!(
            "[2026-12-01T03:00:00Z INFO  vmm::migration::source] vhost-user backends wrote \
             {backend_pages} pages during the migration"
        )];
        t
    }

    #[test]
    fn a_vhost_user_migration_passes_only_with_intact_cached_pages_and_a_busy_backend() {
        let mut failures = Vec::new();
        check_vhost_migrated(&mut failures, &vhost_timeline("ok", 4096));
        assert!(failures.is_empty(), "{failures:?}");
        let mut failures = Vec::new();
        check_vhost_migrated(&mut failures, &vhost_timeline("bad", 4096));
        assert_eq!(failures.len(), 1, "{failures:?}");
        let mut failures = Vec::new();
        check_vhost_migrated(&mut failures, &vhost_timeline("ok", 0));
        assert_eq!(failures.len(), 1, "{failures:?}");
    }
}
