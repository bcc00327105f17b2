//! Format version 1, frozen: the payload without `created_unix_secs`, `vm_config` and the
//! per-region data byte count. Never change these types; decode them and upgrade.

use serde::{Deserialize, Serialize};

use crate::model::{Component, DeviceSnapshot, GuestAddr, MemoryManifest, RegionFile, VmSnapshot};

/// A memory region in format version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionFileV1 {
    /// What the region is.
    pub name: String,
    /// Guest physical address.
    pub guest_addr: GuestAddr,
    /// Size of the region.
    pub size_bytes: u64,
    /// File name inside the snapshot directory.
    pub file_name: String,
}

/// The payload of format version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSnapshotV1 {
    /// The machine component.
    pub machine: Component,
    /// The devices.
    pub devices: Vec<DeviceSnapshot>,
    /// The memory regions.
    pub regions: Vec<RegionFileV1>,
}

impl From<VmSnapshotV1> for VmSnapshot {
    /// Version 1 did not record the time (0 = unknown), the VM configuration (`None`) nor
    /// the data byte counts (0 = unknown; only progress reporting uses them).
    fn from(v1: VmSnapshotV1) -> Self {
        VmSnapshot {
            created_unix_secs: 0,
            vm_config: None,
            machine: v1.machine,
            devices: v1.devices,
            memory: MemoryManifest {
                regions: v1
                    .regions
                    .into_iter()
                    .map(|r| RegionFile {
                        name: r.name,
                        guest_addr: r.guest_addr,
                        size_bytes: r.size_bytes,
                        file_name: r.file_name,
                        data_bytes: 0,
                    })
                    .collect(),
            },
        }
    }
}
