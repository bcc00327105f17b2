//! vhost-user memory tables that follow dynamically mapped memslots.
//!
//! [`negotiate`] connects to a backend (SET_OWNER, REPLY_ACK, CONFIGURE_MEM_SLOTS,
//! GET_MAX_MEM_SLOTS) with the rust-vmm `vhost` crate's frontend. [`VhostUserMemory`] keeps every
//! attached backend's table equal to the set of mapped regions: one ADD_MEM_REG per newly mapped
//! region and one REM_MEM_REG with exactly the values it was added with, each acknowledged
//! (REPLY_ACK) and followed by a liveness probe; backends without CONFIGURE_MEM_SLOTS get the
//! whole table (at most 8 regions) in one SET_MEM_TABLE. Regions are never merged.
//! [`VhostSlotBackend`] plugs this into [`memslots::Memslots`] as a [`memslots::SlotBackend`]
//! decorator, so a virtio-mem plug is acknowledged only after every backend holds the slot.
//! For migration, [`BackendDirtyLog`] is the bitmap backends log their guest writes in
//! ([`VhostUserDevice::start_logging`]), and [`VhostUserDevice::stop_rings`] /
//! [`VhostUserDevice::set_ring_bases`] carry the rings' positions to a new backend.

mod conn;
mod device;
mod dirty_log;
mod error;
#[cfg(any(test, feature = "fake-backend"))]
pub mod fake_backend;
mod log_base;
mod migration;
mod region;
mod slot_backend;
mod table;

pub use conn::{AttachConfig, MEM_TABLE_MAX_REGIONS, Negotiated, TableMode, negotiate};
pub use device::{
    FS_TAG_BYTES, VIRTIO_ID_BLOCK, VIRTIO_ID_FS, VhostUserDevice, VhostUserDeviceConfig,
    VhostUserKind, spawn_call_relay,
};
pub use dirty_log::{BackendDirtyLog, LOG_PAGE_BYTES};
pub use error::{Error, Result};
pub use migration::RingState;
pub use region::{RegionKey, SharedRegion};
pub use slot_backend::{SharedMemoryTable, VhostSlotBackend, VhostSlotBackendConfig, slot_key};
pub use table::{
    BackendEvent, BackendHealth, BackendId, BackendStatus, RegionLimit, VhostUserMemory,
};
pub use vhost::vhost_user::VhostUserProtocolFeatures;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_migration;
