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
    /// What the guest driver is doing.
    pub driver_state: DriverState,
    /// Milliseconds since the guest's last request to the device; `null` before the first.
    #[serde(default)]
    pub last_request_age_ms: Option<u64>,
    /// NUMA node (= ACPI PXM) of the device's memory; `null` on a VM without `--numa`.
    #[serde(default)]
    pub node: Option<u16>,
}

/// What the guest driver of a memory device is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriverState {
    /// No driver has started the device yet (the module may not be loaded).
    NotSeen,
    /// A driver started the device.
    Active,
    /// The driver gave up on the device (features refused).
    Broken,
    /// The driver sent something malformed; the device waits for a reset.
    NeedsReset,
}

impl DriverState {
    /// The wire name (`not-seen`, `active`, `broken`, `needs-reset`).
    pub fn as_str(self) -> &'static str {
        match self {
            DriverState::NotSeen => "not-seen",
            DriverState::Active => "active",
            DriverState::Broken => "broken",
            DriverState::NeedsReset => "needs-reset",
        }
    }
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
    /// Answer only once the guest has plugged or unplugged to the new size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitSpec>,
}

/// How long a resize may wait for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitSpec {
    /// Give up (504) after this many milliseconds.
    pub timeout_ms: u64,
}

/// What a VM is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Loading the kernel (first boot or after a reboot).
    Booting,
    /// vCPUs run.
    Running,
    /// vCPUs are stopped by the operator.
    Paused,
    /// The guest asked for a reboot; devices are being reset.
    Rebooting,
    /// The VM is stopping for good.
    ShuttingDown,
}

/// `GET /v1/vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// What the VM is doing.
    pub state: VmState,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Boot memory size.
    pub boot_memory_bytes: u64,
    /// Milliseconds since the VMM started.
    pub uptime_ms: u64,
    /// How many times the guest booted.
    pub boots: u32,
    /// NUMA nodes; `null` on a VM without `--numa`.
    #[serde(default)]
    pub numa_nodes: Option<Vec<NumaNodeInfo>>,
    /// The memory slots memory devices could use at start and what limits them (absent in
    /// answers of older VMMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_budget: Option<SlotBudgetInfo>,
    /// vhost-user disks and shared folders (absent when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vhost_user_devices: Vec<VhostUserDeviceStatus>,
}

/// The VM-wide budget of memory slots for memory devices, as planned at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotBudgetInfo {
    /// Slots memory devices could use after boot memory (what their layouts were planned in).
    pub available_slots: u32,
    /// Who sets the smallest limit: `kvm`, or a vhost-user backend.
    pub limited_by: String,
    /// That limit, in slots (memory regions) in total, boot memory included.
    pub limit_slots: u32,
}

/// A vhost-user device and its backend's memory table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostUserDeviceStatus {
    /// The device id.
    pub id: String,
    /// `disk` (vhost-user-blk) or `fs` (virtio-fs).
    pub kind: String,
    /// The backend's socket.
    pub socket: String,
    /// `ready`, or `broken` after the backend failed a request or disconnected.
    pub state: String,
    /// Why it broke; `null` while ready.
    #[serde(default)]
    pub broken_reason: Option<String>,
    /// Memory regions the backend holds (boot RAM + every mapped slot while ready).
    pub regions_held: usize,
    /// The most regions it accepts (GET_MAX_MEM_SLOTS, or 8 without CONFIGURE_MEM_SLOTS).
    pub max_regions: u32,
}

/// One NUMA node in `GET /v1/vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNodeInfo {
    /// Node number (= ACPI PXM).
    pub node: u16,
    /// vCPU indices on the node.
    pub cpus: Vec<u32>,
    /// Boot memory on the node.
    pub boot_memory_bytes: u64,
    /// Distance to each node, by node number (10 to itself; 20 to others without a SLIT).
    pub distances: Vec<u8>,
    /// Ids of the memory devices whose memory goes to this node.
    pub memory_devices: Vec<String>,
}

/// Body of `PUT /v1/vm/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    /// Directory to write the snapshot to (created if missing), as the VMM sees it.
    pub destination: String,
}

/// Answer of `PUT /v1/vm/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotAnswer {
    /// The directory written.
    pub destination: String,
    /// Bytes of guest memory written (the memory files hold holes everywhere else).
    pub memory_data_bytes: u64,
    /// Bytes of guest memory examined (boot RAM plus plugged device memory).
    pub memory_scanned_bytes: u64,
    /// Time taken.
    pub duration_ms: u64,
}

