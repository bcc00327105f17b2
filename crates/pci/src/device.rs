//! The interface every device on the [`PciBus`](crate::PciBus) implements.

use crate::{BarIndex, BarRegion, MsiMessage, MsixVector};

/// Something a device access changed that the VMM must mirror in KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The guest reprogrammed the address or data of an MSI-X vector: update the KVM GSI
    /// route behind this vector's irqfd.
    MsixMessageChanged {
        /// The vector.
        vector: MsixVector,
        /// Its new message.
        message: MsiMessage,
    },
}

/// A PCI function.
///
/// Offsets are byte offsets; `data.len()` is the access width (1, 2, 4, sometimes 8 for BARs).
/// Implementations must tolerate any offset and width from the guest without panicking:
/// unknown reads return zeros (or all ones), unknown writes are dropped.
pub trait PciDevice: Send {
    /// Reads configuration space at `offset` (0..256).
    fn config_read(&self, offset: usize, data: &mut [u8]);

    /// Writes configuration space at `offset` (0..256).
    fn config_write(&mut self, offset: usize, data: &[u8]) -> Vec<DeviceEvent>;

    /// The memory BARs currently decoded (memory space enabled, address assigned). The bus
    /// re-reads this after every config write to follow BAR relocation.
    fn bar_regions(&self) -> Vec<BarRegion>;

    /// Reads `data.len()` bytes at `offset_bytes` inside BAR `bar`.
    fn bar_read(&mut self, bar: BarIndex, offset_bytes: u64, data: &mut [u8]);

    /// Writes `data` at `offset_bytes` inside BAR `bar`.
    fn bar_write(&mut self, bar: BarIndex, offset_bytes: u64, data: &[u8]) -> Vec<DeviceEvent>;
}
