//! Guest CPUID: KVM's supported set, with per-vCPU APIC id and topology, and the
//! hypervisor bit.

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

/// How the vCPUs are grouped into packages (sockets). APIC ids equal vCPU indices either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuPackages {
    /// One package holds every vCPU, one thread per core.
    #[default]
    Single,
    /// Each vCPU is a package of its own (one core, one thread, caches not shared), so no
    /// package or cache spans two NUMA nodes whatever the vCPU-to-node map.
    PerCpu,
}

/// Where a vCPU sits.
#[derive(Debug, Clone, Copy)]
pub struct CpuTopology {
    /// This vCPU's APIC id (= index).
    pub apic_id: u8,
    /// vCPUs in the VM.
    pub num_cpus: u8,
    /// Package grouping.
    pub packages: CpuPackages,
}

impl CpuTopology {
    /// vCPUs in this vCPU's package.
    fn cpus_per_package(self) -> u8 {
        match self.packages {
            CpuPackages::Single => self.num_cpus,
            CpuPackages::PerCpu => 1,
        }
    }
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xB;
const LEAF_TOPOLOGY_V2: u32 = 0x1F;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_EXT_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_EXT_APIC_ID: u32 = 0x8000_001E;
const LEAF_EXT_CACHE_TOPOLOGY: u32 = 0x8000_001D;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const ECX_CMP_LEGACY: u32 = 1 << 1;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Bits needed to number `n` items.
fn id_bits(n: u8) -> u32 {
    u32::from(n.max(1)).next_power_of_two().trailing_zeros()
}

fn adjust(e: &mut kvm_cpuid_entry2, topo: CpuTopology) {
    let apic = u32::from(topo.apic_id);
    let per_package = topo.cpus_per_package();
    let n = u32::from(per_package);
    match e.function {
        LEAF_FEATURES => {
            e.ebx = (e.ebx & 0x0000_FFFF) | (apic << 24) | ((n & 0xFF) << 16);
            e.ecx |= ECX_HYPERVISOR;
            if n > 1 {
                e.edx |= EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // Cores per package - 1 in EAX[31:26]; each cache is per core.
            e.eax = (e.eax & 0x03FF_FFFF) | ((n.saturating_sub(1) & 0x3F) << 26);
            e.eax &= !(0xFFF << 14);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            e.edx = apic;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = TOPOLOGY_LEVEL_SMT << 8;
                }
                1 => {
                    e.eax = id_bits(per_package);
                    e.ebx = n;
                    e.ecx = (TOPOLOGY_LEVEL_CORE << 8) | 1;
                }
                i => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = i;
                }
            }
        }
        LEAF_EXT_FEATURES if n > 1 => e.ecx |= ECX_CMP_LEGACY,
        LEAF_EXT_ADDR_SIZES => {
            e.ecx = (e.ecx & !0xF0FF) | (id_bits(per_package) << 12) | n.saturating_sub(1);
        }
        // Each cache is per core (threads sharing it - 1 = 0), as in leaf 4.
        LEAF_EXT_CACHE_TOPOLOGY => e.eax &= !(0xFFF << 14),
        LEAF_EXT_APIC_ID => {
            e.eax = apic;
            e.ebx = apic & 0xFF; // compute unit id, one thread per unit
            e.ecx &= !0x7FF; // node 0, one node
        }
        _ => {}
    }
}

/// Adjust a copy of KVM's supported CPUID for one vCPU.
pub fn vcpu_cpuid(supported: &CpuId, topo: CpuTopology) -> CpuId {
    let mut c = supported.clone();
    for e in c.as_mut_slice() {
        adjust(e, topo);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800,
            ..Default::default()
        }
    }

    fn supported() -> CpuId {
        CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_TOPOLOGY, 0),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_EXT_ADDR_SIZES, 0),
        ])
        .unwrap()
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let c = vcpu_cpuid(
            &supported(),
            CpuTopology {
                apic_id: 1,
                num_cpus: 2,
                packages: CpuPackages::Single,
            },
        );
        let l1 = c.as_slice()[0];
        assert_eq!(l1.ebx >> 24, 1);
        assert_eq!((l1.ebx >> 16) & 0xFF, 2);
        assert_eq!(l1.ebx & 0xFFFF, 0x0800);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_reports_cores_and_x2apic_id() {
        let c = vcpu_cpuid(
            &supported(),
            CpuTopology {
                apic_id: 2,
                num_cpus: 3,
                packages: CpuPackages::Single,
            },
        );
        let core = c.as_slice()[2];
        assert_eq!(core.edx, 2);
        assert_eq!(core.ebx, 3);
        assert_eq!(core.eax, 2); // 3 cpus need 2 id bits
        let amd = c.as_slice()[3];
        assert_eq!(amd.ecx & 0xFF, 2);
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let c = vcpu_cpuid(
            &supported(),
            CpuTopology {
                apic_id: 0,
                num_cpus: 1,
                packages: CpuPackages::Single,
            },
        );
        assert_eq!(c.as_slice()[0].edx & EDX_HTT, 0);
        assert_eq!(c.as_slice()[2].eax, 0);
    }

    #[test]
    fn a_package_per_cpu_shares_nothing() {
        let mut entries = vec![
            entry(LEAF_FEATURES, 0),
            entry(LEAF_CACHE_PARAMS, 3),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_EXT_ADDR_SIZES, 0),
            entry(LEAF_EXT_CACHE_TOPOLOGY, 3),
        ];
        entries[1].eax = 0xFFFF_FFFF;
        entries[4].eax = 0xFFFF_FFFF;
        let c = vcpu_cpuid(
            &CpuId::from_entries(&entries).unwrap(),
            CpuTopology {
                apic_id: 3,
                num_cpus: 4,
                packages: CpuPackages::PerCpu,
            },
        );
        let l = c.as_slice();
        assert_eq!(l[0].ebx >> 24, 3, "APIC id stays the index");
        assert_eq!((l[0].ebx >> 16) & 0xFF, 1, "one logical CPU per package");
        assert_eq!(l[0].edx & EDX_HTT, 0);
        assert_eq!(l[1].eax >> 26, 0, "one core per package");
        assert_eq!((l[1].eax >> 14) & 0xFFF, 0);
        assert_eq!((l[2].eax, l[2].ebx, l[2].edx), (0, 1, 3));
        assert_eq!(l[3].ecx & 0xF0FF, 0);
        assert_eq!((l[4].eax >> 14) & 0xFFF, 0, "L3 not shared");
    }
}
