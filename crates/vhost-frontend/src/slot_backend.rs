//! A [`SlotBackend`] decorator: maps a slot in the wrapped backend (KVM) and in every
//! vhost-user backend's memory table, so a plug is only acknowledged once both hold it.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use memslots::{BackendFailure, BackendResult, SlotBackend, SlotMapping, SlotState};

use crate::region::{RegionKey, SharedRegion};
use crate::table::VhostUserMemory;

/// The VM-wide table shared by all memory owners (boot memory, every memory device).
pub type SharedMemoryTable = Arc<Mutex<VhostUserMemory>>;

/// Where a device region's memory lives, for the backends.
#[derive(Debug, Clone)]
pub struct VhostSlotBackendConfig {
    /// The VM-wide table.
    pub table: SharedMemoryTable,
    /// The VMM's address of the device region's first byte.
    pub host_base_addr: u64,
    /// The file behind the region (memfd or hugetlbfs), mapped `MAP_SHARED`.
    pub fd: Arc<OwnedFd>,
    /// Offset of the region's first byte in `fd`.
    pub fd_base_offset_bytes: u64,
}

/// Maps each slot in `inner` first and then in the vhost-user tables; unmaps in the same order.
/// Without a table (guest memory not shared) it only forwards to `inner`.
#[derive(Debug)]
pub struct VhostSlotBackend<B> {
    inner: B,
    config: Option<VhostSlotBackendConfig>,
}

impl<B: SlotBackend> VhostSlotBackend<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, config: VhostSlotBackendConfig) -> Self {
        VhostSlotBackend {
            inner,
            config: Some(config),
        }
    }

    /// Forwards to `inner` only (no vhost-user backends can see this memory).
    pub fn passthrough(inner: B) -> Self {
        VhostSlotBackend {
            inner,
            config: None,
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The wrapped backend, mutably (e.g. to inject faults into a fake).
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

fn region(config: &VhostSlotBackendConfig, slot: &SlotMapping) -> SharedRegion {
    SharedRegion {
        guest_addr: slot.guest_addr,
        size_bytes: slot.size_bytes,
        host_addr: config.host_base_addr + slot.region_offset_bytes,
        fd: config.fd.clone(),
        fd_offset_bytes: config.fd_base_offset_bytes + slot.region_offset_bytes,
    }
}

fn table(config: &VhostSlotBackendConfig) -> MutexGuard<'_, VhostUserMemory> {
    // A panic while holding the lock leaves the table consistent (each change is applied to
    // the shadow only after the backend acked it); keep going with its contents.
    config
        .table
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B: SlotBackend> SlotBackend for VhostSlotBackend<B> {
    fn map(&mut self, slot: &SlotMapping) -> BackendResult {
        self.inner.map(slot)?;
        let Some(config) = &self.config else {
            return Ok(());
        };
        let Err(e) = table(config).map(region(config, slot)) else {
            return Ok(());
        };
        // The guest must not get a slot a backend cannot see: undo the mapping, and report the
        // state the undo really left the slot in.
        let left = match self.inner.unmap(slot) {
            Ok(()) => SlotState::Unmapped,
            Err(undo) => {
                log::error!(
                    "slot {} at {:#x}: vhost-user table update failed ({e}) and undoing the \
                     mapping failed too: {}",
                    slot.kvm_slot.0,
                    slot.guest_addr,
                    undo.error
                );
                undo.left
            }
        };
        Err(BackendFailure {
            left,
            error: io::Error::other(e.to_string()),
        })
    }

    fn unmap(&mut self, slot: &SlotMapping) -> BackendResult {
        let result = self.inner.unmap(slot);
        let gone_from_guest = match &result {
            Ok(()) => true,
            Err(f) => f.left != SlotState::Mapped,
        };
        if let (true, Some(config)) = (gone_from_guest, &self.config) {
            // The slot is gone for the guest; a backend that fails to drop it is broken
            // (reported by the table's events) and must not keep the slot mapped here.
            if let Err(e) = table(config).unmap(&region(config, slot).key()) {
                log::warn!(
                    "slot {} at {:#x} unmapped; vhost-user: {e}",
                    slot.kvm_slot.0,
                    slot.guest_addr
                );
            }
        }
        result
    }

    fn protect(&mut self, slot: &SlotMapping) -> BackendResult {
        self.inner.protect(slot)
    }
}

/// The key a slot has in the table (for tests and the API).
pub fn slot_key(config: &VhostSlotBackendConfig, slot: &SlotMapping) -> RegionKey {
    RegionKey {
        guest_addr: slot.guest_addr,
        size_bytes: slot.size_bytes,
        host_addr: config.host_base_addr + slot.region_offset_bytes,
    }
}
