//! A virtio-mem device as the VMM builds and serves it: host memory, slot layout and KVM slot
//! numbers from the VM's budget, the device state machine, and its face towards the virtio
//! transport and the API.

use std::sync::Arc;

use api::model::MemoryDeviceStatus;
use hostmem::{Backing, HostRegion};
use kvm_ioctls::VmFd;
use memslots::{
    KvmSlotBackend, KvmSlotBackendConfig, LayoutRequest, Memslots, Protection, SlotBudget,
    SlotLayout,
};
use virtio::{ActivateError, FeaturesRefused, QueueOutcome, VirtioDevice};
use virtio_mem::{
    BlockSizeInputs, FeatureOffer, Prealloc, VIRTIO_ID_MEM, VirtioMem, VirtioMemConfig,
    default_block_size_bytes,
};
use vm_memory::{GuestAddress, GuestMemory};

use crate::Error;
use crate::config::MemDeviceConfig;

/// The device state machine over real KVM slots and host memory.
pub type MemDeviceCore = VirtioMem<KvmSlotBackend, Arc<HostRegion>>;

/// Queue size of the single request queue (as QEMU).
const QUEUE_SIZE: u16 = 128;

/// One virtio-mem device, named for the API.
pub struct MemoryDevice {
    id: String,
    core: MemDeviceCore,
    queue_sizes: [u16; 1],
    driver_seen: bool,
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
}

impl MemoryDevice {
    /// Creates host memory, the slot layout and the device for `config`.
    pub fn new(
        config: &MemDeviceConfig,
        placement: MemoryDevicePlacement<'_>,
    ) -> Result<Self, Error> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::Device(format!("memory device '{}': {what}: {e}", config.id))
        };
        let region = Arc::new(
            HostRegion::new(&Backing {
                kind: config.backing,
                size_bytes: config.size_bytes,
                hugetlbfs_dir: config.hugetlbfs_dir.clone(),
            })
            .map_err(|e| fail("host memory", &e))?,
        );
        let block_size_bytes = config.block_size_bytes.unwrap_or_else(|| {
            default_block_size_bytes(BlockSizeInputs::for_host(region.page_size_bytes()))
        });
        let layout = SlotLayout::plan(LayoutRequest {
            policy: config.slots,
            region_size_bytes: config.size_bytes,
            block_size_bytes,
            slot_limit: config.slots.slot_limit(placement.budget.available()),
        })
        .map_err(|e| fail("slot layout", &e))?;
        let slot_count = u32::try_from(layout.len()).map_err(|e| fail("slot layout", &e))?;
        let ids = placement
            .budget
            .reserve(&format!("memory device '{}'", config.id), slot_count)
            .map_err(|e| fail("KVM memory slots", &e))?;
        // SAFETY: `region` is kept in this device next to the backend and dropped after it
        // (field order), so the mapping outlives every KVM slot made from it; only the backend
        // changes its protection.
        let backend = unsafe {
            KvmSlotBackend::new(KvmSlotBackendConfig {
                vm: placement.vm.clone(),
                host_base_addr: region.host_addr(),
                region_size_bytes: region.size_bytes(),
                protection: Protection::ProtectUnmapped,
            })
        }
        .map_err(|e| fail("protecting host memory", &e))?;
        let slots = Memslots::new(layout, ids, placement.guest_addr, backend)
            .map_err(|e| fail("memslots", &e))?;
        let core = VirtioMem::new(
            VirtioMemConfig {
                guest_addr: GuestAddress(placement.guest_addr),
                region_size_bytes: config.size_bytes,
                block_size_bytes,
                backing_page_size_bytes: region.page_size_bytes(),
                requested_size_bytes: config.requested_bytes,
                node_id: 0,
                prealloc: if config.prealloc {
                    Prealloc::OnPlug
                } else {
                    Prealloc::Off
                },
                offer: FeatureOffer::default(),
            },
            slots,
            region.clone(),
        )
        .map_err(|e| fail("device", &e))?;
        Ok(MemoryDevice {
            id: config.id.clone(),
            core,
            queue_sizes: [QUEUE_SIZE],
            driver_seen: false,
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

    /// Host memory behind the region.
    pub fn region(&self) -> &Arc<HostRegion> {
        &self.region
    }

    /// The device as the API reports it.
    pub fn api_status(&self) -> MemoryDeviceStatus {
        let s = self.core.status();
        let driver_state = if s.needs_reset {
            "needs-reset"
        } else if self.driver_seen {
            "active"
        } else {
            "not-seen"
        };
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
            driver_state: driver_state.to_string(),
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
