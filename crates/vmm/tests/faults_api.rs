//! What the API reports while KVM refuses a slot, on real KVM: the guest's plug is answered
//! BUSY, the status the API serves (`monitor::device_status`) still shows the truth — nothing
//! plugged, nothing mapped, the request in force — and once KVM accepts again the retry plugs and
//! the status follows. Needs /dev/kvm.

use std::sync::Arc;

use hostmem::{Backing, HostRegion};
use kvm_bindings::kvm_userspace_memory_region;
use machine::{Machine, MachineConfig, SerialOutput};
use memslots::SlotBudget;
use pci::{MmioAddress, MmioAllocator};
use virtio_mem::{BlockRange, Request, Response};
use vm_memory::GuestAddress;
use vmm::config::MemDeviceConfig;
use vmm::devices::{self, DeviceSetup};
use vmm::monitor::device_status;

#[test]
fn api_status_stays_true_while_a_slot_map_fails_and_after_the_retry() {
    let m = Machine::new(MachineConfig {
        num_cpus: 1,
        ram_size_bytes: 64 << 20,
        serial: SerialOutput::Writer(Box::new(std::io::sink())),
    })
    .expect("these tests need /dev/kvm");
    let window = m.layout().pci_mmio32_window();
    let config = MemDeviceConfig::parse("id=mem0,size=8G,requested=1G").unwrap();
    let built = devices::build(
        DeviceSetup {
            vm: m.vm(),
            budget: SlotBudget::new(m.nr_memslots() as u32 - 1, 1),
            area: boot::DeviceAreaAllocator::new(m.layout()),
            bars: MmioAllocator::new(MmioAddress(window.start), MmioAddress(window.end)).unwrap(),
            memory: Arc::new(m.memory().clone()),
            restore: None,
        },
        &[config],
    )
    .unwrap();
    let device = built.memory_devices[0].transport.clone();
    let base = device.lock().unwrap().device().core().status().guest_addr;

    // Another memslot (the last KVM slot id, outside the device's budget) takes the first
    // 2 MiB of the region: KVM refuses the device's slot there with EEXIST.
    let blocker = HostRegion::new(&Backing::anon(2 << 20)).unwrap();
    let mut region = kvm_userspace_memory_region {
        slot: m.nr_memslots() as u32 - 1,
        flags: 0,
        guest_phys_addr: base,
        memory_size: 2 << 20,
        userspace_addr: blocker.host_addr() as u64,
    };
    // SAFETY: `blocker` outlives the slot, which is deleted below before it is dropped.
    unsafe { m.vm_fd().set_user_memory_region(region) }.unwrap();

    let plug = Request::Plug(BlockRange {
        guest_addr: GuestAddress(base),
        nb_blocks: 64,
    });
    let answer = device
        .lock()
        .unwrap()
        .device_mut()
        .core_mut()
        .handle_request(plug);
    assert_eq!(answer, Response::Busy);
    let status = device_status(&device.lock().unwrap());
    assert_eq!(
        (
            status.plugged_bytes,
            status.slots_mapped,
            status.mapped_bytes
        ),
        (0, 0, 0)
    );
    assert_eq!(status.requested_bytes, 1 << 30);
    assert_eq!(device.lock().unwrap().device().stats().map_failures, 1);

    region.memory_size = 0;
    // SAFETY: deletes the blocking slot added above.
    unsafe { m.vm_fd().set_user_memory_region(region) }.unwrap();
    let answer = device
        .lock()
        .unwrap()
        .device_mut()
        .core_mut()
        .handle_request(plug);
    assert_eq!(answer, Response::Ack);
    let status = device_status(&device.lock().unwrap());
    assert_eq!((status.plugged_bytes, status.slots_mapped), (128 << 20, 1));
}
