//! The host bridge at 00:00.0.
//!
//! Linux's conf1 probe without ACPI (`pci_sanity_check`) looks for a host-bridge class or an
//! Intel/Compaq vendor id on bus 0; this device provides both.

use crate::{
    BarIndex, BarRegion, ConfigSpace, DeviceEvent, InterruptPin, PciClass, PciDevice, PciIds,
};

/// Intel's vendor id.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Device id of the virtual host bridge (same as Cloud Hypervisor and Firecracker use).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;

/// A host bridge: identification registers only, no BARs, no capabilities.
#[derive(Debug, Clone)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    /// Creates the bridge.
    pub fn new() -> Self {
        let ids = PciIds {
            vendor_id: HOST_BRIDGE_VENDOR_ID,
            device_id: HOST_BRIDGE_DEVICE_ID,
            class: PciClass::HOST_BRIDGE,
            ..PciIds::default()
        };
        Self {
            config: ConfigSpace::new(ids, InterruptPin::None),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) -> Vec<DeviceEvent> {
        self.config.write(offset, data);
        Vec::new()
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        Vec::new()
    }

    fn bar_read(&mut self, _bar: BarIndex, _offset_bytes: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _bar: BarIndex, _offset_bytes: u64, _data: &[u8]) -> Vec<DeviceEvent> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bridge_reports_intel_vendor_and_host_bridge_class() {
        let bridge = HostBridge::new();
        let mut word = [0u8; 4];
        bridge.config_read(0, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0x0d57_8086);
        let mut class = [0u8; 2];
        bridge.config_read(0x0a, &mut class);
        assert_eq!(u16::from_le_bytes(class), 0x0600);
    }
}
