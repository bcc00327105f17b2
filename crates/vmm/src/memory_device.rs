//! A virtio-mem device as the VMM builds and serves it: host memory, slot layout and KVM slot
//! numbers from the VM's budget, the device state machine, and its face towards the virtio
//! transport and the API.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use api::metrics::Histogram;
use api::model::{DriverState, MemoryDeviceStatus};
use api::size::format_size;
use boot::numa::NodeId;
use hostmem::{Backing, HostRegion};
use kvm_ioctls::VmFd;
use memslots::{KvmSlotBackend, SlotBudget};
use vhost_frontend::{SharedMemoryTable, VhostSlotBackend};
use virtio::{ActivateError, FeaturesRefused, QueueOutcome, VirtioDevice};
use virtio_mem::{
    BlockSizeInputs, DeviceState, FeatureOffer, Prealloc, ResponseCounters, Stats, VIRTIO_ID_MEM,
    VirtioMem, VirtioMemConfig, default_block_size_bytes,
};
use vm_memory::{GuestAddress, GuestMemory};

use crate::Error;
use crate::config::MemDeviceConfig;
use crate::shared_device::DeviceHealth;

/// The device state machine over real KVM slots (and vhost-user memory tables, when guest
/// memory is shared with backends) and host memory.
pub type MemDeviceCore = VirtioMem<VhostSlotBackend<KvmSlotBackend>, Arc<HostRegion>>;

/// Index of the request queue, virtio-mem's only queue.
pub const REQUEST_QUEUE: u16 = 0;

#[path = "memory_device/restore.rs"]
mod restore;
#[path = "memory_device/slots.rs"]
mod slots;

pub use slots::DeviceSlots;

/// Queue size of the single request queue (as QEMU).
const QUEUE_SIZE: u16 = 128;

/// One virtio-mem device, named for the API.
pub struct MemoryDevice {
    id: String,
    core: MemDeviceCore,
    queue_sizes: [u16; 1],
    driver_seen: bool,
    /// The driver's features were refused: it gives up on the device.
    driver_failed: bool,
    /// Time spent serving each request (a batch's time shared out among its requests).
    latency: Histogram,
    /// Guest accesses to unmapped parts of the region (see [`crate::unplugged`]).
    unplugged_accesses: Arc<AtomicU64>,
    /// Broken after a panic under the device lock: requests are not served any more.
    health: Arc<DeviceHealth>,
    last_request: Option<Instant>,
    /// When the plug now populating (see [`virtio_mem::populate`]) was prepared.
    plug_prepared_at: Option<Instant>,
    /// NUMA node (PXM) offered to the driver, on a NUMA VM.
    node: Option<NodeId>,
    /// The dirty log of the device's KVM slots (shared with a live migration).
    dirty_log: Arc<memslots::SlotDirtyLog>,
    // Declared last: the host mapping must outlive the slots mapped from it.
    region: Arc<HostRegion>,
}

impl std::fmt::Debug for MemoryDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDevice")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What placing a device needs.
pub struct MemoryDevicePlacement<'a> {
    /// The VM whose slots the device maps.
    pub vm: &'a Arc<VmFd>,
    /// The VM-wide slot budget.
    pub budget: &'a mut SlotBudget,
    /// Guest physical address of the region.
    pub guest_addr: u64,
    /// The vhost-user memory table the device's slots must follow, if any backend exists.
    pub vhost_table: Option<SharedMemoryTable>,
}

impl MemoryDevice {
    /// Creates host memory, the slot layout and the device for `config`.
    pub fn new(
        config: &MemDeviceConfig,
        placement: MemoryDevicePlacement<'_>,
    ) -> Result<Self, Error> {
        let region = Arc::new(
            HostRegion::new(&Backing {
                kind: config.backing,
                size_bytes: config.size_bytes,
                hugetlbfs_dir: config.hugetlbfs_dir.clone(),
            })
            .map_err(|e| {
                let cause = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                Error::Device(format!(
                    "memory device '{}': reserving size={} of host memory: {e}{cause}",
                    config.id,
                    format_size(config.size_bytes)
                ))
            })?,
        );
        Self::assemble(config, placement, region, None)
    }

