use std::sync::{Arc, Mutex};

use pci::{BarIndex, MSIX_CONTROL_ENABLE, MmioAddress, MsiMessage, MsiSink, MsixVector, PciDevice};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestMemory, GuestMemoryMmap};

use super::*;
use crate::layout::MSIX_TABLE_OFFSET;
use crate::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURE_VERSION_1, FEATURES_OK};
use crate::{ActivateError, FeaturesRefused, QueueOutcome, VirtioPciConfig};

const QUEUE_MAX: u16 = 16;

#[derive(Default)]
struct Recorder(Mutex<Vec<u16>>);

impl MsiSink for Recorder {
    fn send(&self, vector: MsixVector, _message: MsiMessage) {
        self.0.lock().unwrap().push(vector.0);
    }
}

/// Serves every chain; `queues` sets the queue count. Records features acked and
/// activations.
struct Echo {
    queues: Vec<u16>,
    device_type: u32,
    acked: Vec<u64>,
    activations: Vec<Vec<crate::QueueSetup>>,
}

impl VirtioDevice for Echo {
    fn device_type(&self) -> u32 {
        self.device_type
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queues
    }
    fn device_features(&self) -> u64 {
        1
    }
    fn ack_features(&mut self, features: u64) -> Result<(), FeaturesRefused> {
        self.acked.push(features);
        Ok(())
    }
    fn read_config(&self, _offset_bytes: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset_bytes: u64, _data: &[u8]) {}
    fn activate(&mut self) -> Result<(), ActivateError> {
        Ok(())
    }
    fn activate_with_queues(&mut self, queues: &[crate::QueueSetup]) -> Result<(), ActivateError> {
        self.activations.push(queues.to_vec());
        Ok(())
    }
    fn reset(&mut self) {}
    fn process_queue<M: GuestMemory>(
        &mut self,
        _queue_index: u16,
        queue: &mut Queue,
        memory: &M,
    ) -> QueueOutcome {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(memory) {
            used |= queue.add_used(memory, chain.head_index(), 0).is_ok();
        }
        QueueOutcome {
            used_buffers: used,
            needs_reset: false,
        }
    }
}

type Mem = Arc<GuestMemoryMmap>;
type Dev = VirtioPciDevice<Echo, Mem>;

fn device(mem: &Mem, queues: usize, device_type: u32) -> (Dev, Arc<Recorder>) {
    let sink = Arc::new(Recorder::default());
    let echo = Echo {
        queues: vec![QUEUE_MAX; queues],
        device_type,
        acked: Vec::new(),
        activations: Vec::new(),
    };
    let config = VirtioPciConfig {
        bar_address: Some(MmioAddress(0xc000_0000)),
        ..VirtioPciConfig::default()
    };
    (
        VirtioPciDevice::new(echo, mem.clone(), sink.clone(), config).unwrap(),
        sink,
    )
}

fn w(dev: &mut Dev, offset: u64, value: u64, len: usize) {
    dev.bar_write(BarIndex::ZERO, offset, &value.to_le_bytes()[..len]);
}

fn add_chain(mock: &MockSplitQueue<'_, GuestMemoryMmap>, slot: u16) {
    let desc = SplitDescriptor::new(0x8_0000, 0x100, 2, 0);
    mock.add_desc_chains(&[RawDescriptor::from(desc)], slot)
        .unwrap();
}

/// A driven device: features negotiated, MSI-X on, queue 0 enabled on vector 1 and one chain
/// served, DRIVER_OK.
fn driven(mem: &Mem) -> (Dev, MockSplitQueue<'_, GuestMemoryMmap>) {
    let (mut dev, _sink) = device(mem, 1, 24);
    dev.config_write(0x04, &(pci::COMMAND_MEMORY_SPACE).to_le_bytes());
    let cap = dev.config.msix_capability_offset().unwrap();
    dev.config_write(cap + 2, &MSIX_CONTROL_ENABLE.to_le_bytes());
    for v in 0..2u64 {
        let base = MSIX_TABLE_OFFSET + v * 16;
        w(&mut dev, base, 0xfee0_0000, 4);
        w(&mut dev, base + 8, 0x40 + v, 4);
        w(&mut dev, base + 12, 0, 4);
    }
    w(&mut dev, 0x14, u64::from(ACKNOWLEDGE | DRIVER), 1);
    w(&mut dev, 0x08, 1, 4);
    w(&mut dev, 0x0c, FEATURE_VERSION_1 >> 32, 4);
    w(
        &mut dev,
        0x14,
        u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
        1,
    );
    w(&mut dev, 0x10, 0, 2); // config vector 0
    let mock = MockSplitQueue::create(&**mem, GuestAddress(0x1_0000), QUEUE_MAX);
    w(&mut dev, 0x16, 0, 2);
    w(&mut dev, 0x20, mock.desc_table_addr().0, 8);
    w(&mut dev, 0x28, mock.avail_addr().0, 8);
    w(&mut dev, 0x30, mock.used_addr().0, 8);
    w(&mut dev, 0x1a, 1, 2);
    w(&mut dev, 0x1c, 1, 2);
    w(
        &mut dev,
        0x14,
        u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
        1,
    );
    add_chain(&mock, 0);
    dev.notify_queue(0);
    dev.config_changed();
    (dev, mock)
}

