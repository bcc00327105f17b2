//! PCI bus emulation for hotmem, independent of KVM.
//!
//! What the VMM wires up:
//!
//! * Port I/O 0xCF8..=0xCFF → [`PciBus::pio_read`] / [`PciBus::pio_write`] (configuration
//!   mechanism #1; Linux finds bus 0 this way without ACPI).
//! * MMIO exits inside its PCI window → [`PciBus::mmio_read`] / [`PciBus::mmio_write`], routed
//!   to the BAR that currently owns the address (the guest may move BARs).
//! * The [`BusEvent`]s those writes return: [`BusEventKind::BarMoved`] (re-register ioeventfds
//!   inside the BAR) and [`DeviceEvent::MsixMessageChanged`] (update the GSI route of a vector).
//! * An [`MsiSink`] per device that turns MSI-X messages into KVM interrupts.
//!
//! Building blocks for device models: [`ConfigSpace`] (type-0 header, BAR sizing, capability
//! list, read-only enforcement), [`Msix`] (table, PBA, masking), [`MmioAllocator`] (initial BAR
//! placement, as firmware would do), [`HostBridge`] (00:00.0) and the [`PciDevice`] trait.
//!
//! Limits: 256-byte config space (no PCIe extended space), memory BARs only (no I/O BARs, no
//! expansion ROM), bus 0 only, no INTx delivery (devices are MSI-X only).

mod allocator;
mod bus;
mod config;
mod device;
mod error;
mod host_bridge;
mod msi;
mod msix;
mod types;

pub use allocator::MmioAllocator;
pub use bus::{
    BarMove, BusEvent, BusEventKind, CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT, CONFIG_PORT_COUNT,
    PciBus, SharedPciDevice,
};
pub use config::{
    BarKind, BarRegion, BarSpec, COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, COMMAND_MEMORY_SPACE,
    COMMAND_OFFSET, CONFIG_SPACE_SIZE_BYTES, ConfigSpace, ConfigSpaceState, ConfigWriteEffects,
    STATUS_CAPABILITY_LIST,
};
pub use device::{DeviceEvent, PciDevice};
pub use error::PciError;
pub use host_bridge::{HOST_BRIDGE_DEVICE_ID, HOST_BRIDGE_VENDOR_ID, HostBridge};
pub use msi::{MsiMessage, MsiSink, MsixVector};
pub use msix::{
    MSIX_CAPABILITY_ID, MSIX_CONTROL_ENABLE, MSIX_CONTROL_FUNCTION_MASK, MSIX_ENTRY_SIZE_BYTES,
    MSIX_MAX_VECTORS, Msix, MsixDelivery, MsixEntryState, MsixLayout, MsixState,
};
pub use types::{BAR_COUNT, BarIndex, InterruptPin, MmioAddress, PciBdf, PciClass, PciIds};
