//! The crate's single error type.

use thiserror::Error;

/// Errors returned while building PCI devices or the bus (never by guest accesses: guest
/// mistakes are ignored, as real hardware does).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PciError {
    /// A bus/device/function triple is out of range (device < 32, function < 8).
    #[error("invalid PCI address {bus:02x}:{device:02x}.{function}")]
    InvalidBdf {
        /// Bus number.
        bus: u8,
        /// Device number.
        device: u8,
        /// Function number.
        function: u8,
    },
    /// A BAR index is not in 0..6, or a 64-bit BAR starts at index 5.
    #[error("invalid BAR index {0}")]
    InvalidBarIndex(u8),
    /// The BAR slot (or the upper half of a 64-bit BAR) is already in use.
    #[error("BAR {0} is already defined")]
    BarInUse(u8),
    /// A BAR size must be a power of two, at least 16 bytes (32-bit BARs: at most 2 GiB).
    #[error("invalid BAR size {0:#x}")]
    InvalidBarSize(u64),
    /// A BAR address is not aligned to its size or does not fit the BAR type.
    #[error("BAR address {address:#x} does not fit a BAR of size {size_bytes:#x}")]
    InvalidBarAddress {
        /// Requested address.
        address: u64,
        /// BAR size.
        size_bytes: u64,
    },
    /// No room left in the 256-byte configuration space for a capability.
    #[error("no room for a {len_bytes}-byte capability in config space")]
    ConfigSpaceFull {
        /// Capability length, header included.
        len_bytes: usize,
    },
    /// An MSI-X table must have between 1 and 2048 vectors.
    #[error("invalid MSI-X vector count {0}")]
    InvalidMsixVectorCount(usize),
    /// The MMIO window cannot satisfy an allocation.
    #[error("MMIO window exhausted allocating {size_bytes:#x} bytes")]
    WindowExhausted {
        /// Requested size.
        size_bytes: u64,
    },
    /// An MMIO window or allocation is malformed (empty, overflowing, bad alignment).
    #[error("invalid MMIO window or allocation: {0}")]
    InvalidWindow(&'static str),
    /// A device is already present at this address.
    #[error("PCI address {0} is already occupied")]
    SlotOccupied(crate::PciBdf),
    /// Saved state does not fit this device (a snapshot from another device layout, or corrupted).
    #[error("saved PCI state does not fit this device: {0}")]
    State(String),
}
