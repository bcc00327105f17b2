use std::sync::{Arc, Mutex};

use pci::{COMMAND_MEMORY_SPACE, MSIX_CONTROL_ENABLE, MsiMessage};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap};

use super::*;
use crate::status::{ACKNOWLEDGE, DRIVER, FAILED, FEATURE_VERSION_1, FEATURES_OK};
use crate::{ActivateError, FeaturesRefused, QueueOutcome};

const QUEUE_MAX: u16 = 16;
const STRICT_REFUSED_FEATURE: u64 = 1 << 1;

#[derive(Default)]
struct Recorder(Mutex<Vec<(MsixVector, MsiMessage)>>);

impl MsiSink for Recorder {
    fn send(&self, vector: MsixVector, message: MsiMessage) {
        self.0.lock().unwrap().push((vector, message));
    }
}

impl Recorder {
    fn vectors(&self) -> Vec<u16> {
        self.0.lock().unwrap().iter().map(|(v, _)| v.0).collect()
    }
}

#[derive(Default)]
struct TestDevice {
    config: [u8; 8],
    acked: Option<u64>,
    activations: usize,
    resets: usize,
    fail_activation: bool,
    report_needs_reset: bool,
    processed: Vec<u16>,
}

impl VirtioDevice for TestDevice {
    fn device_type(&self) -> u32 {
        24
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX, QUEUE_MAX]
    }

    fn device_features(&self) -> u64 {
        (1 << 0) | STRICT_REFUSED_FEATURE
    }

    fn ack_features(&mut self, features: u64) -> Result<(), FeaturesRefused> {
        if features & STRICT_REFUSED_FEATURE != 0 {
            return Err(FeaturesRefused { features });
        }
        self.acked = Some(features);
        Ok(())
    }

    fn read_config(&self, offset_bytes: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self
                .config
                .get(offset_bytes as usize + i)
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset_bytes: u64, data: &[u8]) {
        if offset_bytes == 4 && data.len() == 4 {
            self.config[4..8].copy_from_slice(data);
        }
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        self.activations += 1;
        if self.fail_activation {
            return Err(ActivateError {
                reason: "test".into(),
            });
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.resets += 1;
        self.acked = None;
    }

    fn process_queue<M: GuestMemory>(
        &mut self,
        queue_index: u16,
        queue: &mut Queue,
        memory: &M,
    ) -> QueueOutcome {
        self.processed.push(queue_index);
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(memory) {
            used |= queue.add_used(memory, chain.head_index(), 0).is_ok();
        }
        QueueOutcome {
            used_buffers: used,
            needs_reset: self.report_needs_reset,
        }
    }
}

type Mem = Arc<GuestMemoryMmap>;
type Dev = VirtioPciDevice<TestDevice, Mem>;

fn memory() -> Mem {
    Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap())
}

fn new_device() -> (Dev, Arc<Recorder>, Mem) {
    let sink = Arc::new(Recorder::default());
    let mem = memory();
    let config = VirtioPciConfig {
        bar_address: Some(MmioAddress(0xc000_0000)),
        ..VirtioPciConfig::default()
    };
    let dev =
        VirtioPciDevice::new(TestDevice::default(), mem.clone(), sink.clone(), config).unwrap();
    (dev, sink, mem)
}

fn bar() -> BarIndex {
    BarIndex::ZERO
}

fn w(dev: &mut Dev, offset: u64, value: u64, len: usize) -> Vec<DeviceEvent> {
    dev.bar_write(bar(), offset, &value.to_le_bytes()[..len])
}

fn r(dev: &mut Dev, offset: u64, len: usize) -> u64 {
    let mut data = [0u8; 8];
    dev.bar_read(bar(), offset, &mut data[..len]);
    u64::from_le_bytes(data)
}

fn set_status(dev: &mut Dev, status: u8) -> u8 {
    w(dev, 0x14, u64::from(status), 1);
    r(dev, 0x14, 1) as u8
}

