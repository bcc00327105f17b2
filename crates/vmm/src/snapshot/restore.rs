//! Reading a snapshot for `hotmem --restore DIR`: everything is read and checked before any
//! VM resource is created, so a bad snapshot stops hotmem with a clear message and nothing
//! started.

use std::path::{Path, PathBuf};

use memslots::SlotPolicy;
use snapshot::{Component, RegionFile, SnapshotDir, VmSnapshot};
use virtio::VirtioPciState;
use virtio_mem::DeviceState;

pub use super::vm_config::{
    SavedMemDevice, SavedVmConfig, VM_CONFIG_COMPONENT, VM_CONFIG_VERSION, decode_vm_config,
};
use super::{
    MACHINE_COMPONENT, MEM_DEVICE_COMPONENT, MEM_DEVICE_VERSION, TRANSPORT_COMPONENT,
    TRANSPORT_VERSION, boot_ram_name,
};
use crate::Error;
use crate::config::{MemDeviceConfig, VmConfig};

/// The NUMA node a restored device keeps offering: the saved `node_id` when it is not 0 or the
/// driver accepted VIRTIO_MEM_F_ACPI_PXM (the restored device must offer what was acked).
fn saved_node(state: &DeviceState) -> Option<boot::numa::NodeId> {
    const ACPI_PXM: u64 = 1 << virtio_mem::features::VIRTIO_MEM_F_ACPI_PXM;
    let acked_pxm = state.driver_features.is_some_and(|f| f & ACPI_PXM != 0);
    (state.node_id != 0 || acked_pxm).then_some(boot::numa::NodeId(state.node_id))
}

/// One memory device's saved state, checked.
#[derive(Debug, Clone)]
pub struct DeviceRestore {
    /// Device id.
    pub id: String,
    /// Transport state.
    pub transport: VirtioPciState,
    /// virtio-mem state (bitmap, sizes, features).
    pub device: DeviceState,
    /// Its memory file.
    pub memory_file: PathBuf,
    /// Device memory already filled, in slots already mapped (a live migration received
    /// it); the memory file is then not read.
    pub received: Option<crate::migration::incoming::ReceivedDevice>,
}

/// One boot RAM range to fill.
#[derive(Debug, Clone)]
pub struct BootRamRestore {
    /// The range as saved.
    pub region: RegionFile,
    /// Its memory file.
    pub memory_file: PathBuf,
}

/// How device memory comes back (`--restore-memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestoreMemory {
    /// Anonymous device memory maps the memory file's data copy-on-write (the default).
    #[default]
    Lazy,
    /// The memory file is read into fresh memory before the VM runs.
    Eager,
}

impl std::str::FromStr for RestoreMemory {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lazy" => Ok(RestoreMemory::Lazy),
            "eager" => Ok(RestoreMemory::Eager),
            other => Err(format!("--restore-memory {other}: expected lazy or eager")),
        }
    }
}

/// A snapshot read and checked, ready to restore.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// How device memory comes back.
    pub memory: RestoreMemory,
    /// Where it was read from.
    pub dir: PathBuf,
    /// hotmem version of the writer.
    pub written_by: String,
    /// The recorded VM configuration.
    pub config: SavedVmConfig,
    /// The machine component (checked and applied by the machine).
    pub machine: Component,
    /// Memory devices, in the configuration's order.
    pub devices: Vec<DeviceRestore>,
    /// Boot RAM ranges, in guest address order.
    pub boot_ram: Vec<BootRamRestore>,
    /// vhost-user devices (a live migration's; snapshots of such VMs are refused).
    pub vhost: Vec<crate::migration::vhost::VhostRestore>,
}

fn bad(dir: &Path, what: String) -> Error {
    Error::Config(format!("snapshot {}: {what}", dir.display()))
}

