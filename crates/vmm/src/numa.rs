//! `--numa node=N,cpus=LIST,memory=SIZE[,distances=M:D;...]`: the guest's NUMA nodes, checked
//! against the vCPUs, the boot memory and the memory devices' `node=`.
//!
//! Rules (each broken one is refused with its reason):
//! - nodes are numbered `0..n` (each once); PXM = node number;
//! - every vCPU is on exactly one node; nodes with CPUs come before nodes without (Linux numbers
//!   nodes in the order it first sees them, CPUs first, so this keeps node == PXM);
//! - boot memory is the sum of the nodes' `memory=` (and equals `--memory` if that is given);
//!   each node's memory is a multiple of 128 MiB (Linux's memory block);
//! - distances are more than 10, the same both ways when both are given (one direction given is
//!   mirrored, missing ones are 20);
//! - every node has CPUs, boot memory or a memory device (else the guest cannot see it), and
//!   every device's `node=` names a node.

use api::model::NumaNodeInfo;
use api::size::{format_size, parse_size};
use boot::numa::{
    DEFAULT_REMOTE_DISTANCE, HotplugRange, LOCAL_DISTANCE, NodeId, NumaNode, NumaTopology,
};

/// Linux's x86 memory block: node boundaries in boot RAM stay on it.
const NODE_MEMORY_GRANULE_BYTES: u64 = 128 << 20;

/// One `--numa` as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaNodeSpec {
    /// `node=`.
    pub node: NodeId,
    /// `cpus=`: vCPU indices.
    pub cpus: Vec<u32>,
    /// `memory=`: boot memory on the node.
    pub memory_bytes: u64,
    /// `distances=`: (to node, distance).
    pub distances: Vec<(NodeId, u8)>,
}

fn parse_node(value: &str) -> Result<NodeId, String> {
    value
        .parse::<u16>()
        .map(NodeId)
        .map_err(|_| format!("node '{value}': expected a node number"))
}

/// Parses `0-3;6` (items `N` or `N-M` separated by `;`).
fn parse_cpu_list(list: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    for item in list.split(';').filter(|i| !i.is_empty()) {
        let num = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("cpus '{list}': '{s}' is not a vCPU number"))
        };
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("cpus '{list}': range {item} runs backwards"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(num(item)?),
        }
    }
    Ok(cpus)
}

impl NumaNodeSpec {
    /// Parses `node=1,cpus=2-3,memory=1G,distances=0:20;2:30`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut node = None;
        let mut cpus = Vec::new();
        let mut memory_bytes = 0;
        let mut distances = Vec::new();
        for part in spec.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not key=value"))?;
            match key {
                "node" => node = Some(parse_node(value)?),
                "cpus" => cpus.extend(parse_cpu_list(value)?),
                "memory" => memory_bytes = parse_size(value).map_err(|e| format!("memory: {e}"))?,
                "distances" => {
                    for item in value.split(';').filter(|i| !i.is_empty()) {
                        let (to, d) = item
                            .split_once(':')
                            .ok_or_else(|| format!("distances: '{item}' is not NODE:DISTANCE"))?;
                        let d = d
                            .parse::<u8>()
                            .map_err(|_| format!("distances: '{d}' is not a number up to 255"))?;
                        distances.push((parse_node(to)?, d));
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown key '{key}': expected node, cpus, memory or distances"
                    ));
                }
            }
        }
        Ok(NumaNodeSpec {
            node: node.ok_or("missing node=N")?,
            cpus,
            memory_bytes,
            distances,
        })
    }
}

/// What the topology is checked against.
#[derive(Debug, Clone, Copy)]
pub struct NumaContext<'a> {
    /// vCPU count.
    pub vcpus: u32,
    /// `--memory`, if given.
    pub boot_memory_bytes: Option<u64>,
    /// Each memory device's id and `node=`.
    pub devices: &'a [(&'a str, Option<NodeId>)],
}