    /// The slot layout, KVM slots and device state machine over `region`; `saved` restores
    /// a saved state (mapping the slots that hold its plugged blocks) instead of starting
    /// empty.
    pub(crate) fn assemble(
        config: &MemDeviceConfig,
        placement: MemoryDevicePlacement<'_>,
        region: Arc<HostRegion>,
        saved: Option<&DeviceState>,
    ) -> Result<Self, Error> {
        let block_size_bytes = match saved {
            Some(state) => state.block_size_bytes,
            None => config.block_size_bytes.unwrap_or_else(|| {
                default_block_size_bytes(BlockSizeInputs::for_host(region.page_size_bytes()))
            }),
        };
        let guest_addr = placement.guest_addr;
        let slots = DeviceSlots::new(config, placement, &region, block_size_bytes)?;
        Self::assemble_on(config, guest_addr, region, slots, saved)
    }

    /// The device state machine over slots made earlier (by [`DeviceSlots::new`], e.g. on a
    /// migration destination, which maps them while memory arrives).
    pub(crate) fn assemble_on(
        config: &MemDeviceConfig,
        guest_addr: u64,
        region: Arc<HostRegion>,
        slots: DeviceSlots,
        saved: Option<&DeviceState>,
    ) -> Result<Self, Error> {
        let fail = |what: &str, e: &dyn std::fmt::Display| device_error(config, what, e);
        let DeviceSlots {
            slots,
            dirty_log,
            block_size_bytes,
        } = slots;
        let device_config = VirtioMemConfig {
            guest_addr: GuestAddress(guest_addr),
            region_size_bytes: config.size_bytes,
            block_size_bytes,
            backing_page_size_bytes: region.page_size_bytes(),
            requested_size_bytes: config.requested_bytes,
            node_id: config.node.map_or(0, |n| n.0),
            prealloc: if config.prealloc {
                Prealloc::OnPlug
            } else {
                Prealloc::Off
            },
            offer: FeatureOffer {
                acpi_pxm: config.node.is_some(),
                ..FeatureOffer::default()
            },
        };
        let mut core = match saved {
            Some(state) => VirtioMem::restore(device_config, slots, region.clone(), state)
                .map_err(|e| fail("restoring the device", &e))?,
            None => VirtioMem::new(device_config, slots, region.clone())
                .map_err(|e| fail("device", &e))?,
        };
        // Preallocation runs without the transport lock (see `notify::serve_notification`).
        core.defer_populate();
        Ok(MemoryDevice {
            id: config.id.clone(),
            core,
            queue_sizes: [QUEUE_SIZE],
            driver_seen: saved.is_some_and(|s| s.driver_features.is_some()),
            driver_failed: false,
            latency: Histogram::default(),
            unplugged_accesses: Arc::new(AtomicU64::new(0)),
            health: Arc::default(),
            last_request: None,
            plug_prepared_at: None,
            node: config.node,
            dirty_log,
            region,
        })
    }

    /// The device id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The state machine.
    pub fn core(&self) -> &MemDeviceCore {
        &self.core
    }

    /// The state machine, mutably (resize, system reset).
    pub fn core_mut(&mut self) -> &mut MemDeviceCore {
        &mut self.core
    }

    /// The NUMA node of the device's memory, on a NUMA VM.
    pub fn node(&self) -> Option<NodeId> {
        self.node
    }

    /// The dirty log of the device's KVM slots (shared with a live migration).
    pub fn dirty_log(&self) -> &Arc<memslots::SlotDirtyLog> {
        &self.dirty_log
    }

    /// Host memory behind the region.
    pub fn region(&self) -> &Arc<HostRegion> {
        &self.region
    }

    /// The device's request and failure counters.
    pub fn stats(&self) -> Stats {
        *self.core.stats()
    }

    /// Request latency so far.
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    /// Counter of guest accesses to unmapped parts of the region.
    pub fn unplugged_accesses(&self) -> &Arc<AtomicU64> {
        &self.unplugged_accesses
    }

    /// The device's health, shared with its [`crate::devices::SharedMemoryDevice`] handles.
    pub fn health(&self) -> &Arc<DeviceHealth> {
        &self.health
    }

    /// System reset (guest reboot), after the transport's: no driver has seen the device, and
    /// everything is unplugged. If discarding fails the memory stays plugged (consistent: the
    /// bitmap, sizes and slots are unchanged) and the next driver unplugs it; the error says so.
    pub fn system_reset(&mut self) -> Result<(), virtio_mem::Error> {
        self.driver_seen = false;
        self.driver_failed = false;
        self.core.system_reset()
    }

