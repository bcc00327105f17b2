//! vhost-user disks (`--disk`) and shared folders (`--fs`): parsing, connecting the backends
//! with memory tables that follow the memslots, and their virtio-pci transports.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use machine::{Machine, Vm};
use memslots::SlotLimit;
use pci::{MmioAllocator, PciBus, PciClass};
use vhost_frontend::{
    AttachConfig, BackendId, SharedMemoryTable, SharedRegion, VhostUserDevice,
    VhostUserDeviceConfig, VhostUserKind, VhostUserMemory, VhostUserProtocolFeatures, negotiate,
};
use virtio::{VirtioPciConfig, VirtioPciDevice};

use crate::Error;
use crate::devices::QueueMemory;
use crate::notify::QueueNotifiers;
use crate::pci_glue::IrqfdMsiSink;

/// Default queue size of vhost-user devices (QEMU's for vhost-user-blk and virtio-fs).
const DEFAULT_QUEUE_SIZE: u16 = 128;
/// How long to keep trying to connect to a backend's socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One `--disk` or `--fs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserSpec {
    /// Device id (API and error messages).
    pub id: String,
    /// The backend's socket.
    pub socket: PathBuf,
    /// Maximum queue size.
    pub queue_size: u16,
    /// Disk or shared folder.
    pub kind: VhostUserKind,
}

fn parse_keys<'a>(spec: &'a str, allowed: &str) -> Result<Vec<(&'a str, &'a str)>, String> {
    spec.split(',')
        .map(|part| {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not key=value"))?;
            if !allowed.split(", ").any(|k| k == key) {
                return Err(format!("unknown key '{key}': expected {allowed}"));
            }
            Ok((key, value))
        })
        .collect()
}

fn valid_id(id: &str) -> Result<String, String> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        return Err(format!("id '{id}': use letters, digits, '-' or '_'"));
    }
    Ok(id.to_string())
}

fn queue_size(value: &str) -> Result<u16, String> {
    value
        .parse::<u16>()
        .ok()
        .filter(|q| q.is_power_of_two() && *q <= 1024)
        .ok_or_else(|| format!("queue_size={value}: expected a power of two up to 1024"))
}

impl VhostUserSpec {
    /// Parses `socket=PATH[,id=ID][,readonly=on]`; `index` names a disk without id.
    pub fn parse_disk(spec: &str, index: usize) -> Result<Self, String> {
        let mut id = format!("disk{index}");
        let mut socket = None;
        let mut read_only = false;
        let mut queue = DEFAULT_QUEUE_SIZE;
        for (key, value) in parse_keys(spec, "socket, id, readonly, queue_size")? {
            match key {
                "socket" => socket = Some(PathBuf::from(value)),
                "id" => id = valid_id(value)?,
                "queue_size" => queue = queue_size(value)?,
                _ => {
                    read_only = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(format!("readonly={value}: expected on or off")),
                    }
                }
            }
        }
        Ok(VhostUserSpec {
            id,
            socket: socket.ok_or("missing socket=PATH (the backend's vhost-user socket)")?,
            queue_size: queue,
            kind: VhostUserKind::Block { read_only },
        })
    }

    /// Parses `tag=TAG,socket=PATH[,queue_size=N][,id=ID]`; `index` names one without id.
    pub fn parse_fs(spec: &str, index: usize) -> Result<Self, String> {
        let mut id = format!("fs{index}");
        let mut socket = None;
        let mut tag = None;
        let mut queue = DEFAULT_QUEUE_SIZE;
        for (key, value) in parse_keys(spec, "tag, socket, queue_size, id")? {
            match key {
                "socket" => socket = Some(PathBuf::from(value)),
                "id" => id = valid_id(value)?,
                "queue_size" => queue = queue_size(value)?,
                _ => {
                    if value.is_empty() || value.len() > vhost_frontend::FS_TAG_BYTES {
                        return Err(format!("tag '{value}': 1 to 36 bytes"));
                    }
                    tag = Some(value.to_string());
                }
            }
        }
        Ok(VhostUserSpec {
            id,
            socket: socket.ok_or("missing socket=PATH (virtiofsd's --socket-path)")?,
            queue_size: queue,
            kind: VhostUserKind::Fs {
                tag: tag.ok_or("missing tag=TAG (the name the guest mounts)")?,
                request_queues: 1,
            },
        })
    }
}

