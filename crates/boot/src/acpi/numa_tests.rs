//! SRAT/SLIT checked with a reader written from the ACPI field offsets (ACPI 6.5 §5.2.16,
//! §5.2.17; Linux `include/acpi/actbl3.h`), not from the builders.

use super::*;
use crate::e820::{E820Kind, build_e820};
use crate::layout::{GIB, GuestLayout, MIB};
use crate::numa::{HotplugRange, NodeId, NumaNode, NumaTopology};

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

#[derive(Debug, PartialEq, Eq)]
enum Affinity {
    Cpu {
        pxm: u32,
        apic_id: u8,
        flags: u32,
    },
    Memory {
        pxm: u32,
        base: u64,
        len: u64,
        flags: u32,
    },
}

/// Every table the XSDT points at, by signature, after checking length and checksum.
fn tables(t: &AcpiTables) -> Vec<(String, Vec<u8>)> {
    let at = |addr: u64| {
        let off = (addr - t.base.0) as usize;
        let len = u32_at(&t.bytes, off + 4) as usize;
        let table = t.bytes[off..off + len].to_vec();
        assert_eq!(
            table.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
            0,
            "checksum"
        );
        table
    };
    let xsdt = at(u64_at(&t.bytes, 24));
    xsdt[36..]
        .chunks(8)
        .map(|p| {
            let table = at(u64::from_le_bytes(p.try_into().unwrap()));
            (String::from_utf8(table[..4].to_vec()).unwrap(), table)
        })
        .collect()
}

fn parse_srat(t: &[u8]) -> Vec<Affinity> {
    assert_eq!(&t[..4], b"SRAT");
    assert_eq!(u32_at(t, 4) as usize, t.len());
    assert_eq!(u32_at(t, 36), 1, "table_revision must be 1");
    assert_eq!(u64_at(t, 40), 0, "reserved");
    let mut off = 48;
    let mut out = Vec::new();
    while off < t.len() {
        let (kind, len) = (t[off], usize::from(t[off + 1]));
        let e = &t[off..off + len];
        match kind {
            0 => {
                assert_eq!(len, 16, "processor local APIC affinity length");
                let pxm = u32::from(e[2]) | (u32::from_le_bytes([e[9], e[10], e[11], 0]) << 8);
                assert_eq!(e[8], 0, "SAPIC EID");
                assert_eq!(u32_at(e, 12), 0, "clock domain");
                out.push(Affinity::Cpu {
                    pxm,
                    apic_id: e[3],
                    flags: u32_at(e, 4),
                });
            }
            1 => {
                assert_eq!(len, 40, "memory affinity length");
                let lo_hi =
                    |o: usize| u64::from(u32_at(e, o)) | (u64::from(u32_at(e, o + 4)) << 32);
                assert_eq!(u32_at(e, 24), 0);
                assert_eq!(u64_at(e, 32), 0);
                out.push(Affinity::Memory {
                    pxm: u32_at(e, 2),
                    base: lo_hi(8),
                    len: lo_hi(16),
                    flags: u32_at(e, 28),
                });
            }
            other => panic!("unexpected SRAT entry type {other}"),
        }
        off += len;
    }
    assert_eq!(off, t.len());
    out
}

fn node(id: u16, cpus: &[u8], boot_memory_bytes: u64) -> NumaNode {
    NumaNode {
        id: NodeId(id),
        cpus: cpus.to_vec(),
        boot_memory_bytes,
    }
}

fn config(layout: &GuestLayout, num_cpus: u8, numa: NumaTopology) -> AcpiConfig {
    AcpiConfig {
        num_cpus,
        pci_mmio32: layout.pci_mmio32_window(),
        pci_mmio64: 0..0,
        ram_ranges: layout.ram_ranges().to_vec(),
        numa: Some(numa),
    }
}

/// The e2e shape: 2 vCPUs, 512 MiB + 512 MiB, a device per node, distance 21.
fn two_nodes() -> NumaTopology {
    NumaTopology {
        nodes: vec![node(0, &[0], 512 * MIB), node(1, &[1], 512 * MIB)],
        distances: Some(vec![vec![10, 21], vec![21, 10]]),
        hotplug: vec![
            HotplugRange {
                range: 64 * GIB..128 * GIB,
                node: NodeId(0),
            },
            HotplugRange {
                range: 128 * GIB..192 * GIB,
                node: NodeId(1),
            },
        ],
    }
}

#[test]
fn two_node_srat_has_cpus_boot_ram_and_hotplug_ranges() {
    let layout = GuestLayout::new(GIB).unwrap();
    let t = build_acpi_tables(&config(&layout, 2, two_nodes())).unwrap();
    let all = tables(&t);
    let sigs: Vec<&str> = all.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(sigs, ["FACP", "APIC", "SRAT", "SLIT"]);
    let srat = parse_srat(&all[2].1);
    assert_eq!(srat.len(), 2 + 2 + 2);
    assert_eq!(all[2].1.len(), 48 + 2 * 16 + 4 * 40);
    assert_eq!(
        srat,
        [
            Affinity::Cpu {
                pxm: 0,
                apic_id: 0,
                flags: 1
            },
            Affinity::Cpu {
                pxm: 1,
                apic_id: 1,
                flags: 1
            },
            Affinity::Memory {
                pxm: 0,
                base: 0,
                len: 512 * MIB,
                flags: 1
            },
            Affinity::Memory {
                pxm: 0,
                base: 64 * GIB,
                len: 64 * GIB,
                flags: 0b11
            },
            Affinity::Memory {
                pxm: 1,
                base: 512 * MIB,
                len: 512 * MIB,
                flags: 1
            },
            Affinity::Memory {
                pxm: 1,
                base: 128 * GIB,
                len: 64 * GIB,
                flags: 0b11
            },
        ]
    );
}

