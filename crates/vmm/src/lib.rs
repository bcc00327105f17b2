//! hotmem's VMM: wires KVM, boot, the PCI/virtio transport and virtio-mem devices together.
//!
//! - [`config`]: the command line, validated.
//! - [`memory_device`]: one virtio-mem device over KVM slots and host memory.
//! - [`devices`]: the PCI bus with the host bridge and the memory devices.
//! - [`pci_glue`]: conf1 ports, BAR windows and MSI delivery through KVM.
//! - [`api_handler`]: API commands against the running VM.
//! - `console`: stdin to the guest's serial port.
//! - [`vm`]: building and running the VM, reboot included.

pub mod api_handler;
pub mod config;
mod console;
pub mod devices;
mod error;
pub mod memory_device;
pub mod pci_glue;
pub mod vm;

pub use error::Error;