impl RestorePlan {
    /// Reads the state file in `dir` and checks everything a restore will use: the VM
    /// configuration, every device's components, and every memory file's presence and size.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let snap = SnapshotDir::new(dir);
        let decoded = snap.read_state()?;
        let VmSnapshot {
            vm_config,
            machine,
            devices,
            memory,
            ..
        } = decoded.snapshot;
        let config_component = vm_config.ok_or_else(|| {
            bad(
                dir,
                format!(
                    "format version {} does not record the VM configuration; it cannot be \
                     restored",
                    decoded.format_version
                ),
            )
        })?;
        let config = decode_vm_config(&config_component)?;
        if machine.name != MACHINE_COMPONENT {
            return Err(bad(dir, format!("machine component is '{}'", machine.name)));
        }
        let file = |region: &RegionFile| -> Result<PathBuf, Error> {
            let path = snap.file_path(&region.file_name)?;
            snapshot::memfile::open_checked(&path, region.size_bytes)?;
            Ok(path)
        };
        let mut boot_ram = Vec::new();
        let mut boot_bytes = 0u64;
        for index in 0.. {
            let Ok(region) = memory.region(&boot_ram_name(index)) else {
                break;
            };
            boot_bytes = boot_bytes.saturating_add(region.size_bytes);
            boot_ram.push(BootRamRestore {
                memory_file: file(region)?,
                region: region.clone(),
            });
        }
        if boot_bytes != config.boot_memory_bytes {
            return Err(bad(
                dir,
                format!(
                    "boot RAM files hold {boot_bytes:#x} bytes but the VM had {:#x}",
                    config.boot_memory_bytes
                ),
            ));
        }
        if devices.len() != config.mem_devices.len() {
            return Err(bad(
                dir,
                format!(
                    "{} device states for {} configured memory devices",
                    devices.len(),
                    config.mem_devices.len()
                ),
            ));
        }
        let mut restores = Vec::new();
        for saved in &config.mem_devices {
            let device = devices
                .iter()
                .find(|d| d.id == saved.id)
                .ok_or_else(|| bad(dir, format!("no state for memory device '{}'", saved.id)))?;
            let (_, transport) = device
                .component(TRANSPORT_COMPONENT)?
                .decode(TRANSPORT_COMPONENT, TRANSPORT_VERSION..=TRANSPORT_VERSION)?;
            let (_, state): (u32, DeviceState) = device.component(MEM_DEVICE_COMPONENT)?.decode(
                MEM_DEVICE_COMPONENT,
                MEM_DEVICE_VERSION..=MEM_DEVICE_VERSION,
            )?;
            let region = memory.region(&saved.id)?;
            if region.size_bytes != saved.size_bytes
                || state.region_size_bytes != saved.size_bytes
                || region.guest_addr.0 != state.guest_addr
            {
                return Err(bad(
                    dir,
                    format!(
                        "memory device '{}': memory file of {:#x} bytes at {:#x} does not match \
                         the device ({:#x} bytes at {:#x})",
                        saved.id,
                        region.size_bytes,
                        region.guest_addr.0,
                        state.region_size_bytes,
                        state.guest_addr
                    ),
                ));
            }
            restores.push(DeviceRestore {
                id: saved.id.clone(),
                transport,
                device: state,
                memory_file: file(region)?,
                received: None,
            });
        }
        Ok(RestorePlan {
            memory: RestoreMemory::default(),
            dir: dir.to_path_buf(),
            written_by: decoded.hotmem_version,
            config,
            machine,
            devices: restores,
            boot_ram,
            vhost: Vec::new(),
        })
    }

    /// The saved state of device `id`.
    pub fn device(&self, id: &str) -> Option<&DeviceRestore> {
        self.devices.iter().find(|d| d.id == id)
    }

    /// Memory device configurations for this run: as saved, with the slot policy of each
    /// `--mem-device id=ID,slots=POLICY` override (the only keys allowed with `--restore`).
    pub fn mem_devices(&self, overrides: &[String]) -> Result<Vec<MemDeviceConfig>, Error> {
        let mut configs: Vec<MemDeviceConfig> = self
            .config
            .mem_devices
            .iter()
            .map(|d| {
                let mut config = d.to_config(d.slots);
                config.node = self.device(&d.id).and_then(|r| saved_node(&r.device));
                config
            })
            .collect();
        for spec in overrides {
            let (id, slots) = parse_override(spec)
                .map_err(|e| Error::Config(format!("--mem-device {spec}: {e}")))?;
            let config = configs.iter_mut().find(|c| c.id == id).ok_or_else(|| {
                Error::Config(format!(
                    "--mem-device {spec}: the snapshot has no memory device '{id}'"
                ))
            })?;
            if let Some(slots) = slots {
                config.slots = slots;
            }
        }
        Ok(configs)
    }
}