fn negotiate(dev: &mut Dev, features: u64) -> u8 {
    set_status(dev, ACKNOWLEDGE);
    set_status(dev, ACKNOWLEDGE | DRIVER);
    w(dev, 0x08, 0, 4);
    w(dev, 0x0c, features & 0xffff_ffff, 4);
    w(dev, 0x08, 1, 4);
    w(dev, 0x0c, features >> 32, 4);
    set_status(dev, ACKNOWLEDGE | DRIVER | FEATURES_OK)
}

/// Programs queue `index` over a mock split queue at `base` and enables it.
fn setup_queue<'a>(
    dev: &mut Dev,
    mem: &'a GuestMemoryMmap,
    index: u16,
    base: u64,
) -> MockSplitQueue<'a, GuestMemoryMmap> {
    let mock = MockSplitQueue::create(mem, GuestAddress(base), QUEUE_MAX);
    w(dev, 0x16, u64::from(index), 2);
    w(dev, 0x18, u64::from(QUEUE_MAX), 2);
    w(dev, 0x20, mock.desc_table_addr().0, 8);
    w(dev, 0x28, mock.avail_addr().0, 4);
    w(dev, 0x2c, 0, 4);
    w(dev, 0x30, mock.used_addr().0, 4);
    w(dev, 0x34, 0, 4);
    w(dev, 0x1a, u64::from(index) + 1, 2);
    w(dev, 0x1c, 1, 2);
    mock
}

fn enable_msix(dev: &mut Dev, vectors: u16) {
    let cap = dev.config.msix_capability_offset().unwrap();
    dev.config_write(cap + 2, &MSIX_CONTROL_ENABLE.to_le_bytes());
    for v in 0..vectors {
        let base = MSIX_TABLE_OFFSET + u64::from(v) * 16;
        w(dev, base, 0xfee0_0000, 4);
        w(dev, base + 8, 0x40 + u64::from(v), 4);
        w(dev, base + 12, 0, 4);
    }
}

fn add_writable_chain(mock: &MockSplitQueue<'_, GuestMemoryMmap>, slot: u16) {
    let desc = SplitDescriptor::new(0x8_0000, 0x100, 2, 0);
    mock.add_desc_chains(&[RawDescriptor::from(desc)], slot)
        .unwrap();
}

fn config32(dev: &Dev, offset: usize) -> u32 {
    let mut data = [0u8; 4];
    dev.config_read(offset, &mut data);
    u32::from_le_bytes(data)
}

#[test]
fn pci_ids_are_modern_virtio() {
    let (dev, _, _) = new_device();
    assert_eq!(config32(&dev, 0), 0x1058_1af4);
    assert_eq!(config32(&dev, 0x08), 0xff00_0001);
    assert_eq!(config32(&dev, 0x2c), 0x1058_1af4);
    assert_eq!(config32(&dev, 0x10), 0xc000_0004);
}

#[test]
fn invalid_device_type_and_queue_sizes_are_rejected() {
    struct Bad(u32, Vec<u16>);
    impl VirtioDevice for Bad {
        fn device_type(&self) -> u32 {
            self.0
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.1
        }
        fn device_features(&self) -> u64 {
            0
        }
        fn ack_features(&mut self, _: u64) -> Result<(), FeaturesRefused> {
            Ok(())
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self) -> Result<(), ActivateError> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn process_queue<M: GuestMemory>(&mut self, _: u16, _: &mut Queue, _: &M) -> QueueOutcome {
            QueueOutcome::default()
        }
    }
    let make = |dev: Bad| {
        VirtioPciDevice::new(
            dev,
            memory(),
            Arc::new(Recorder::default()),
            VirtioPciConfig::default(),
        )
    };
    assert!(matches!(
        make(Bad(64, vec![])),
        Err(VirtioError::InvalidDeviceType(64))
    ));
    assert!(matches!(
        make(Bad(1, vec![3])),
        Err(VirtioError::InvalidQueueMaxSize { queue: 0, size: 3 })
    ));
    assert!(matches!(
        make(Bad(1, vec![8; 256])),
        Err(VirtioError::TooManyQueues(256))
    ));
    assert!(make(Bad(1, vec![8; 255])).is_ok());
}

