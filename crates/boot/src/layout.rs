//! Guest physical address layout.
//!
//! ```text
//! 0x0000_0000  low RAM (real-mode area; GDT, page tables, zero page, cmdline live here)
//! 0x000E_0000  ACPI tables (RSDP is found here by the BIOS-area scan too)
//! 0x000F_0000  MP table (found by the BIOS-area scan)
//! 0x0010_0000  boot RAM: kernel, initramfs ...  up to `low_ram_end`
//! 0xC000_0000  32-bit PCI MMIO hole
//! 0xFEC0_0000  IOAPIC       0xFEE0_0000 LAPIC
//! 0x1_0000_0000  boot RAM above 4 GiB (if the boot RAM does not fit below the hole)
//! then         device regions (virtio-mem, 64-bit BARs), 1 GiB aligned
//! ```

use std::ops::Range;

use crate::Error;

/// A guest physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gpa(pub u64);

impl Gpa {
    /// The raw address.
    pub fn raw(self) -> u64 {
        self.0
    }
}

/// One GiB.
pub const GIB: u64 = 1 << 30;
/// One MiB.
pub const MIB: u64 = 1 << 20;

/// Start of the 32-bit PCI MMIO hole; boot RAM below 4 GiB ends here at the latest.
pub const MMIO_HOLE_START: Gpa = Gpa(0xC000_0000);
/// End (exclusive) of the part of the hole that PCI BARs may use.
pub const PCI_MMIO32_END: Gpa = Gpa(0xFEC0_0000);
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: Gpa = Gpa(0xFEC0_0000);
/// Local APIC MMIO base.
pub const LAPIC_ADDR: Gpa = Gpa(0xFEE0_0000);
/// First address above the 32-bit hole.
pub const HIGH_RAM_START: Gpa = Gpa(1 << 32);

/// GDT location.
pub const GDT_ADDR: Gpa = Gpa(0x500);
/// IDT location (an empty IDT: the kernel installs its own).
pub const IDT_ADDR: Gpa = Gpa(0x520);
/// Zero page (`boot_params`), passed to the kernel in RSI.
pub const ZERO_PAGE_ADDR: Gpa = Gpa(0x7000);
/// Initial stack pointer.
pub const BOOT_STACK_ADDR: Gpa = Gpa(0x8FF0);
/// PML4 of the identity map.
pub const PML4_ADDR: Gpa = Gpa(0x9000);
/// PDPT of the identity map.
pub const PDPT_ADDR: Gpa = Gpa(0xA000);
/// First of the page directories of the identity map (4 consecutive pages).
pub const PD_ADDR: Gpa = Gpa(0xB000);
/// Kernel command line.
pub const CMDLINE_ADDR: Gpa = Gpa(0x2_0000);
/// Largest command line we place (bytes, including the NUL).
pub const CMDLINE_MAX_BYTES: usize = 0x1_0000;
/// End of the usable base memory (640 KiB minus one KiB for the MP table).
pub const EBDA_START: Gpa = Gpa(0x9_FC00);
/// MP floating pointer + configuration table.
pub const MPTABLE_ADDR: Gpa = Gpa(0xF_0000);
/// Start of the BIOS area that holds the ACPI tables.
pub const ACPI_TABLES_ADDR: Gpa = Gpa(0xE_0000);
/// The x86 reset vector (F000:FFF0), where Linux's `machine_real_restart` jumps.
pub const RESET_VECTOR_ADDR: Gpa = Gpa(0xF_FFF0);
/// End of the BIOS area (first byte of extended memory).
pub const BIOS_AREA_END: Gpa = Gpa(0x10_0000);
/// Where the kernel is loaded (protected-mode code).
pub const KERNEL_LOAD_ADDR: Gpa = Gpa(0x100_0000);

/// Where boot RAM lives for a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLayout {
    /// Boot RAM ranges (guest physical, end exclusive), sorted. One or two entries.
    ram: Vec<Range<u64>>,
}

impl GuestLayout {
    /// Layout for `ram_size_bytes` of boot RAM: below the hole first, the rest from 4 GiB.
    pub fn new(ram_size_bytes: u64) -> Result<Self, Error> {
        let min = 64 * MIB;
        if ram_size_bytes < min || !ram_size_bytes.is_multiple_of(4096) {
            return Err(Error::BadRamSize { ram_size_bytes });
        }
        let low_end = ram_size_bytes.min(MMIO_HOLE_START.0);
        let mut ram = Vec::with_capacity(2);
        ram.push(0..low_end);
        let high_bytes = ram_size_bytes - low_end;
        if high_bytes > 0 {
            let high_end = HIGH_RAM_START
                .0
                .checked_add(high_bytes)
                .ok_or(Error::BadRamSize { ram_size_bytes })?;
            ram.push(HIGH_RAM_START.0..high_end);
        }
        Ok(Self { ram })
    }