fn memory() -> Mem {
    Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap())
}

#[test]
fn a_driven_transport_round_trips_and_keeps_serving_its_queue() {
    let mem = memory();
    let (dev, mock) = driven(&mem);
    let saved = dev.save_state();
    assert_eq!(saved.queues[0].next_avail, 1);
    assert_eq!(saved.queues[0].next_used, 1);
    assert_eq!(saved.config_generation, 1);
    let bytes = postcard::to_allocvec(&saved).unwrap();
    let loaded: VirtioPciState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(loaded, saved);

    let (mut fresh, sink) = device(&mem, 1, 24);
    fresh.restore_state(&loaded).unwrap();
    assert_eq!(fresh.save_state(), saved);
    assert!(fresh.is_active());
    assert_eq!(fresh.notify_addresses(), dev.notify_addresses());
    assert_eq!(
        fresh.msix().message(MsixVector(1)),
        dev.msix().message(MsixVector(1))
    );
    assert!(sink.0.lock().unwrap().is_empty(), "restoring sends nothing");
    // The driver goes on where it left off: the next chain is used and vector 1 fires.
    add_chain(&mock, 1);
    fresh.notify_queue(0);
    assert_eq!(fresh.save_state().queues[0].next_used, 2);
    assert_eq!(*sink.0.lock().unwrap(), [1]);
}

#[test]
fn state_of_another_device_or_a_bad_queue_is_refused_and_changes_nothing() {
    let mem = memory();
    let (dev, _mock) = driven(&mem);
    let saved = dev.save_state();

    let (mut other_type, _) = device(&mem, 1, 5);
    let e = other_type.restore_state(&saved).unwrap_err().to_string();
    assert!(e.contains("virtio device type 24 saved"), "{e}");

    let (mut two_queues, _) = device(&mem, 2, 24);
    let e = two_queues.restore_state(&saved).unwrap_err().to_string();
    assert!(e.contains("1 queues saved, this device has 2"), "{e}");

    let (mut fresh, _) = device(&mem, 1, 24);
    let before = fresh.save_state();
    let mut outside = saved.clone();
    outside.queues[0].desc_table = 0x20_0000;
    let e = fresh.restore_state(&outside).unwrap_err().to_string();
    assert!(e.contains("queue 0: invalid saved layout"), "{e}");
    let mut vector = saved.clone();
    vector.config_msix_vector = 7;
    assert!(fresh.restore_state(&vector).is_err());
    let mut features = saved.clone();
    features.driver_features |= 1 << 20;
    assert!(fresh.restore_state(&features).is_err());
    let mut msix = saved;
    msix.msix.entries.pop();
    let e = fresh.restore_state(&msix).unwrap_err().to_string();
    assert!(e.contains("MSI-X vectors saved"), "{e}");
    assert_eq!(fresh.save_state(), before);
}

#[test]
fn replaying_the_negotiation_acks_the_drivers_features_and_activates_the_saved_queues() {
    let mem = memory();
    let (dev, mock) = driven(&mem);
    let saved = dev.save_state();
    let (mut fresh, _) = device(&mem, 1, 24);
    fresh.restore_state(&saved).unwrap();
    assert!(
        fresh.device().acked.is_empty(),
        "restoring alone replays nothing"
    );
    assert!(fresh.device().activations.is_empty());
    fresh.replay_negotiation().unwrap();
    assert_eq!(fresh.device().acked, [saved.driver_features]);
    let setups = &fresh.device().activations;
    assert_eq!(setups.len(), 1);
    let q = &setups[0][0];
    assert!(q.enabled);
    assert_eq!(
        (q.desc_table_addr, q.avail_ring_addr, q.used_ring_addr),
        (
            mock.desc_table_addr().0,
            mock.avail_addr().0,
            mock.used_addr().0
        )
    );
}

#[test]
fn replaying_a_device_the_driver_never_set_up_does_nothing() {
    let mem = memory();
    let (mut fresh, _) = device(&mem, 1, 24);
    let untouched = fresh.save_state();
    let (mut again, _) = device(&mem, 1, 24);
    again.restore_state(&untouched).unwrap();
    again.replay_negotiation().unwrap();
    fresh.replay_negotiation().unwrap();
    assert!(again.device().acked.is_empty() && again.device().activations.is_empty());
}
