//! A guest touching unmapped device memory on real KVM: a tiny hand-assembled 64-bit guest (no
//! Linux) writes and reads plugged memory, then unplugged memory. Plugged memory is real; the
//! unplugged access exits to hotmem, reads all ones, the write is dropped and counted, and the
//! VM runs on to a clean poweroff. Needs /dev/kvm.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use boot::layout::{PDPT_ADDR, ZERO_PAGE_ADDR};
use boot::{DeviceAreaAllocator, Gpa, LinuxBootInfo};
use machine::{ExitReason, Machine, MachineConfig, SerialOutput};
use memslots::SlotBudget;
use pci::{MmioAddress, MmioAllocator};
use virtio_mem::{BlockRange, Request, Response};
use vm_memory::{Bytes, GuestAddress};
use vmm::config::MemDeviceConfig;
use vmm::devices::{self, DeviceSetup};

const CODE_ADDR: u64 = 0x10_0000;
const GIB: u64 = 1 << 30;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `mov rbx, addr; mov byte [rbx], value; mov al, [rbx]; out dx, al` (dx = COM1).
fn write_read_print(addr: u64, value: u8) -> Vec<u8> {
    let mut code = vec![0x48, 0xBB];
    code.extend_from_slice(&addr.to_le_bytes());
    code.extend_from_slice(&[0xC6, 0x03, value, 0x8A, 0x03, 0xEE]);
    code
}

#[test]
fn unplugged_access_reads_all_ones_drops_writes_and_the_vm_runs_on() {
    let out = Captured::default();
    let mut m = Machine::new(MachineConfig {
        num_cpus: 1,
        ram_size_bytes: 64 << 20,
        serial: SerialOutput::Writer(Box::new(out.clone())),
    })
    .expect("these tests need /dev/kvm");
    boot::write_cpu_tables(m.memory()).unwrap();
    let config = MemDeviceConfig::parse("id=mem0,size=8G,requested=2M").unwrap();
    let window = m.layout().pci_mmio32_window();
    let built = devices::build(
        DeviceSetup {
            vm: m.vm(),
            budget: SlotBudget::new(m.nr_memslots() as u32, 1),
            area: DeviceAreaAllocator::new(m.layout()),
            bars: MmioAllocator::new(MmioAddress(window.start), MmioAddress(window.end)).unwrap(),
            memory: Arc::new(m.memory().clone()),
            restore: None,
        },
        &[config],
    )
    .unwrap();
    for (region, trap) in built.unplugged_traps {
        m.mmio_bus()
            .insert(
                Arc::new(Mutex::new(trap)),
                region.start,
                region.end - region.start,
            )
            .unwrap();
    }
    let device = built.memory_devices[0].transport.clone();
    let base = device.lock().unwrap().device().core().status().guest_addr;
    assert_eq!(
        base,
        4 * GIB,
        "the first device region sits right above 4 GiB"
    );
    // Plug the first block, as a driver would: its slot (the first GiB) gets mapped.
    let plug = Request::Plug(BlockRange {
        guest_addr: GuestAddress(base),
        nb_blocks: 1,
    });
    assert_eq!(
        device
            .lock()
            .unwrap()
            .device_mut()
            .core_mut()
            .handle_request(plug),
        Response::Ack
    );

    // The boot page tables map 4 GiB; add one 2 MiB page at 4 GiB and one at 5 GiB, each
    // through a page directory of its own (PDPT entries 4 and 5).
    for (i, gpa) in [(4u64, 4 * GIB), (5, 5 * GIB)] {
        let pd = 0x30_0000 + (i - 4) * 0x1000;
        m.memory()
            .write_obj(pd | 0x3, GuestAddress(PDPT_ADDR.0 + i * 8))
            .unwrap();
        m.memory().write_obj(gpa | 0x83, GuestAddress(pd)).unwrap();
    }
    let mut code = vec![0x66, 0xBA, 0xF8, 0x03]; // mov dx, 0x3f8
    code.extend(write_read_print(base + 0x1000, 0x41)); // plugged block
    code.extend(write_read_print(base + GIB + 0x1000, 0x42)); // slot 1: never plugged, unmapped
    code.extend_from_slice(&[0xB0, 0x34, 0x66, 0xBA, 0x00, 0x06, 0xEE, 0xEB, 0xFE]); // ACPI off
    m.memory()
        .write_slice(&code, GuestAddress(CODE_ADDR))
        .unwrap();

    let boot = LinuxBootInfo {
        entry: Gpa(CODE_ADDR),
        zero_page: ZERO_PAGE_ADDR,
        initramfs: None,
        rsdp: Gpa(0),
    };
    assert_eq!(m.run(&boot).unwrap(), ExitReason::Poweroff);
    assert_eq!(*out.0.lock().unwrap(), vec![0x41, 0xff]);
    let dev = device.lock().unwrap();
    assert_eq!(dev.device().unplugged_accesses().load(Ordering::Relaxed), 2);
    // The plugged write landed in the device's host memory; the unplugged one nowhere.
    let host = dev.device().region().host_addr();
    // SAFETY: offset 0x1000 lies in the first slot, mapped read-write while its block is plugged.
    assert_eq!(unsafe { *((host + 0x1000) as *const u8) }, 0x41);
    assert_eq!(dev.device().core().status().slots_mapped, 1);
}