    /// Boot RAM ranges (end exclusive).
    pub fn ram_ranges(&self) -> &[Range<u64>] {
        &self.ram
    }

    /// End of boot RAM below 4 GiB.
    pub fn low_ram_end(&self) -> Gpa {
        Gpa(self.ram[0].end)
    }

    /// First address above all boot RAM and the 32-bit hole, 1 GiB aligned:
    /// the start of the area for device regions.
    pub fn device_area_start(&self) -> Gpa {
        let top = self.ram.last().map_or(0, |r| r.end).max(HIGH_RAM_START.0);
        Gpa(top.next_multiple_of(GIB))
    }

    /// The 32-bit PCI MMIO window (for BARs below 4 GiB).
    pub fn pci_mmio32_window(&self) -> Range<u64> {
        MMIO_HOLE_START.0..PCI_MMIO32_END.0
    }
}

/// Hands out device regions above boot RAM and the hole, each 1 GiB aligned.
#[derive(Debug, Clone)]
pub struct DeviceAreaAllocator {
    next: u64,
}

/// Highest guest physical address we hand out (exclusive): 2^46, within any 48-bit CPU.
pub const DEVICE_AREA_LIMIT: Gpa = Gpa(1 << 46);

impl DeviceAreaAllocator {
    /// Allocator starting at `layout.device_area_start()`.
    pub fn new(layout: &GuestLayout) -> Self {
        Self {
            next: layout.device_area_start().0,
        }
    }

    /// Place a region of `size_bytes`; the start is 1 GiB aligned and the next region starts
    /// at the next GiB boundary after its end.
    pub fn allocate(&mut self, size_bytes: u64) -> Result<Range<u64>, Error> {
        let start = self.next;
        let end = start
            .checked_add(size_bytes)
            .filter(|end| *end <= DEVICE_AREA_LIMIT.0 && size_bytes > 0)
            .ok_or(Error::DeviceAreaExhausted { size_bytes })?;
        self.next = end.next_multiple_of(GIB);
        Ok(start..end)
    }

    /// Everything handed out so far, as one range from the device area start.
    pub fn next_free(&self) -> Gpa {
        Gpa(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_stays_below_hole() {
        let l = GuestLayout::new(512 * MIB).unwrap();
        assert_eq!(l.ram_ranges().len(), 1);
        assert_eq!(l.ram_ranges()[0], 0..512 * MIB);
        assert_eq!(l.device_area_start(), Gpa(4 * GIB));
    }

    #[test]
    fn large_ram_splits_around_hole() {
        let l = GuestLayout::new(5 * GIB).unwrap();
        assert_eq!(l.ram_ranges(), &[0..3 * GIB, 4 * GIB..6 * GIB]);
        assert_eq!(l.low_ram_end(), MMIO_HOLE_START);
        assert_eq!(l.device_area_start(), Gpa(6 * GIB));
    }

    #[test]
    fn device_area_rounds_up_to_gib() {
        let l = GuestLayout::new(3 * GIB + 4096).unwrap();
        assert_eq!(l.device_area_start(), Gpa(5 * GIB));
    }

    #[test]
    fn rejects_tiny_or_unaligned_ram() {
        assert!(GuestLayout::new(MIB).is_err());
        assert!(GuestLayout::new(128 * MIB + 1).is_err());
    }

    #[test]
    fn device_regions_are_gib_aligned_and_disjoint() {
        let l = GuestLayout::new(512 * MIB).unwrap();
        let mut a = DeviceAreaAllocator::new(&l);
        let r1 = a.allocate(64 * GIB).unwrap();
        let r2 = a.allocate(MIB).unwrap();
        let r3 = a.allocate(GIB).unwrap();
        assert_eq!(r1, 4 * GIB..68 * GIB);
        assert_eq!(r2, 68 * GIB..68 * GIB + MIB);
        assert_eq!(r3.start, 69 * GIB);
        assert!(a.allocate(1 << 46).is_err());
        assert!(a.allocate(0).is_err());
    }
}
