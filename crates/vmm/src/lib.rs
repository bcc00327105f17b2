//! hotmem's VMM: wires KVM, boot, the PCI/virtio transport and virtio-mem devices together.
//!
//! - [`config`]: the command line, validated.
//! - [`numa`]: `--numa` nodes, checked.
//! - [`memory_device`]: one virtio-mem device over KVM slots and host memory.
//! - [`devices`]: the PCI bus with the host bridge and the memory devices.
//! - [`shared_device`]: a device as the threads share it (published status, lock policy).
//! - [`pci_glue`]: conf1 ports, BAR windows and MSI-X delivery through irqfds.
//! - [`notify`]: queue ioeventfds and the thread serving them.
//! - [`api_handler`]: API commands against the running VM.
//! - [`operator`]: the operator interface the VM loop starts: [`monitor`] (device sampling,
//!   [`events`], subscribers, waiters), [`control`] (pause/resume), [`metrics`] and the API.
//! - `console`: stdin to the guest's serial port.
//! - [`snapshot`]: writing a paused VM to a snapshot directory and restoring from one.
//! - [`vm`]: building and running the VM, reboot included.

pub mod api_handler;
pub mod config;
mod console;
pub mod control;
pub mod devices;
mod error;
pub mod events;
pub mod memory_device;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod numa;
pub mod operator;
pub mod pci_glue;
pub mod shared_device;
pub mod shared_memory;
pub mod snapshot;
pub mod unplugged;
pub mod vhost_user;
pub mod vm;

pub use error::Error;
