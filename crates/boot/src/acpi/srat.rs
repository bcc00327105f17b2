//! SRAT (System Resource Affinity Table): which proximity domain each vCPU, each piece of boot
//! RAM and each memory device region belongs to.
//!
//! Entry order matters to Linux, which numbers nodes by the first appearance of each PXM, CPU
//! entries first: CPU entries go in (PXM, APIC id) order, then memory entries in PXM order, so
//! that node numbers equal PXMs.

use super::{finish_table, header};
use crate::numa::{NodeId, NumaTopology};

/// SRAT header revision (ACPI 6.x).
const SRAT_REVISION: u8 = 3;
/// The `table_revision` field after the header; the spec says it must be 1.
const SRAT_TABLE_REVISION: u32 = 1;
const TYPE_CPU_AFFINITY: u8 = 0;
const CPU_AFFINITY_BYTES: u8 = 16;
const TYPE_MEMORY_AFFINITY: u8 = 1;
const MEMORY_AFFINITY_BYTES: u8 = 40;
const CPU_ENABLED: u32 = 1;
/// Memory affinity flag: the entry is in use.
pub const MEM_ENABLED: u32 = 1 << 0;
/// Memory affinity flag: the range may be hot-plugged.
pub const MEM_HOT_PLUGGABLE: u32 = 1 << 1;

fn cpu_affinity(pxm: NodeId, apic_id: u8) -> Vec<u8> {
    let [pxm_lo, pxm_hi @ ..] = u32::from(pxm.0).to_le_bytes();
    let mut e = vec![TYPE_CPU_AFFINITY, CPU_AFFINITY_BYTES, pxm_lo, apic_id];
    e.extend_from_slice(&CPU_ENABLED.to_le_bytes());
    e.push(0); // local SAPIC EID
    e.extend_from_slice(&pxm_hi); // PXM bits 31:8
    e.extend_from_slice(&0u32.to_le_bytes()); // clock domain
    e
}

fn memory_affinity(pxm: NodeId, range: &std::ops::Range<u64>, flags: u32) -> Vec<u8> {
    let mut e = vec![TYPE_MEMORY_AFFINITY, MEMORY_AFFINITY_BYTES];
    e.extend_from_slice(&u32::from(pxm.0).to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes());
    e.extend_from_slice(&range.start.to_le_bytes()); // base low, high
    e.extend_from_slice(&(range.end - range.start).to_le_bytes()); // length low, high
    e.extend_from_slice(&0u32.to_le_bytes());
    e.extend_from_slice(&flags.to_le_bytes());
    e.extend_from_slice(&0u64.to_le_bytes());
    e
}

/// Build the SRAT for `topology` over the boot RAM `ram_ranges`.
pub(crate) fn build(topology: &NumaTopology, ram_ranges: &[std::ops::Range<u64>]) -> Vec<u8> {
    let mut t = header(b"SRAT", SRAT_REVISION);
    t.extend_from_slice(&SRAT_TABLE_REVISION.to_le_bytes());
    t.extend_from_slice(&0u64.to_le_bytes());
    let mut nodes: Vec<_> = topology.nodes.iter().collect();
    nodes.sort_by_key(|n| n.id);
    for node in &nodes {
        let mut cpus = node.cpus.clone();
        cpus.sort_unstable();
        for apic_id in cpus {
            t.extend(cpu_affinity(node.id, apic_id));
        }
    }
    let boot = topology.boot_memory_ranges(ram_ranges);
    for node in &nodes {
        for piece in boot.iter().filter(|p| p.node == node.id) {
            t.extend(memory_affinity(node.id, &piece.range, MEM_ENABLED));
        }
        for hp in topology.hotplug.iter().filter(|h| h.node == node.id) {
            t.extend(memory_affinity(
                node.id,
                &hp.range,
                MEM_ENABLED | MEM_HOT_PLUGGABLE,
            ));
        }
    }
    finish_table(t)
}
