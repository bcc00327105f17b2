//! Minimal hardware-reduced ACPI: RSDP, XSDT, FADT, MADT and a DSDT with `\_S5`, a PCI root
//! bridge (found through configuration mechanism 1) and COM1.
//!
//! Power management goes through three I/O ports the VMM emulates (see [`PowerPorts`]):
//! writing `SLP_EN | SLP_TYP=5` to the sleep control register powers off, writing
//! [`RESET_VALUE`] to the reset register reboots.

mod aml;
mod fadt;
mod madt;
#[cfg(test)]
mod numa_tests;
mod slit;
mod srat;

use std::ops::Range;

use crate::Error;
use crate::layout::{ACPI_TABLES_ADDR, Gpa, MPTABLE_ADDR};
use crate::numa::NumaTopology;

/// Sleep control register (FADT `SLEEP_CONTROL_REG`), one byte.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// Sleep status register (FADT `SLEEP_STATUS_REG`), one byte.
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// Reset register (FADT `RESET_REG`), one byte.
pub const RESET_PORT: u16 = 0x602;
/// Value the guest writes to [`RESET_PORT`] to reset.
pub const RESET_VALUE: u8 = 0x01;
/// The SLP_TYP value of `\_S5` (soft off).
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLP_EN bit in the sleep control register.
pub const SLEEP_ENABLE_BIT: u8 = 1 << 5;

/// Real-mode code for the reset vector: write [`RESET_VALUE`] to [`RESET_PORT`], then halt.
///
/// Linux on hardware-reduced ACPI without EFI picks `reboot=efi`, which falls back to the
/// BIOS path: it drops to real mode and jumps to F000:FFF0. With this stub there, that path
/// also ends in a reset request instead of executing zeroes.
pub fn reset_vector_stub() -> Vec<u8> {
    let [port_lo, port_hi] = RESET_PORT.to_le_bytes();
    vec![
        0xB0,
        RESET_VALUE, // mov al, RESET_VALUE
        0xBA,
        port_lo,
        port_hi, // mov dx, RESET_PORT
        0xEE,    // out dx, al
        0xFA,    // cli
        0xF4,    // hlt
        0xEB,
        0xFD, // jmp hlt
    ]
}

/// What a write to the sleep control register asks for.
pub fn decode_sleep_control(value: u8) -> Option<SleepRequest> {
    if value & SLEEP_ENABLE_BIT == 0 {
        return None;
    }
    match (value >> 2) & 0x7 {
        S5_SLEEP_TYPE => Some(SleepRequest::SoftOff),
        other => Some(SleepRequest::Unsupported { sleep_type: other }),
    }
}

/// A decoded sleep request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepRequest {
    /// S5: power off.
    SoftOff,
    /// A sleep state we do not implement.
    Unsupported {
        /// SLP_TYP written.
        sleep_type: u8,
    },
}

/// Inputs of the ACPI tables.
#[derive(Debug, Clone)]
pub struct AcpiConfig {
    /// Number of vCPUs (APIC ids 0..num_cpus).
    pub num_cpus: u8,
    /// 32-bit PCI MMIO window advertised in the root bridge `_CRS`.
    pub pci_mmio32: Range<u64>,
    /// 64-bit PCI MMIO window (empty range: none).
    pub pci_mmio64: Range<u64>,
    /// Boot RAM, in address order (the SRAT splits it among the nodes).
    pub ram_ranges: Vec<Range<u64>>,
    /// NUMA topology: with it, an SRAT (and with distances a SLIT) is added.
    pub numa: Option<NumaTopology>,
}

/// The tables, ready to be written at `base`.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// Where `bytes` go.
    pub base: Gpa,
    /// RSDP, XSDT, FADT, MADT, [SRAT, [SLIT,]] DSDT, each 16-byte aligned.
    pub bytes: Vec<u8>,
    /// Address of the RSDP (also `boot_params.acpi_rsdp_addr`).
    pub rsdp_addr: Gpa,
}

const HEADER_BYTES: usize = 36;
const RSDP_BYTES: usize = 36;

/// Standard 36-byte table header with a zero checksum; `finish_table` fixes length and checksum.
pub(crate) fn header(signature: &[u8; 4], revision: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_BYTES);
    h.extend_from_slice(signature);
    h.extend_from_slice(&0u32.to_le_bytes()); // length
    h.push(revision);
    h.push(0); // checksum
    h.extend_from_slice(b"HOTMEM");
    h.extend_from_slice(b"HOTMEMVM");
    h.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    h.extend_from_slice(b"HMVM");
    h.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    h
}

