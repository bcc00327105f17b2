//! The VM configuration a snapshot or a migration records (what a restore, a destination and
//! a reboot after either need), and its versions: version 1 had no vhost-user devices.

use std::path::PathBuf;

use hostmem::BackingKind;
use memslots::SlotPolicy;
use serde::{Deserialize, Serialize};
use snapshot::Component;
use vhost_frontend::VhostUserKind;

use crate::config::{MemDeviceConfig, VmConfig};
use crate::vhost_user::VhostUserSpec;

/// Component name of the recorded VM configuration.
pub const VM_CONFIG_COMPONENT: &str = "vm-config";
/// Version of [`SavedVmConfig`]'s layout (2: with vhost-user devices).
pub const VM_CONFIG_VERSION: u32 = 2;

/// A memory device's configuration as a snapshot records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMemDevice {
    /// Device id.
    pub id: String,
    /// Region size.
    pub size_bytes: u64,
    /// Requested size at the original start (the current one is in the device state).
    pub requested_bytes: u64,
    /// Block size as configured (`None`: the default).
    pub block_size_bytes: Option<u64>,
    /// Slot policy of the saved VM (a restore may choose another).
    pub slots: SlotPolicy,
    /// Preallocation on plug.
    pub prealloc: bool,
    /// Host memory kind.
    pub backing: BackingKind,
    /// hugetlbfs mount.
    pub hugetlbfs_dir: Option<PathBuf>,
}

/// What a vhost-user device is to the guest (its backend socket is the destination's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SavedVhostKind {
    /// vhost-user-blk.
    Block {
        /// Offered read-only.
        read_only: bool,
    },
    /// virtio-fs.
    Fs {
        /// Mount tag.
        tag: String,
        /// Request queues.
        request_queues: u16,
    },
}

/// A vhost-user device as a migration records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedVhostDevice {
    /// Device id.
    pub id: String,
    /// Kind, as the guest sees it.
    pub kind: SavedVhostKind,
    /// Maximum queue size.
    pub queue_size: u16,
}

impl From<&VhostUserSpec> for SavedVhostDevice {
    fn from(spec: &VhostUserSpec) -> Self {
        SavedVhostDevice {
            id: spec.id.clone(),
            kind: match &spec.kind {
                VhostUserKind::Block { read_only } => SavedVhostKind::Block {
                    read_only: *read_only,
                },
                VhostUserKind::Fs {
                    tag,
                    request_queues,
                } => SavedVhostKind::Fs {
                    tag: tag.clone(),
                    request_queues: *request_queues,
                },
            },
            queue_size: spec.queue_size,
        }
    }
}

/// The VM's configuration as a snapshot records it (what a reboot after restore needs too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedVmConfig {
    /// Kernel image (for reboots after the restore).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Boot memory.
    pub boot_memory_bytes: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory devices, in command-line order.
    pub mem_devices: Vec<SavedMemDevice>,
    /// vhost-user devices, in command-line order (version 2).
    pub vhost_user: Vec<SavedVhostDevice>,
}

/// Version 1 of [`SavedVmConfig`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedVmConfigV1 {
    kernel: PathBuf,
    initramfs: Option<PathBuf>,
    cmdline: String,
    boot_memory_bytes: u64,
    vcpus: u32,
    mem_devices: Vec<SavedMemDevice>,
}

/// Decodes a recorded configuration of any known version.
pub fn decode_vm_config(component: &Component) -> Result<SavedVmConfig, snapshot::Error> {
    if let Ok((_, v1)) = component.decode::<SavedVmConfigV1>(VM_CONFIG_COMPONENT, 1..=1) {
        return Ok(SavedVmConfig {
            kernel: v1.kernel,
            initramfs: v1.initramfs,
            cmdline: v1.cmdline,
            boot_memory_bytes: v1.boot_memory_bytes,
            vcpus: v1.vcpus,
            mem_devices: v1.mem_devices,
            vhost_user: Vec::new(),
        });
    }
    let (_, config) = component.decode(VM_CONFIG_COMPONENT, 2..=VM_CONFIG_VERSION)?;
    Ok(config)
}

impl From<&VmConfig> for SavedVmConfig {
    fn from(c: &VmConfig) -> Self {
        SavedVmConfig {
            kernel: c.kernel.clone(),
            initramfs: c.initramfs.clone(),
            cmdline: c.cmdline.clone(),
            boot_memory_bytes: c.boot_memory_bytes,
            vcpus: c.vcpus,
            mem_devices: c
                .mem_devices
                .iter()
                .map(|d| SavedMemDevice {
                    id: d.id.clone(),
                    size_bytes: d.size_bytes,
                    requested_bytes: d.requested_bytes,
                    block_size_bytes: d.block_size_bytes,
                    slots: d.slots,
                    prealloc: d.prealloc,
                    backing: d.backing,
                    hugetlbfs_dir: d.hugetlbfs_dir.clone(),
                })
                .collect(),
            vhost_user: c.vhost_user.iter().map(SavedVhostDevice::from).collect(),
        }
    }
}

impl SavedMemDevice {
    /// The device configuration, with `slots` chosen for this run.
    pub fn to_config(&self, slots: SlotPolicy) -> MemDeviceConfig {
        MemDeviceConfig {
            id: self.id.clone(),
            size_bytes: self.size_bytes,
            requested_bytes: self.requested_bytes,
            block_size_bytes: self.block_size_bytes,
            slots,
            prealloc: self.prealloc,
            backing: self.backing,
            hugetlbfs_dir: self.hugetlbfs_dir.clone(),
            node: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem_device() -> SavedMemDevice {
        SavedMemDevice {
            id: "mem0".into(),
            size_bytes: 1 << 30,
            requested_bytes: 0,
            block_size_bytes: None,
            slots: SlotPolicy::Adaptive,
            prealloc: false,
            backing: BackingKind::Memfd,
            hugetlbfs_dir: None,
        }
    }

    #[test]
    fn a_version_1_configuration_decodes_without_vhost_user_devices() {
        let v1 = SavedVmConfigV1 {
            kernel: "/k".into(),
            initramfs: None,
            cmdline: "console=ttyS0".into(),
            boot_memory_bytes: 512 << 20,
            vcpus: 2,
            mem_devices: vec![mem_device()],
        };
        let component = Component::encode(VM_CONFIG_COMPONENT, 1, &v1).unwrap();
        let config = decode_vm_config(&component).unwrap();
        assert_eq!(config.vcpus, 2);
        assert_eq!(config.mem_devices, vec![mem_device()]);
        assert!(config.vhost_user.is_empty());
    }

    #[test]
    fn a_version_2_configuration_round_trips_its_vhost_user_devices() {
        let config = SavedVmConfig {
            kernel: "/k".into(),
            initramfs: Some("/i".into()),
            cmdline: String::new(),
            boot_memory_bytes: 512 << 20,
            vcpus: 1,
            mem_devices: vec![mem_device()],
            vhost_user: vec![SavedVhostDevice {
                id: "disk0".into(),
                kind: SavedVhostKind::Block { read_only: false },
                queue_size: 128,
            }],
        };
        let component = Component::encode(VM_CONFIG_COMPONENT, VM_CONFIG_VERSION, &config).unwrap();
        assert_eq!(decode_vm_config(&component).unwrap(), config);
        let future =
            Component::encode(VM_CONFIG_COMPONENT, VM_CONFIG_VERSION + 1, &config).unwrap();
        assert!(decode_vm_config(&future).is_err());
    }
}
