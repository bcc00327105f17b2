//! A backend that records what it was asked to do, for tests and fuzzing.

use std::collections::BTreeMap;
use std::io;

use crate::backend::{KvmSlotId, SlotBackend, SlotMapping};

/// One call a [`FakeBackend`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendCall {
    /// `map` was called.
    Map(SlotMapping),
    /// `unmap` was called.
    Unmap(SlotMapping),
}

/// A failure the fake injects into future `map` calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeFault {
    /// KVM is out of memory (`ENOMEM`).
    OutOfMemory,
    /// KVM has no free slot (`ENOSPC`).
    NoSlots,
}

impl FakeFault {
    fn errno(self) -> i32 {
        match self {
            FakeFault::OutOfMemory => libc_errno::ENOMEM,
            FakeFault::NoSlots => libc_errno::ENOSPC,
        }
    }
}

/// Records calls, checks them the way KVM would, and can fail on request.
#[derive(Debug, Default)]
pub struct FakeBackend {
    mapped: BTreeMap<KvmSlotId, SlotMapping>,
    calls: Vec<BackendCall>,
    map_script: std::collections::VecDeque<Option<FakeFault>>,
    unmap_script: std::collections::VecDeque<Option<FakeFault>>,
}

impl FakeBackend {
    /// An empty fake.
    pub fn new() -> Self {
        Self::default()
    }

    /// The slots currently mapped, by KVM slot number.
    pub fn mapped(&self) -> impl Iterator<Item = &SlotMapping> {
        self.mapped.values()
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
    /// `Some(fault)` fails that call. Calls past the script behave normally.
    pub fn script_maps(&mut self, outcomes: &[Option<FakeFault>]) {
        self.map_script.extend(outcomes.iter().copied());
    }

    /// Scripts the outcome of the next `unmap` calls, like [`FakeBackend::script_maps`]; a failed
    /// unmap leaves the slot mapped.
    pub fn script_unmaps(&mut self, outcomes: &[Option<FakeFault>]) {
        self.unmap_script.extend(outcomes.iter().copied());
    }

    /// Whether the byte at `guest_addr` is mapped.
    pub fn is_guest_addr_mapped(&self, guest_addr: u64) -> bool {
        self.mapped
            .values()
            .any(|m| m.guest_addr <= guest_addr && guest_addr < m.guest_addr + m.size_bytes)
    }
}

impl SlotBackend for FakeBackend {
    fn map(&mut self, slot: &SlotMapping) -> io::Result<()> {
        self.calls.push(BackendCall::Map(*slot));
        if let Some(Some(fault)) = self.map_script.pop_front() {
            return Err(io::Error::from_raw_os_error(fault.errno()));
        }
        let overlaps = self.mapped.values().any(|m| {
            m.guest_addr < slot.guest_addr + slot.size_bytes
                && slot.guest_addr < m.guest_addr + m.size_bytes
        });
        if self.mapped.contains_key(&slot.kvm_slot) || overlaps {
            return Err(io::Error::from_raw_os_error(libc_errno::EEXIST));
        }
        self.mapped.insert(slot.kvm_slot, *slot);
        Ok(())
    }

    fn unmap(&mut self, slot: &SlotMapping) -> io::Result<()> {
        self.calls.push(BackendCall::Unmap(*slot));
        if let Some(Some(fault)) = self.unmap_script.pop_front() {
            return Err(io::Error::from_raw_os_error(fault.errno()));
        }
        match self.mapped.get(&slot.kvm_slot) {
            Some(m) if m == slot => {
                self.mapped.remove(&slot.kvm_slot);
                Ok(())
            }
            _ => Err(io::Error::from_raw_os_error(libc_errno::EINVAL)),
        }
    }
}

/// The few errno values the fake uses (Linux numbering), without a libc dependency.
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const EEXIST: i32 = 17;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
}
