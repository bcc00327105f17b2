//! What the `migrate*` scenarios claim: the migration completed and the source exited with
//! status 0, the guest kept running (one boot, uptime grew), its files and the writer's log
//! (written during the migration) are intact on the destination.

use super::scenario::Checks;
use super::serial::Source;
use super::timeline::Timeline;

const GIB: u64 = 1 << 30;

/// The claims common to every migration scenario: `hops` migrations completed, each source
/// exited 0, and `verifies` checksum passes all succeeded.
pub fn check_migrate(failures: &mut Vec<String>, t: &Timeline, hops: usize, verifies: usize) {
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
    let completed = t
        .vmm_log
        .iter()
        .filter(|l| l.contains("migration completed:"))
        .count();
    expect(
        completed == hops,
        format!("the sources logged 'migration completed' {completed} times, wanted {hops}"),
    );
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
    check_slots_mapped_while_receiving(failures, t, hops);
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

/// The checks of one `migrate*` scenario.
pub(super) fn check_scenario(c: &mut Checks, scenario: &str, t: &Timeline, base1: Option<u64>) {
    match scenario {
        "migrate-resizing" => {
            check_migrate(&mut c.failures, t, 1, 2);
            c.plugged(t, "before-migration", GIB, GIB);
            c.plugged(t, "grown", 4 * GIB, 4 * GIB);
            c.guest_sees(t, "grown", 4 * GIB, base1);
            c.plugged(t, "shrunk", GIB, GIB);
            c.guest_sees(t, "shrunk", GIB, base1);
        }
        "migrate-faults" => {
            check_migrate(&mut c.failures, t, 2, 3);
            check_faults(&mut c.failures, t);
            c.plugged(t, "after-fault", 2 * GIB, 2 * GIB);
            c.plugged(t, "hop1", 2 * GIB, 2 * GIB);
            c.plugged(t, "hop2", 2 * GIB, 2 * GIB);
            c.plugged(t, "grown", 3 * GIB, 3 * GIB);
            c.guest_sees(t, "grown", 3 * GIB, base1);
        }
        "migrate-policy-differ" => {
            check_migrate(&mut c.failures, t, 1, 2);
            check_policy_differ(&mut c.failures, t);
            c.plugged(t, "before-migration", 2 * GIB, 2 * GIB);
            c.plugged(t, "migrated", 2 * GIB, 2 * GIB);
            c.plugged(t, "grown", 3 * GIB, 3 * GIB);
            c.guest_sees(t, "grown", 3 * GIB, base1);
        }
        "migrate" => {
            check_migrate(&mut c.failures, t, 1, 2);
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
}