#[test]
fn boot_ram_entries_cover_the_e820_ram_across_the_hole() {
    let layout = GuestLayout::new(5 * GIB).unwrap();
    let topo = NumaTopology {
        nodes: vec![node(0, &[0, 1], 2 * GIB), node(1, &[2], 3 * GIB)],
        ..Default::default()
    };
    let t = build_acpi_tables(&config(&layout, 3, topo)).unwrap();
    let srat = parse_srat(&tables(&t)[2].1);
    let ranges: Vec<(u32, u64, u64)> = srat
        .iter()
        .filter_map(|a| match *a {
            Affinity::Memory {
                pxm,
                base,
                len,
                flags: 1,
            } => Some((pxm, base, base + len)),
            _ => None,
        })
        .collect();
    let per_node = |p: u32| -> u64 { ranges.iter().filter(|r| r.0 == p).map(|r| r.2 - r.1).sum() };
    assert_eq!((per_node(0), per_node(1)), (2 * GIB, 3 * GIB));
    for e in build_e820(&layout)
        .iter()
        .filter(|e| e.kind == E820Kind::Ram)
    {
        let end = e.addr + e.size_bytes;
        let mut at = e.addr;
        while at < end {
            let r = ranges
                .iter()
                .find(|r| r.1 <= at && at < r.2)
                .unwrap_or_else(|| panic!("e820 RAM at {at:#x} has no SRAT range"));
            at = r.2;
        }
    }
}

#[test]
fn cpu_entries_go_in_pxm_order_and_memory_only_nodes_come_last() {
    let layout = GuestLayout::new(GIB).unwrap();
    let topo = NumaTopology {
        nodes: vec![
            node(0, &[1, 3], 512 * MIB),
            node(1, &[0, 2], 512 * MIB),
            node(2, &[], 0),
        ],
        distances: None,
        hotplug: vec![
            HotplugRange {
                range: 128 * GIB..192 * GIB,
                node: NodeId(2),
            },
            HotplugRange {
                range: 64 * GIB..128 * GIB,
                node: NodeId(0),
            },
        ],
    };
    let t = build_acpi_tables(&config(&layout, 4, topo)).unwrap();
    let all = tables(&t);
    assert!(
        all.iter().all(|(s, _)| s != "SLIT"),
        "no distances, no SLIT"
    );
    let srat = parse_srat(&all[2].1);
    let cpus: Vec<(u32, u8)> = srat
        .iter()
        .filter_map(|a| match *a {
            Affinity::Cpu { pxm, apic_id, .. } => Some((pxm, apic_id)),
            _ => None,
        })
        .collect();
    assert_eq!(cpus, [(0, 1), (0, 3), (1, 0), (1, 2)]);
    assert_eq!(
        srat.last(),
        Some(&Affinity::Memory {
            pxm: 2,
            base: 128 * GIB,
            len: 64 * GIB,
            flags: 0b11
        })
    );
    let first_memory = srat
        .iter()
        .position(|a| matches!(a, Affinity::Memory { .. }));
    assert_eq!(
        first_memory,
        Some(4),
        "every CPU entry precedes the memory entries"
    );
}

#[test]
fn slit_holds_the_matrix_at_spec_offsets() {
    let layout = GuestLayout::new(GIB).unwrap();
    let mut topo = two_nodes();
    topo.nodes.push(node(2, &[], 0));
    topo.hotplug[1].node = NodeId(2);
    topo.distances = Some(vec![vec![10, 21, 31], vec![21, 10, 41], vec![31, 41, 10]]);
    let t = build_acpi_tables(&config(&layout, 2, topo)).unwrap();
    let all = tables(&t);
    let slit = &all.iter().find(|(s, _)| s == "SLIT").unwrap().1;
    assert_eq!(slit.len(), 36 + 8 + 9);
    assert_eq!(slit[8], 1, "revision");
    let n = u64_at(slit, 36) as usize;
    assert_eq!(n, 3);
    let at = |i: usize, j: usize| slit[44 + i * n + j];
    assert_eq!((at(0, 0), at(1, 1), at(2, 2)), (10, 10, 10));
    assert_eq!((at(0, 1), at(1, 0), at(0, 2), at(2, 1)), (21, 21, 31, 41));
}

#[test]
fn inconsistent_topologies_are_refused() {
    let layout = GuestLayout::new(GIB).unwrap();
    let bad = |edit: &dyn Fn(&mut NumaTopology), says: &str| {
        let mut topo = two_nodes();
        edit(&mut topo);
        let err = build_acpi_tables(&config(&layout, 2, topo)).unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    };
    bad(&|t| t.nodes[1].boot_memory_bytes = 256 * MIB, "adds up");
    bad(&|t| t.nodes[1].cpus = vec![0], "two nodes");
    bad(&|t| t.nodes[1].cpus = vec![], "vCPU 1 is on no node");
    bad(&|t| t.nodes[1].cpus = vec![1, 2], "does not exist");
    bad(&|t| t.nodes[1].id = NodeId(3), "position 1");
    bad(
        &|t| t.distances = Some(vec![vec![10, 10], vec![21, 10]]),
        "0 -> 1",
    );
    bad(
        &|t| t.distances = Some(vec![vec![11, 21], vec![21, 10]]),
        "0 -> 0",
    );
    bad(&|t| t.hotplug[0].node = NodeId(5), "unknown node 5");
}
