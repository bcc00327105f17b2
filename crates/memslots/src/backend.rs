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

/// Maps and unmaps slots of one device region.
///
/// `map` is only called for an unmapped slot and `unmap` only for a mapped one; a backend never
/// sees a mapped slot change size (KVM cannot resize a slot in place).
pub trait SlotBackend {
    /// Makes the slot's memory accessible to the guest.
    fn map(&mut self, slot: &SlotMapping) -> std::io::Result<()>;
    /// Removes the slot's memory from the guest.
    fn unmap(&mut self, slot: &SlotMapping) -> std::io::Result<()>;
}
