//! hotmem's VMM: wires KVM, boot, the PCI/virtio transport and virtio-mem devices together.

pub mod config;
mod error;

pub use error::Error;