/// The `--numa` options checked against `--cpus`, `--memory` (if given) and the devices;
/// `None` without `--numa` (then no device may name a node).
pub fn from_cli(
    specs: &[String],
    vcpus: u32,
    boot_memory_bytes: Option<u64>,
    devices: &[crate::config::MemDeviceConfig],
) -> Result<Option<NumaTopology>, String> {
    if specs.is_empty() {
        if let Some(d) = devices.iter().find(|d| d.node.is_some()) {
            return Err(format!(
                "--mem-device id={} names a node, but there are no --numa nodes",
                d.id
            ));
        }
        return Ok(None);
    }
    let parsed = specs
        .iter()
        .map(|s| NumaNodeSpec::parse(s).map_err(|e| format!("{s}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let devices: Vec<(&str, Option<NodeId>)> =
        devices.iter().map(|d| (d.id.as_str(), d.node)).collect();
    build_topology(
        &parsed,
        NumaContext {
            vcpus,
            boot_memory_bytes,
            devices: &devices,
        },
    )
    .map(Some)
}

/// Builds the topology (without hot-plug ranges: those come with the device regions).
pub fn build_topology(
    specs: &[NumaNodeSpec],
    ctx: NumaContext<'_>,
) -> Result<NumaTopology, String> {
    let n = specs.len();
    let mut by_id: Vec<Option<&NumaNodeSpec>> = vec![None; n];
    for s in specs {
        let slot = by_id.get_mut(usize::from(s.node.0)).ok_or_else(|| {
            format!(
                "node {}: with {n} --numa nodes, number them 0 to {}",
                s.node,
                n - 1
            )
        })?;
        if slot.replace(s).is_some() {
            return Err(format!("node {} is given twice", s.node));
        }
    }
    let specs: Vec<&NumaNodeSpec> = by_id.into_iter().flatten().collect();
    let mut owner: Vec<Option<NodeId>> = vec![None; ctx.vcpus as usize];
    for s in &specs {
        for &cpu in &s.cpus {
            let slot = owner.get_mut(cpu as usize).ok_or_else(|| {
                format!(
                    "node {}: vCPU {cpu} does not exist (--cpus {})",
                    s.node, ctx.vcpus
                )
            })?;
            if let Some(other) = slot.replace(s.node) {
                return Err(format!("vCPU {cpu} is on node {other} and node {}", s.node));
            }
        }
    }
    if let Some(cpu) = owner.iter().position(Option::is_none) {
        return Err(format!("vCPU {cpu} is on no node: every vCPU needs a node"));
    }
    for pair in specs.windows(2) {
        if pair[0].cpus.is_empty() && !pair[1].cpus.is_empty() {
            return Err(format!(
                "node {} has no CPUs but node {} has: give CPUs to the lowest-numbered nodes \
                 (Linux numbers nodes in the order it finds them, CPUs first)",
                pair[0].node, pair[1].node
            ));
        }
    }
    let sum: u64 = specs.iter().map(|s| s.memory_bytes).sum();
    if let Some(s) = specs
        .iter()
        .find(|s| s.memory_bytes % NODE_MEMORY_GRANULE_BYTES != 0)
    {
        return Err(format!(
            "node {}: memory={} must be a multiple of 128M",
            s.node,
            format_size(s.memory_bytes)
        ));
    }
    if let Some(total) = ctx.boot_memory_bytes
        && total != sum
    {
        return Err(format!(
            "the nodes' memory adds up to {}, but --memory is {}",
            format_size(sum),
            format_size(total)
        ));
    }
    for (id, node) in ctx.devices {
        if let Some(node) = node
            && usize::from(node.0) >= n
        {
            return Err(format!(
                "--mem-device id={id}: node {node} does not exist (nodes: 0 to {})",
                n - 1
            ));
        }
    }
    for s in &specs {
        let has_device = ctx
            .devices
            .iter()
            .any(|(_, d)| d.unwrap_or_default() == s.node);
        if s.cpus.is_empty() && s.memory_bytes == 0 && !has_device {
            return Err(format!(
                "node {} has no CPUs, no memory and no memory device: the guest could not see it",
                s.node
            ));
        }
    }
    let distances = distance_matrix(&specs)?;
    Ok(NumaTopology {
        nodes: specs
            .iter()
            .map(|s| NumaNode {
                id: s.node,
                cpus: s.cpus.iter().map(|&c| c as u8).collect(),
                boot_memory_bytes: s.memory_bytes,
            })
            .collect(),
        distances,
        hotplug: Vec::new(),
    })
}

/// `topology` with each NUMA memory device's region as a hot-pluggable range on its node.
pub fn with_device_ranges(
    topology: &NumaTopology,
    devices: &[crate::devices::SharedMemoryDevice],
) -> NumaTopology {
    let mut t = topology.clone();
    for d in devices {
        let transport = d.transport.lock().unwrap_or_else(|e| e.into_inner());
        let device = transport.device();
        if let Some(node) = device.node() {
            let s = device.core().status();
            t.hotplug.push(HotplugRange {
                range: s.guest_addr..s.guest_addr + s.region_size_bytes,
                node,
            });
        }
    }
    t
}

/// The topology as `GET /v1/vm` shows it (`topology` with its device ranges; `ids[i]` names
/// the device of `topology.hotplug[i]`).
pub fn api_nodes(topology: &NumaTopology, ids: &[String]) -> Vec<NumaNodeInfo> {
    let n = topology.nodes.len();
    topology
        .nodes
        .iter()
        .map(|node| {
            let i = usize::from(node.id.0);
            NumaNodeInfo {
                node: node.id.0,
                cpus: node.cpus.iter().map(|&c| u32::from(c)).collect(),
                boot_memory_bytes: node.boot_memory_bytes,
                distances: match &topology.distances {
                    Some(m) => m[i].clone(),
                    None => (0..n)
                        .map(|j| {
                            if i == j {
                                LOCAL_DISTANCE
                            } else {
                                DEFAULT_REMOTE_DISTANCE
                            }
                        })
                        .collect(),
                },
                memory_devices: topology
                    .hotplug
                    .iter()
                    .zip(ids)
                    .filter(|(h, _)| h.node == node.id)
                    .map(|(_, id)| id.clone())
                    .collect(),
            }
        })
        .collect()
}

/// The full matrix when any distance is given.
fn distance_matrix(specs: &[&NumaNodeSpec]) -> Result<Option<Vec<Vec<u8>>>, String> {
    let n = specs.len();
    if specs.iter().all(|s| s.distances.is_empty()) {
        return Ok(None);
    }
    let mut given: Vec<Vec<Option<u8>>> = vec![vec![None; n]; n];
    for s in specs {
        let from = usize::from(s.node.0);
        for &(to, d) in &s.distances {
            let to_idx = usize::from(to.0);
            if to_idx >= n {
                return Err(format!("node {}: distance to unknown node {to}", s.node));
            }
            if to_idx == from {
                return Err(format!(
                    "node {}: the distance to itself is always 10; give only other nodes",
                    s.node
                ));
            }
            if d <= LOCAL_DISTANCE {
                return Err(format!(
                    "node {} -> {to}: distance {d} must be more than 10",
                    s.node
                ));
            }
            given[from][to_idx] = Some(d);
        }
    }
    let mut m = vec![vec![DEFAULT_REMOTE_DISTANCE; n]; n];
    for i in 0..n {
        for j in 0..n {
            m[i][j] = match (given[i][j], given[j][i]) {
                _ if i == j => LOCAL_DISTANCE,
                (Some(a), Some(b)) if a != b => {
                    return Err(format!(
                        "distances are not symmetric: {i} -> {j} is {a} but {j} -> {i} is {b}"
                    ));
                }
                (Some(a), _) | (None, Some(a)) => a,
                (None, None) => DEFAULT_REMOTE_DISTANCE,
            };
        }
    }
    Ok(Some(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn specs(list: &[&str]) -> Vec<NumaNodeSpec> {
        list.iter()
            .map(|s| NumaNodeSpec::parse(s).unwrap())
            .collect()
    }

    fn ctx<'a>(vcpus: u32, devices: &'a [(&'a str, Option<NodeId>)]) -> NumaContext<'a> {
        NumaContext {
            vcpus,
            boot_memory_bytes: None,
            devices,
        }
    }

    #[test]
    fn two_nodes_with_distances_and_a_memory_only_node() {
        let devices = [("mem0", None), ("mem2", Some(NodeId(2)))];
        let t = build_topology(
            &specs(&[
                "node=1,cpus=1;3,memory=512M,distances=0:21;2:31",
                "node=0,cpus=0;2,memory=512M",
                "node=2",
            ]),
            ctx(4, &devices),
        )
        .unwrap();
        assert_eq!(t.nodes[0].cpus, vec![0, 2]);
        assert_eq!(t.nodes[1].cpus, vec![1, 3]);
        assert_eq!(t.nodes[2].boot_memory_bytes, 0);
        assert_eq!(
            t.distances,
            Some(vec![vec![10, 21, 20], vec![21, 10, 31], vec![20, 31, 10]])
        );
    }

    #[test]
    fn cpu_lists_accept_ranges_and_repeats() {
        let s = NumaNodeSpec::parse("node=0,cpus=0-2;5,cpus=7,memory=1G").unwrap();
        assert_eq!(s.cpus, vec![0, 1, 2, 5, 7]);
        assert_eq!(s.memory_bytes, 1024 * MIB);
    }

    #[test]
    fn bad_topologies_are_refused_with_their_reason() {
        let none: [(&str, Option<NodeId>); 0] = [];
        for (list, vcpus, memory, says) in [
            (
                vec!["node=0,cpus=0,memory=512M", "node=2,cpus=1,memory=512M"],
                2,
                None,
                "number them 0 to 1",
            ),
            (
                vec!["node=0,cpus=0-1,memory=512M", "node=0,memory=512M"],
                2,
                None,
                "given twice",
            ),
            (
                vec!["node=0,cpus=0-1,memory=512M", "node=1,cpus=1,memory=512M"],
                2,
                None,
                "vCPU 1 is on node 0 and node 1",
            ),
            (
                vec!["node=0,cpus=0,memory=512M", "node=1,memory=512M"],
                2,
                None,
                "vCPU 1 is on no node",
            ),
            (
                vec!["node=0,cpus=0-2,memory=512M"],
                2,
                None,
                "vCPU 2 does not exist",
            ),
            (
                vec!["node=0,memory=512M", "node=1,cpus=0,memory=512M"],
                1,
                None,
                "lowest-numbered",
            ),
            (
                vec!["node=0,cpus=0,memory=512M", "node=1,cpus=1,memory=512M"],
                2,
                Some(768 * MIB),
                "adds up to 1G, but --memory is 768M",
            ),
            (
                vec!["node=0,cpus=0,memory=500M"],
                1,
                None,
                "multiple of 128M",
            ),
            (
                vec!["node=0,cpus=0,memory=512M", "node=1"],
                1,
                None,
                "could not see it",
            ),
            (
                vec![
                    "node=0,cpus=0,memory=512M,distances=1:21",
                    "node=1,cpus=1,memory=512M,distances=0:22",
                ],
                2,
                None,
                "not symmetric",
            ),
            (
                vec![
                    "node=0,cpus=0,memory=512M,distances=1:9",
                    "node=1,cpus=1,memory=512M",
                ],
                2,
                None,
                "more than 10",
            ),
            (
                vec!["node=0,cpus=0,memory=512M,distances=0:10"],
                1,
                None,
                "to itself",
            ),
            (
                vec!["node=0,cpus=0,memory=512M,distances=4:20"],
                1,
                None,
                "unknown node 4",
            ),
        ] {
            let c = NumaContext {
                boot_memory_bytes: memory,
                ..ctx(vcpus, &none)
            };
            let err = build_topology(&specs(&list), c).unwrap_err();
            assert!(err.contains(says), "{list:?}: {err}");
        }
    }

    #[test]
    fn a_device_on_an_unknown_node_is_refused() {
        let devices = [("mem1", Some(NodeId(3)))];
        let err =
            build_topology(&specs(&["node=0,cpus=0,memory=512M"]), ctx(1, &devices)).unwrap_err();
        assert!(err.contains("id=mem1: node 3 does not exist"), "{err}");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("cpus=0", "missing node"),
            ("node=x", "expected a node number"),
            ("node=0,cpus=3-1", "backwards"),
            ("node=0,cpus=a", "not a vCPU number"),
            ("node=0,distances=1", "not NODE:DISTANCE"),
            ("node=0,distances=1:300", "up to 255"),
            ("node=0,colour=red", "unknown key 'colour'"),
        ] {
            let err = NumaNodeSpec::parse(spec).unwrap_err();
            assert!(err.contains(says), "{spec}: {err}");
        }
    }

    fn cli(extra: &[&str]) -> Result<crate::config::VmConfig, crate::Error> {
        use clap::Parser;
        let kernel = std::env::current_exe().unwrap();
        let mut args = vec![
            "hotmem",
            "--kernel",
            kernel.to_str().unwrap(),
            "--cpus",
            "2",
        ];
        args.extend_from_slice(extra);
        crate::config::Cli::try_parse_from(args).unwrap().validate()
    }

    const TWO_NODES: [&str; 4] = [
        "--numa",
        "node=0,cpus=0,memory=512M",
        "--numa",
        "node=1,cpus=1,memory=512M,distances=0:21",
    ];

    #[test]
    fn the_command_line_sums_boot_memory_and_puts_devices_on_node_0_by_default() {
        let mut args = TWO_NODES.to_vec();
        args.extend([
            "--mem-device",
            "id=a,size=64G",
            "--mem-device",
            "id=b,size=64G,node=1",
        ]);
        let c = cli(&args).unwrap();
        assert_eq!(c.boot_memory_bytes, 1024 * MIB);
        let nodes: Vec<_> = c.mem_devices.iter().map(|d| d.node).collect();
        assert_eq!(nodes, [Some(NodeId(0)), Some(NodeId(1))]);
        assert_eq!(
            c.numa.unwrap().distances,
            Some(vec![vec![10, 21], vec![21, 10]])
        );
    }

    #[test]
    fn the_command_line_refuses_bad_combinations() {
        let with = |extra: &[&str]| {
            let mut args = TWO_NODES.to_vec();
            args.extend_from_slice(extra);
            match cli(&args) {
                Err(crate::Error::Config(m)) => m,
                other => panic!("{extra:?} gave {other:?}"),
            }
        };
        assert!(with(&["--mem-device", "id=m,size=64G,node=2"]).contains("node 2 does not exist"));
        assert!(with(&["--memory", "2G"]).contains("adds up to 1G, but --memory is 2G"));
        let err = cli(&["--mem-device", "id=m,size=64G,node=0"]).unwrap_err();
        assert!(err.to_string().contains("no --numa nodes"), "{err}");
        let err = cli(&["--numa", "node=0,cpus=0,memory=512M"]).unwrap_err();
        assert!(err.to_string().contains("vCPU 1 is on no node"), "{err}");
    }

    #[test]
    fn without_numa_nothing_changes() {
        let c = cli(&["--mem-device", "id=m,size=64G"]).unwrap();
        assert_eq!(
            (c.boot_memory_bytes, c.numa, c.mem_devices[0].node),
            (512 * MIB, None, None)
        );
    }
}
