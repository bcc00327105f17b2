//! A memory device's KVM slots before the device exists: layout under the run's slot policy,
//! KVM slot numbers from the VM's budget, the KVM backend over the host memory (with the
//! vhost-user table when backends share guest memory). A migration destination makes them
//! first and maps slots as the source's bitmaps arrive, so memory pages land in mapped slots
//! and the switchover maps nothing.

use std::sync::Arc;

use api::size::format_size;
use hostmem::HostRegion;
use memslots::{
    KvmSlotBackend, KvmSlotBackendConfig, LayoutRequest, Memslots, Protection, SlotDirtyLog,
    SlotLayout, SlotSpec,
};
use vhost_frontend::{VhostSlotBackend, VhostSlotBackendConfig};

use super::{MemoryDevicePlacement, device_error};
use crate::Error;
use crate::config::MemDeviceConfig;

/// The slots of one memory device, mapped or not.
pub struct DeviceSlots {
    pub(super) slots: Memslots<VhostSlotBackend<KvmSlotBackend>>,
    pub(super) dirty_log: Arc<SlotDirtyLog>,
    pub(super) block_size_bytes: u64,
}

impl std::fmt::Debug for DeviceSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSlots")
            .field("slots", &self.slots.layout().len())
            .field("mapped", &self.slots.mapped_count())
            .finish_non_exhaustive()
    }
}

impl DeviceSlots {
    /// Plans the layout of `config`'s region in blocks of `block_size_bytes`, reserves its KVM
    /// slot numbers and protects the unmapped host memory (a `single` layout maps its one
    /// slot now).
    pub fn new(
        config: &MemDeviceConfig,
        placement: MemoryDevicePlacement<'_>,
        region: &Arc<HostRegion>,
        block_size_bytes: u64,
    ) -> Result<Self, Error> {
        let fail = |what: &str, e: &dyn std::fmt::Display| device_error(config, what, e);
        if block_size_bytes < region.page_size_bytes() {
            return Err(Error::Device(format!(
                "memory device '{}': block={} is smaller than the backing's page size {}; use \
                 block={} or larger",
                config.id,
                format_size(block_size_bytes),
                format_size(region.page_size_bytes()),
                format_size(region.page_size_bytes())
            )));
        }
        if placement.budget.available() == 0 {
            let why = placement.budget.limited_by().map_or_else(
                || "KVM has no memory slots left".to_string(),
                |l| format!("{} allows {} regions, all taken", l.owner, l.max_slots),
            );
            return Err(fail("memory slots", &why));
        }
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
        // SAFETY: `region` is kept in the device next to the backend and dropped after it
        // (field order of `MemoryDevice`; a migration destination keeps it in its sink until
        // the device takes these slots), so the mapping outlives every KVM slot made from it;
        // only the backend changes its protection.
        let backend = unsafe {
            KvmSlotBackend::new(KvmSlotBackendConfig {
                vm: placement.vm.clone(),
                host_base_addr: region.host_addr(),
                region_size_bytes: region.size_bytes(),
                protection: Protection::ProtectUnmapped,
            })
        }
        .map_err(|e| fail("protecting host memory", &e))?;
        let dirty_log = backend.dirty_log();
        let backend = match placement.vhost_table {
            None => VhostSlotBackend::passthrough(backend),
            Some(table) => {
                let fd = region
                    .fd()
                    .ok_or_else(|| {
                        fail(
                            "vhost-user",
                            &"private anonymous memory cannot be shared with vhost-user \
                              backends; use backing=memfd or backing=hugetlbfs",
                        )
                    })?
                    .try_clone_to_owned()
                    .map_err(|e| fail("sharing memory with vhost-user backends", &e))?;
                VhostSlotBackend::new(
                    backend,
                    VhostSlotBackendConfig {
                        table,
                        host_base_addr: region.host_addr() as u64,
                        fd: Arc::new(fd),
                        fd_base_offset_bytes: 0,
                    },
                )
            }
        };
        let slots = Memslots::new(layout, ids, placement.guest_addr, backend)
            .map_err(|e| fail("memslots", &e))?;
        Ok(DeviceSlots {
            slots,
            dirty_log,
            block_size_bytes,
        })
    }

    /// Maps exactly the slots holding a block `plugged` says is plugged (a `single` layout
    /// keeps its one slot).
    pub fn map_plugged(&mut self, plugged: impl Fn(u64) -> bool) -> Result<(), Error> {
        let block = self.block_size_bytes;
        let wanted = |slot: SlotSpec| {
            let first = slot.offset_bytes / block;
            let end = slot.end_bytes().div_ceil(block);
            (first..end).any(&plugged)
        };
        self.slots
            .sync(wanted)
            .map_err(|e| Error::Device(format!("mapping slots: {e}")))
    }

    /// The block size the slots were planned for.
    pub fn block_size_bytes(&self) -> u64 {
        self.block_size_bytes
    }

    /// How many slots KVM has.
    pub fn mapped_count(&self) -> usize {
        self.slots.mapped_count()
    }

    /// How many bytes the mapped slots cover.
    pub fn mapped_bytes(&self) -> u64 {
        self.slots.mapped_bytes()
    }
}