    /// Commits (or rolls back) the plug of `ticket` once its range is populated (see
    /// [`virtio_mem::populate`]); its latency counts from when it was prepared.
    pub fn finish_populate(&mut self, ticket: u64, populated: hostmem::Result<()>) {
        let before = requests_answered(self.core.stats());
        self.core.finish_populate(ticket, populated);
        if requests_answered(self.core.stats()) > before {
            if let Some(at) = self.plug_prepared_at.take() {
                self.latency.observe(at.elapsed());
            }
            self.last_request = Some(Instant::now());
        }
    }

    /// What the guest driver is doing.
    pub fn driver_state(&self) -> DriverState {
        if self.health.is_broken() {
            DriverState::Broken
        } else if self.core.needs_reset() {
            DriverState::NeedsReset
        } else if self.driver_failed {
            DriverState::Broken
        } else if self.driver_seen {
            DriverState::Active
        } else {
            DriverState::NotSeen
        }
    }

    /// The device as the API reports it.
    pub fn api_status(&self) -> MemoryDeviceStatus {
        let s = self.core.status();
        MemoryDeviceStatus {
            id: self.id.clone(),
            guest_addr: s.guest_addr,
            block_size_bytes: s.block_size_bytes,
            region_bytes: s.region_size_bytes,
            usable_region_bytes: s.usable_region_size_bytes,
            requested_bytes: s.requested_size_bytes,
            plugged_bytes: s.plugged_size_bytes,
            slots_total: s.slots_total,
            slots_mapped: s.slots_mapped,
            mapped_bytes: s.mapped_bytes,
            slot_policy: self.core.memslots().layout().policy().to_string(),
            legacy_mapping: s.legacy_mapping,
            driver_state: self.driver_state(),
            node: self.node.map(|n| n.0),
            last_request_age_ms: self
                .last_request
                .map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

impl VirtioDevice for MemoryDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_MEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.core.device_features()
    }

    fn ack_features(&mut self, features: u64) -> Result<(), FeaturesRefused> {
        self.core.ack_features(features).map_err(|e| {
            log::warn!("memory device '{}': {e}", self.id);
            self.driver_failed = true;
            FeaturesRefused { features }
        })
    }

    fn read_config(&self, offset_bytes: u64, data: &mut [u8]) {
        self.core.read_config(offset_bytes, data);
    }

    fn write_config(&mut self, _offset_bytes: u64, _data: &[u8]) {
        // The virtio-mem config space is read-only for the driver.
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        self.driver_seen = true;
        self.driver_failed = false;
        Ok(())
    }

    fn reset(&mut self) {
        // No driver drives the device until the next one activates it.
        self.driver_seen = false;
        self.core.reset();
    }

    fn process_queue<M: GuestMemory>(
        &mut self,
        _queue_index: u16,
        queue: &mut virtio::Queue,
        memory: &M,
    ) -> QueueOutcome {
        if self.health.is_broken() {
            // Its state may be half-updated: leave it (and the guest's memory) as it is.
            return QueueOutcome::default();
        }
        let before = requests_answered(self.core.stats());
        let started = Instant::now();
        let was_populating = self.core.plug_in_progress();
        let outcome = self.core.process_queue(queue, memory);
        if !was_populating && self.core.plug_in_progress() {
            self.plug_prepared_at = Some(started);
        }
        let answered = requests_answered(self.core.stats()).saturating_sub(before);
        if answered > 0 {
            let each = started.elapsed() / u32::try_from(answered).unwrap_or(u32::MAX);
            for _ in 0..answered {
                self.latency.observe(each);
            }
            self.last_request = Some(Instant::now());
        }
        QueueOutcome {
            used_buffers: outcome.used,
            needs_reset: outcome.needs_reset,
        }
    }
}

fn device_error(config: &MemDeviceConfig, what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::Device(format!("memory device '{}': {what}: {e}", config.id))
}

/// Requests answered so far, of every type and response.
fn requests_answered(stats: &Stats) -> u64 {
    let sum = |c: &ResponseCounters| c.ack + c.nack + c.busy + c.error;
    sum(&stats.plug) + sum(&stats.unplug) + sum(&stats.unplug_all) + sum(&stats.state)
}