#[test]
fn device_feature_windows_offer_version_1() {
    let (mut dev, _, _) = new_device();
    assert_eq!(r(&mut dev, 0x04, 4), 0b11);
    w(&mut dev, 0x00, 1, 4);
    assert_eq!(r(&mut dev, 0x00, 4), 1);
    assert_eq!(r(&mut dev, 0x04, 4), 1);
    w(&mut dev, 0x00, 2, 4);
    assert_eq!(r(&mut dev, 0x04, 4), 0);
    w(&mut dev, 0x04, 0xffff_ffff, 4);
    assert_eq!(r(&mut dev, 0x04, 4), 0);
}

#[test]
fn features_ok_sticks_for_acceptable_set_and_freezes_driver_features() {
    let (mut dev, _, _) = new_device();
    let status = negotiate(&mut dev, FEATURE_VERSION_1 | 1);
    assert_ne!(status & FEATURES_OK, 0);
    assert_eq!(dev.device().acked, Some(FEATURE_VERSION_1 | 1));
    w(&mut dev, 0x08, 0, 4);
    w(&mut dev, 0x0c, 0, 4);
    assert_eq!(r(&mut dev, 0x0c, 4), 1);
}

#[test]
fn features_ok_does_not_stick_when_device_refuses() {
    let (mut dev, _, _) = new_device();
    let status = negotiate(&mut dev, FEATURE_VERSION_1 | STRICT_REFUSED_FEATURE);
    assert_eq!(status & FEATURES_OK, 0);
    assert_eq!(dev.device().acked, None);
}

#[test]
fn features_ok_requires_version_1_and_a_subset_of_the_offer() {
    let (mut dev, _, _) = new_device();
    assert_eq!(negotiate(&mut dev, 1) & FEATURES_OK, 0);
    set_status(&mut dev, 0);
    assert_eq!(
        negotiate(&mut dev, FEATURE_VERSION_1 | (1 << 5)) & FEATURES_OK,
        0
    );
}

#[test]
fn features_ok_requires_acknowledge_and_driver() {
    let (mut dev, _, _) = new_device();
    w(&mut dev, 0x0c, 1, 4);
    w(&mut dev, 0x08, 1, 4);
    w(&mut dev, 0x0c, 1, 4);
    assert_eq!(set_status(&mut dev, FEATURES_OK), 0);
}

#[test]
fn driver_ok_requires_features_ok_and_activates() {
    let (mut dev, _, _) = new_device();
    set_status(&mut dev, ACKNOWLEDGE | DRIVER);
    assert_eq!(
        set_status(&mut dev, ACKNOWLEDGE | DRIVER | DRIVER_OK),
        ACKNOWLEDGE | DRIVER
    );
    assert_eq!(dev.device().activations, 0);
    set_status(&mut dev, 0);
    negotiate(&mut dev, FEATURE_VERSION_1);
    let status = set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(status, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(dev.device().activations, 1);
    assert!(dev.is_active());
}

#[test]
fn driver_cannot_clear_status_bits_or_set_needs_reset() {
    let (mut dev, _, _) = new_device();
    negotiate(&mut dev, FEATURE_VERSION_1);
    assert_eq!(
        set_status(&mut dev, ACKNOWLEDGE),
        ACKNOWLEDGE | DRIVER | FEATURES_OK
    );
    let status = set_status(
        &mut dev,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DEVICE_NEEDS_RESET,
    );
    assert_eq!(status & DEVICE_NEEDS_RESET, 0);
    let failed = set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | FAILED);
    assert_ne!(failed & FAILED, 0);
}

#[test]
fn writing_zero_status_resets_transport_and_device() {
    let (mut dev, _, mem) = new_device();
    negotiate(&mut dev, FEATURE_VERSION_1);
    setup_queue(&mut dev, &mem, 0, 0x1000);
    w(&mut dev, 0x10, 0, 2);
    assert_eq!(set_status(&mut dev, 0), 0);
    assert_eq!(dev.device().resets, 1);
    assert_eq!(r(&mut dev, 0x0c, 4), 0);
    assert_eq!(r(&mut dev, 0x10, 2), u64::from(NO_VECTOR));
    assert_eq!(r(&mut dev, 0x16, 2), 0);
    assert_eq!(r(&mut dev, 0x1c, 2), 0);
    assert_eq!(r(&mut dev, 0x1a, 2), u64::from(NO_VECTOR));
    assert_eq!(r(&mut dev, 0x20, 8), 0);
    assert_eq!(r(&mut dev, 0x18, 2), u64::from(QUEUE_MAX));
}

