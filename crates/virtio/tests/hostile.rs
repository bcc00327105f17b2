//! A hostile or confused driver against virtio-mem behind the virtio-pci transport: requests
//! before feature negotiation finished, DRIVER_OK without FEATURES_OK, features outside the
//! offer, rings outside guest memory, malformed chains. The device serves nothing it must not,
//! asks for a reset where the spec says so, and its state never changes behind the driver's back.

use std::sync::{Arc, Mutex};

use hostmem::FakeMemory;
use memslots::{FakeBackend, GIB, LayoutRequest, MIB, Memslots, SlotIds, SlotLayout, SlotPolicy};
use pci::{BarIndex, MSIX_CAPABILITY_ID, MsiMessage, MsiSink, MsixVector, PciDevice};
use virtio::layout::{MSIX_TABLE_OFFSET, NOTIFY_OFFSET};
use virtio::status::{ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FEATURES_OK};
use virtio::{
    ActivateError, FeaturesRefused, QueueOutcome, VirtioDevice, VirtioPciConfig, VirtioPciDevice,
};
use virtio_mem::{
    BlockRange, FeatureOffer, Prealloc, Request, Response, VIRTIO_ID_MEM, VirtioMem,
    VirtioMemConfig,
};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

const BASE: u64 = 4 * GIB;
const BLOCK: u64 = 2 * MIB;
const VERSION_1: u64 = 1 << 32;
const UNPLUGGED_INACCESSIBLE: u64 = 1 << 1;
const MODERN: u64 = VERSION_1 | UNPLUGGED_INACCESSIBLE;
const QUEUE_BASE: u64 = 0x1_0000;
const REQ_ADDR: u64 = 0x4_0000;
const RESP_ADDR: u64 = 0x5_0000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

type Core = VirtioMem<FakeBackend, FakeMemory>;

/// virtio-mem over fakes as a [`VirtioDevice`] (what the VMM does over KVM).
struct MemDevice {
    core: Core,
    sizes: [u16; 1],
}

impl VirtioDevice for MemDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_MEM
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn device_features(&self) -> u64 {
        self.core.device_features()
    }
    fn ack_features(&mut self, features: u64) -> Result<(), FeaturesRefused> {
        self.core
            .ack_features(features)
            .map_err(|_| FeaturesRefused { features })
    }
    fn read_config(&self, offset_bytes: u64, data: &mut [u8]) {
        self.core.read_config(offset_bytes, data);
    }
    fn write_config(&mut self, _offset_bytes: u64, _data: &[u8]) {}
    fn activate(&mut self) -> Result<(), ActivateError> {
        Ok(())
    }
    fn reset(&mut self) {
        self.core.reset();
    }
    fn process_queue<M: GuestMemory>(
        &mut self,
        _queue_index: u16,
        queue: &mut virtio::Queue,
        memory: &M,
    ) -> QueueOutcome {
        let outcome = self.core.process_queue(queue, memory);
        QueueOutcome {
            used_buffers: outcome.used,
            needs_reset: outcome.needs_reset,
        }
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<u16>>);

impl MsiSink for Recorder {
    fn send(&self, vector: MsixVector, _message: MsiMessage) {
        self.0.lock().unwrap().push(vector.0);
    }
}

type Mem = Arc<GuestMemoryMmap>;
type Dev = VirtioPciDevice<MemDevice, Mem>;

fn core() -> Core {
    let layout = SlotLayout::plan(LayoutRequest {
        policy: SlotPolicy::Adaptive,
        region_size_bytes: 8 * GIB,
        block_size_bytes: BLOCK,
        slot_limit: 32,
    })
    .unwrap();
    let ids = SlotIds::new(1, layout.len() as u32);
    let slots = Memslots::new(layout, ids, BASE, FakeBackend::new()).unwrap();
    let config = VirtioMemConfig {
        guest_addr: GuestAddress(BASE),
        region_size_bytes: 8 * GIB,
        block_size_bytes: BLOCK,
        backing_page_size_bytes: 4096,
        requested_size_bytes: GIB,
        node_id: 0,
        prealloc: Prealloc::Off,
        offer: FeatureOffer::default(),
    };
    VirtioMem::new(config, slots, FakeMemory::new()).unwrap()
}

fn new_device() -> (Dev, Mem, Arc<Recorder>) {
    let mem: Mem =
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
    let sink = Arc::new(Recorder::default());
    let dev = VirtioPciDevice::new(
        MemDevice {
            core: core(),
            sizes: [16],
        },
        mem.clone(),
        sink.clone(),
        VirtioPciConfig::default(),
    )
    .unwrap();
    (dev, mem, sink)
}

fn w(dev: &mut Dev, offset: u64, value: u64, len: usize) {
    dev.bar_write(BarIndex::ZERO, offset, &value.to_le_bytes()[..len]);
}

fn set_status(dev: &mut Dev, status: u8) -> u8 {
    w(dev, 0x14, u64::from(status), 1);
    dev.device_status()
}

