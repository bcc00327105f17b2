//! MADT (signature `APIC`): one local APIC per vCPU, the IOAPIC, LINT1 as NMI.

use super::{finish_table, header};
use crate::layout::{IOAPIC_ADDR, LAPIC_ADDR};
use crate::mptable::ioapic_id;

const ENTRY_LOCAL_APIC: u8 = 0;
const ENTRY_IOAPIC: u8 = 1;
const ENTRY_LOCAL_APIC_NMI: u8 = 4;
const LOCAL_APIC_ENABLED: u32 = 1;

/// Build the MADT for `num_cpus` vCPUs (APIC ids 0..num_cpus).
pub(crate) fn build(num_cpus: u8) -> Vec<u8> {
    let mut t = header(b"APIC", 5);
    t.extend_from_slice(&(LAPIC_ADDR.0 as u32).to_le_bytes());
    // No PCAT_COMPAT: hardware-reduced ACPI has no legacy PIC.
    t.extend_from_slice(&0u32.to_le_bytes());
    for cpu in 0..num_cpus {
        t.extend_from_slice(&[ENTRY_LOCAL_APIC, 8, cpu, cpu]);
        t.extend_from_slice(&LOCAL_APIC_ENABLED.to_le_bytes());
    }
    t.extend_from_slice(&[ENTRY_IOAPIC, 12, ioapic_id(num_cpus), 0]);
    t.extend_from_slice(&(IOAPIC_ADDR.0 as u32).to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    // All processors (0xFF), flags conforming, LINT1.
    t.extend_from_slice(&[ENTRY_LOCAL_APIC_NMI, 6, 0xFF, 0, 0, 1]);
    finish_table(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn madt_has_one_local_apic_per_cpu() {
        let t = build(3);
        let mut off = 44;
        let mut apics = Vec::new();
        while off < t.len() {
            if t[off] == ENTRY_LOCAL_APIC {
                apics.push(t[off + 3]);
            }
            off += usize::from(t[off + 1]);
        }
        assert_eq!(off, t.len());
        assert_eq!(apics, vec![0, 1, 2]);
    }
}
