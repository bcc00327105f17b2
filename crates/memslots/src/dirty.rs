//! KVM dirty logging of a set of slots, for live migration.
//!
//! A [`SlotDirtyLog`] knows every slot of its region that is in KVM (the [`KvmSlotBackend`]
//! adds and deletes slots through it, under its lock). While logging is on, every slot is in
//! KVM with `KVM_MEM_LOG_DIRTY_PAGES` — slots mapped during the migration too — and a slot's
//! bits are read with `KVM_GET_DIRTY_LOG` just before it is deleted (KVM frees a deleted
//! slot's bitmap: bits not read then are lost) and kept for the next [`SlotDirtyLog::collect`].
//!
//! [`KvmSlotBackend`]: crate::KvmSlotBackend

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;

use crate::KvmSlotId;

/// A slot in KVM: where the guest sees it and which host memory backs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedSlot {
    /// KVM slot number.
    pub kvm_slot: KvmSlotId,
    /// Guest physical start.
    pub guest_addr: u64,
    /// Length.
    pub size_bytes: u64,
    /// Host address of the first byte.
    pub userspace_addr: u64,
    /// Offset of the slot in its region (what dirty bits are reported against).
    pub region_offset_bytes: u64,
}

/// Dirty bits of one slot, one bit per 4 KiB page from the slot's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDirtyBits {
    /// Offset of the slot in its region.
    pub region_offset_bytes: u64,
    /// KVM's bitmap (64 pages a word).
    pub bitmap: Vec<u64>,
}

#[derive(Debug, Default)]
struct LogState {
    logging: bool,
    slots: BTreeMap<KvmSlotId, LoggedSlot>,
    /// Bits of slots deleted since the last collect.
    deleted: Vec<SlotDirtyBits>,
}

/// Dirty logging of one region's KVM slots (see the module docs).
#[derive(Debug)]
pub struct SlotDirtyLog {
    vm: Arc<VmFd>,
    state: Mutex<LogState>,
}

impl SlotDirtyLog {
    /// No slots, logging off.
    pub fn new(vm: Arc<VmFd>) -> Self {
        SlotDirtyLog {
            vm,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a slot somebody else put in KVM (boot RAM); it is logged like the others.
    pub fn adopt(&self, slot: LoggedSlot) {
        self.lock().slots.insert(slot.kvm_slot, slot);
    }

    fn set(&self, slot: &LoggedSlot, size_bytes: u64, logging: bool) -> io::Result<()> {
        let region = kvm_userspace_memory_region {
            slot: slot.kvm_slot.0,
            flags: if logging { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
            guest_phys_addr: slot.guest_addr,
            memory_size: size_bytes,
            userspace_addr: slot.userspace_addr,
        };
        // SAFETY: the host range backs a slot its owner keeps valid while the slot is in KVM
        // (`KvmSlotBackend::new`'s contract, or the caller of `adopt`); changing the flags of
        // an existing slot or deleting one (size 0) needs no new memory.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    /// Adds a slot to KVM, logged if logging is on.
    pub(crate) fn add(&self, slot: LoggedSlot) -> io::Result<()> {
        let mut state = self.lock();
        self.set(&slot, slot.size_bytes, state.logging)?;
        state.slots.insert(slot.kvm_slot, slot);
        Ok(())
    }

    /// Deletes a slot from KVM, reading its dirty bits first if logging is on.
    pub(crate) fn remove(&self, slot: &LoggedSlot) -> io::Result<()> {
        let mut state = self.lock();
        if state.logging && state.slots.contains_key(&slot.kvm_slot) {
            let bits = self.read_log(slot)?;
            state.deleted.push(bits);
        }
        self.set(slot, 0, false)?;
        state.slots.remove(&slot.kvm_slot);
        Ok(())
    }

    fn read_log(&self, slot: &LoggedSlot) -> io::Result<SlotDirtyBits> {
        let bitmap = self
            .vm
            .get_dirty_log(slot.kvm_slot.0, slot.size_bytes as usize)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        Ok(SlotDirtyBits {
            region_offset_bytes: slot.region_offset_bytes,
            bitmap,
        })
    }

    /// Whether logging is on.
    pub fn is_logging(&self) -> bool {
        self.lock().logging
    }

    /// Slots in KVM now.
    pub fn slot_count(&self) -> usize {
        self.lock().slots.len()
    }

    /// Turns logging on for every slot in KVM and every slot added from now on. On error the
    /// slots already switched are switched back.
    pub fn start(&self) -> io::Result<()> {
        let mut state = self.lock();
        let slots: Vec<LoggedSlot> = state.slots.values().copied().collect();
        for (i, slot) in slots.iter().enumerate() {
            if let Err(e) = self.set(slot, slot.size_bytes, true) {
                for done in &slots[..i] {
                    let _ = self.set(done, done.size_bytes, false);
                }
                return Err(e);
            }
        }
        state.logging = true;
        state.deleted.clear();
        Ok(())
    }

    /// The bits of every slot since the last collect (or the start): KVM_GET_DIRTY_LOG on
    /// each slot in KVM, plus the bits read from slots as they were deleted.
    pub fn collect(&self) -> io::Result<Vec<SlotDirtyBits>> {
        let mut state = self.lock();
        if !state.logging {
            return Err(io::Error::other("dirty logging is off"));
        }
        let mut out = std::mem::take(&mut state.deleted);
        for slot in state.slots.values() {
            out.push(self.read_log(slot)?);
        }
        Ok(out)
    }

    /// Turns logging off (slots stay in KVM; bits not collected are dropped).
    pub fn stop(&self) -> io::Result<()> {
        let mut state = self.lock();
        state.logging = false;
        state.deleted.clear();
        let mut first_error = None;
        for slot in state.slots.values() {
            if let Err(e) = self.set(slot, slot.size_bytes, false) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
