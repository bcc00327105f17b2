//! What must hold after the NUMA scenarios, from the guest's per-node reports (`numa LABEL`,
//! `numafacts` in the L2 init) and the VMM's device reports.

use std::collections::BTreeMap;

use super::serial::Source;
use super::timeline::Timeline;
use crate::guest::Vmm;

const GIB_KIB: u64 = 1 << 20;
/// Linux's x86 memory block.
const BLOCK_BYTES: u64 = 128 << 20;

/// Node → MemTotal KiB the guest reported at `label` (offline nodes are absent).
fn node_mem(t: &Timeline, label: &str) -> BTreeMap<u32, u64> {
    t.all(Source::L2, "node_mem")
        .filter(|e| e.word(0) == Some(label))
        .filter_map(|e| Some((e.word(1)?.parse().ok()?, e.word(2)?.parse().ok()?)))
        .collect()
}

/// One device's blocks as the guest reported them at a label.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeviceBlocks {
    start: u64,
    nid: Option<u32>,
    online: u64,
    on_nid: u64,
    movable: u64,
}

/// The devices at `label`, by start address (the VMMs place them in command-line order).
fn device_blocks(t: &Timeline, label: &str) -> Vec<DeviceBlocks> {
    let mut v: Vec<DeviceBlocks> = t
        .all(Source::L2, "vmem_blocks")
        .filter(|e| e.word(0) == Some(label))
        .filter_map(|e| {
            Some(DeviceBlocks {
                start: e.field_u64("start")?,
                nid: e.field("nid")?.parse().ok(),
                online: e.field_u64("online")?,
                on_nid: e.field_u64("on_nid")?,
                movable: e.field_u64("movable")?,
            })
        })
        .collect();
    v.sort_by_key(|d| d.start);
    v
}

/// A change of per-node MemTotal between two labels.
struct Step<'a> {
    from: &'a str,
    to: &'a str,
    /// Node and the KiB it must gain (negative: lose); every other node stays.
    node: u32,
    delta_kib: i64,
}

fn check_step(failures: &mut Vec<String>, t: &Timeline, step: &Step<'_>) {
    let (before, after) = (node_mem(t, step.from), node_mem(t, step.to));
    if before.is_empty() || after.is_empty() {
        failures.push(format!(
            "no per-node MemTotal at {} or {}",
            step.from, step.to
        ));
        return;
    }
    let nodes: std::collections::BTreeSet<u32> =
        before.keys().chain(after.keys()).copied().collect();
    for n in nodes {
        let kib = |m: &BTreeMap<u32, u64>| m.get(&n).copied().unwrap_or(0) as i64;
        let got = kib(&after) - kib(&before);
        let want = if n == step.node { step.delta_kib } else { 0 };
        if got != want {
            failures.push(format!(
                "{} -> {}: node {n} MemTotal changed by {got} KiB, wanted {want} KiB ({:?} -> {:?})",
                step.from, step.to, before, after
            ));
        }
    }
}

/// The device `index` (by address) at `label` has `plugged_bytes` online on node `nid`, every
/// online block linked to that node only and in ZONE_MOVABLE.
fn check_blocks(
    failures: &mut Vec<String>,
    t: &Timeline,
    label: &str,
    index: usize,
    nid: u32,
    plugged_bytes: u64,
) {
    let devices = device_blocks(t, label);
    let Some(d) = devices.get(index) else {
        failures.push(format!(
            "{label}: no block report for device {index}: {devices:?}"
        ));
        return;
    };
    let want = plugged_bytes / BLOCK_BYTES;
    let ok = d.nid == Some(nid) && d.online == want && d.on_nid == want && d.movable == want;
    if !ok {
        failures.push(format!(
            "{label}: device {index} {d:?}, wanted nid {nid} with {want} online blocks, all linked to node{nid} only and Movable"
        ));
    }
}

