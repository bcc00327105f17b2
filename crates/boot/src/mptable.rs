//! Intel MultiProcessor Specification 1.4 table: the fallback CPU/IOAPIC description used when
//! the guest runs without ACPI (`acpi=off`).
//!
//! ISA IRQs 0..16 (except the cascade, 2) are identity-mapped to IOAPIC pins, matching KVM's
//! default GSI routing. PCI devices use MSI-X, so no PCI INTx entries are emitted.

use crate::Error;
use crate::layout::{Gpa, IOAPIC_ADDR, LAPIC_ADDR};

const FLOATING_POINTER_BYTES: usize = 16;
const HEADER_BYTES: usize = 44;
const PROCESSOR_ENTRY_BYTES: usize = 20;
const SMALL_ENTRY_BYTES: usize = 8;
/// Highest vCPU count: APIC ids 0..n-1 for CPUs, n for the IOAPIC, all below the 0xFF broadcast id.
pub const MAX_CPUS: u8 = 254;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ISA_BUS_ID: u8 = 0;
const ISA_IRQS: u8 = 16;

/// The APIC id given to the IOAPIC for `num_cpus` vCPUs.
pub fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus
}

/// Build the MP floating pointer followed by the configuration table, to be written at `base`.
pub fn build_mptable(base: Gpa, num_cpus: u8) -> Result<Vec<u8>, Error> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(Error::BadCpuCount { num_cpus });
    }
    let table_addr = u32::try_from(base.0 + FLOATING_POINTER_BYTES as u64)
        .map_err(|_| Error::TableAddress { addr: base.0 })?;

    let mut entries = Vec::with_capacity(
        PROCESSOR_ENTRY_BYTES * usize::from(num_cpus)
            + SMALL_ENTRY_BYTES * (4 + usize::from(ISA_IRQS)),
    );
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = if cpu == 0 { 0b11 } else { 0b01 }; // enabled (+ bootstrap processor)
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x0000_0600u32.to_le_bytes()); // family 6 signature
        entries.extend_from_slice(&0x0000_0201u32.to_le_bytes()); // FPU + APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    let ioapic = ioapic_id(num_cpus);
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR.0 as u32).to_le_bytes());
    count += 1;
    for irq in (0..ISA_IRQS).filter(|irq| *irq != 2) {
        // type, interrupt type, flags (conforming to bus), source bus, source irq, dest, pin
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS_ID,
            irq,
            ioapic,
            irq,
        ]);
        count += 1;
    }
    // LINT0 of every local APIC is ExtINT (the PIC), LINT1 is NMI.
    for (int_type, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        entries.extend_from_slice(&[
            ENTRY_LOCAL_INTERRUPT,
            int_type,
            0,
            0,
            ISA_BUS_ID,
            0,
            0xFF,
            lint,
        ]);
        count += 1;
    }

    let table_len =
        u16::try_from(HEADER_BYTES + entries.len()).map_err(|_| Error::BadCpuCount { num_cpus })?;
    let mut table = Vec::with_capacity(usize::from(table_len));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_len.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"HOTMEM  ");
    table.extend_from_slice(b"HOTMEM VMM  ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_ADDR.0 as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.extend_from_slice(&[0, 0]); // extended checksum, reserved
    debug_assert_eq!(table.len(), HEADER_BYTES);
    table.extend_from_slice(&entries);
    table[7] = checksum_fix(&table);

    let mut fp = Vec::with_capacity(FLOATING_POINTER_BYTES + table.len());
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec revision
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0; 5]); // features: no default configuration, no IMCR
    fp[10] = checksum_fix(&fp);
    fp.extend_from_slice(&table);
    Ok(fp)
}

/// The byte that makes `bytes` sum to zero (mod 256), given the checksum byte is currently 0.
pub(crate) fn checksum_fix(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MPTABLE_ADDR;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_and_table_checksums_are_zero() {
        for cpus in [1, 2, 8, MAX_CPUS] {
            let t = build_mptable(MPTABLE_ADDR, cpus).unwrap();
            assert_eq!(sum(&t[..16]), 0);
            assert_eq!(sum(&t[16..]), 0);
        }
    }

    #[test]
    fn floating_pointer_points_at_table() {
        let t = build_mptable(MPTABLE_ADDR, 2).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
        assert_eq!(u64::from(ptr), MPTABLE_ADDR.0 + 16);
        assert_eq!(&t[16..20], b"PCMP");
        let len = u16::from_le_bytes(t[20..22].try_into().unwrap());
        assert_eq!(usize::from(len), t.len() - 16);
    }

    #[test]
    fn entry_count_matches_cpus_and_irqs() {
        let t = build_mptable(MPTABLE_ADDR, 3).unwrap();
        let count = u16::from_le_bytes(t[16 + 34..16 + 36].try_into().unwrap());
        // 3 CPUs + bus + IOAPIC + 15 ISA IRQs + 2 local interrupts
        assert_eq!(count, 3 + 1 + 1 + 15 + 2);
        // second processor entry: APIC id 1, enabled, not BSP
        let p1 = 16 + HEADER_BYTES + PROCESSOR_ENTRY_BYTES;
        assert_eq!(&t[p1..p1 + 4], &[ENTRY_PROCESSOR, 1, APIC_VERSION, 1]);
        assert_eq!(
            SMALL_ENTRY_BYTES * 19 + PROCESSOR_ENTRY_BYTES * 3 + HEADER_BYTES + 16,
            t.len()
        );
    }

    #[test]
    fn rejects_zero_and_too_many_cpus() {
        assert!(build_mptable(MPTABLE_ADDR, 0).is_err());
        assert!(build_mptable(MPTABLE_ADDR, 255).is_err());
    }
}
