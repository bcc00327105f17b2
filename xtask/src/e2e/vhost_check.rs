//! The `vhost-user` scenario's claims: the guest's files on the vhost-user disk and the shared
//! folder verify inside (grown and shrunk) and on the host side after power-off; and (hotmem) at
//! every labelled point each backend works and holds exactly boot RAM plus one region per mapped
//! slot (nothing merged, nothing stale).

use serde_json::Value;

use super::scenario::Checks;
use super::serial::Source;
use super::timeline::Timeline;
use crate::guest::Vmm;

const GIB: u64 = 1 << 30;

/// `vhost-user`: each `hotmem_vm LABEL` sample with the device status of the matching snapshot.
const LABELS: [(&str, &str); 4] = [
    ("boot1", "boot1-plugged"),
    ("grown", "grown"),
    ("filled", "filled"),
    ("shrunk", "shrunk"),
];
/// The vhost-user devices `vhost-user` gives the guest.
const DEVICES: [&str; 2] = ["disk0", "fs0"];
/// `virtiofs-root`: its samples and its one device.
const ROOT_LABELS: [(&str, &str); 2] = [("grown", "grown"), ("shrunk", "shrunk")];
const ROOT_DEVICES: [&str; 1] = ["root0"];

/// Which `hotmem_vm` samples to judge, and which devices each must list.
pub struct TableSpec<'a> {
    /// (`hotmem_vm` label, snapshot label) pairs.
    pub labels: &'a [(&'a str, &'a str)],
    pub devices: &'a [&'a str],
}

/// The tables of the `vhost-user` scenario.
pub const VHOST_USER_TABLES: TableSpec = TableSpec {
    labels: &LABELS,
    devices: &DEVICES,
};

/// The tables of the `virtiofs-root` scenario.
pub const VIRTIOFS_ROOT_TABLES: TableSpec = TableSpec {
    labels: &ROOT_LABELS,
    devices: &ROOT_DEVICES,
};

/// The slot budget `hotmem-ctl vm` showed at boot: limited to `limit_slots` by the backend of
/// `limited_by` (a device id), and mem0's layout planned within what was left.
pub fn check_budget(failures: &mut Vec<String>, t: &Timeline, limit_slots: u64, limited_by: &str) {
    let json_of = |key: &str, label: &str| {
        t.all(Source::L1, key)
            .find(|e| e.word(0) == Some(label))
            .and_then(|e| serde_json::from_str::<Value>(e.rest[label.len()..].trim()).ok())
    };
    let Some(vm) = json_of("hotmem_vm", "boot1") else {
        failures.push("no hotmem_vm sample at boot1".into());
        return;
    };
    let budget = &vm["slot_budget"];
    let by = budget["limited_by"].as_str().unwrap_or_default();
    if budget["limit_slots"].as_u64() != Some(limit_slots) || !by.contains(limited_by) {
        failures.push(format!(
            "slot budget {budget}, wanted a limit of {limit_slots} set by {limited_by}"
        ));
    }
    let total = json_of("hotmem_status", "boot1-plugged")
        .and_then(|s| s["memory_devices"][0]["slots_total"].as_u64());
    let available = budget["available_slots"].as_u64();
    match (total, available) {
        (Some(total), Some(available)) if total <= available && available < limit_slots => {}
        _ => failures.push(format!(
            "mem0 has {total:?} slots, the budget left {available:?} of {limit_slots}"
        )),
    }
}

/// `virtiofs-root`: the guest's root is the shared folder.
pub fn check_root(failures: &mut Vec<String>, t: &Timeline) {
    let root = t
        .first(Source::L2, "rootfs")
        .map(|e| e.rest.trim().to_string());
    if root.as_deref() != Some("vroot virtiofs") {
        failures.push(format!(
            "the guest's root is {root:?}, wanted the shared folder (vroot virtiofs)"
        ));
    }
}
/// The file systems the guest writes to (shared folder, disk).
const MOUNTS: [&str; 2] = ["fs", "disk"];
/// Every file the guest writes is 16 MiB.
const FILE_MIB: u64 = 16;

