//! The contract between [`crate::Memslots`] and whatever really maps memory for the guest.

use serde::{Deserialize, Serialize};

/// A KVM memory slot number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KvmSlotId(pub u32);

/// Everything a backend needs to map or unmap one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotMapping {
    /// The KVM slot number reserved for this slot.
    pub kvm_slot: KvmSlotId,
    /// Guest physical address of the slot's first byte.
    pub guest_addr: u64,
    /// Offset of the slot in the device region (and its host mapping).
    pub region_offset_bytes: u64,
    /// Length of the slot.
    pub size_bytes: u64,
}

/// Where a slot stands, on both halves a backend manages: the KVM slot and the protection of its
/// host range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlotState {
    /// Not in KVM, and the host range is as protected as the backend keeps unmapped slots.
    #[default]
    Unmapped,
    /// In KVM: the guest reaches the slot's memory.
    Mapped,
    /// Not in KVM, but making the host range inaccessible again failed: only that protection
    /// must be redone ([`SlotBackend::protect`]); KVM must not be asked to delete the slot again.
    ProtectPending,
}

/// A failed backend call: what went wrong and the state it left the slot in (the truth the
/// manager records; never a guess).
#[derive(Debug)]
pub struct BackendFailure {
    /// The state the slot is in after the call.
    pub left: SlotState,
    /// The first error the call met.
    pub error: std::io::Error,
}

/// The result of a backend call.
pub type BackendResult = std::result::Result<(), BackendFailure>;

/// Maps and unmaps slots of one device region.
///
/// `map` is only called for a slot KVM does not have (state [`SlotState::Unmapped`] or
/// [`SlotState::ProtectPending`]), `unmap` only for a [`SlotState::Mapped`] one and `protect`
/// only for a [`SlotState::ProtectPending`] one; a backend never sees a mapped slot change size
/// (KVM cannot resize a slot in place). On failure each call reports the state it left the slot
/// in.
pub trait SlotBackend {
    /// Makes the slot's memory accessible to the guest (host range first, then the KVM slot).
    fn map(&mut self, slot: &SlotMapping) -> BackendResult;
    /// Removes the slot's memory from the guest (KVM slot first, then the host range).
    fn unmap(&mut self, slot: &SlotMapping) -> BackendResult;
    /// Redoes only the host half of an unmap whose KVM half succeeded.
    fn protect(&mut self, slot: &SlotMapping) -> BackendResult;
}
