//! Dynamic KVM memslots for one device memory region.
//!
//! A device region (e.g. a virtio-mem device's 1 TiB) is cut into slots by a [`SlotLayout`]
//! (sizes may differ from slot to slot). [`Memslots`] maps a slot into the hypervisor only while
//! its owner needs it — for virtio-mem, while the slot holds at least one plugged block — through
//! a small [`SlotBackend`] trait: [`KvmSlotBackend`] for real VMs, [`FakeBackend`] for tests.
//! KVM slot numbers come from a [`SlotBudget`] shared by all memory devices of a VM.

mod backend;
mod budget;
#[cfg(feature = "kvm")]
mod dirty;
mod error;
mod fake;
#[cfg(feature = "kvm")]
mod kvm;
mod layout;
mod manager;
mod units;

pub use backend::{BackendFailure, BackendResult, KvmSlotId, SlotBackend, SlotMapping, SlotState};
pub use budget::{SlotBudget, SlotIds, SlotLimit};
#[cfg(feature = "kvm")]
pub use dirty::{LoggedSlot, SlotDirtyBits, SlotDirtyLog};
pub use error::{Error, Result};
pub use fake::{BackendCall, FakeBackend, FakeFault};
#[cfg(feature = "kvm")]
pub use kvm::{KvmSlotBackend, KvmSlotBackendConfig, Protection};
pub use layout::{
    FIXED_SOFT_SLOT_LIMIT, LayoutRequest, SlotIndex, SlotLayout, SlotPolicy, SlotSpec,
};
pub use manager::Memslots;
pub use units::{GIB, MIB};
