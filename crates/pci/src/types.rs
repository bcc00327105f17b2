//! Small value types: PCI addresses, BAR indices, guest MMIO addresses and device ids.

use std::fmt;

use crate::PciError;

/// Number of base address registers in a type-0 header.
pub const BAR_COUNT: usize = 6;

/// A PCI function address: bus, device (0..32) and function (0..8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciBdf {
    bus: u8,
    device: u8,
    function: u8,
}

impl PciBdf {
    /// Builds an address, checking `device < 32` and `function < 8`.
    pub fn new(bus: u8, device: u8, function: u8) -> Result<Self, PciError> {
        if device >= 32 || function >= 8 {
            return Err(PciError::InvalidBdf {
                bus,
                device,
                function,
            });
        }
        Ok(Self {
            bus,
            device,
            function,
        })
    }

    /// Bus number.
    pub fn bus(self) -> u8 {
        self.bus
    }

    /// Device (slot) number.
    pub fn device(self) -> u8 {
        self.device
    }

    /// Function number.
    pub fn function(self) -> u8 {
        self.function
    }
}

impl fmt::Display for PciBdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// Index of a base address register (0..6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BarIndex(u8);

impl BarIndex {
    /// BAR 0.
    pub const ZERO: Self = Self(0);

    /// Builds an index, checking it is below 6.
    pub fn new(index: u8) -> Result<Self, PciError> {
        if usize::from(index) >= BAR_COUNT {
            return Err(PciError::InvalidBarIndex(index));
        }
        Ok(Self(index))
    }

    /// The index as a number in 0..6.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The index as an array index.
    pub fn as_usize(self) -> usize {
        usize::from(self.0)
    }

    /// Config-space offset of this BAR register.
    pub fn config_offset(self) -> usize {
        0x10 + 4 * self.as_usize()
    }
}

/// A guest-physical MMIO address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MmioAddress(pub u64);

impl MmioAddress {
    /// The raw address.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// `self + offset_bytes`, or `None` on overflow.
    pub fn checked_add(self, offset_bytes: u64) -> Option<Self> {
        self.0.checked_add(offset_bytes).map(Self)
    }
}

impl fmt::Display for MmioAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Class code triple (base class, subclass, programming interface).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciClass {
    /// Base class (0x06 = bridge, 0xff = unassigned...).
    pub base: u8,
    /// Subclass.
    pub sub: u8,
    /// Programming interface.
    pub prog_if: u8,
}

impl PciClass {
    /// Host bridge (06/00/00).
    pub const HOST_BRIDGE: Self = Self {
        base: 0x06,
        sub: 0x00,
        prog_if: 0x00,
    };
}

/// Identification registers of a type-0 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciIds {
    /// Vendor id (offset 0x00).
    pub vendor_id: u16,
    /// Device id (offset 0x02).
    pub device_id: u16,
    /// Revision id (offset 0x08).
    pub revision_id: u8,
    /// Class code (offsets 0x09..0x0c).
    pub class: PciClass,
    /// Subsystem vendor id (offset 0x2c).
    pub subsystem_vendor_id: u16,
    /// Subsystem id (offset 0x2e).
    pub subsystem_id: u16,
}

/// Legacy interrupt pin reported at offset 0x3d.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InterruptPin {
    /// No INTx pin (MSI/MSI-X only).
    #[default]
    None,
    /// INTA#.
    IntA,
    /// INTB#.
    IntB,
    /// INTC#.
    IntC,
    /// INTD#.
    IntD,
}

impl InterruptPin {
    /// Register encoding (0 = none, 1 = INTA# ...).
    pub fn register_value(self) -> u8 {
        match self {
            Self::None => 0,
            Self::IntA => 1,
            Self::IntB => 2,
            Self::IntC => 3,
            Self::IntD => 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_rejects_device_32_and_function_8() {
        assert!(PciBdf::new(0, 31, 7).is_ok());
        assert!(PciBdf::new(0, 32, 0).is_err());
        assert!(PciBdf::new(0, 0, 8).is_err());
    }

    #[test]
    fn bar_index_maps_to_config_offset() {
        assert_eq!(BarIndex::new(0).unwrap().config_offset(), 0x10);
        assert_eq!(BarIndex::new(5).unwrap().config_offset(), 0x24);
        assert!(BarIndex::new(6).is_err());
    }

    #[test]
    fn bdf_displays_like_lspci() {
        assert_eq!(PciBdf::new(0, 3, 1).unwrap().to_string(), "00:03.1");
    }
}