/// Body of `PUT /v1/vm/migrate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateBody {
    /// Where `hotmem --incoming` listens: `tcp:HOST:PORT` or `unix:PATH`.
    pub destination: String,
    /// Largest acceptable pause of the guest (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_downtime_ms: Option<u64>,
    /// Bandwidth cap (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_bytes_per_s: Option<u64>,
    /// Throttle the vCPUs step by step while the guest dirties memory faster than it can be
    /// sent (default: off): 20 %, then 10 % more each time two rounds in a row dirtied more
    /// than half of what they sent, up to `max_throttle_percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_converge: Option<bool>,
    /// Highest throttle auto-converge may apply, 1 to 99 (default 99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_throttle_percent: Option<u8>,
}

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationState {
    /// No migration was started.
    None,
    /// Connecting and handshaking.
    Setup,
    /// Pre-copy rounds, guest running.
    Active,
    /// Guest paused, last round and device state.
    Final,
    /// The destination runs the VM; this hotmem exits.
    Completed,
    /// It failed; the guest runs here as before.
    Failed,
    /// It was cancelled; the guest runs here as before.
    Cancelled,
}

/// Answer of `GET /v1/vm/migration` (and of `PUT /v1/vm/migrate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// State.
    pub state: MigrationState,
    /// The destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Rounds so far (the first pass is round 1).
    pub round: u32,
    /// Bytes sent so far.
    pub transferred_bytes: u64,
    /// Dirty bytes still to send.
    pub remaining_bytes: u64,
    /// Pages the guest dirtied per second in the last round.
    pub dirty_rate_pages_per_s: u64,
    /// Expected pause: the final round's dirty pages at the measured bandwidth plus the
    /// switchover (when completed: the estimate the pause was decided on).
    pub expected_downtime_ms: u64,
    /// The switchover part of the estimate: pausing, building and sending the device state,
    /// the stream's round trip and the destination's restore, measured every round.
    #[serde(default)]
    pub switchover_ms: u64,
    /// The vCPU throttle auto-converge applies now (0: full speed; when completed: the
    /// highest it applied).
    #[serde(default)]
    pub throttle_percent: u8,
    /// Measured pause (when completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Where the measured pause went, step by step (when completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_breakdown: Option<DowntimeBreakdown>,
    /// Time since the start (total when completed).
    pub total_ms: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a migration's pause went: the source's steps from the pause to the destination's
/// `running` (`wait_running` contains the destination's own steps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DowntimeBreakdown {
    /// `pause`, `final_collect`, `final_pass`, `state_build`, `state_send`, `wait_running`.
    pub source: Vec<DowntimeStep>,
    /// From `done` to `running` on the destination, e.g. `state_decode`, `machine_restore`,
    /// `device_restore`, `vmm_setup`.
    pub destination: Vec<DowntimeStep>,
}

/// One timed step of the switchover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DowntimeStep {
    /// What was done.
    pub step: String,
    /// How long it took, in microseconds.
    pub us: u64,
}

/// Answer of `PUT /v1/vm/pause|resume|shutdown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStateAnswer {
    /// The state the VM is in now.
    pub state: VmState,
    /// Something the operator should know about how it got there (e.g. a pause that took
    /// longer than the API waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to change.
    pub error: String,
    /// The device as it is now, when the error concerns one (e.g. a resize that timed out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<MemoryDeviceStatus>,
}

