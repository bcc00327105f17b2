//! A bump allocator for BAR addresses inside an MMIO window chosen by the VMM.

use crate::{MmioAddress, PciError};

/// A half-open window `[start, end)` handed out front to back.
///
/// The VMM picks the window: the 32-bit hole (e.g. 0xC000_0000..0xFEC0_0000) or a range above
/// 4 GiB and above the hotplug region. Freed space is not reused: devices are created once at
/// boot and the guest may move BARs anywhere afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmioAllocator {
    next: u64,
    end: u64,
}

impl MmioAllocator {
    /// A window from `start` (inclusive) to `end` (exclusive).
    pub fn new(start: MmioAddress, end: MmioAddress) -> Result<Self, PciError> {
        if start.raw() >= end.raw() {
            return Err(PciError::InvalidWindow("empty window"));
        }
        Ok(Self {
            next: start.raw(),
            end: end.raw(),
        })
    }

    /// Allocates `size_bytes` aligned to `align_bytes` (a power of two; BARs use their size).
    pub fn allocate(&mut self, size_bytes: u64, align_bytes: u64) -> Result<MmioAddress, PciError> {
        if size_bytes == 0 || !align_bytes.is_power_of_two() {
            return Err(PciError::InvalidWindow(
                "zero size or alignment not a power of two",
            ));
        }
        let exhausted = PciError::WindowExhausted { size_bytes };
        let start = self
            .next
            .checked_next_multiple_of(align_bytes)
            .ok_or(exhausted.clone())?;
        let end = start.checked_add(size_bytes).ok_or(exhausted.clone())?;
        if end > self.end {
            return Err(exhausted);
        }
        self.next = end;
        Ok(MmioAddress(start))
    }

    /// Allocates a naturally aligned BAR of `size_bytes`.
    pub fn allocate_bar(&mut self, size_bytes: u64) -> Result<MmioAddress, PciError> {
        self.allocate(size_bytes, size_bytes.max(16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_and_do_not_overlap() {
        let mut a = MmioAllocator::new(MmioAddress(0xc000_0100), MmioAddress(0xc010_0000)).unwrap();
        let first = a.allocate_bar(0x8000).unwrap();
        let second = a.allocate_bar(0x1000).unwrap();
        assert_eq!(first, MmioAddress(0xc000_8000));
        assert_eq!(second, MmioAddress(0xc001_0000));
    }

    #[test]
    fn exhausted_window_is_an_error() {
        let mut a = MmioAllocator::new(MmioAddress(0x1000), MmioAddress(0x3000)).unwrap();
        assert!(a.allocate_bar(0x1000).is_ok());
        assert!(a.allocate_bar(0x2000).is_err());
        assert!(a.allocate(0x1000, 3).is_err());
        assert!(MmioAllocator::new(MmioAddress(5), MmioAddress(5)).is_err());
    }

    #[test]
    fn overflowing_allocation_is_an_error() {
        let mut a =
            MmioAllocator::new(MmioAddress(u64::MAX - 0x10), MmioAddress(u64::MAX)).unwrap();
        assert!(a.allocate(0x1000, 0x1000).is_err());
    }
}
