//! The BIOS e820 memory map handed to Linux in the zero page.
//!
//! Only boot RAM is `Ram`; the low BIOS areas holding the MP and ACPI tables are `Reserved`.
//! Device regions (virtio-mem, BARs) and the 32-bit hole are absent on purpose: the guest
//! learns about them from the devices.

use crate::layout::{ACPI_TABLES_ADDR, BIOS_AREA_END, EBDA_START, GuestLayout};

/// e820 entry type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM (type 1).
    Ram,
    /// Reserved (type 2).
    Reserved,
}

impl E820Kind {
    /// The numeric type in the zero page.
    pub fn raw(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
        }
    }
}

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start (guest physical).
    pub addr: u64,
    /// Length.
    pub size_bytes: u64,
    /// Type.
    pub kind: E820Kind,
}

/// Build the e820 map for `layout`, sorted and non-overlapping.
pub fn build_e820(layout: &GuestLayout) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size_bytes: EBDA_START.0,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: EBDA_START.0,
            size_bytes: 0xA_0000 - EBDA_START.0,
            kind: E820Kind::Reserved,
        },
        E820Entry {
            addr: ACPI_TABLES_ADDR.0,
            size_bytes: BIOS_AREA_END.0 - ACPI_TABLES_ADDR.0,
            kind: E820Kind::Reserved,
        },
    ];
    for r in layout.ram_ranges() {
        let start = r.start.max(BIOS_AREA_END.0);
        if r.end > start {
            map.push(E820Entry {
                addr: start,
                size_bytes: r.end - start,
                kind: E820Kind::Ram,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{GIB, MIB, MMIO_HOLE_START};

    fn ram_bytes(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size_bytes)
            .sum()
    }

    #[test]
    fn entries_are_sorted_and_disjoint() {
        for size in [64 * MIB, 3 * GIB, 7 * GIB] {
            let map = build_e820(&GuestLayout::new(size).unwrap());
            for w in map.windows(2) {
                assert!(w[0].addr + w[0].size_bytes <= w[1].addr, "{w:?}");
            }
        }
    }

    #[test]
    fn ram_total_excludes_bios_area_only() {
        let map = build_e820(&GuestLayout::new(512 * MIB).unwrap());
        let bios_hole = BIOS_AREA_END.0 - EBDA_START.0;
        assert_eq!(ram_bytes(&map), 512 * MIB - bios_hole);
    }

    #[test]
    fn hole_and_device_area_are_not_ram() {
        let l = GuestLayout::new(5 * GIB).unwrap();
        let map = build_e820(&l);
        let top = map.last().unwrap();
        assert_eq!(top.addr + top.size_bytes, 6 * GIB);
        for e in &map {
            let end = e.addr + e.size_bytes;
            assert!(
                end <= MMIO_HOLE_START.0 || e.addr >= 4 * GIB,
                "{e:?} overlaps hole"
            );
            assert!(end <= l.device_area_start().0);
        }
    }
}
