//! NUMA memory devices on real KVM: a device on node 1 offers VIRTIO_MEM_F_ACPI_PXM and reads
//! back `node_id` 1 at config offset 8; the topology handed to the SRAT carries its region on
//! node 1; a VM without `--numa` offers neither. Needs /dev/kvm.

use std::sync::Arc;

use boot::numa::{HotplugRange, NodeId, NumaNode, NumaTopology};
use machine::{CpuPackages, Machine, MachineConfig, SerialOutput};
use memslots::SlotBudget;
use pci::{MmioAddress, MmioAllocator};
use virtio::VirtioDevice;
use vmm::config::MemDeviceConfig;
use vmm::devices::{self, BuiltDevices, DeviceSetup};

const ACPI_PXM: u64 = 1 << 0; // VIRTIO_MEM_F_ACPI_PXM (virtio spec, virtio-mem feature bit 0)

fn build(m: &Machine, configs: &[MemDeviceConfig]) -> BuiltDevices {
    let window = m.layout().pci_mmio32_window();
    devices::build(
        DeviceSetup {
            vm: m.vm(),
            budget: SlotBudget::new(m.nr_memslots() as u32 - 1, 1),
            area: boot::DeviceAreaAllocator::new(m.layout()),
            bars: MmioAllocator::new(MmioAddress(window.start), MmioAddress(window.end)).unwrap(),
            memory: Arc::new(m.memory().clone()),
            restore: None,
        },
        configs,
    )
    .unwrap()
}

fn node_id_and_features(built: &BuiltDevices, index: usize) -> (u16, u64) {
    let t = built.memory_devices[index].transport.lock().unwrap();
    let mut two = [0u8; 2];
    t.device().read_config(8, &mut two);
    (u16::from_le_bytes(two), t.device().device_features())
}

#[test]
fn a_device_on_node_1_offers_acpi_pxm_and_reports_pxm_1() {
    let m = Machine::with_packages(
        MachineConfig {
            num_cpus: 2,
            ram_size_bytes: 128 << 20,
            serial: SerialOutput::Writer(Box::new(std::io::sink())),
        },
        CpuPackages::PerCpu,
    )
    .expect("these tests need /dev/kvm");
    let mut on_node_1 = MemDeviceConfig::parse("id=mem1,size=8G,node=1").unwrap();
    let mut plain = MemDeviceConfig::parse("id=mem0,size=8G").unwrap();
    plain.node = Some(NodeId(0)); // what validation does on a NUMA VM
    on_node_1.node = Some(NodeId(1));
    let built = build(&m, &[plain, on_node_1]);
    let (node, features) = node_id_and_features(&built, 1);
    assert_eq!(node, 1);
    assert_ne!(features & ACPI_PXM, 0);
    let (node, features) = node_id_and_features(&built, 0);
    assert_eq!(node, 0);
    assert_ne!(features & ACPI_PXM, 0);

    let topology = NumaTopology {
        nodes: vec![
            NumaNode {
                id: NodeId(0),
                cpus: vec![0],
                boot_memory_bytes: 64 << 20,
            },
            NumaNode {
                id: NodeId(1),
                cpus: vec![1],
                boot_memory_bytes: 64 << 20,
            },
        ],
        ..Default::default()
    };
    let with_ranges = vmm::numa::with_device_ranges(&topology, &built.memory_devices);
    let region = |i: usize| {
        let t = built.memory_devices[i].transport.lock().unwrap();
        let s = t.device().core().status();
        s.guest_addr..s.guest_addr + s.region_size_bytes
    };
    assert_eq!(
        with_ranges.hotplug,
        vec![
            HotplugRange {
                range: region(0),
                node: NodeId(0)
            },
            HotplugRange {
                range: region(1),
                node: NodeId(1)
            },
        ]
    );
}

#[test]
fn without_numa_no_pxm_is_offered() {
    let m = Machine::new(MachineConfig {
        num_cpus: 1,
        ram_size_bytes: 64 << 20,
        serial: SerialOutput::Writer(Box::new(std::io::sink())),
    })
    .expect("these tests need /dev/kvm");
    let built = build(&m, &[MemDeviceConfig::parse("id=mem0,size=8G").unwrap()]);
    let (node, features) = node_id_and_features(&built, 0);
    assert_eq!((node, features & ACPI_PXM), (0, 0));
}
