//! What must hold after the snapshot/restore scenarios (`snapshot-restore`,
//! `snapshot-restore-legacy`).

use super::scenario::Checks;
use super::serial::Source;
use super::timeline::Timeline;

const GIB: u64 = 1 << 30;

/// The restored VM kept its 2 GiB and files, ran on (uptime grew, no second boot), mapped its
/// slots with the new policy, followed 2 -> 4 -> 1 GiB, and the snapshot's files did not grow
/// while it ran from them (lazy restore).
pub(super) fn check_snapshot_restore(c: &mut Checks, t: &Timeline, base1: Option<u64>) {
    check_restored(c, t, 2 * GIB, 4 * GIB);
    c.plugged(t, "grown", 4 * GIB, 4 * GIB);
    c.guest_sees(t, "grown", 4 * GIB, base1);
    c.plugged(t, "shrunk", GIB, GIB);
    c.guest_sees(t, "shrunk", GIB, base1);
    c.expect(verdicts(t).len() == 2, || {
        format!("checksums after the restore: {:?}", verdicts(t))
    });
    let policy = |label: &str| {
        device_status(t, label)
            .and_then(|v| Some(v["memory_devices"][0]["slot_policy"].as_str()?.to_string()))
    };
    c.expect(
        policy("before-snapshot").as_deref() == Some("adaptive")
            && policy("restored").as_deref() == Some("fixed"),
        || {
            format!(
                "slot policy {:?} before, {:?} after the restore",
                policy("before-snapshot"),
                policy("restored")
            )
        },
    );
    let kib = |key: &str| {
        t.first(Source::L1, key)
            .and_then(|e| e.word(0)?.parse::<u64>().ok())
    };
    let (at_snapshot, at_end) = (kib("snapshot_disk_kib"), kib("snapshot_disk_kib_end"));
    c.expect(
        matches!((at_snapshot, at_end), (Some(a), Some(b)) if b <= a + SNAPSHOT_GROWTH_SLACK_KIB),
        || {
            format!(
                "the snapshot's files grew while the restored VM ran: {at_snapshot:?} KiB at the \
                 snapshot, {at_end:?} KiB at the end"
            )
        },
    );
}

/// How much the snapshot directory's allocated size may change while a VM runs from it
/// (`du` rounding); pages the guest faults in must never be allocated in the files.
const SNAPSHOT_GROWTH_SLACK_KIB: u64 = 1024;

/// The 5.10 guest kept its 2 GiB, files and uptime across the restore, hotmem still maps its
/// usable region (legacy mapping) after it, and the guest shrank to 1 GiB.
pub(super) fn check_snapshot_restore_legacy(c: &mut Checks, t: &Timeline, base1: Option<u64>) {
    check_restored(c, t, 2 * GIB, 2 * GIB);
    c.plugged(t, "shrunk", GIB, GIB);
    c.guest_sees(t, "shrunk", GIB, base1);
    c.expect(verdicts(t).len() == 1, || {
        format!("checksums after the restore: {:?}", verdicts(t))
    });
    for label in ["before-snapshot", "restored", "shrunk"] {
        let legacy = t.status(label).ok().and_then(|s| s.legacy_mapping);
        c.expect(legacy == Some(true), || {
            format!("{label}: hotmem reports legacy_mapping {legacy:?}, wanted true")
        });
    }
    // The usable-region mapping survives the restore: as much is mapped after as before.
    let mapped = |label: &str| t.status(label).ok().and_then(|s| s.mapped_bytes);
    c.expect(
        mapped("restored").is_some() && mapped("restored") == mapped("before-snapshot"),
        || {
            format!(
                "mapped bytes {:?} before the snapshot, {:?} after the restore",
                mapped("before-snapshot"),
                mapped("restored")
            )
        },
    );
}