fn write_features(dev: &mut Dev, features: u64) {
    w(dev, 0x08, 0, 4);
    w(dev, 0x0c, features & 0xffff_ffff, 4);
    w(dev, 0x08, 1, 4);
    w(dev, 0x0c, features >> 32, 4);
}

/// Programs and enables queue 0 over a mock split queue, with MSI-X vector 1.
fn setup_queue<'a>(dev: &mut Dev, mem: &'a GuestMemoryMmap) -> MockSplitQueue<'a, GuestMemoryMmap> {
    let mock = MockSplitQueue::create(mem, GuestAddress(QUEUE_BASE), 16);
    w(dev, 0x16, 0, 2);
    w(dev, 0x20, mock.desc_table_addr().0, 8);
    w(dev, 0x28, mock.avail_addr().0, 8);
    w(dev, 0x30, mock.used_addr().0, 8);
    w(dev, 0x1a, 1, 2);
    w(dev, 0x1c, 1, 2);
    mock
}

/// Enables MSI-X with vectors 0 (config) and 1 (queue) programmed.
fn enable_msix(dev: &mut Dev) {
    let mut cap = [0u8; 1];
    dev.config_read(0x34, &mut cap);
    let mut at = usize::from(cap[0]);
    loop {
        let mut header = [0u8; 2];
        dev.config_read(at, &mut header);
        if header[0] == MSIX_CAPABILITY_ID {
            break;
        }
        assert_ne!(header[1], 0, "no MSI-X capability");
        at = usize::from(header[1]);
    }
    dev.config_write(at + 2, &0x8000u16.to_le_bytes());
    for v in 0..2u64 {
        let entry = MSIX_TABLE_OFFSET + v * 16;
        w(dev, entry, 0xfee0_0000, 4);
        w(dev, entry + 8, 0x40 + v, 4);
        w(dev, entry + 12, 0, 4);
    }
    w(dev, 0x10, 0, 2);
}

/// A plug of `nb_blocks` at the region start, or any raw request type.
fn put_request(mem: &GuestMemoryMmap, kind: u16, nb_blocks: u16) {
    let mut bytes = Request::Plug(BlockRange {
        guest_addr: GuestAddress(BASE),
        nb_blocks,
    })
    .to_bytes();
    bytes[0..2].copy_from_slice(&kind.to_le_bytes());
    mem.write_slice(&bytes, GuestAddress(REQ_ADDR)).unwrap();
}

fn offer_chain(mock: &MockSplitQueue<'_, GuestMemoryMmap>) {
    let descs = [
        RawDescriptor::from(Descriptor::new(REQ_ADDR, 24, NEXT, 1)),
        RawDescriptor::from(Descriptor::new(RESP_ADDR, 10, WRITE, 0)),
    ];
    mock.add_desc_chains(&descs, 0).unwrap();
}

fn notify(dev: &mut Dev) {
    // Through the notification area, as the driver's MMIO write would arrive.
    w(dev, NOTIFY_OFFSET, 0, 2);
}

fn plugged(dev: &Dev) -> u64 {
    dev.device().core.status().plugged_size_bytes
}

fn response(mem: &GuestMemoryMmap) -> [u8; 10] {
    let mut bytes = [0u8; 10];
    mem.read_slice(&mut bytes, GuestAddress(RESP_ADDR)).unwrap();
    bytes
}

#[test]
fn a_request_kicked_before_features_ok_is_served_only_after_driver_ok() {
    let (mut dev, mem, _) = new_device();
    set_status(&mut dev, ACKNOWLEDGE | DRIVER);
    let mock = setup_queue(&mut dev, &mem);
    put_request(&mem, 0, 4);
    offer_chain(&mock);
    let before = dev.device().core.state();
    notify(&mut dev);
    assert_eq!(mock.used().idx().load(), 0);
    assert_eq!(dev.device().core.state(), before);
    write_features(&mut dev, MODERN);
    assert_ne!(
        set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK) & FEATURES_OK,
        0
    );
    notify(&mut dev);
    assert_eq!(mock.used().idx().load(), 0, "FEATURES_OK is not DRIVER_OK");
    let mut expected = before;
    expected.driver_features = Some(MODERN);
    assert_eq!(dev.device().core.state(), expected);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(mock.used().idx().load(), 1, "replayed at DRIVER_OK");
    assert_eq!(response(&mem), Response::Ack.to_bytes());
    assert_eq!(plugged(&dev), 4 * BLOCK);
}

