//! The guest's NUMA topology as the firmware tables describe it: nodes with their vCPUs and
//! boot memory, distances, and the hot-pluggable ranges of memory devices.
//!
//! Node numbers are ACPI proximity domains (PXM) too: `NodeId(n)` is PXM `n`.

use std::ops::Range;

/// A NUMA node number, equal to its ACPI proximity domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u16);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Distance from a node to itself (ACPI SLIT).
pub const LOCAL_DISTANCE: u8 = 10;
/// Distance between two nodes when none is given (what Linux assumes without a SLIT).
pub const DEFAULT_REMOTE_DISTANCE: u8 = 20;

/// One node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaNode {
    /// The node (and PXM).
    pub id: NodeId,
    /// vCPU indices (= APIC ids) on the node.
    pub cpus: Vec<u8>,
    /// Boot RAM on the node.
    pub boot_memory_bytes: u64,
}

/// A memory device's region and the node its memory belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotplugRange {
    /// Guest physical range of the region.
    pub range: Range<u64>,
    /// Its node.
    pub node: NodeId,
}

/// The whole topology. Nodes are numbered `0..nodes.len()` in order; the VMM validated that.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NumaTopology {
    /// The nodes, `nodes[i].id == NodeId(i)`.
    pub nodes: Vec<NumaNode>,
    /// Full distance matrix `distances[from][to]`, when the operator gave distances (SLIT).
    pub distances: Option<Vec<Vec<u8>>>,
    /// Memory device regions.
    pub hotplug: Vec<HotplugRange>,
}

impl NumaTopology {
    /// Checks what the tables need to be read as meant: nodes numbered `0..n` in order, every
    /// vCPU of `0..num_cpus` on exactly one node, boot memory adding up to `ram_bytes`, a square
    /// distance matrix with 10 on the diagonal only, every hot-plug range on a known node.
    pub fn check(&self, num_cpus: u8, ram_bytes: u64) -> Result<(), String> {
        let n = self.nodes.len();
        if n == 0 || n > usize::from(u8::MAX) {
            return Err(format!("{n} nodes: expected 1 to 255"));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if usize::from(node.id.0) != i {
                return Err(format!("node {} listed at position {i}", node.id));
            }
        }
        let mut seen = vec![false; usize::from(num_cpus)];
        for node in &self.nodes {
            for &cpu in &node.cpus {
                let slot = seen
                    .get_mut(usize::from(cpu))
                    .ok_or_else(|| format!("node {}: vCPU {cpu} does not exist", node.id))?;
                if std::mem::replace(slot, true) {
                    return Err(format!("vCPU {cpu} is on two nodes"));
                }
            }
        }
        if let Some(cpu) = seen.iter().position(|s| !s) {
            return Err(format!("vCPU {cpu} is on no node"));
        }
        let sum: u64 = self.nodes.iter().map(|n| n.boot_memory_bytes).sum();
        if sum != ram_bytes {
            return Err(format!(
                "node memory adds up to {sum} bytes, boot RAM is {ram_bytes}"
            ));
        }
        if let Some(d) = &self.distances {
            for (i, row) in d.iter().enumerate() {
                if d.len() != n || row.len() != n {
                    return Err(format!("distance matrix is not {n} x {n}"));
                }
                for (j, &v) in row.iter().enumerate() {
                    let ok = if i == j {
                        v == LOCAL_DISTANCE
                    } else {
                        v > LOCAL_DISTANCE
                    };
                    if !ok {
                        return Err(format!("distance {i} -> {j} of {v}"));
                    }
                }
            }
        }
        if let Some(h) = self.hotplug.iter().find(|h| usize::from(h.node.0) >= n) {
            return Err(format!(
                "hot-plug range {:#x?} on unknown node {}",
                h.range, h.node
            ));
        }
        Ok(())
    }
}

/// A piece of boot RAM on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMemory {
    /// The node.
    pub node: NodeId,
    /// Guest physical range.
    pub range: Range<u64>,
}

impl NumaTopology {
    /// Boot RAM split among the nodes: in node order, each node takes the next
    /// `boot_memory_bytes` of RAM, where RAM is `ram_ranges` in address order (for a
    /// [`crate::GuestLayout`]: below the 32-bit hole, then from 4 GiB). The result covers every
    /// boot RAM byte when the node sizes add up to it.
    pub fn boot_memory_ranges(&self, ram_ranges: &[Range<u64>]) -> Vec<NodeMemory> {
        let mut pieces = Vec::new();
        let mut ram = ram_ranges.iter().cloned();
        let mut current = ram.next();
        for node in &self.nodes {
            let mut left = node.boot_memory_bytes;
            while left > 0 {
                let Some(r) = current.as_mut() else {
                    return pieces;
                };
                let take = left.min(r.end - r.start);
                pieces.push(NodeMemory {
                    node: node.id,
                    range: r.start..r.start + take,
                });
                r.start += take;
                left -= take;
                if r.start == r.end {
                    current = ram.next();
                }
            }
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{GIB, GuestLayout, MIB};

    fn topo(sizes: &[u64]) -> NumaTopology {
        NumaTopology {
            nodes: sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| NumaNode {
                    id: NodeId(i as u16),
                    cpus: vec![],
                    boot_memory_bytes: s,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn nodes_take_consecutive_ram() {
        let layout = GuestLayout::new(GIB).unwrap();
        let r = topo(&[512 * MIB, 512 * MIB]).boot_memory_ranges(layout.ram_ranges());
        assert_eq!(
            r,
            vec![
                NodeMemory {
                    node: NodeId(0),
                    range: 0..512 * MIB
                },
                NodeMemory {
                    node: NodeId(1),
                    range: 512 * MIB..GIB
                },
            ]
        );
    }

    #[test]
    fn a_node_across_the_hole_gets_two_pieces_and_empty_nodes_none() {
        let layout = GuestLayout::new(5 * GIB).unwrap();
        let r = topo(&[GIB, 0, 4 * GIB]).boot_memory_ranges(layout.ram_ranges());
        let low_end = layout.low_ram_end().0;
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].range, 0..GIB);
        assert_eq!((r[1].node, r[1].range.clone()), (NodeId(2), GIB..low_end));
        assert_eq!(r[2].range.start, 4 * GIB);
        let total: u64 = r.iter().map(|p| p.range.end - p.range.start).sum();
        assert_eq!(total, 5 * GIB);
    }
}