/// Set the length and checksum of a table that starts with [`header`].
pub(crate) fn finish_table(mut table: Vec<u8>) -> Vec<u8> {
    let len = table.len() as u32;
    table[4..8].copy_from_slice(&len.to_le_bytes());
    table[9] = 0;
    table[9] = crate::mptable::checksum_fix(&table);
    table
}

fn dsdt(config: &AcpiConfig) -> Vec<u8> {
    use aml::resource;
    let mut crs = vec![
        resource::word_bus(0, 0xFF),
        resource::io(0xCF8, 8),
        resource::word_io(0x0000, 0x0CF7),
        resource::word_io(0x0D00, 0xFFFF),
    ];
    let m32 = &config.pci_mmio32;
    if m32.end > m32.start {
        crs.push(resource::dword_memory(
            m32.start as u32,
            (m32.end - 1) as u32,
        ));
    }
    let m64 = &config.pci_mmio64;
    if m64.end > m64.start {
        crs.push(resource::qword_memory(m64.start, m64.end - 1));
    }
    let pci0 = aml::device(
        "PCI0",
        &[
            aml::name("_HID", &aml::eisa_id("PNP0A03")),
            aml::name("_UID", &aml::integer(0)),
            aml::name("_SEG", &aml::integer(0)),
            aml::name("_BBN", &aml::integer(0)),
            aml::name("_CRS", &aml::buffer(&resource::template(&crs))),
        ]
        .concat(),
    );
    let com1 = aml::device(
        "COM1",
        &[
            aml::name("_HID", &aml::eisa_id("PNP0501")),
            aml::name("_UID", &aml::integer(0)),
            aml::name(
                "_CRS",
                &aml::buffer(&resource::template(&[
                    resource::io(0x3F8, 8),
                    resource::irq(4),
                ])),
            ),
        ]
        .concat(),
    );
    let s5 = aml::name(
        "_S5_",
        &aml::package(&[
            aml::integer(u64::from(S5_SLEEP_TYPE)),
            aml::integer(0),
            aml::integer(0),
            aml::integer(0),
        ]),
    );
    let mut t = header(b"DSDT", 2);
    t.extend(s5);
    t.extend(aml::scope("\\_SB_", &[pci0, com1].concat()));
    finish_table(t)
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut t = header(b"XSDT", 1);
    for e in entries {
        t.extend_from_slice(&e.to_le_bytes());
    }
    finish_table(t)
}

fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RSDP_BYTES);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum over the first 20 bytes
    r.extend_from_slice(b"HOTMEM");
    r.push(2); // revision: ACPI 2.0+ (XSDT)
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&(RSDP_BYTES as u32).to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    r[8] = crate::mptable::checksum_fix(&r[..20]);
    r[32] = crate::mptable::checksum_fix(&r);
    r
}