#[test]
fn queue_registers_read_back_per_selected_queue() {
    let (mut dev, _, _) = new_device();
    assert_eq!(r(&mut dev, 0x12, 2), 2);
    w(&mut dev, 0x16, 1, 2);
    assert_eq!(r(&mut dev, 0x18, 2), u64::from(QUEUE_MAX));
    assert_eq!(r(&mut dev, 0x1e, 2), 1);
    w(&mut dev, 0x18, 8, 2);
    w(&mut dev, 0x20, 0x1234_5000, 4);
    w(&mut dev, 0x24, 0x1, 4);
    assert_eq!(r(&mut dev, 0x18, 2), 8);
    assert_eq!(r(&mut dev, 0x20, 8), 0x1_1234_5000);
    w(&mut dev, 0x16, 0, 2);
    assert_eq!(r(&mut dev, 0x20, 8), 0);
    w(&mut dev, 0x16, 7, 2);
    assert_eq!(r(&mut dev, 0x18, 2), 0);
    w(&mut dev, 0x18, 4, 2);
    w(&mut dev, 0x1c, 1, 2);
    assert_eq!(r(&mut dev, 0x1c, 2), 0);
}

#[test]
fn msix_vector_registers_reject_out_of_range_vectors() {
    let (mut dev, _, _) = new_device();
    w(&mut dev, 0x10, 2, 2);
    assert_eq!(r(&mut dev, 0x10, 2), 2);
    w(&mut dev, 0x10, 3, 2);
    assert_eq!(r(&mut dev, 0x10, 2), u64::from(NO_VECTOR));
    w(&mut dev, 0x1a, 1, 2);
    assert_eq!(r(&mut dev, 0x1a, 2), 1);
    w(&mut dev, 0x1a, 100, 2);
    assert_eq!(r(&mut dev, 0x1a, 2), u64::from(NO_VECTOR));
}