#[test]
fn driver_ok_without_features_ok_does_not_stick_and_serves_nothing() {
    let (mut dev, mem, _) = new_device();
    set_status(&mut dev, ACKNOWLEDGE | DRIVER);
    let mock = setup_queue(&mut dev, &mem);
    put_request(&mem, 0, 1);
    offer_chain(&mock);
    let status = set_status(&mut dev, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_eq!(status & DRIVER_OK, 0);
    notify(&mut dev);
    assert_eq!(mock.used().idx().load(), 0);
    assert_eq!(plugged(&dev), 0);
    assert_eq!(dev.device().core.driver_features(), None);
}

#[test]
fn features_outside_the_offer_or_without_version_1_are_refused_and_nothing_is_served() {
    for features in [
        MODERN | 1,       // ACPI_PXM: not offered
        MODERN | 1 << 33, // unknown transport bit
        UNPLUGGED_INACCESSIBLE,
    ] {
        let (mut dev, mem, _) = new_device();
        set_status(&mut dev, ACKNOWLEDGE | DRIVER);
        let mock = setup_queue(&mut dev, &mem);
        put_request(&mem, 0, 1);
        offer_chain(&mock);
        write_features(&mut dev, features);
        let status = set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(status & FEATURES_OK, 0, "{features:#x} accepted");
        let status = set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(status & DRIVER_OK, 0);
        notify(&mut dev);
        assert_eq!(mock.used().idx().load(), 0);
        assert_eq!(plugged(&dev), 0);
        assert_eq!(dev.device().core.driver_features(), None);
        assert_eq!(dev.device().core.status().slots_mapped, 0);
    }
}

#[test]
fn features_rewritten_after_features_ok_are_ignored() {
    let (mut dev, _mem, _) = new_device();
    set_status(&mut dev, ACKNOWLEDGE | DRIVER);
    write_features(&mut dev, MODERN);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    // Dropping UNPLUGGED_INACCESSIBLE now would ask for the legacy mapping.
    write_features(&mut dev, VERSION_1);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(dev.driver_features(), MODERN);
    assert_eq!(dev.device().core.driver_features(), Some(MODERN));
    assert!(!dev.device().core.legacy_mapping());
}

#[test]
fn a_queue_with_rings_outside_guest_memory_needs_reset_and_serves_nothing() {
    let (mut dev, _mem, _) = new_device();
    set_status(&mut dev, ACKNOWLEDGE | DRIVER);
    write_features(&mut dev, MODERN);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    let before = dev.device().core.state();
    w(&mut dev, 0x16, 0, 2);
    w(&mut dev, 0x20, 0x7fff_0000_0000, 8);
    w(&mut dev, 0x28, 0x1000, 8);
    w(&mut dev, 0x30, 0x2000, 8);
    w(&mut dev, 0x1c, 1, 2);
    assert_ne!(dev.device_status() & DEVICE_NEEDS_RESET, 0);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    notify(&mut dev);
    assert!(!dev.is_active());
    assert_eq!(dev.device().core.state(), before);
}

#[test]
fn a_malformed_request_sets_needs_reset_sends_the_config_interrupt_and_a_reset_recovers() {
    let (mut dev, mem, sink) = new_device();
    enable_msix(&mut dev);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER);
    write_features(&mut dev, MODERN);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    let mock = setup_queue(&mut dev, &mem);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    let before = dev.device().core.state();
    put_request(&mem, 0x77, 1);
    offer_chain(&mock);
    notify(&mut dev);
    assert_ne!(dev.device_status() & DEVICE_NEEDS_RESET, 0);
    assert_eq!(*sink.0.lock().unwrap(), [0], "config vector");
    assert_eq!(mock.used().idx().load(), 0);
    assert_eq!(dev.device().core.state(), before);
    assert!(dev.device().core.needs_reset());
    // The driver resets and starts over; a good request is served again.
    set_status(&mut dev, 0);
    assert!(!dev.device().core.needs_reset());
    set_status(&mut dev, ACKNOWLEDGE | DRIVER);
    write_features(&mut dev, MODERN);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    let mock = setup_queue(&mut dev, &mem);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    put_request(&mem, 0, 2);
    offer_chain(&mock);
    notify(&mut dev);
    assert_eq!(mock.used().idx().load(), 1);
    assert_eq!(response(&mem), Response::Ack.to_bytes());
    assert_eq!(plugged(&dev), 2 * BLOCK);
}

#[test]
fn notifications_for_missing_queues_and_odd_notify_writes_change_nothing() {
    let (mut dev, mem, _) = new_device();
    set_status(&mut dev, ACKNOWLEDGE | DRIVER);
    write_features(&mut dev, MODERN);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    let mock = setup_queue(&mut dev, &mem);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    put_request(&mem, 0, 1);
    offer_chain(&mock);
    for queue in [1, 7, u16::MAX] {
        dev.notify_queue(queue);
    }
    // Queue 1's doorbell, a misaligned one, and one past the notification area.
    w(&mut dev, NOTIFY_OFFSET + 4, 0, 2);
    w(&mut dev, NOTIFY_OFFSET + 1, 0, 1);
    w(&mut dev, NOTIFY_OFFSET + 0xffc, 0, 4);
    assert_eq!(mock.used().idx().load(), 0);
    assert_eq!(plugged(&dev), 0);
    assert!(dev.is_active());
    notify(&mut dev);
    assert_eq!(mock.used().idx().load(), 1);
}