/// What every restore scenario needs: a snapshot written with `plugged` plugged, the VMM
/// restored asking for `requested` (more than `plugged`: the snapshot was taken mid-grow, so
/// anything from `plugged` to `requested` may be plugged), checksums all good, uptime growing
/// across the restore, a single boot.
fn check_restored(c: &mut Checks, t: &Timeline, plugged: u64, requested: u64) {
    c.expect(t.first(Source::L1, "snapshot_ok").is_some(), || {
        "no snapshot was written".into()
    });
    c.expect(t.first(Source::L1, "vmm_restored").is_some(), || {
        "the VMM was not restored".into()
    });
    c.plugged(t, "before-snapshot", plugged, plugged);
    if requested == plugged {
        c.plugged(t, "restored", plugged, plugged);
    } else {
        let restored = t.status("restored").ok();
        let sizes = restored.map(|s| (s.plugged_bytes, s.requested_bytes));
        c.expect(
            matches!(sizes, Some((p, r)) if r == requested && (plugged..=requested).contains(&p)),
            || {
                format!(
                    "restored mid-grow: (plugged, requested) {sizes:?}, wanted requested \
                     {requested} and plugged between {plugged} and it"
                )
            },
        );
    }
    let verdicts = verdicts(t);
    c.expect(
        !verdicts.is_empty() && verdicts.iter().all(|v| v.starts_with("ok")),
        || format!("checksums after the restore: {verdicts:?}"),
    );
    let uptimes: Vec<f64> = t
        .all(Source::L2, "uptime")
        .filter_map(|e| e.word(0)?.parse().ok())
        .collect();
    c.expect(uptimes.len() == 2 && uptimes[1] > uptimes[0], || {
        format!("guest uptime before/after the restore: {uptimes:?}")
    });
    let boots = t.all(Source::L2, "boot").count();
    c.expect(boots == 1, || format!("the guest booted {boots} times"));
}

fn verdicts(t: &Timeline) -> Vec<String> {
    t.all(Source::L2, "verify")
        .map(|e| e.rest.clone())
        .collect()
}

fn device_status(t: &Timeline, label: &str) -> Option<serde_json::Value> {
    t.all(Source::L1, "hotmem_status")
        .find(|e| e.word(0) == Some(label))
        .and_then(|e| e.rest.split_once(' ').map(|(_, json)| json.to_string()))
        .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(legacy: bool, mapped: u64) -> String {
        format!(
            r#"{{"memory_devices":[{{"id":"mem0","block_size_bytes":2097152,"region_bytes":68719476736,"requested_bytes":2147483648,"plugged_bytes":2147483648,"slots_mapped":3,"mapped_bytes":{mapped},"legacy_mapping":{legacy},"slot_policy":"adaptive"}}]}}"#
        )
    }

    fn failures(console: &str, legacy: bool) -> Vec<String> {
        let mut c = Checks::default();
        let t = Timeline::parse(console);
        if legacy {
            check_snapshot_restore_legacy(&mut c, &t, None);
        } else {
            check_snapshot_restore(&mut c, &t, None);
        }
        c.failures
    }

    fn legacy_console(restored_legacy: bool, restored_mapped: u64) -> String {
        format!(
            "@@HM 1 snap before-snapshot memfree_kib=1\n@@HM 2 hotmem_status before-snapshot {}\n\
             @@HM 3 snap restored memfree_kib=1\n@@HM 4 hotmem_status restored {}\n",
            status(true, 3 << 30),
            status(restored_legacy, restored_mapped)
        )
    }

    #[test]
    fn a_legacy_guest_must_keep_its_usable_region_mapped_across_the_restore() {
        let ok = failures(&legacy_console(true, 3 << 30), true);
        let about_restore = |f: &String| {
            f.starts_with("restored:")
                || f.starts_with("before-snapshot:")
                || f.contains("mapped bytes")
        };
        assert!(!ok.iter().any(about_restore), "{ok:?}");
        let lost = failures(&legacy_console(false, 3 << 30), true);
        assert!(
            lost.iter()
                .any(|f| f.contains("restored: hotmem reports legacy_mapping")),
            "{lost:?}"
        );
        let shrunk = failures(&legacy_console(true, 2 << 30), true);
        assert!(
            shrunk.iter().any(|f| f.contains("mapped bytes")),
            "{shrunk:?}"
        );
    }

    #[test]
    fn snapshot_files_growing_under_the_restored_vm_fail() {
        let console = |end_kib: u64| {
            format!("@@HM 1 snapshot_disk_kib 907736\n@@HM 2 snapshot_disk_kib_end {end_kib}\n")
        };
        let grew = |end| {
            failures(&console(end), false)
                .iter()
                .any(|f| f.contains("grew"))
        };
        assert!(!grew(907_736));
        assert!(grew(907_736 + 64 * 1024));
        assert!(
            failures("", false).iter().any(|f| f.contains("grew")),
            "missing numbers fail"
        );
    }
}
