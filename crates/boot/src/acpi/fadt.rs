//! FADT (signature `FACP`), revision 6, hardware-reduced.

use super::{RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, finish_table, header};

/// Size of a revision 6 FADT.
pub(crate) const FADT_BYTES: usize = 276;

const FLAG_RESET_REG_SUP: u32 = 1 << 10;
const FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
/// IA-PC boot architecture: VGA not present, CMOS RTC not present. MSI stays allowed.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);
const GAS_SYSTEM_IO: u8 = 1;
const GAS_ACCESS_BYTE: u8 = 1;

const OFF_DSDT: usize = 40;
const OFF_IAPC_BOOT_ARCH: usize = 109;
const OFF_FLAGS: usize = 112;
const OFF_RESET_REG: usize = 116;
const OFF_RESET_VALUE: usize = 128;
const OFF_X_DSDT: usize = 140;
const OFF_SLEEP_CONTROL: usize = 244;
const OFF_SLEEP_STATUS: usize = 256;
const OFF_HYPERVISOR_ID: usize = 268;

/// Generic Address Structure for a one-byte I/O port.
fn gas_io_byte(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = GAS_SYSTEM_IO;
    g[1] = 8; // bit width
    g[3] = GAS_ACCESS_BYTE;
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// Build the FADT pointing at the DSDT at `dsdt_addr`.
pub(crate) fn build(dsdt_addr: u64) -> Vec<u8> {
    let mut t = header(b"FACP", 6);
    t.resize(FADT_BYTES, 0);
    // The 32-bit DSDT field is only valid below 4 GiB; X_DSDT is authoritative.
    if let Ok(a) = u32::try_from(dsdt_addr) {
        t[OFF_DSDT..OFF_DSDT + 4].copy_from_slice(&a.to_le_bytes());
    }
    t[OFF_IAPC_BOOT_ARCH..OFF_IAPC_BOOT_ARCH + 2].copy_from_slice(&IAPC_BOOT_ARCH.to_le_bytes());
    t[OFF_FLAGS..OFF_FLAGS + 4]
        .copy_from_slice(&(FLAG_RESET_REG_SUP | FLAG_HW_REDUCED_ACPI).to_le_bytes());
    t[OFF_RESET_REG..OFF_RESET_REG + 12].copy_from_slice(&gas_io_byte(RESET_PORT));
    t[OFF_RESET_VALUE] = RESET_VALUE;
    t[131] = 0; // FADT minor version
    t[OFF_X_DSDT..OFF_X_DSDT + 8].copy_from_slice(&dsdt_addr.to_le_bytes());
    t[OFF_SLEEP_CONTROL..OFF_SLEEP_CONTROL + 12].copy_from_slice(&gas_io_byte(SLEEP_CONTROL_PORT));
    t[OFF_SLEEP_STATUS..OFF_SLEEP_STATUS + 12].copy_from_slice(&gas_io_byte(SLEEP_STATUS_PORT));
    t[OFF_HYPERVISOR_ID..OFF_HYPERVISOR_ID + 8].copy_from_slice(b"HOTMEMVM");
    finish_table(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fadt_is_hw_reduced_with_reset_and_sleep_registers() {
        let t = build(0xE_1000);
        assert_eq!(t.len(), FADT_BYTES);
        let flags = u32::from_le_bytes(t[OFF_FLAGS..OFF_FLAGS + 4].try_into().unwrap());
        assert_ne!(flags & FLAG_HW_REDUCED_ACPI, 0);
        assert_ne!(flags & FLAG_RESET_REG_SUP, 0);
        assert_eq!(
            &t[OFF_SLEEP_CONTROL + 4..OFF_SLEEP_CONTROL + 6],
            &SLEEP_CONTROL_PORT.to_le_bytes()
        );
        assert_eq!(t[OFF_SLEEP_STATUS], GAS_SYSTEM_IO);
        assert_eq!(t[OFF_RESET_VALUE], RESET_VALUE);
        assert_eq!(
            u32::from_le_bytes(t[OFF_DSDT..OFF_DSDT + 4].try_into().unwrap()),
            0xE_1000
        );
    }
}
