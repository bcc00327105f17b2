//! JSON bodies of the API.

use serde::{Deserialize, Serialize};

/// One memory device as `GET /v1/memory-devices` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryDeviceStatus {
    /// The device id given on the command line.
    pub id: String,
    /// Guest physical address of the device region.
    pub guest_addr: u64,
    /// Plug granularity.
    pub block_size_bytes: u64,
    /// Size of the whole device region.
    pub region_bytes: u64,
    /// The part of the region the guest may currently plug in.
    pub usable_region_bytes: u64,
    /// What the operator asked for.
    pub requested_bytes: u64,
    /// What the guest has plugged.
    pub plugged_bytes: u64,
    /// Slots in the device's layout.
    pub slots_total: usize,
    /// Slots mapped into KVM now.
    pub slots_mapped: usize,
    /// Bytes of guest memory the mapped slots cover.
    pub mapped_bytes: u64,
    /// The slot policy in use.
    pub slot_policy: String,
    /// True for a driver without UNPLUGGED_INACCESSIBLE: the usable region stays mapped.
    pub legacy_mapping: bool,
    /// What the guest driver is doing: `not-seen`, `active`, `needs-reset`.
    pub driver_state: String,
}

/// The list answered by `GET /v1/memory-devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryDeviceList {
    /// Every memory device of the VM.
    pub memory_devices: Vec<MemoryDeviceStatus>,
}

/// A size in a request: bytes as a number, or a human string such as `"4G"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    /// A byte count.
    Bytes(u64),
    /// A human size (`512M`, `4G`, `1.5T`).
    Text(String),
}

impl SizeValue {
    /// The size in bytes.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            SizeValue::Bytes(b) => Ok(*b),
            SizeValue::Text(t) => crate::size::parse_size(t),
        }
    }
}

/// Body of `PATCH /v1/memory-devices/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeBody {
    /// The new requested size.
    pub requested_size: SizeValue,
}

/// `GET /v1/vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// `running`, `rebooting` or `shutting-down`.
    pub state: String,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Boot memory size.
    pub boot_memory_bytes: u64,
    /// Milliseconds since the VMM started.
    pub uptime_ms: u64,
    /// How many times the guest rebooted.
    pub boots: u32,
}

/// Body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to change.
    pub error: String,
}