/// Build all tables for placement at [`ACPI_TABLES_ADDR`].
pub fn build_acpi_tables(config: &AcpiConfig) -> Result<AcpiTables, Error> {
    if config.num_cpus == 0 || config.num_cpus > crate::mptable::MAX_CPUS {
        return Err(Error::BadCpuCount {
            num_cpus: config.num_cpus,
        });
    }
    if config.pci_mmio32.end > 1 << 32 {
        return Err(Error::TableAddress {
            addr: config.pci_mmio32.end,
        });
    }
    let ram_bytes: u64 = config.ram_ranges.iter().map(|r| r.end - r.start).sum();
    if let Some(numa) = &config.numa {
        numa.check(config.num_cpus, ram_bytes)
            .map_err(|reason| Error::BadNumaTopology { reason })?;
    }
    let base = ACPI_TABLES_ADDR.0;
    let align = |off: usize| off.next_multiple_of(16);
    let dsdt = dsdt(config);
    let mut extra = vec![madt::build(config.num_cpus)];
    if let Some(numa) = &config.numa {
        extra.push(srat::build(numa, &config.ram_ranges));
        if let Some(d) = &numa.distances {
            extra.push(slit::build(d));
        }
    }
    let xsdt_off = align(RSDP_BYTES);
    let xsdt_len = HEADER_BYTES + (1 + extra.len()) * 8;
    let fadt_off = align(xsdt_off + xsdt_len);
    let mut extra_offs = Vec::with_capacity(extra.len());
    let mut next = align(fadt_off + fadt::FADT_BYTES);
    for table in &extra {
        extra_offs.push(next);
        next = align(next + table.len());
    }
    let dsdt_off = next;
    let end = dsdt_off + dsdt.len();
    if base + end as u64 > MPTABLE_ADDR.0 {
        return Err(Error::TableAddress {
            addr: base + end as u64,
        });
    }
    let fadt = fadt::build(base + dsdt_off as u64);
    let mut pointers = vec![base + fadt_off as u64];
    pointers.extend(extra_offs.iter().map(|&off| base + off as u64));
    let xsdt = xsdt(&pointers);
    let mut bytes = vec![0u8; end];
    let placed = [
        (0, rsdp(base + xsdt_off as u64)),
        (xsdt_off, xsdt),
        (fadt_off, fadt),
        (dsdt_off, dsdt),
    ];
    for (off, table) in placed.into_iter().chain(extra_offs.into_iter().zip(extra)) {
        bytes[off..off + table.len()].copy_from_slice(&table);
    }
    Ok(AcpiTables {
        base: Gpa(base),
        bytes,
        rsdp_addr: Gpa(base),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::GuestLayout;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn config() -> AcpiConfig {
        AcpiConfig {
            num_cpus: 2,
            pci_mmio32: 0xC000_0000..0xFEC0_0000,
            pci_mmio64: (1 << 36)..(1 << 37),
            ram_ranges: GuestLayout::new(1 << 30).unwrap().ram_ranges().to_vec(),
            numa: None,
        }
    }

    fn table_at(t: &AcpiTables, addr: u64) -> &[u8] {
        let off = (addr - t.base.0) as usize;
        let len = u32::from_le_bytes(t.bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        &t.bytes[off..off + len]
    }

    #[test]
    fn rsdp_checksums_and_points_at_xsdt() {
        let t = build_acpi_tables(&config()).unwrap();
        let r = &t.bytes[..RSDP_BYTES];
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(r), 0);
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().unwrap());
        assert_eq!(&table_at(&t, xsdt_addr)[..4], b"XSDT");
    }

    #[test]
    fn every_table_checksums_to_zero() {
        let t = build_acpi_tables(&config()).unwrap();
        let xsdt_addr = u64::from_le_bytes(t.bytes[24..32].try_into().unwrap());
        let xsdt = table_at(&t, xsdt_addr);
        assert_eq!(sum(xsdt), 0);
        let mut sigs = Vec::new();
        for e in xsdt[HEADER_BYTES..].chunks(8) {
            let table = table_at(&t, u64::from_le_bytes(e.try_into().unwrap()));
            assert_eq!(sum(table), 0);
            sigs.push(table[..4].to_vec());
            if &table[..4] == b"FACP" {
                let dsdt_addr = u64::from_le_bytes(table[140..148].try_into().unwrap());
                let dsdt = table_at(&t, dsdt_addr);
                assert_eq!(&dsdt[..4], b"DSDT");
                assert_eq!(sum(dsdt), 0);
            }
        }
        assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
    }

    #[test]
    fn dsdt_names_s5_and_pci_root_bridge() {
        let d = dsdt(&config());
        let has = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"_S5_"));
        assert!(has(b"PCI0"));
        assert!(has(&[0x0C, 0x41, 0xD0, 0x0A, 0x03])); // PNP0A03
        assert!(has(&(1u64 << 36).to_le_bytes()));
    }

    #[test]
    fn sleep_control_decodes_s5_only_with_enable() {
        let s5 = (S5_SLEEP_TYPE << 2) | SLEEP_ENABLE_BIT;
        assert_eq!(decode_sleep_control(s5), Some(SleepRequest::SoftOff));
        assert_eq!(decode_sleep_control(S5_SLEEP_TYPE << 2), None);
        assert_eq!(
            decode_sleep_control((3 << 2) | SLEEP_ENABLE_BIT),
            Some(SleepRequest::Unsupported { sleep_type: 3 })
        );
    }

    #[test]
    fn reset_stub_fits_below_1mib_and_writes_reset_port() {
        let s = reset_vector_stub();
        assert!(
            crate::layout::RESET_VECTOR_ADDR.0 + s.len() as u64 <= crate::layout::BIOS_AREA_END.0
        );
        assert_eq!(&s[..5], &[0xB0, RESET_VALUE, 0xBA, 0x02, 0x06]);
    }

    #[test]
    fn tables_fit_below_mptable() {
        let mut c = config();
        c.num_cpus = crate::mptable::MAX_CPUS;
        let t = build_acpi_tables(&c).unwrap();
        assert!(t.base.0 + (t.bytes.len() as u64) <= MPTABLE_ADDR.0);
    }
}