/// A connected backend and its device, waiting for a place on the bus.
#[derive(Debug)]
pub struct ConnectedDevice {
    /// What the command line asked for.
    pub spec: VhostUserSpec,
    /// The backend's id in the memory table.
    pub backend: BackendId,
    device: VhostUserDevice,
}

/// All vhost-user backends of the VM and the memory table they share.
#[derive(Debug)]
pub struct VhostUserSetup {
    /// The VM-wide table: boot RAM plus every mapped memslot.
    pub table: SharedMemoryTable,
    /// The devices, in command-line order.
    pub devices: Vec<ConnectedDevice>,
    boot_regions: u32,
}

fn connect_socket(spec: &VhostUserSpec) -> Result<UnixStream, Error> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match UnixStream::connect(&spec.socket) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::Device(format!(
                    "vhost-user device '{}': connecting to {}: {e}",
                    spec.id,
                    spec.socket.display()
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Connects every backend and gives each boot RAM; `None` without vhost-user devices.
pub fn connect(
    specs: &[VhostUserSpec],
    machine: &Machine,
    ring_memory: &QueueMemory,
) -> Result<Option<VhostUserSetup>, Error> {
    if specs.is_empty() {
        return Ok(None);
    }
    let mut table = VhostUserMemory::new();
    let mut boot_regions = 0;
    for (guest_addr, ram) in machine.boot_ram_regions() {
        let fd = ram.fd().ok_or_else(|| {
            Error::Config(format!(
                "vhost-user device '{}' needs shared guest memory, but boot RAM is private",
                specs[0].id
            ))
        })?;
        let fd = fd
            .try_clone_to_owned()
            .map_err(|e| Error::Device(format!("sharing boot RAM: {e}")))?;
        table
            .map(SharedRegion {
                guest_addr,
                size_bytes: ram.size_bytes(),
                host_addr: ram.host_addr() as u64,
                fd: Arc::new(fd),
                fd_offset_bytes: 0,
            })
            .map_err(|e| Error::Device(format!("boot RAM: {e}")))?;
        boot_regions += 1;
    }
    let mut devices = Vec::new();
    for spec in specs {
        let fail = |e: vhost_frontend::Error| {
            Error::Device(format!("vhost-user device '{}': {e}", spec.id))
        };
        let queues = match &spec.kind {
            VhostUserKind::Block { .. } => 1,
            VhostUserKind::Fs { request_queues, .. } => 1 + u64::from(*request_queues),
        };
        let negotiated = negotiate(
            connect_socket(spec)?,
            &AttachConfig {
                extra_protocol_features: VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::MQ,
                max_queue_count: queues,
                ..AttachConfig::named(&spec.id)
            },
        )
        .map_err(fail)?;
        let device = VhostUserDevice::new(
            &VhostUserDeviceConfig {
                name: spec.id.clone(),
                kind: spec.kind.clone(),
                queue_size: spec.queue_size,
            },
            &negotiated,
            ring_memory.clone(),
        )
        .map_err(fail)?;
        log::info!(
            "vhost-user device '{}' at {}: {:?}",
            spec.id,
            spec.socket.display(),
            negotiated.mode
        );
        let backend = table.attach(&spec.id, negotiated).map_err(fail)?;
        devices.push(ConnectedDevice {
            spec: spec.clone(),
            backend,
            device,
        });
    }
    Ok(Some(VhostUserSetup {
        table: Arc::new(Mutex::new(table)),
        devices,
        boot_regions,
    }))
}

/// What the API shows of the vhost-user devices.
#[derive(Debug, Clone)]
pub struct VhostUserView {
    table: SharedMemoryTable,
    devices: Vec<(VhostUserSpec, BackendId)>,
}

impl VhostUserView {
    /// Every device's backend state and table size, in command-line order.
    pub fn statuses(&self) -> Vec<api::model::VhostUserDeviceStatus> {
        let status = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .status();
        self.devices
            .iter()
            .filter_map(|(spec, id)| {
                let s = status.iter().find(|s| s.id == *id)?;
                let (state, broken_reason) = match &s.health {
                    vhost_frontend::BackendHealth::Ready => ("ready", None),
                    vhost_frontend::BackendHealth::Broken { reason } => {
                        ("broken", Some(reason.clone()))
                    }
                };
                Some(api::model::VhostUserDeviceStatus {
                    id: spec.id.clone(),
                    kind: match spec.kind {
                        VhostUserKind::Block { .. } => "disk".into(),
                        VhostUserKind::Fs { .. } => "fs".into(),
                    },
                    socket: spec.socket.display().to_string(),
                    state: state.into(),
                    broken_reason,
                    regions_held: s.regions_held,
                    max_regions: s.mode.max_regions(),
                })
            })
            .collect()
    }
}

/// How often backend failures are turned into events.
const EVENT_POLL_INTERVAL: Duration = Duration::from_millis(100);

impl VhostUserView {
    /// Starts a thread that emits a `vhost-user-backend-broken` event for every backend that
    /// fails; it ends once `alive` says false (e.g. the VM shuts down).
    pub fn spawn_event_relay(
        &self,
        emit: impl Fn(api::model::EventKind) + Send + 'static,
        alive: impl Fn() -> bool + Send + 'static,
    ) -> std::io::Result<()> {
        let table = self.table.clone();
        std::thread::Builder::new()
            .name("vhost-events".into())
            .spawn(move || {
                sandbox::enter_or_abort(sandbox::ThreadKind::VhostEvents);
                while alive() {
                    let events = table
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take_events();
                    for event in events {
                        let vhost_frontend::BackendEvent::Broken { name, reason, .. } = event;
                        let kind = api::model::EventKind::VhostUserBackendBroken {
                            device: name,
                            reason,
                        };
                        emit(kind);
                    }
                    std::thread::sleep(EVENT_POLL_INTERVAL);
                }
            })
            .map(|_| ())
    }
}

/// The budget as the API shows it.
pub fn budget_info(budget: &memslots::SlotBudget) -> api::model::SlotBudgetInfo {
    match budget.limited_by() {
        Some(limit) => api::model::SlotBudgetInfo {
            available_slots: budget.available(),
            limited_by: limit.owner.clone(),
            limit_slots: limit.max_slots,
        },
        None => api::model::SlotBudgetInfo {
            available_slots: budget.available(),
            limited_by: "kvm".into(),
            limit_slots: budget.kvm_available(),
        },
    }
}

impl VhostUserSetup {
    /// A handle for the API.
    pub fn view(&self) -> VhostUserView {
        VhostUserView {
            table: self.table.clone(),
            devices: self
                .devices
                .iter()
                .map(|d| (d.spec.clone(), d.backend))
                .collect(),
        }
    }

    /// One slot limit per backend for the VM's budget (each holds boot RAM too).
    pub fn slot_limits(&self) -> Vec<SlotLimit> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .slot_limits(self.boot_regions)
    }
}

/// Where devices go on the bus.
pub struct BusPlacement<'a> {
    /// The VM.
    pub vm: &'a Arc<Vm>,
    /// The PCI bus.
    pub bus: &'a mut PciBus,
    /// BAR addresses.
    pub bars: &'a mut MmioAllocator,
    /// Queue ioeventfds.
    pub notifiers: &'a mut QueueNotifiers,
    /// Memory the rings live in.
    pub memory: &'a QueueMemory,
    /// Bring the device to this saved state (a migration destination).
    pub restore: Option<&'a crate::migration::vhost::VhostRestore>,
}