/// One line of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number, increasing by one per event the VMM emitted.
    pub seq: u64,
    /// Milliseconds since the VMM started.
    pub uptime_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What an event reports; the `event` field names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum EventKind {
    /// The operator changed a device's requested size.
    RequestedSizeChanged {
        /// Device id.
        device: String,
        /// Before.
        from_bytes: u64,
        /// Now.
        to_bytes: u64,
    },
    /// The guest plugged or unplugged memory (at most one event per device per interval).
    PluggedSizeChanged {
        /// Device id.
        device: String,
        /// Plugged before.
        from_bytes: u64,
        /// Plugged now.
        to_bytes: u64,
        /// Requested now.
        requested_bytes: u64,
    },
    /// KVM memory slots were mapped.
    SlotMapped {
        /// Device id.
        device: String,
        /// How many slots were mapped since the last event.
        count: usize,
        /// Slots mapped now.
        slots_mapped: usize,
        /// Bytes the mapped slots cover now.
        mapped_bytes: u64,
    },
    /// KVM memory slots were unmapped.
    SlotUnmapped {
        /// Device id.
        device: String,
        /// How many slots were unmapped since the last event.
        count: usize,
        /// Slots mapped now.
        slots_mapped: usize,
        /// Bytes the mapped slots cover now.
        mapped_bytes: u64,
    },
    /// The guest reached the requested size.
    ResizeCompleted {
        /// Device id.
        device: String,
        /// Plugged (= requested) now.
        plugged_bytes: u64,
    },
    /// Requested and plugged differ and the guest made no progress for a while.
    GuestNotFollowing {
        /// Device id.
        device: String,
        /// Requested now.
        requested_bytes: u64,
        /// Plugged now.
        plugged_bytes: u64,
        /// How long there was no progress.
        stalled_ms: u64,
        /// Why, as far as the device can tell.
        reason: NotFollowingReason,
    },
    /// The device needs a reset after a malformed request, or its driver gave up on it.
    DeviceBroken {
        /// Device id.
        device: String,
        /// The driver state that says so.
        driver_state: DriverState,
    },
    /// A vhost-user backend failed a request or disconnected: its device is broken, the rest
    /// of the VM goes on (the guest's plug during which it failed was answered BUSY).
    VhostUserBackendBroken {
        /// Device id.
        device: String,
        /// What failed.
        reason: String,
    },
    /// A guest reboot could not give a device's memory back to the host (discard failed): the
    /// memory stays plugged, the VM reboots and its next driver unplugs it.
    SystemResetIncomplete {
        /// Device id.
        device: String,
        /// Still plugged.
        plugged_bytes: u64,
    },
    /// A live migration started.
    MigrationStarted {
        /// The destination.
        destination: String,
    },
    /// A pre-copy round ended.
    MigrationRound {
        /// Round number.
        round: u32,
        /// Bytes sent so far.
        transferred_bytes: u64,
        /// Dirty bytes left.
        remaining_bytes: u64,
        /// Expected pause at the measured bandwidth.
        expected_downtime_ms: u64,
        /// The vCPU throttle (auto-converge) now.
        #[serde(default)]
        throttle_percent: u8,
    },
    /// The destination runs the VM; this hotmem exits.
    MigrationCompleted {
        /// Bytes sent.
        transferred_bytes: u64,
        /// Rounds.
        rounds: u32,
        /// Pause of the guest.
        downtime_ms: u64,
        /// Whole migration.
        total_ms: u64,
    },
    /// The migration failed or was cancelled; the guest runs here as before.
    MigrationFailed {
        /// Why.
        reason: String,
    },
    /// The VM changed state.
    VmStateChanged {
        /// The new state.
        state: VmState,
    },
    /// This subscriber read too slowly: so many events were dropped for it.
    EventsDropped {
        /// Events lost.
        count: u64,
    },
}

/// Why a guest does not follow a resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotFollowingReason {
    /// No driver ever started the device (e.g. the virtio_mem module is not loaded).
    DriverNotProbed,
    /// The driver asks, but the device keeps answering BUSY or NACK.
    BusyNackLoop,
    /// The device needs a reset or the driver gave up.
    DeviceBroken,
    /// The driver is there but sends nothing (e.g. the guest cannot offline memory).
    NoRequests,
    /// The VM is paused.
    VmPaused,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_flat_with_a_kebab_case_tag() {
        let e = Event {
            seq: 3,
            uptime_ms: 1500,
            kind: EventKind::GuestNotFollowing {
                device: "mem0".into(),
                requested_bytes: 2 << 30,
                plugged_bytes: 0,
                stalled_ms: 5000,
                reason: NotFollowingReason::DriverNotProbed,
            },
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"seq":3,"uptime_ms":1500,"event":"guest-not-following","device":"mem0","requested_bytes":2147483648,"plugged_bytes":0,"stalled_ms":5000,"reason":"driver-not-probed"}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
    }

    #[test]
    fn resize_wait_is_optional_and_strict() {
        let b: ResizeBody =
            serde_json::from_str(r#"{"requested_size":"4G","wait":{"timeout_ms":100}}"#).unwrap();
        assert_eq!(b.wait, Some(WaitSpec { timeout_ms: 100 }));
        assert!(
            serde_json::from_str::<ResizeBody>(r#"{"requested_size":1,"wait":{"ms":1}}"#).is_err()
        );
    }
}
