//! What a snapshot's state file holds.
//!
//! The machine and every device are stored as [`Component`]s: a name, the component's own
//! state version and its postcard-encoded state. The file format version (see
//! [`crate::format`]) covers this envelope; each component evolves on its own version, so a
//! change to one device's state does not change the file format.

use std::ops::RangeInclusive;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A guest physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GuestAddr(pub u64);

/// One named, versioned piece of state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// What it is ("machine", "pci-config", "virtio-pci", "virtio-mem", ...).
    pub name: String,
    /// Version of this component's state layout.
    pub version: u32,
    /// The state, postcard-encoded.
    pub data: Vec<u8>,
}

impl Component {
    /// Encodes `state` as component `name` at `version`.
    pub fn encode<T: Serialize>(name: &str, version: u32, state: &T) -> Result<Self> {
        Ok(Component {
            name: name.to_owned(),
            version,
            data: postcard::to_allocvec(state).map_err(Error::Encode)?,
        })
    }

    /// Decodes the state, checking the name and that the version is in `known` (the caller
    /// then upgrades older versions it knows). Returns the version found with the state.
    pub fn decode<T: DeserializeOwned>(
        &self,
        name: &str,
        known: RangeInclusive<u32>,
    ) -> Result<(u32, T)> {
        let fail = |reason: String| Error::Component {
            name: name.to_owned(),
            reason,
        };
        if self.name != name {
            return Err(fail(format!("found component '{}' instead", self.name)));
        }
        if !known.contains(&self.version) {
            return Err(fail(format!(
                "state version {} is not supported (this hotmem reads {} to {})",
                self.version,
                known.start(),
                known.end()
            )));
        }
        let state = postcard::from_bytes(&self.data).map_err(|e| {
            fail(format!(
                "state version {} does not decode: {e}",
                self.version
            ))
        })?;
        Ok((self.version, state))
    }
}

/// The state of one device: its id (as on the command line) and its components, in the order
/// they are restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    /// Device id (e.g. the `--mem-device id=`).
    pub id: String,
    /// Its components.
    pub components: Vec<Component>,
}

impl DeviceSnapshot {
    /// The component called `name`.
    pub fn component(&self, name: &str) -> Result<&Component> {
        self.components
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| Error::Component {
                name: name.to_owned(),
                reason: format!("missing from device '{}'", self.id),
            })
    }
}

/// One guest memory region and the file holding its contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionFile {
    /// What the region is ("boot-ram", or the device id).
    pub name: String,
    /// Guest physical address of its first byte.
    pub guest_addr: GuestAddr,
    /// Size of the region (and apparent size of the file).
    pub size_bytes: u64,
    /// File name inside the snapshot directory.
    pub file_name: String,
    /// Bytes of data written to the file (the rest are holes).
    pub data_bytes: u64,
}

/// Every memory region of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryManifest {
    /// The regions, in guest address order.
    pub regions: Vec<RegionFile>,
}

impl MemoryManifest {
    /// The region called `name`.
    pub fn region(&self, name: &str) -> Result<&RegionFile> {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| Error::Component {
                name: name.to_owned(),
                reason: "no memory file in the snapshot".into(),
            })
    }

    /// Total bytes of data in the memory files.
    pub fn data_bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.data_bytes).sum()
    }
}

/// The whole VM (current format version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// When the snapshot was taken (seconds since the Unix epoch).
    pub created_unix_secs: u64,
    /// How the VM was configured (boot memory, vCPUs, kernel, devices), as the VMM records
    /// it; `None` in format version 1.
    pub vm_config: Option<Component>,
    /// vCPUs, interrupt controllers, clocks and legacy devices.
    pub machine: Component,
    /// The PCI devices.
    pub devices: Vec<DeviceSnapshot>,
    /// Where guest memory is.
    pub memory: MemoryManifest,
}

impl VmSnapshot {
    /// The device called `id`.
    pub fn device(&self, id: &str) -> Result<&DeviceSnapshot> {
        self.devices
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| Error::Component {
                name: id.to_owned(),
                reason: "no such device in the snapshot".into(),
            })
    }
}