/// The guest saw the nodes with their CPUs and distances (first report) and logged no NUMA
/// trouble (last report).
fn check_facts(
    failures: &mut Vec<String>,
    t: &Timeline,
    nodes: &[(u32, &str, &str)],
    possible: &str,
) {
    let facts = t.first(Source::L2, "numa_nodes");
    let got = facts.and_then(|e| e.field("possible"));
    if got != Some(possible) {
        failures.push(format!("guest's possible nodes {got:?}, wanted {possible}"));
    }
    for &(node, cpus, distance) in nodes {
        let e = t
            .all(Source::L2, "numa_node")
            .find(|e| e.word(0) == Some(&node.to_string()));
        let got = e.map(|e| {
            (
                e.field("cpus").unwrap_or("?"),
                e.field("distance").unwrap_or("?"),
            )
        });
        if got != Some((cpus, distance)) {
            failures.push(format!(
                "guest node {node}: (cpus, distance) {got:?}, wanted ({cpus}, {distance})"
            ));
        }
    }
    // The last report covers the whole run.
    let warnings = t
        .all(Source::L2, "kwarn_count")
        .last()
        .and_then(|e| e.word(0));
    if warnings != Some("0") {
        let lines: Vec<&str> = t
            .all(Source::L2, "kwarn")
            .map(|e| e.rest.as_str())
            .collect();
        failures.push(format!(
            "guest kernel log has NUMA warnings ({warnings:?}): {lines:?}"
        ));
    }
    for node in nodes.iter().map(|n| n.0) {
        let srat = format!("Node {node} PXM {node}");
        if !t.all(Source::L2, "klog").any(|e| e.rest.contains(&srat)) {
            failures.push(format!("guest kernel log lacks \"SRAT: {srat}\""));
        }
    }
}

/// hotmem reports each device's node.
fn check_reported_nodes(failures: &mut Vec<String>, t: &Timeline, want: &[(&str, u64)]) {
    let json = t
        .all(Source::L1, "hotmem_status")
        .find(|e| e.word(0) == Some("base"))
        .map(|e| e.rest["base".len()..].trim().to_string());
    let value: Option<serde_json::Value> =
        json.as_deref().and_then(|j| serde_json::from_str(j).ok());
    for &(id, node) in want {
        let got = value.as_ref().and_then(|v| {
            v["memory_devices"]
                .as_array()?
                .iter()
                .find(|d| d["id"] == id)?["node"]
                .as_u64()
        });
        if got != Some(node) {
            failures.push(format!(
                "hotmem reports {id} on node {got:?}, wanted {node}"
            ));
        }
    }
}

/// `numa`: mem1's growth lands on node 1 only, mem0's on node 0 only; both shrink back.
pub fn check_numa(failures: &mut Vec<String>, t: &Timeline, vmm: Vmm) {
    for step in [
        Step {
            from: "base",
            to: "grown1",
            node: 1,
            delta_kib: 2 * GIB_KIB as i64,
        },
        Step {
            from: "grown1",
            to: "grown0",
            node: 0,
            delta_kib: 2 * GIB_KIB as i64,
        },
        Step {
            from: "base",
            to: "shrunk",
            node: 0,
            delta_kib: 0,
        },
    ] {
        check_step(failures, t, &step);
    }
    check_blocks(failures, t, "grown1", 1, 1, 2 << 30);
    check_blocks(failures, t, "grown1", 0, 0, 1 << 30);
    check_blocks(failures, t, "grown0", 0, 0, 3 << 30);
    check_blocks(failures, t, "grown0", 1, 1, 2 << 30);
    check_blocks(failures, t, "shrunk", 0, 0, 1 << 30);
    check_blocks(failures, t, "shrunk", 1, 1, 0);
    check_facts(failures, t, &[(0, "0", "10,21"), (1, "1", "21,10")], "0-1");
    if vmm == Vmm::Hotmem {
        check_reported_nodes(failures, t, &[("mem0", 0), ("mem1", 1)]);
    }
}