/// The data claims: what the guest wrote verified inside twice and on the host side once.
pub fn check_files(failures: &mut Vec<String>, t: &Timeline) {
    if t.first(Source::L2, "vmounted").is_none() {
        failures.push("the guest did not mount the shared folder and the disk".into());
    }
    let Some(filled) = t.first(Source::L2, "vfilled") else {
        failures.push("the guest wrote no files through the vhost-user devices".into());
        return;
    };
    let number = |i| filled.word(i).and_then(|w| w.parse::<u64>().ok());
    let (Some(mib), Some(fs_files), Some(disk_files)) = (number(0), number(1), number(2)) else {
        failures.push(format!("unreadable vfilled event: {}", filled.rest));
        return;
    };
    let files = fs_files;
    if files == 0 || fs_files != disk_files || (fs_files + disk_files) * FILE_MIB != mib {
        failures.push(format!(
            "asked for {mib} MiB, the guest wrote {fs_files} files to the shared folder and \
             {disk_files} to the disk ({FILE_MIB} MiB each)"
        ));
    }
    for label in ["grown", "shrunk"] {
        for mount in MOUNTS {
            let verdict = t
                .all(Source::L2, "vverify")
                .find(|e| e.word(0) == Some(label) && e.word(1) == Some(mount))
                .map(|e| e.rest.clone());
            let want = format!("{label} {mount} ok {files}");
            if verdict.as_deref() != Some(want.as_str()) {
                failures.push(format!(
                    "inside the guest ({label}): {mount} verified as {verdict:?}, wanted {want}"
                ));
            }
        }
    }
    for mount in MOUNTS {
        let verdict = t
            .all(Source::L1, "host_verify")
            .find(|e| e.word(0) == Some(mount))
            .map(|e| e.rest.clone());
        let want = format!("{mount} ok {files}");
        if verdict.as_deref() != Some(want.as_str()) {
            failures.push(format!(
                "on the host side: {mount} verified as {verdict:?}, wanted {want}"
            ));
        }
    }
}

/// hotmem's memory tables: at every label each backend is ready and holds boot RAM + one
/// region per mapped slot.
pub fn check_tables(failures: &mut Vec<String>, t: &Timeline, spec: &TableSpec) {
    let mut boot_regions = std::collections::HashMap::new();
    for &(vm_label, status_label) in spec.labels {
        let Some(event) = t
            .all(Source::L1, "hotmem_vm")
            .find(|e| e.word(0) == Some(vm_label))
        else {
            failures.push(format!("no hotmem_vm sample at {vm_label}"));
            continue;
        };
        let json = event.rest[vm_label.len()..].trim();
        let devices = serde_json::from_str::<Value>(json)
            .ok()
            .and_then(|v| v["vhost_user_devices"].as_array().cloned())
            .unwrap_or_default();
        let mapped = t.status(status_label).ok().and_then(|s| s.slots_mapped);
        for &id in spec.devices {
            let Some(device) = devices.iter().find(|d| d["id"] == id) else {
                failures.push(format!("{vm_label}: no vhost-user device {id} in {json}"));
                continue;
            };
            if device["state"] != "ready" {
                failures.push(format!("{vm_label}: backend of {id} not ready: {device}"));
            }
            let (Some(held), Some(mapped)) = (device["regions_held"].as_u64(), mapped) else {
                failures.push(format!("{vm_label}: {id}: no region or slot count"));
                continue;
            };
            let boot = held.checked_sub(mapped);
            let first = *boot_regions.entry(id).or_insert(boot);
            if boot.is_none_or(|b| b == 0) || first != boot {
                failures.push(format!(
                    "{vm_label}: {id}'s backend holds {held} regions with {mapped} slots mapped \
                     (boot RAM regions at the first sample: {first:?})"
                ));
            }
        }
    }
}

