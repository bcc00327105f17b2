//! The `vhost-user` scenario's claim about memory tables: at every labelled point the backend
//! works and holds exactly boot RAM plus one region per mapped slot (nothing merged, nothing
//! stale).

use serde_json::Value;

use super::serial::Source;
use super::timeline::Timeline;

/// Pairs each `hotmem_vm LABEL` sample with the device status of the matching snapshot.
const LABELS: [(&str, &str); 3] = [
    ("boot1", "boot1-plugged"),
    ("grown", "grown"),
    ("shrunk", "shrunk"),
];

pub fn check_tables(failures: &mut Vec<String>, t: &Timeline) {
    let mut boot_regions = None;
    for (vm_label, status_label) in LABELS {
        let Some(event) = t
            .all(Source::L1, "hotmem_vm")
            .find(|e| e.word(0) == Some(vm_label))
        else {
            failures.push(format!("no hotmem_vm sample at {vm_label}"));
            continue;
        };
        let json = event.rest[vm_label.len()..].trim();
        let device = serde_json::from_str::<Value>(json)
            .ok()
            .and_then(|v| v["vhost_user_devices"].get(0).cloned());
        let Some(device) = device else {
            failures.push(format!("{vm_label}: no vhost_user_devices in {json}"));
            continue;
        };
        if device["state"] != "ready" {
            failures.push(format!("{vm_label}: backend not ready: {device}"));
        }
        let held = device["regions_held"].as_u64();
        let mapped = t.status(status_label).ok().and_then(|s| s.slots_mapped);
        let (Some(held), Some(mapped)) = (held, mapped) else {
            failures.push(format!("{vm_label}: no region or slot count"));
            continue;
        };
        let boot = held.checked_sub(mapped);
        if boot.is_none_or(|b| b == 0) || boot_regions.is_some_and(|b| Some(b) != boot) {
            failures.push(format!(
                "{vm_label}: backend holds {held} regions with {mapped} slots mapped \
                 (boot RAM regions so far: {boot_regions:?})"
            ));
        }
        boot_regions = boot_regions.or(boot);
    }
}