#[test]
fn enabling_queue_with_bad_size_sets_needs_reset() {
    let (mut dev, _, _) = new_device();
    negotiate(&mut dev, FEATURE_VERSION_1);
    w(&mut dev, 0x18, 12, 2);
    w(&mut dev, 0x1c, 1, 2);
    assert_eq!(r(&mut dev, 0x1c, 2), 0);
    assert_ne!(dev.device_status() & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn enabling_queue_larger_than_max_sets_needs_reset() {
    let (mut dev, _, _) = new_device();
    w(&mut dev, 0x18, u64::from(QUEUE_MAX) * 2, 2);
    w(&mut dev, 0x1c, 1, 2);
    assert_ne!(dev.device_status() & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn enabling_queue_outside_guest_memory_or_misaligned_sets_needs_reset() {
    for (desc, used) in [(0x10_0000_0000u64, 0x2000u64), (0x1000, 0x2002)] {
        let (mut dev, _, _) = new_device();
        w(&mut dev, 0x20, desc, 8);
        w(&mut dev, 0x28, 0x1800, 8);
        w(&mut dev, 0x30, used, 8);
        w(&mut dev, 0x1c, 1, 2);
        assert_eq!(r(&mut dev, 0x1c, 2), 0, "desc {desc:#x} used {used:#x}");
        assert_ne!(dev.device_status() & DEVICE_NEEDS_RESET, 0);
    }
}

#[test]
fn queue_setup_writes_after_enable_are_ignored() {
    let (mut dev, _, mem) = new_device();
    negotiate(&mut dev, FEATURE_VERSION_1);
    setup_queue(&mut dev, &mem, 0, 0x1000);
    assert_eq!(r(&mut dev, 0x1c, 2), 1);
    w(&mut dev, 0x18, 4, 2);
    w(&mut dev, 0x20, 0x9000, 8);
    w(&mut dev, 0x1c, 0, 2);
    assert_eq!(r(&mut dev, 0x18, 2), u64::from(QUEUE_MAX));
    assert_eq!(r(&mut dev, 0x20, 8), 0x1000);
    assert_eq!(r(&mut dev, 0x1c, 2), 1);
}

#[test]
fn notify_processes_queue_and_sends_queue_vector() {
    let (mut dev, sink, mem) = new_device();
    enable_msix(&mut dev, 3);
    negotiate(&mut dev, FEATURE_VERSION_1);
    let mock = setup_queue(&mut dev, &mem, 1, 0x1000);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    add_writable_chain(&mock, 0);
    w(&mut dev, NOTIFY_OFFSET + 4, 1, 2);
    assert_eq!(dev.device().processed, vec![1]);
    assert_eq!(mock.used().idx().load(), 1);
    assert_eq!(sink.vectors(), vec![2]);
}

#[test]
fn notify_before_driver_ok_is_replayed_at_activation() {
    let (mut dev, _, mem) = new_device();
    negotiate(&mut dev, FEATURE_VERSION_1);
    let mock = setup_queue(&mut dev, &mem, 0, 0x1000);
    add_writable_chain(&mock, 0);
    dev.notify_queue(0);
    assert!(dev.device().processed.is_empty());
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(dev.device().processed, vec![0]);
    assert_eq!(mock.used().idx().load(), 1);
}

#[test]
fn device_reported_malformed_queue_sets_needs_reset_and_config_interrupt() {
    let (mut dev, sink, mem) = new_device();
    enable_msix(&mut dev, 3);
    negotiate(&mut dev, FEATURE_VERSION_1);
    w(&mut dev, 0x10, 0, 2);
    setup_queue(&mut dev, &mem, 0, 0x1000);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    dev.device_mut().report_needs_reset = true;
    dev.notify_queue(0);
    assert_ne!(dev.device_status() & DEVICE_NEEDS_RESET, 0);
    assert_eq!(sink.vectors(), vec![0]);
    dev.notify_queue(0);
    assert_eq!(dev.device().processed.len(), 1);
    set_status(&mut dev, 0);
    assert_eq!(dev.device_status(), 0);
}

#[test]
fn failed_activation_sets_needs_reset() {
    let (mut dev, _, _) = new_device();
    dev.device_mut().fail_activation = true;
    negotiate(&mut dev, FEATURE_VERSION_1);
    let status = set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_ne!(status & DEVICE_NEEDS_RESET, 0);
    assert!(!dev.is_active());
}

#[test]
fn config_changed_bumps_generation_and_sends_config_vector() {
    let (mut dev, sink, _) = new_device();
    enable_msix(&mut dev, 3);
    w(&mut dev, 0x10, 0, 2);
    let before = r(&mut dev, 0x15, 1);
    dev.config_changed();
    assert_eq!(r(&mut dev, 0x15, 1), before + 1);
    assert_eq!(
        sink.0.lock().unwrap().clone(),
        vec![(
            MsixVector(0),
            MsiMessage {
                address: 0xfee0_0000,
                data: 0x40
            }
        )]
    );
}

#[test]
fn isr_is_set_without_msix_and_cleared_on_read() {
    let (mut dev, sink, mem) = new_device();
    negotiate(&mut dev, FEATURE_VERSION_1);
    let mock = setup_queue(&mut dev, &mem, 0, 0x1000);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    add_writable_chain(&mock, 0);
    dev.notify_queue(0);
    dev.config_changed();
    assert_eq!(
        r(&mut dev, ISR_OFFSET, 1),
        u64::from(ISR_QUEUE | ISR_CONFIG)
    );
    assert_eq!(r(&mut dev, ISR_OFFSET, 1), 0);
    assert!(sink.vectors().is_empty());
}

#[test]
fn device_config_accesses_are_forwarded_with_region_offsets() {
    let (mut dev, _, _) = new_device();
    dev.device_mut().config = [1, 2, 3, 4, 0, 0, 0, 0];
    assert_eq!(r(&mut dev, DEVICE_CONFIG_OFFSET, 4), 0x0403_0201);
    w(&mut dev, DEVICE_CONFIG_OFFSET + 4, 0xaabb_ccdd, 4);
    assert_eq!(r(&mut dev, DEVICE_CONFIG_OFFSET + 4, 4), 0xaabb_ccdd);
    assert_eq!(r(&mut dev, DEVICE_CONFIG_OFFSET + 0x800, 4), 0);
}

#[test]
fn msix_table_write_reports_message_change() {
    let (mut dev, _, _) = new_device();
    let events = w(&mut dev, MSIX_TABLE_OFFSET + 16 + 8, 0x55, 4);
    assert_eq!(
        events,
        vec![DeviceEvent::MsixMessageChanged {
            vector: MsixVector(1),
            message: MsiMessage {
                address: 0,
                data: 0x55
            }
        }]
    );
}

#[test]
fn notify_addresses_follow_bar_decoding() {
    let (mut dev, _, _) = new_device();
    assert!(dev.notify_addresses().iter().all(|n| n.address.is_none()));
    dev.config_write(0x04, &COMMAND_MEMORY_SPACE.to_le_bytes());
    let addresses = dev.notify_addresses();
    assert_eq!(addresses.len(), 2);
    assert_eq!(addresses[1].bar_offset_bytes, NOTIFY_OFFSET + 4);
    assert_eq!(addresses[1].address, Some(MmioAddress(0xc000_3004)));
}

#[test]
fn malformed_accesses_never_panic() {
    let (mut dev, _, mem) = new_device();
    negotiate(&mut dev, FEATURE_VERSION_1);
    setup_queue(&mut dev, &mem, 0, 0x1000);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let offset = next() % (BAR_SIZE_BYTES + 0x100);
        let len = (next() % 10) as usize;
        let value = next().to_le_bytes();
        let data = &value[..len.min(8)];
        match next() % 4 {
            0 => {
                dev.bar_write(bar(), offset, data);
            }
            1 => {
                let mut buf = [0u8; 9];
                dev.bar_read(bar(), offset, &mut buf[..len]);
            }
            2 => {
                dev.config_write((offset % 300) as usize, data);
            }
            _ => dev.notify_queue((next() % 4) as u16),
        }
    }
    let wrong_bar = BarIndex::new(2).unwrap();
    let mut buf = [0xaau8; 4];
    dev.bar_read(wrong_bar, 0, &mut buf);
    assert_eq!(buf, [0; 4]);
    assert!(dev.bar_write(wrong_bar, 0, &[1]).is_empty());
}

/// Everything the driver and the firmware can read: PCI config space, then BAR 0 region by
/// region (the common structure once per queue), ISR last (reading it clears it).
fn image(dev: &mut Dev) -> Vec<u8> {
    let mut out = Vec::new();
    for offset in (0..256).step_by(4) {
        out.extend(config32(dev, offset).to_le_bytes());
    }
    let queues = dev.queues.len() as u16;
    let common_len = crate::layout::COMMON_CONFIG_LEN_BYTES;
    for queue in 0..queues {
        w(dev, 0x16, u64::from(queue), 2);
        for offset in (0..common_len).step_by(2) {
            out.extend((r(dev, COMMON_OFFSET + offset, 2) as u16).to_le_bytes());
        }
    }
    for offset in (0..REGION_SIZE_BYTES).step_by(4) {
        for region in [DEVICE_CONFIG_OFFSET, MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET] {
            out.extend((r(dev, region + offset, 4) as u32).to_le_bytes());
        }
    }
    out.push(r(dev, ISR_OFFSET, 1) as u8);
    out
}

#[test]
fn system_reset_makes_the_function_read_as_freshly_created() {
    let (mut fresh, _, _) = new_device();
    let (mut dev, sink, mem) = new_device();
    dev.config_write(0x04, &COMMAND_MEMORY_SPACE.to_le_bytes());
    dev.config_write(0x10, &0xd000_0000u32.to_le_bytes());
    enable_msix(&mut dev, 3);
    negotiate(&mut dev, FEATURE_VERSION_1);
    let mock = setup_queue(&mut dev, &mem, 0, 0x1000);
    setup_queue(&mut dev, &mem, 1, 0x4000);
    w(&mut dev, 0x10, 0, 2);
    set_status(&mut dev, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    // Vector 0 masked: the config change leaves its pending bit set; ISR has the config bit.
    w(&mut dev, MSIX_TABLE_OFFSET + 12, 1, 4);
    dev.config_changed();
    add_writable_chain(&mock, 0);
    dev.notify_queue(0);
    assert!(dev.msix().is_pending(MsixVector(0)));
    assert_eq!(sink.vectors(), vec![1]);
    assert!(dev.is_active());

    dev.system_reset();

    assert!(!dev.is_active());
    assert!(!dev.msix().is_enabled());
    assert_eq!(dev.device_status(), 0);
    assert_eq!(dev.config_generation(), 0);
    assert_eq!(dev.notify_addresses(), fresh.notify_addresses());
    assert_eq!(dev.bar_regions(), fresh.bar_regions());
    assert_eq!(dev.device().acked, None);
    assert_eq!(image(&mut dev), image(&mut fresh));
}

/// A device that serves its queues elsewhere (as vhost-user does) and only records the setup.
#[derive(Default)]
struct RingsElsewhere {
    inner: TestDevice,
    setups: Vec<crate::QueueSetup>,
}

impl VirtioDevice for RingsElsewhere {
    fn device_type(&self) -> u32 {
        self.inner.device_type()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX, QUEUE_MAX]
    }
    fn device_features(&self) -> u64 {
        self.inner.device_features()
    }
    fn ack_features(&mut self, features: u64) -> Result<(), FeaturesRefused> {
        self.inner.ack_features(features)
    }
    fn read_config(&self, offset_bytes: u64, data: &mut [u8]) {
        self.inner.read_config(offset_bytes, data)
    }
    fn write_config(&mut self, offset_bytes: u64, data: &[u8]) {
        self.inner.write_config(offset_bytes, data)
    }
    fn activate(&mut self) -> Result<(), ActivateError> {
        unreachable!("the transport calls activate_with_queues")
    }
    fn activate_with_queues(&mut self, queues: &[crate::QueueSetup]) -> Result<(), ActivateError> {
        self.setups = queues.to_vec();
        Ok(())
    }
    fn reset(&mut self) {}
    fn process_queue<M: GuestMemory>(&mut self, _: u16, _: &mut Queue, _: &M) -> QueueOutcome {
        QueueOutcome::default()
    }
}

#[test]
fn activation_hands_the_driver_queue_setup_to_the_device() {
    let mem = memory();
    let config = VirtioPciConfig {
        bar_address: Some(MmioAddress(0xc000_0000)),
        ..VirtioPciConfig::default()
    };
    let sink = Arc::new(Recorder::default());
    let mut dev =
        VirtioPciDevice::new(RingsElsewhere::default(), mem.clone(), sink, config).unwrap();
    let w = |dev: &mut VirtioPciDevice<RingsElsewhere, Mem>, offset: u64, value: u64, len| {
        dev.bar_write(bar(), offset, &value.to_le_bytes()[..len]);
    };
    w(&mut dev, 0x14, u64::from(ACKNOWLEDGE | DRIVER), 1);
    w(&mut dev, 0x08, 1, 4);
    w(&mut dev, 0x0c, 1, 4);
    w(
        &mut dev,
        0x14,
        u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
        1,
    );
    let mock = MockSplitQueue::create(&*mem, GuestAddress(0x1_0000), QUEUE_MAX);
    w(&mut dev, 0x16, 1, 2);
    w(&mut dev, 0x18, 8, 2);
    w(&mut dev, 0x20, mock.desc_table_addr().0, 8);
    w(&mut dev, 0x28, mock.avail_addr().0, 8);
    w(&mut dev, 0x30, mock.used_addr().0, 8);
    w(&mut dev, 0x1c, 1, 2);
    w(
        &mut dev,
        0x14,
        u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
        1,
    );
    assert!(dev.is_active());
    let setups = &dev.device().setups;
    assert_eq!(setups.len(), 2);
    assert!(!setups[0].enabled);
    assert_eq!(
        setups[1],
        crate::QueueSetup {
            index: 1,
            size: 8,
            enabled: true,
            desc_table_addr: mock.desc_table_addr().0,
            avail_ring_addr: mock.avail_addr().0,
            used_ring_addr: mock.used_addr().0,
        }
    );
}
