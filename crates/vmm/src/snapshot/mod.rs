//! Snapshot and restore of a whole VM, on top of the `snapshot` crate's file formats.
//!
//! - [`save`]: writes a paused VM to a directory: the machine component, each memory device's
//!   transport and device state, boot RAM and plugged device memory as sparse files.
//! - [`restore`]: reads and checks a snapshot before anything is created ([`RestorePlan`]),
//!   and restores memory devices from it (device memory mapped lazily, copy-on-write).
//! - [`machine_part`]: the machine's side ([`MachinePart`]): vCPUs, irqchip, clocks, legacy
//!   devices and boot RAM.
//! - [`vm_config`]: the recorded VM configuration and its versions.
//! - `order`: the `PUT /v1/vm/snapshot` order carried out on the VM thread.

pub mod machine_part;
pub mod restore;
pub mod save;
pub mod vm_config;

pub use machine_part::{MachinePart, RamRange};
pub use restore::RestorePlan;
pub use save::{SaveReport, save_vm};

/// Component name of the machine state.
pub const MACHINE_COMPONENT: &str = "machine";
/// Component name of a memory device's virtio-pci transport state.
pub const TRANSPORT_COMPONENT: &str = "virtio-pci";
/// Version of [`TRANSPORT_COMPONENT`]'s layout (`virtio::VirtioPciState`).
pub const TRANSPORT_VERSION: u32 = 1;
/// Component name of a memory device's virtio-mem state.
pub const MEM_DEVICE_COMPONENT: &str = "virtio-mem";
/// Version of [`MEM_DEVICE_COMPONENT`]'s layout (`virtio_mem::DeviceState`).
pub const MEM_DEVICE_VERSION: u32 = 1;

/// Region name of boot RAM range `index` in the memory manifest.
pub fn boot_ram_name(index: usize) -> String {
    format!("boot-ram-{index}")
}

/// File name of a region's memory file.
pub fn memory_file_name(region: &str) -> String {
    format!("memory-{region}")
}

/// The hotmem version written into state files.
pub const HOTMEM_VERSION: &str = env!("CARGO_PKG_VERSION");
