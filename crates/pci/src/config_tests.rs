use super::*;
use crate::PciClass;

fn ids() -> PciIds {
    PciIds {
        vendor_id: 0x1af4,
        device_id: 0x1058,
        revision_id: 1,
        class: PciClass {
            base: 0xff,
            sub: 0,
            prog_if: 0,
        },
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x40,
    }
}

fn read32(c: &ConfigSpace, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    c.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn read16(c: &ConfigSpace, offset: usize) -> u16 {
    let mut b = [0u8; 2];
    c.read(offset, &mut b);
    u16::from_le_bytes(b)
}

fn bar(i: u8) -> BarIndex {
    BarIndex::new(i).unwrap()
}

fn space_with_bar64(size: u64, address: u64) -> ConfigSpace {
    let mut c = ConfigSpace::new(ids(), InterruptPin::None);
    c.add_bar(
        bar(0),
        BarSpec {
            kind: BarKind::Memory64 {
                prefetchable: false,
            },
            size_bytes: size,
            address: Some(MmioAddress(address)),
        },
    )
    .unwrap();
    c
}

#[test]
fn identification_registers_read_back_and_are_read_only() {
    let mut c = ConfigSpace::new(ids(), InterruptPin::IntA);
    assert_eq!(read32(&c, 0), 0x1058_1af4);
    assert_eq!(read32(&c, 0x08), 0xff00_0001);
    assert_eq!(read32(&c, 0x2c), 0x0040_1af4);
    c.write(0, &0xdead_beefu32.to_le_bytes());
    c.write(0x08, &[0xff; 4]);
    assert_eq!(read32(&c, 0), 0x1058_1af4);
    assert_eq!(read32(&c, 0x08), 0xff00_0001);
    assert_eq!(c.regs[0x3d], 1);
}

#[test]
fn command_register_keeps_only_writable_bits() {
    let mut c = ConfigSpace::new(ids(), InterruptPin::None);
    c.write(COMMAND_OFFSET, &0xffffu16.to_le_bytes());
    assert_eq!(c.command(), 0x0547);
    c.write(COMMAND_OFFSET, &[0x06]);
    assert_eq!(c.command(), 0x0506);
}

#[test]
fn status_error_bits_are_write_one_to_clear_and_cap_bit_read_only() {
    let mut c = ConfigSpace::new(ids(), InterruptPin::None);
    c.add_capability(0x09, &[0; 2]).unwrap();
    c.set_status_bits(0x2000);
    c.write(STATUS, &0xffffu16.to_le_bytes());
    assert_eq!(read16(&c, STATUS), STATUS_CAPABILITY_LIST);
}

#[test]
fn interrupt_line_is_writable_pin_is_not() {
    let mut c = ConfigSpace::new(ids(), InterruptPin::IntA);
    c.write(0x3c, &[0x0b, 0x04]);
    assert_eq!(read16(&c, 0x3c), 0x010b);
}

#[test]
fn bar64_reports_type_bits_and_initial_address() {
    let c = space_with_bar64(0x8000, 0x1_0000_8000);
    assert_eq!(read32(&c, 0x10), 0x0000_8004);
    assert_eq!(read32(&c, 0x14), 0x1);
}

#[test]
fn bar64_size_probe_returns_size_mask() {
    let mut c = space_with_bar64(0x8000, 0xc000_0000);
    c.write(0x10, &[0xff; 4]);
    c.write(0x14, &[0xff; 4]);
    assert_eq!(read32(&c, 0x10), 0xffff_8004);
    assert_eq!(read32(&c, 0x14), 0xffff_ffff);
    c.write(0x10, &0xd000_0000u32.to_le_bytes());
    c.write(0x14, &0u32.to_le_bytes());
    assert_eq!(c.bar_address(bar(0)), Some(MmioAddress(0xd000_0000)));
}

#[test]
fn bar_larger_than_4gib_has_read_only_low_upper_bits() {
    let mut c = space_with_bar64(1 << 33, 1 << 34);
    c.write(0x10, &[0xff; 4]);
    c.write(0x14, &[0xff; 4]);
    assert_eq!(read32(&c, 0x10), 0x4);
    assert_eq!(read32(&c, 0x14), 0xffff_fffe);
}

#[test]
fn bar32_size_probe_and_byte_writes_merge() {
    let mut c = ConfigSpace::new(ids(), InterruptPin::None);
    c.add_bar(
        bar(2),
        BarSpec {
            kind: BarKind::Memory32 { prefetchable: true },
            size_bytes: 0x1000,
            address: None,
        },
    )
    .unwrap();
    c.write(0x18, &[0xff; 4]);
    assert_eq!(read32(&c, 0x18), 0xffff_f008);
    c.write(0x18, &0u32.to_le_bytes());
    c.write(0x1b, &[0xfe]);
    assert_eq!(read32(&c, 0x18), 0xfe00_0008);
}

#[test]
fn absent_bars_and_expansion_rom_read_zero_after_probe() {
    let mut c = space_with_bar64(0x1000, 0);
    for off in [0x18, 0x1c, 0x20, 0x24, 0x30] {
        c.write(off, &[0xff; 4]);
        assert_eq!(read32(&c, off), 0, "offset {off:#x}");
    }
}

#[test]
fn add_bar_rejects_bad_sizes_indices_overlap_and_misaligned_address() {
    let mut c = ConfigSpace::new(ids(), InterruptPin::None);
    let spec = |size, address| BarSpec {
        kind: BarKind::Memory64 {
            prefetchable: false,
        },
        size_bytes: size,
        address,
    };
    assert!(c.add_bar(bar(0), spec(0x1800, None)).is_err());
    assert!(c.add_bar(bar(0), spec(8, None)).is_err());
    assert!(c.add_bar(bar(5), spec(0x1000, None)).is_err());
    assert!(
        c.add_bar(bar(0), spec(0x1000, Some(MmioAddress(0x800))))
            .is_err()
    );
    c.add_bar(bar(0), spec(0x1000, None)).unwrap();
    assert_eq!(
        c.add_bar(bar(1), spec(0x1000, None)),
        Err(PciError::BarInUse(1))
    );
}

#[test]
fn decoded_bars_require_memory_enable_and_address() {
    let mut c = space_with_bar64(0x1000, 0xc000_0000);
    assert!(c.decoded_bars().is_empty());
    c.write(COMMAND_OFFSET, &COMMAND_MEMORY_SPACE.to_le_bytes());
    assert_eq!(
        c.decoded_bars(),
        vec![BarRegion {
            index: bar(0),
            address: MmioAddress(0xc000_0000),
            size_bytes: 0x1000
        }]
    );
    c.write(0x10, &0u32.to_le_bytes());
    assert!(c.decoded_bars().is_empty());
}

#[test]
fn capabilities_form_a_linked_list() {
    let mut c = ConfigSpace::new(ids(), InterruptPin::None);
    let first = c.add_capability(0x09, &[1, 2, 3]).unwrap();
    let second = c.add_capability(0x11, &[0; 10]).unwrap();
    assert_eq!(first, 0x40);
    assert_eq!(second, 0x48);
    assert_eq!(c.regs[0x34], 0x40);
    assert_eq!(c.regs[0x41], 0x48);
    assert_eq!(c.regs[0x49], 0);
    assert_eq!(c.regs[0x42..0x45], [1, 2, 3]);
    c.write(0x42, &[9, 9, 9]);
    assert_eq!(c.regs[0x42..0x45], [1, 2, 3]);
}

#[test]
fn capability_list_overflow_is_an_error() {
    let mut c = ConfigSpace::new(ids(), InterruptPin::None);
    assert!(c.add_capability(0x09, &[0; 190]).is_ok());
    assert!(matches!(
        c.add_capability(0x09, &[0; 30]),
        Err(PciError::ConfigSpaceFull { .. })
    ));
}

#[test]
fn msix_control_write_is_reported_with_only_enable_and_mask_writable() {
    let mut c = ConfigSpace::new(ids(), InterruptPin::None);
    let layout = MsixLayout {
        vector_count: 4,
        bar: bar(0),
        table_offset_bytes: 0x4000,
        pba_offset_bytes: 0x5000,
    };
    let cap = c.add_msix_capability(&layout).unwrap();
    let effects = c.write(cap + 2, &0xffffu16.to_le_bytes());
    assert_eq!(effects.msix_control, Some(0xc003));
    assert_eq!(c.write(cap + 4, &[0; 4]).msix_control, None);
    assert_eq!(c.write(cap, &[0xff; 4]).msix_control, Some(0xc003));
}

#[test]
fn out_of_range_access_reads_ones_and_drops_writes() {
    let mut c = ConfigSpace::new(ids(), InterruptPin::None);
    let mut b = [0u8; 4];
    c.read(254, &mut b);
    assert_eq!(b, [0, 0, 0xff, 0xff]);
    c.write(0x3c, &[]);
    c.write(254, &[1, 2, 3, 4]);
    c.write(usize::MAX, &[1]);
    assert_eq!(c.regs[254..], [0, 0]);
}
