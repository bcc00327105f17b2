//! The memslots crate's error type.

/// Errors from planning, budgeting and mapping slots.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The layout request cannot describe a region.
    #[error("invalid slot layout: {0}")]
    InvalidLayout(&'static str),
    /// Not enough KVM memslots are left for this device.
    #[error(
        "{owner} needs {needed} KVM memory slots but only {available} of the VM's budget are left; \
         use fewer/smaller memory devices or slots=adaptive"
    )]
    BudgetExhausted {
        /// Who asked.
        owner: String,
        /// How many slots were asked for.
        needed: u32,
        /// How many were left.
        available: u32,
    },
    /// A limit besides KVM's (e.g. a vhost-user backend's table size) leaves too few slots.
    #[error(
        "{owner} needs {needed} memory slots but only {available} are left under the limit of \
         {limit} of {limited_by} (shared by boot memory and every memory device's slots); use \
         fewer/smaller memory devices, slots=adaptive, or a backend with more slots"
    )]
    SlotLimitExceeded {
        /// Who asked.
        owner: String,
        /// How many slots were asked for.
        needed: u32,
        /// How many were left.
        available: u32,
        /// Who imposes the limit.
        limited_by: String,
        /// The limit.
        limit: u32,
    },
    /// The backend could not map a slot.
    #[error("mapping slot {index} (KVM slot {kvm_slot}) failed: {reason}")]
    MapFailed {
        /// Index of the slot in the layout.
        index: usize,
        /// KVM slot number.
        kvm_slot: u32,
        /// What the backend said.
        reason: String,
    },
    /// The backend could not unmap a slot.
    #[error("unmapping slot {index} (KVM slot {kvm_slot}) failed: {reason}")]
    UnmapFailed {
        /// Index of the slot in the layout.
        index: usize,
        /// KVM slot number.
        kvm_slot: u32,
        /// What the backend said.
        reason: String,
    },
    /// A byte range lies outside the region.
    #[error(
        "range {offset_bytes:#x}+{size_bytes:#x} lies outside the {region_bytes:#x}-byte region"
    )]
    OutOfRegion {
        /// Start offset in the region.
        offset_bytes: u64,
        /// Length.
        size_bytes: u64,
        /// Region size.
        region_bytes: u64,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