/// A vhost-user device behind its virtio-pci transport.
pub type VhostTransport = Arc<Mutex<VirtioPciDevice<VhostUserDevice, QueueMemory>>>;

/// A vhost-user device on the bus, as migration sees it.
#[derive(Debug, Clone)]
pub struct PlacedVhostDevice {
    /// Its id (`--disk id=` / `--fs id=`).
    pub id: String,
    /// Its transport.
    pub transport: VhostTransport,
}

/// Puts `connected` on the bus behind a virtio-pci transport, with its call relay running.
pub fn add_to_bus(
    connected: ConnectedDevice,
    place: BusPlacement<'_>,
) -> Result<PlacedVhostDevice, Error> {
    let id = connected.spec.id.clone();
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::Device(format!("vhost-user device '{id}': {what}: {e}"))
    };
    let calls = connected
        .device
        .call_fds()
        .map_err(|e| fail("call eventfds", &e))?;
    let kicks = connected
        .device
        .kick_fds()
        .map_err(|e| fail("kick eventfds", &e))?;
    let vectors = u16::try_from(calls.len() + 1).map_err(|e| fail("queues", &e))?;
    let class = match connected.spec.kind {
        // Mass storage: SCSI (as QEMU's virtio-blk-pci) / other (virtio-fs-pci).
        VhostUserKind::Block { .. } => PciClass {
            base: 0x01,
            sub: 0x00,
            prog_if: 0,
        },
        VhostUserKind::Fs { .. } => PciClass {
            base: 0x01,
            sub: 0x80,
            prog_if: 0,
        },
    };
    let bar = place
        .bars
        .allocate_bar(virtio::layout::BAR_SIZE_BYTES)
        .map_err(|e| fail("BAR", &e))?;
    let msi = IrqfdMsiSink::new(place.vm.clone(), vectors).map_err(|e| fail("MSI-X", &e))?;
    let transport = VirtioPciDevice::new(
        connected.device,
        place.memory.clone(),
        Arc::new(msi),
        VirtioPciConfig {
            bar_address: Some(bar),
            class,
        },
    )
    .map_err(|e| fail("virtio-pci", &e))?;
    let mut transport = transport;
    if let Some(saved) = place.restore {
        // The transport as the driver left it, then the backend (a new connection) told what
        // the driver negotiated and where each ring stands.
        transport
            .restore_state(&saved.transport)
            .map_err(|e| fail("restoring virtio-pci", &e))?;
        transport
            .device_mut()
            .set_ring_bases(&saved.rings.next_avail)
            .map_err(|e| fail("ring positions", &e))?;
        transport
            .replay_negotiation()
            .map_err(|e| fail("starting the restored rings", &e))?;
    }
    let transport = Arc::new(Mutex::new(transport));
    let slot = place
        .bus
        .first_free_slot()
        .ok_or_else(|| Error::Device("no free PCI slot".into()))?;
    place
        .bus
        .add_device(slot, transport.clone())
        .map_err(|e| fail("PCI", &e))?;
    let addresses = transport.clone();
    place.notifiers.add_direct(
        slot,
        Box::new(move || {
            addresses
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .notify_addresses()
        }),
        kicks,
    )?;
    let relay = transport.clone();
    vhost_frontend::spawn_call_relay(&id, calls, move |queue| {
        relay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .signal_queue(queue);
    })
    .map_err(|e| fail("call relay thread", &e))?;
    if place.restore.is_some() {
        nudge(&transport);
    }
    log::info!("vhost-user device '{id}' at PCI {slot:?}, BAR {bar}");
    Ok(PlacedVhostDevice { id, transport })
}

