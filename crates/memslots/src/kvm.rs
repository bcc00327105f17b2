//! The real backend: KVM memory slots over a host mapping, with unmapped slots made inaccessible.

use std::io;
use std::sync::Arc;

use kvm_ioctls::VmFd;

use crate::backend::{BackendFailure, BackendResult, SlotBackend, SlotMapping, SlotState};
use crate::dirty::{LoggedSlot, SlotDirtyLog};

/// What a [`KvmSlotBackend`] maps.
#[derive(Debug, Clone)]
pub struct KvmSlotBackendConfig {
    /// The VM whose slots are managed.
    pub vm: Arc<VmFd>,
    /// Host address of the region's first byte (page aligned).
    pub host_base_addr: usize,
    /// Size of the host mapping.
    pub region_size_bytes: u64,
    /// Whether to `mprotect(PROT_NONE)` unmapped slots so the VMM itself cannot touch them.
    pub protection: Protection,
}

/// What happens to the host mapping of an unmapped slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Unmapped slots are `PROT_NONE`; mapped ones read-write.
    ProtectUnmapped,
    /// The host mapping stays read-write (legacy guests may read unplugged memory).
    AlwaysAccessible,
}

/// Maps slots with `KVM_SET_USER_MEMORY_REGION`.
///
/// Order follows what keeps unplugged memory unreachable: on map, lift the protection first and
/// then add the KVM slot; on unmap, delete the KVM slot first and then protect again.
#[derive(Debug)]
pub struct KvmSlotBackend {
    config: KvmSlotBackendConfig,
    /// Every KVM slot change goes through the log, which logs slots while a migration runs.
    log: Arc<SlotDirtyLog>,
}

impl KvmSlotBackend {
    /// A backend for the region described by `config`.
    ///
    /// # Safety
    /// `config.host_base_addr .. + region_size_bytes` must be a mapping owned by the caller that
    /// stays valid until every slot is unmapped and this backend is dropped, and nothing else may
    /// rely on its protection bits while this backend manages them.
    pub unsafe fn new(config: KvmSlotBackendConfig) -> io::Result<Self> {
        let log = Arc::new(SlotDirtyLog::new(config.vm.clone()));
        let backend = KvmSlotBackend { config, log };
        if backend.config.protection == Protection::ProtectUnmapped {
            backend.set_protection(0, backend.config.region_size_bytes, libc::PROT_NONE)?;
        }
        Ok(backend)
    }

    fn set_protection(
        &self,
        offset_bytes: u64,
        size_bytes: u64,
        prot: libc::c_int,
    ) -> io::Result<()> {
        let end = offset_bytes
            .checked_add(size_bytes)
            .filter(|&e| e <= self.config.region_size_bytes)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let addr = self.config.host_base_addr + offset_bytes as usize;
        // SAFETY: the range lies inside the mapping that `new`'s caller promised stays valid and
        // whose protection only this backend manages.
        let ret = unsafe {
            libc::mprotect(
                addr as *mut libc::c_void,
                (end - offset_bytes) as usize,
                prot,
            )
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Adds (`size_bytes` = the slot's size) or deletes (0) the KVM slot, through the log.
    fn set_region(&self, slot: &SlotMapping, size_bytes: u64) -> io::Result<()> {
        // The host range is part of the mapping `new`'s caller keeps valid while any slot is
        // mapped (the log's `set` relies on it).
        let logged = LoggedSlot {
            kvm_slot: slot.kvm_slot,
            guest_addr: slot.guest_addr,
            size_bytes: slot.size_bytes,
            userspace_addr: (self.config.host_base_addr as u64) + slot.region_offset_bytes,
            region_offset_bytes: slot.region_offset_bytes,
        };
        if size_bytes == 0 {
            self.log.remove(&logged)
        } else {
            self.log.add(logged)
        }
    }

    /// The dirty log of this backend's slots (shared with a migration).
    pub fn dirty_log(&self) -> Arc<SlotDirtyLog> {
        self.log.clone()
    }
}

impl KvmSlotBackend {
    fn protects_unmapped(&self) -> bool {
        self.config.protection == Protection::ProtectUnmapped
    }

    /// Makes the slot's host range inaccessible again after `error`; the slot is not in KVM.
    fn fail_unprotected(&self, slot: &SlotMapping, error: io::Error) -> BackendFailure {
        let left =
            match self.set_protection(slot.region_offset_bytes, slot.size_bytes, libc::PROT_NONE) {
                Ok(()) => SlotState::Unmapped,
                Err(_) => SlotState::ProtectPending,
            };
        BackendFailure { left, error }
    }
}

impl SlotBackend for KvmSlotBackend {
    fn map(&mut self, slot: &SlotMapping) -> BackendResult {
        if !self.protects_unmapped() {
            return self
                .set_region(slot, slot.size_bytes)
                .map_err(|error| BackendFailure {
                    left: SlotState::Unmapped,
                    error,
                });
        }
        // A failed mprotect may have changed part of the range: protect it all again.
        self.set_protection(
            slot.region_offset_bytes,
            slot.size_bytes,
            libc::PROT_READ | libc::PROT_WRITE,
        )
        .and_then(|()| self.set_region(slot, slot.size_bytes))
        .map_err(|error| self.fail_unprotected(slot, error))
    }

    fn unmap(&mut self, slot: &SlotMapping) -> BackendResult {
        self.set_region(slot, 0).map_err(|error| BackendFailure {
            left: SlotState::Mapped,
            error,
        })?;
        self.protect(slot)
    }

    fn protect(&mut self, slot: &SlotMapping) -> BackendResult {
        if !self.protects_unmapped() {
            return Ok(());
        }
        self.set_protection(slot.region_offset_bytes, slot.size_bytes, libc::PROT_NONE)
            .map_err(|error| BackendFailure {
                left: SlotState::ProtectPending,
                error,
            })
    }
}
