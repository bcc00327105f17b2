//! Shared by the real-KVM tests: a VM without vCPUs running, memory devices built as `hotmem`
//! builds them, and a minimal virtio driver that sets a transport up through its registers and
//! puts virtio-mem requests on the request queue in boot RAM.

#![allow(dead_code)]

use std::sync::Arc;

use machine::{Machine, MachineConfig, SerialOutput};
use memslots::SlotBudget;
use pci::{COMMAND_MEMORY_SPACE, MSIX_CONTROL_ENABLE, PciDevice};
use virtio::layout::{COMMON_OFFSET, MSIX_TABLE_OFFSET, virtio_bar};
use virtio::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURE_VERSION_1, FEATURES_OK};
use virtio_mem::features::{VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE, feature_bit};
use virtio_mem::{Request, Response};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::config::MemDeviceConfig;
use vmm::devices::{self, BuiltDevices, DeviceSetup, MemTransport};

/// A bzImage that linux-loader accepts (setup header with "HdrS", protocol 2.15, loaded
/// high) whose kernel is 4 KiB of `hlt`: hotmem starts it, and its vCPU halts at once (no
/// Linux boots on this emulating machine).
pub fn stub_bzimage(path: &std::path::Path) {
    let setup_sects = 4u8;
    let mut image = vec![0u8; (usize::from(setup_sects) + 1) * 512];
    image[0x1f1] = setup_sects;
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 0x01; // LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x0010_0000u32.to_le_bytes());
    image[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes());
    image.extend(std::iter::repeat_n(0xf4u8, 4096));
    std::fs::write(path, image).unwrap();
}

/// A 64 MiB VM; nothing runs in it.
pub fn machine() -> Machine {
    Machine::new(MachineConfig {
        num_cpus: 1,
        ram_size_bytes: 64 << 20,
        serial: SerialOutput::Writer(Box::new(std::io::sink())),
    })
    .expect("these tests need /dev/kvm")
}

/// A 64 MiB VM whose boot RAM is a shared memfd, as vhost-user backends need.
pub fn shared_machine() -> Machine {
    Machine::with_ram_backing(
        MachineConfig {
            num_cpus: 1,
            ram_size_bytes: 64 << 20,
            serial: SerialOutput::Writer(Box::new(std::io::sink())),
        },
        hostmem::BackingKind::Memfd,
    )
    .expect("these tests need /dev/kvm")
}

/// The devices `specs` describe, as `hotmem` builds them.
pub fn build(m: &Machine, specs: &[&str]) -> BuiltDevices {
    let configs: Vec<MemDeviceConfig> = specs
        .iter()
        .map(|s| MemDeviceConfig::parse(s).unwrap())
        .collect();
    build_devices(m, &configs, None)
}

/// The devices `configs` describe, as `hotmem` builds them (from `restore` when given).
pub fn build_devices(
    m: &Machine,
    configs: &[MemDeviceConfig],
    restore: Option<&vmm::snapshot::RestorePlan>,
) -> BuiltDevices {
    let window = m.layout().pci_mmio32_window();
    devices::build(
        DeviceSetup {
            vm: m.vm(),
            budget: SlotBudget::new(m.nr_memslots() as u32, 1),
            area: boot::DeviceAreaAllocator::new(m.layout()),
            bars: pci::MmioAllocator::new(
                pci::MmioAddress(window.start),
                pci::MmioAddress(window.end),
            )
            .unwrap(),
            memory: Arc::new(m.memory().clone()),
            restore,
        },
        configs,
    )
    .unwrap()
}

fn w(t: &mut MemTransport, offset: u64, value: u64, len: usize) {
    t.bar_write(virtio_bar(), offset, &value.to_le_bytes()[..len]);
}

/// The request queue of one device, in boot RAM at `base` (64 KiB used from there).
pub struct Driver<'a> {
    pub vq: MockSplitQueue<'a, GuestMemoryMmap>,
    mem: &'a GuestMemoryMmap,
    base: u64,
    sent: u16,
}