/// The checks of `vhost-user`, `vhost-user-small-budget` and `virtiofs-root`.
pub(super) fn check_scenario(
    c: &mut Checks,
    scenario: &str,
    vmm: Vmm,
    t: &Timeline,
    base1: Option<u64>,
) {
    match scenario {
        "vhost-user" | "vhost-user-small-budget" => {
            c.plugged(t, "grown", 4 * GIB, 4 * GIB);
            c.guest_sees(t, "grown", 4 * GIB, base1);
            c.plugged(t, "shrunk", GIB, GIB);
            c.guest_sees(t, "shrunk", GIB, base1);
            check_files(&mut c.failures, t);
            if vmm == Vmm::Hotmem {
                let tables = &VHOST_USER_TABLES;
                check_tables(&mut c.failures, t, tables);
                // Backports' qemu-storage-daemon and virtiofsd take 509 slots, bookworm's 32.
                let limit = if scenario == "vhost-user" { 509 } else { 32 };
                check_budget(&mut c.failures, t, limit, "'disk0'");
            }
        }
        "virtiofs-root" => {
            c.plugged(t, "grown", 4 * GIB, 4 * GIB);
            c.guest_sees(t, "grown", 4 * GIB, base1);
            c.plugged(t, "shrunk", GIB, GIB);
            c.guest_sees(t, "shrunk", GIB, base1);
            check_root(&mut c.failures, t);
            if vmm == Vmm::Hotmem {
                let tables = &VIRTIOFS_ROOT_TABLES;
                check_tables(&mut c.failures, t, tables);
            }
        }
        other => c
            .failures
            .push(format!("no vhost-user checks for scenario {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = r#"{"memory_devices":[{"id":"mem0","block_size_bytes":2097152,"region_bytes":68719476736,"requested_bytes":1073741824,"plugged_bytes":1073741824,"slots_mapped":SLOTS,"mapped_bytes":1073741824}]}"#;

    fn vm(held_disk: u64, held_fs: u64, fs_state: &str) -> String {
        format!(
            r#"{{"vhost_user_devices":[{{"id":"disk0","state":"ready","regions_held":{held_disk}}},{{"id":"fs0","state":"{fs_state}","regions_held":{held_fs}}}]}}"#
        )
    }

    /// A console with one status and one hotmem_vm sample per label: `slots[i]` slots mapped,
    /// the backends holding `held[i]` (disk, fs).
    fn tables_console(slots: [u64; 4], held: [(u64, u64); 4], fs_state: &str) -> String {
        let mut console = String::new();
        for (i, (vm_label, status_label)) in LABELS.iter().enumerate() {
            console += &format!(
                "@@HM {i}0 hotmem_status {status_label} {}\n@@HM {i}1 hotmem_vm {vm_label} {}\n",
                STATUS.replace("SLOTS", &slots[i].to_string()),
                vm(held[i].0, held[i].1, fs_state)
            );
        }
        console
    }

    fn table_failures(console: &str) -> Vec<String> {
        let mut failures = Vec::new();
        check_tables(&mut failures, &Timeline::parse(console), &VHOST_USER_TABLES);
        failures
    }

    #[test]
    fn tables_equal_to_boot_ram_plus_mapped_slots_pass() {
        let held = [(2, 2), (5, 5), (5, 5), (2, 2)];
        let console = tables_console([1, 4, 4, 1], held, "ready");
        assert_eq!(table_failures(&console), Vec::<String>::new());
    }

    #[test]
    fn a_stale_region_or_a_broken_backend_fails() {
        let stale = tables_console([1, 4, 4, 1], [(2, 2), (5, 5), (5, 5), (2, 3)], "ready");
        let failures = table_failures(&stale);
        assert!(
            failures.len() == 1 && failures[0].contains("shrunk: fs0"),
            "{failures:?}"
        );
        let broken = tables_console([1, 4, 4, 1], [(2, 2), (5, 5), (5, 5), (2, 2)], "broken");
        assert_eq!(table_failures(&broken).len(), 4);
        assert!(!table_failures("").is_empty());
    }

    fn files_console(fs_verdict: &str, host_disk: &str) -> String {
        format!(
            "@@L2 1 @@HM 1 vmounted\n@@L2 2 @@HM 2 vfilled 512 16 16\n\
             @@L2 3 @@HM 3 vverify grown fs ok 16\n@@L2 4 @@HM 4 vverify grown disk ok 16\n\
             @@L2 5 @@HM 5 vverify shrunk fs {fs_verdict}\n@@L2 6 @@HM 6 vverify shrunk disk ok 16\n\
             @@HM 7 host_verify fs ok 16\n@@HM 8 host_verify disk {host_disk}\n"
        )
    }

    fn file_failures(console: &str) -> Vec<String> {
        let mut failures = Vec::new();
        check_files(&mut failures, &Timeline::parse(console));
        failures
    }

    #[test]
    fn the_budget_must_come_from_the_named_backend_and_hold_the_layout() {
        let console = |limit: u64, total: u64| {
            format!(
                "@@HM 1 hotmem_status boot1-plugged {}\n@@HM 2 hotmem_vm boot1 \
                 {{\"slot_budget\":{{\"available_slots\":{},\"limit_slots\":{limit},\
                 \"limited_by\":\"vhost-user backend 'disk0'\"}}}}\n",
                r#"{"memory_devices":[{"slots_total":TOTAL}]}"#
                    .replace("TOTAL", &total.to_string()),
                limit - 1
            )
        };
        let failures = |console: &str, limit| {
            let mut failures = Vec::new();
            check_budget(&mut failures, &Timeline::parse(console), limit, "'disk0'");
            failures
        };
        assert_eq!(failures(&console(32, 20), 32), Vec::<String>::new());
        assert!(!failures(&console(509, 20), 32).is_empty());
        assert_eq!(failures(&console(32, 40), 32).len(), 1);
        let mut other = Vec::new();
        check_budget(&mut other, &Timeline::parse(&console(32, 20)), 32, "'fs0'");
        assert_eq!(other.len(), 1);
    }

    #[test]
    fn files_verified_inside_and_on_the_host_pass() {
        assert_eq!(
            file_failures(&files_console("ok 16", "ok 16")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_bad_checksum_inside_or_on_the_host_fails() {
        let inside = file_failures(&files_console("bad 1", "ok 16"));
        assert!(
            inside.len() == 1 && inside[0].contains("shrunk"),
            "{inside:?}"
        );
        let host = file_failures(&files_console("ok 16", "missing 0"));
        assert!(host.len() == 1 && host[0].contains("host side"), "{host:?}");
        let short =
            files_console("ok 16", "ok 16").replace("vfilled 512 16 16", "vfilled 512 16 8");
        assert!(!file_failures(&short).is_empty());
        assert!(!file_failures("").is_empty());
    }
}