/// `numa-memory-only-node`: node 2 (no CPUs, no boot memory) gets mem2's memory, Movable, and
/// loses it again on shrink.
pub fn check_memory_only_node(failures: &mut Vec<String>, t: &Timeline) {
    let base = node_mem(t, "base");
    if base.get(&2).copied().unwrap_or(0) != 0 {
        failures.push(format!("node 2 has memory before mem2 grew: {base:?}"));
    }
    check_step(
        failures,
        t,
        &Step {
            from: "base",
            to: "grown2",
            node: 2,
            delta_kib: 2 * GIB_KIB as i64,
        },
    );
    check_step(
        failures,
        t,
        &Step {
            from: "base",
            to: "shrunk2",
            node: 2,
            delta_kib: 0,
        },
    );
    check_blocks(failures, t, "grown2", 1, 2, 2 << 30);
    check_blocks(failures, t, "shrunk2", 1, 2, 0);
    check_facts(
        failures,
        t,
        &[
            (0, "0", "10,21,31"),
            (1, "1", "21,10,31"),
            (2, "", "31,31,10"),
        ],
        "0-2",
    );
    check_reported_nodes(failures, t, &[("mem0", 0), ("mem2", 2)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(node1_grown_kib: u64) -> String {
        let mut s = String::new();
        let mut line = |l: &str| s.push_str(&format!("@@L2 1 @@HM 1 {l}\n"));
        let base = |label: &str, n0: u64, n1: u64| {
            format!("node_mem {label} 0 {n0}\n@@L2 1 @@HM 1 node_mem {label} 1 {n1}")
        };
        line(&base("base", 1_400_000, 480_000));
        line(&base("grown1", 1_400_000, node1_grown_kib));
        line(&base("grown0", 3_497_152, node1_grown_kib));
        line(&base("shrunk", 1_400_000, 480_000));
        line("vmem_blocks grown1 start=68719476736 nid=0 online=8 on_nid=8 movable=8");
        line("vmem_blocks grown1 start=137438953472 nid=1 online=16 on_nid=16 movable=16");
        line("vmem_blocks grown0 start=68719476736 nid=0 online=24 on_nid=24 movable=24");
        line("vmem_blocks grown0 start=137438953472 nid=1 online=16 on_nid=16 movable=16");
        line("vmem_blocks shrunk start=68719476736 nid=0 online=8 on_nid=8 movable=8");
        line("vmem_blocks shrunk start=137438953472 nid=1 online=0 on_nid=0 movable=0");
        line("numa_nodes possible=0-1 online=0-1");
        line("numa_node 0 cpus=0 distance=10,21");
        line("numa_node 1 cpus=1 distance=21,10");
        line("kwarn_count 0");
        line("klog ACPI: SRAT: Node 0 PXM 0 [mem 0x00000000-0x1fffffff]");
        line("klog ACPI: SRAT: Node 1 PXM 1 [mem 0x20000000-0x3fffffff]");
        s
    }

    #[test]
    fn a_clean_numa_run_passes() {
        let mut f = Vec::new();
        check_numa(
            &mut f,
            &Timeline::parse(&console(480_000 + 2 * GIB_KIB)),
            Vmm::Qemu,
        );
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn memory_on_the_wrong_node_fails() {
        let mut f = Vec::new();
        let c = console(480_000).replace(
            "grown1 0 1400000",
            &format!("grown1 0 {}", 1_400_000 + 2 * GIB_KIB),
        );
        check_numa(&mut f, &Timeline::parse(&c), Vmm::Qemu);
        assert!(
            f.iter().any(|m| m.contains("node 1 MemTotal changed by 0")),
            "{f:?}"
        );
        assert!(
            f.iter()
                .any(|m| m.contains("node 0 MemTotal changed by 2097152")),
            "{f:?}"
        );
        let mut f = Vec::new();
        let c = console(480_000 + 2 * GIB_KIB)
            .replace("nid=1 online=16 on_nid=16", "nid=0 online=16 on_nid=16");
        check_numa(&mut f, &Timeline::parse(&c), Vmm::Qemu);
        assert!(f.iter().any(|m| m.contains("grown1: device 1")), "{f:?}");
    }

    #[test]
    fn warnings_and_missing_distances_fail() {
        let mut f = Vec::new();
        let c = console(480_000 + 2 * GIB_KIB)
            .replace("kwarn_count 0", "kwarn_count 1")
            .replace("distance=10,21", "distance=10,20");
        check_numa(&mut f, &Timeline::parse(&c), Vmm::Qemu);
        assert!(f.iter().any(|m| m.contains("NUMA warnings")), "{f:?}");
        assert!(f.iter().any(|m| m.contains("guest node 0")), "{f:?}");
    }
}