impl<'a> Driver<'a> {
    /// Brings `t` up as Linux's driver does: memory decoding, MSI-X with both vectors,
    /// features (VERSION_1 + UNPLUGGED_INACCESSIBLE), the request queue, DRIVER_OK.
    pub fn start(t: &mut MemTransport, mem: &'a GuestMemoryMmap, base: u64) -> Self {
        t.config_write(0x04, &COMMAND_MEMORY_SPACE.to_le_bytes());
        let cap = t.config_read_msix_cap();
        t.config_write(cap + 2, &MSIX_CONTROL_ENABLE.to_le_bytes());
        for v in 0..2u64 {
            let entry = MSIX_TABLE_OFFSET + v * 16;
            w(t, entry, 0xfee0_0000, 4);
            w(t, entry + 8, 0x40 + v, 4);
            w(t, entry + 12, 0, 4);
        }
        w(t, COMMON_OFFSET + 0x14, u64::from(ACKNOWLEDGE), 1);
        w(t, COMMON_OFFSET + 0x14, u64::from(ACKNOWLEDGE | DRIVER), 1);
        let features = FEATURE_VERSION_1 | feature_bit(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE);
        w(t, COMMON_OFFSET + 0x08, 0, 4);
        w(t, COMMON_OFFSET + 0x0c, features & 0xffff_ffff, 4);
        w(t, COMMON_OFFSET + 0x08, 1, 4);
        w(t, COMMON_OFFSET + 0x0c, features >> 32, 4);
        w(
            t,
            COMMON_OFFSET + 0x14,
            u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
            1,
        );
        w(t, COMMON_OFFSET + 0x10, 0, 2);
        let vq = MockSplitQueue::create(mem, GuestAddress(base), 16);
        w(t, COMMON_OFFSET + 0x16, 0, 2);
        w(t, COMMON_OFFSET + 0x18, 16, 2);
        w(t, COMMON_OFFSET + 0x20, vq.desc_table_addr().0, 8);
        w(t, COMMON_OFFSET + 0x28, vq.avail_addr().0, 8);
        w(t, COMMON_OFFSET + 0x30, vq.used_addr().0, 8);
        w(t, COMMON_OFFSET + 0x1a, 1, 2);
        w(t, COMMON_OFFSET + 0x1c, 1, 2);
        let ok = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
        w(t, COMMON_OFFSET + 0x14, u64::from(ok), 1);
        assert!(t.is_active(), "the transport did not come up");
        Driver {
            vq,
            mem,
            base,
            sent: 0,
        }
    }

    /// Puts `request` on the queue (not notified yet).
    pub fn send(&mut self, request: Request) {
        let i = self.sent;
        let at = self.base + 0x8000 + u64::from(i) * 0x100;
        self.mem
            .write_slice(&request.to_bytes(), GuestAddress(at))
            .unwrap();
        let descs = [
            RawDescriptor::from(Descriptor::new(at, 24, 1, 2 * i + 1)),
            RawDescriptor::from(Descriptor::new(at + 0x80, 10, 2, 0)),
        ];
        self.vq.add_desc_chains(&descs, 2 * i).unwrap();
        self.sent += 1;
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u16 {
        self.vq.used().idx().load()
    }

    /// The answer to the `index`th request.
    pub fn response(&self, index: u16) -> [u8; 10] {
        let at = self.base + 0x8000 + u64::from(index) * 0x100 + 0x80;
        let mut bytes = [0u8; 10];
        self.mem.read_slice(&mut bytes, GuestAddress(at)).unwrap();
        bytes
    }
}

/// `Response::Ack` as bytes.
pub fn ack() -> [u8; 10] {
    Response::Ack.to_bytes()
}

/// Offset of the MSI-X capability, found by walking the capability list.
pub trait MsixCap {
    fn config_read_msix_cap(&self) -> usize;
}

impl MsixCap for MemTransport {
    fn config_read_msix_cap(&self) -> usize {
        let mut byte = [0u8; 1];
        self.config_read(0x34, &mut byte);
        let mut at = usize::from(byte[0]);
        while at != 0 {
            let mut cap = [0u8; 2];
            self.config_read(at, &mut cap);
            if cap[0] == 0x11 {
                return at;
            }
            at = usize::from(cap[1]);
        }
        panic!("no MSI-X capability");
    }
}
