//! A backend that records what it was asked to do, for tests and fuzzing.

use std::collections::{BTreeMap, VecDeque};
use std::io;

use crate::backend::{
    BackendFailure, BackendResult, KvmSlotId, SlotBackend, SlotMapping, SlotState,
};

/// One call a [`FakeBackend`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendCall {
    /// `map` was called.
    Map(SlotMapping),
    /// `unmap` was called.
    Unmap(SlotMapping),
    /// `protect` was called.
    Protect(SlotMapping),
}

/// A failure the fake injects into a future call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeFault {
    /// Out of memory (`ENOMEM`).
    OutOfMemory,
    /// KVM has no free slot (`ENOSPC`).
    NoSlots,
}

impl FakeFault {
    fn error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            FakeFault::OutOfMemory => libc::ENOMEM,
            FakeFault::NoSlots => libc::ENOSPC,
        })
    }
}

fn failure(left: SlotState, errno: i32) -> BackendFailure {
    BackendFailure {
        left,
        error: io::Error::from_raw_os_error(errno),
    }
}

/// Records calls, checks them the way KVM would, and can fail on request.
///
/// It keeps both halves of the truth the way the real backend has them: which slots KVM has, and
/// which slots KVM does not have but whose host range is still accessible (a failed protection).
/// Three scripts inject faults separately: KVM refusing a new slot (`map`), KVM refusing to
/// delete a slot (`unmap`), and `mprotect` failing whenever a host range is made inaccessible
/// (the second half of `unmap`, `protect`, and the clean-up after a failed `map`).
#[derive(Debug, Default)]
pub struct FakeBackend {
    mapped: BTreeMap<KvmSlotId, SlotMapping>,
    /// The mapped slots' guest ranges: start → end (for KVM's overlap check).
    mapped_ranges: BTreeMap<u64, u64>,
    exposed: BTreeMap<KvmSlotId, SlotMapping>,
    calls: Vec<BackendCall>,
    map_script: VecDeque<Option<FakeFault>>,
    unmap_script: VecDeque<Option<FakeFault>>,
    protect_script: VecDeque<Option<FakeFault>>,
}

impl FakeBackend {
    /// An empty fake.
    pub fn new() -> Self {
        Self::default()
    }

    /// The slots KVM has, by KVM slot number.
    pub fn mapped(&self) -> impl Iterator<Item = &SlotMapping> {
        self.mapped.values()
    }

    /// The slots KVM does not have whose host range is still accessible, by KVM slot number.
    pub fn exposed(&self) -> impl Iterator<Item = &SlotMapping> {
        self.exposed.values()
    }

    /// The true state of KVM slot `kvm_slot`.
    pub fn state_of(&self, kvm_slot: KvmSlotId) -> SlotState {
        if self.mapped.contains_key(&kvm_slot) {
            SlotState::Mapped
        } else if self.exposed.contains_key(&kvm_slot) {
            SlotState::ProtectPending
        } else {
            SlotState::Unmapped
        }
    }

    /// KVM's view of slot `kvm_slot`, if KVM has it.
    pub fn mapped_slot(&self, kvm_slot: KvmSlotId) -> Option<&SlotMapping> {
        self.mapped.get(&kvm_slot)
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> &[BackendCall] {
        &self.calls
    }

    /// Forgets the recorded calls (the mapped set stays).
    pub fn clear_calls(&mut self) {
        self.calls.clear();
    }

    /// Scripts the outcome of the next `map` calls, in order: `None` behaves normally,
    /// `Some(fault)` makes KVM refuse the slot. Calls past the script behave normally.
    pub fn script_maps(&mut self, outcomes: &[Option<FakeFault>]) {
        self.map_script.extend(outcomes.iter().copied());
    }

    /// Scripts KVM's answer to the next slot deletions (`unmap` calls), like
    /// [`FakeBackend::script_maps`]; a refused deletion leaves the slot mapped.
    pub fn script_unmaps(&mut self, outcomes: &[Option<FakeFault>]) {
        self.unmap_script.extend(outcomes.iter().copied());
    }

    /// Scripts the next attempts to make a host range inaccessible, like
    /// [`FakeBackend::script_maps`]; a failed one leaves the range accessible
    /// ([`SlotState::ProtectPending`]).
    pub fn script_protects(&mut self, outcomes: &[Option<FakeFault>]) {
        self.protect_script.extend(outcomes.iter().copied());
    }

    /// Whether the byte at `guest_addr` is mapped.
    pub fn is_guest_addr_mapped(&self, guest_addr: u64) -> bool {
        self.mapped
            .values()
            .any(|m| m.guest_addr <= guest_addr && guest_addr < m.guest_addr + m.size_bytes)
    }

    /// Makes the host range of a slot KVM does not have inaccessible, or fails as scripted.
    fn protect_host_range(&mut self, slot: &SlotMapping) -> BackendResult {
        match self.protect_script.pop_front().flatten() {
            Some(fault) => {
                self.exposed.insert(slot.kvm_slot, *slot);
                Err(BackendFailure {
                    left: SlotState::ProtectPending,
                    error: fault.error(),
                })
            }
            None => {
                self.exposed.remove(&slot.kvm_slot);
                Ok(())
            }
        }
    }

    /// Like the real backend after KVM refused a slot: protect the host range again.
    fn refused(&mut self, slot: &SlotMapping, error: io::Error) -> BackendResult {
        let left = match self.protect_host_range(slot) {
            Ok(()) => SlotState::Unmapped,
            Err(f) => f.left,
        };
        Err(BackendFailure { left, error })
    }
}

impl SlotBackend for FakeBackend {
    fn map(&mut self, slot: &SlotMapping) -> BackendResult {
        self.calls.push(BackendCall::Map(*slot));
        if self.mapped.contains_key(&slot.kvm_slot) {
            return Err(failure(SlotState::Mapped, libc::EEXIST));
        }
        if let Some(fault) = self.map_script.pop_front().flatten() {
            return self.refused(slot, fault.error());
        }
        let end = slot.guest_addr + slot.size_bytes;
        // Mapped ranges never overlap, so only the last one starting below `end` can.
        let overlaps = self
            .mapped_ranges
            .range(..end)
            .next_back()
            .is_some_and(|(_, &other_end)| other_end > slot.guest_addr);
        if overlaps {
            return self.refused(slot, io::Error::from_raw_os_error(libc::EEXIST));
        }
        self.exposed.remove(&slot.kvm_slot);
        self.mapped.insert(slot.kvm_slot, *slot);
        self.mapped_ranges.insert(slot.guest_addr, end);
        Ok(())
    }

    fn unmap(&mut self, slot: &SlotMapping) -> BackendResult {
        self.calls.push(BackendCall::Unmap(*slot));
        if self.mapped.get(&slot.kvm_slot) != Some(slot) {
            return Err(failure(self.state_of(slot.kvm_slot), libc::EINVAL));
        }
        if let Some(fault) = self.unmap_script.pop_front().flatten() {
            return Err(BackendFailure {
                left: SlotState::Mapped,
                error: fault.error(),
            });
        }
        self.mapped.remove(&slot.kvm_slot);
        self.mapped_ranges.remove(&slot.guest_addr);
        self.protect_host_range(slot)
    }

    fn protect(&mut self, slot: &SlotMapping) -> BackendResult {
        self.calls.push(BackendCall::Protect(*slot));
        if self.mapped.contains_key(&slot.kvm_slot) {
            return Err(failure(SlotState::Mapped, libc::EINVAL));
        }
        self.protect_host_range(slot)
    }
}