/// After its rings (re)started at saved positions: kicks every enabled queue (requests the
/// driver queued while the rings were stopped) and raises its interrupt once (an answer whose
/// interrupt was not delivered before the stop; a spurious one costs the driver a look at an
/// unchanged used ring).
pub fn nudge(transport: &VhostTransport) {
    let mut t = transport
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !t.is_active() {
        return;
    }
    let queues = t.save_state().queues;
    for (index, q) in (0u16..).zip(&queues) {
        if q.enabled {
            t.notify_queue(index);
            t.signal_queue(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_and_fs_specs_parse() {
        let d = VhostUserSpec::parse_disk("socket=/run/qsd.sock,id=data,readonly=on", 0).unwrap();
        assert_eq!(d.id, "data");
        assert_eq!(d.kind, VhostUserKind::Block { read_only: true });
        assert_eq!(d.queue_size, 128);
        let d = VhostUserSpec::parse_disk("socket=/s", 3).unwrap();
        assert_eq!(
            (d.id.as_str(), d.kind),
            ("disk3", VhostUserKind::Block { read_only: false })
        );
        let f =
            VhostUserSpec::parse_fs("tag=share,socket=/run/fs.sock,queue_size=1024", 0).unwrap();
        assert_eq!(f.id, "fs0");
        assert_eq!(f.queue_size, 1024);
        assert_eq!(
            f.kind,
            VhostUserKind::Fs {
                tag: "share".into(),
                request_queues: 1
            }
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("id=d", "missing socket"),
            ("socket=/s,readonly=yes", "expected on or off"),
            ("socket=/s,colour=red", "unknown key 'colour'"),
            ("socket=/s,id=a b", "use letters"),
            ("socket", "not key=value"),
        ] {
            let err = VhostUserSpec::parse_disk(spec, 0).unwrap_err();
            assert!(err.contains(says), "{spec}: {err}");
        }
        for (spec, says) in [
            ("socket=/s", "missing tag"),
            ("tag=x", "missing socket"),
            ("tag=x,socket=/s,queue_size=100", "power of two"),
            (
                "tag=0123456789012345678901234567890123456,socket=/s",
                "1 to 36 bytes",
            ),
        ] {
            let err = VhostUserSpec::parse_fs(spec, 0).unwrap_err();
            assert!(err.contains(says), "{spec}: {err}");
        }
    }
}
