//! 64-bit boot CPU state: GDT, empty IDT, identity page tables (first 4 GiB with 2 MiB pages)
//! and the register values the Linux 64-bit boot protocol expects.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};

use crate::layout::{
    BOOT_STACK_ADDR, GDT_ADDR, Gpa, IDT_ADDR, PD_ADDR, PDPT_ADDR, PML4_ADDR, ZERO_PAGE_ADDR,
};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_HUGE: u64 = 0x80;
/// Number of page directories: each maps 1 GiB.
const IDENTITY_MAP_GIB: u64 = 4;

/// Selector of the 64-bit code segment (`__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// Selector of the data segment (`__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;
/// Selector of the TSS.
pub const BOOT_TSS: u16 = 0x20;

fn segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long && selector != BOOT_TSS),
        s: u8::from(selector != BOOT_TSS),
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn code_segment() -> kvm_segment {
    segment(BOOT_CS, 0xB, true)
}

fn data_segment() -> kvm_segment {
    segment(BOOT_DS, 0x3, false)
}

fn tss_segment() -> kvm_segment {
    segment(BOOT_TSS, 0xB, false)
}

/// Encode a segment as an 8-byte GDT descriptor (limit in 4 KiB units when `g`).
fn descriptor(s: &kvm_segment) -> u64 {
    let limit = if s.g == 1 { s.limit >> 12 } else { s.limit };
    let base = s.base;
    let access = u64::from(s.type_ & 0xF)
        | (u64::from(s.s) << 4)
        | (u64::from(s.dpl & 3) << 5)
        | (u64::from(s.present) << 7);
    let flags =
        u64::from(s.avl) | (u64::from(s.l) << 1) | (u64::from(s.db) << 2) | (u64::from(s.g) << 3);
    (u64::from(limit) & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (access << 40)
        | ((u64::from(limit >> 16) & 0xF) << 48)
        | (flags << 52)
        | (((base >> 24) & 0xFF) << 56)
}

/// GDT bytes: null, null, code64, data, TSS.
pub fn gdt_bytes() -> Vec<u8> {
    [
        0,
        0,
        descriptor(&code_segment()),
        descriptor(&data_segment()),
        descriptor(&tss_segment()),
    ]
    .iter()
    .flat_map(|d: &u64| d.to_le_bytes())
    .collect()
}

/// One zero IDT entry (the kernel loads its own IDT before enabling interrupts).
pub fn idt_bytes() -> Vec<u8> {
    vec![0; 8]
}

/// Identity page tables as (address, bytes) pairs: PML4, PDPT and the page directories.
pub fn page_table_blobs() -> Vec<(Gpa, Vec<u8>)> {
    let mut pml4 = vec![0u8; 4096];
    pml4[..8].copy_from_slice(&(PDPT_ADDR.0 | PTE_PRESENT_RW).to_le_bytes());
    let mut pdpt = vec![0u8; 4096];
    let mut pds = vec![0u8; 4096 * IDENTITY_MAP_GIB as usize];
    for gib in 0..IDENTITY_MAP_GIB {
        let pd = PD_ADDR.0 + gib * 4096;
        let off = (gib * 8) as usize;
        pdpt[off..off + 8].copy_from_slice(&(pd | PTE_PRESENT_RW).to_le_bytes());
    }
    for (i, entry) in pds.chunks_mut(8).enumerate() {
        let addr = (i as u64) << 21;
        entry.copy_from_slice(&(addr | PTE_PRESENT_RW | PDE_HUGE).to_le_bytes());
    }
    vec![(PML4_ADDR, pml4), (PDPT_ADDR, pdpt), (PD_ADDR, pds)]
}

/// Patch `sregs` (as read from a fresh vCPU) for 64-bit mode with paging.
pub fn configure_sregs(sregs: &mut kvm_sregs) {
    sregs.gdt.base = GDT_ADDR.0;
    sregs.gdt.limit = (5 * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR.0;
    sregs.idt.limit = 7;
    sregs.cs = code_segment();
    let data = data_segment();
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss_segment();
    sregs.cr3 = PML4_ADDR.0;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// General registers for the 64-bit entry point `entry`: RSI = zero page.
pub fn boot_regs(entry: Gpa) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: BOOT_STACK_ADDR.0,
        rbp: BOOT_STACK_ADDR.0,
        rsi: ZERO_PAGE_ADDR.0,
        ..Default::default()
    }
}

/// x87/SSE state after reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37F,
        mxcsr: 0x1F80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_code_descriptor_is_64bit_kernel_code() {
        let g = gdt_bytes();
        let code = u64::from_le_bytes(g[16..24].try_into().unwrap());
        // The classic flat 64-bit code descriptor.
        assert_eq!(code, 0x00AF_9B00_0000_FFFF);
        let data = u64::from_le_bytes(g[24..32].try_into().unwrap());
        assert_eq!(data, 0x00CF_9300_0000_FFFF);
    }

    #[test]
    fn identity_map_covers_4gib_with_huge_pages() {
        let blobs = page_table_blobs();
        let pds = &blobs[2].1;
        let last = u64::from_le_bytes(pds[pds.len() - 8..].try_into().unwrap());
        assert_eq!(last & !0xFFF, (4 << 30) - (2 << 20));
        assert_eq!(last & 0x83, 0x83);
    }

    #[test]
    fn sregs_enable_long_mode() {
        let mut s = kvm_sregs::default();
        configure_sregs(&mut s);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cs.selector, BOOT_CS);
    }
}