/// The configuration of `hotmem --restore DIR`: the snapshot is read and checked here, so a
/// bad one is a configuration error (exit status 2) before anything starts.
pub fn restored_config(cli: crate::config::Cli) -> Result<VmConfig, Error> {
    let dir = cli
        .restore
        .clone()
        .ok_or_else(|| Error::Config("no --restore".into()))?;
    if !cli.disks.is_empty() || !cli.shared_folders.is_empty() {
        return Err(Error::Config(
            "--disk and --fs cannot be used with --restore: snapshots of VMs with vhost-user \
             devices are not supported (such VMs can be live-migrated)"
                .into(),
        ));
    }
    let plan = RestorePlan::load(&dir).map_err(|e| {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        Error::Config(format!("--restore {}: {message}", dir.display()))
    })?;
    let mem_devices = plan.mem_devices(&cli.mem_devices)?;
    let mut plan = plan;
    plan.memory = cli.restore_memory.parse().map_err(Error::Config)?;
    Ok(VmConfig {
        kernel: plan.config.kernel.clone(),
        initramfs: plan.config.initramfs.clone(),
        cmdline: plan.config.cmdline.clone(),
        boot_memory_bytes: plan.config.boot_memory_bytes,
        vcpus: plan.config.vcpus,
        mem_devices,
        serial: crate::config::parse_serial(&cli.serial)?,
        api_socket: cli.api_socket,
        not_following_after: std::time::Duration::from_millis(cli.not_following_ms),
        restore: Some(std::sync::Arc::new(plan)),
        resume_after_restore: cli.resume,
        incoming: None,
        // Not in a snapshot: snapshots of VMs with NUMA nodes' topology in the API, shared
        // memory or vhost-user devices are refused when taken (the guest-visible NUMA state —
        // ACPI tables in guest memory, CPUID, each device's node_id — is restored as saved).
        numa: None,
        shared_memory: false,
        vhost_user: Vec::new(),
    })
}

/// `id=ID[,slots=POLICY]`.
pub(crate) fn parse_override(spec: &str) -> Result<(String, Option<SlotPolicy>), String> {
    let mut id = None;
    let mut slots = None;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("id", v)) => id = Some(v.to_string()),
            Some(("slots", v)) => slots = Some(v.parse::<SlotPolicy>()?),
            _ => {
                return Err(format!(
                    "'{part}': with --restore a memory device takes only id=ID and slots=POLICY \
                     (its size, block size and backing come from the snapshot)"
                ));
            }
        }
    }
    Ok((id.ok_or("missing id=ID")?, slots))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_take_only_id_and_slots() {
        assert_eq!(
            parse_override("id=mem0,slots=fixed").unwrap(),
            ("mem0".into(), Some(SlotPolicy::Fixed))
        );
        assert_eq!(parse_override("id=m").unwrap(), ("m".into(), None));
        let e = parse_override("id=m,size=4G").unwrap_err();
        assert!(e.contains("only id=ID and slots=POLICY"), "{e}");
        assert!(
            parse_override("slots=fixed")
                .unwrap_err()
                .contains("missing id")
        );
        assert!(parse_override("id=m,slots=lots").is_err());
    }
}
