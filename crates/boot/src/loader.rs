//! Putting a Linux bzImage, its initramfs, command line, zero page and firmware tables into
//! guest memory. No KVM here: the caller owns the memory and programs the vCPUs.

use std::fs::File;
use std::path::PathBuf;

use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::Error;
use crate::acpi::{AcpiConfig, build_acpi_tables};
use crate::cpu_state::{gdt_bytes, idt_bytes, page_table_blobs};
use crate::e820::build_e820;
use crate::layout::{
    BIOS_AREA_END, CMDLINE_ADDR, CMDLINE_MAX_BYTES, GDT_ADDR, Gpa, GuestLayout, IDT_ADDR,
    MPTABLE_ADDR, RESET_VECTOR_ADDR, ZERO_PAGE_ADDR,
};
use crate::mptable::build_mptable;

/// Offset of the 64-bit entry point from the start of the loaded protected-mode kernel.
const STARTUP_64_OFFSET: u64 = 0x200;
const LOADER_TYPE_UNDEFINED: u8 = 0xFF;
const LOADFLAG_CAN_USE_HEAP: u8 = 0x80;
const PAGE_BYTES: u64 = 4096;

/// What to boot.
#[derive(Debug, Clone)]
pub struct LinuxBootSpec {
    /// bzImage path.
    pub kernel: PathBuf,
    /// Optional initramfs (cpio, possibly compressed).
    pub initramfs: Option<PathBuf>,
    /// Kernel command line (without NUL).
    pub cmdline: String,
    /// vCPU count for the MP table and MADT.
    pub num_cpus: u8,
    /// 64-bit PCI MMIO window advertised to the guest (empty: none).
    pub pci_mmio64: std::ops::Range<u64>,
    /// NUMA topology for the SRAT/SLIT (`None`: no NUMA tables).
    pub numa: Option<crate::numa::NumaTopology>,
}

/// Where things ended up.
#[derive(Debug, Clone, Copy)]
pub struct LinuxBootInfo {
    /// 64-bit entry point (RIP).
    pub entry: Gpa,
    /// Zero page (RSI).
    pub zero_page: Gpa,
    /// Initramfs placement, if any: (address, size in bytes).
    pub initramfs: Option<(Gpa, u64)>,
    /// RSDP address.
    pub rsdp: Gpa,
}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct ZeroPage(boot_params);

// SAFETY: boot_params is a packed plain-old-data C struct of integers and arrays; every bit
// pattern is valid and it has no padding (repr(C, packed)).
unsafe impl ByteValued for ZeroPage {}

fn write(mem: &GuestMemoryMmap, addr: Gpa, bytes: &[u8]) -> Result<(), Error> {
    mem.write_slice(bytes, GuestAddress(addr.0))
        .map_err(|source| Error::GuestMemory {
            addr: addr.0,
            source,
        })
}

/// Pick the initramfs address: as high as possible in low RAM, page aligned, below the
/// kernel's `initrd_addr_max`, above the kernel.
pub fn place_initramfs(
    layout: &GuestLayout,
    hdr: &setup_header,
    kernel_end: u64,
    size_bytes: u64,
) -> Result<Gpa, Error> {
    let addr_max = { hdr.initrd_addr_max };
    let limit = if addr_max == 0 {
        0x37FF_FFFF // boot protocol < 2.03 default
    } else {
        u64::from(addr_max)
    };
    let top = layout.low_ram_end().0.min(limit + 1);
    let start = top
        .checked_sub(size_bytes)
        .map(|s| s & !(PAGE_BYTES - 1))
        .filter(|s| *s >= kernel_end)
        .ok_or(Error::InitramfsTooLarge { size_bytes })?;
    Ok(Gpa(start))
}

/// Write the GDT, IDT and identity page tables the 64-bit boot state
/// ([`crate::cpu_state`]) refers to. [`load_linux`] does this too.
pub fn write_cpu_tables(mem: &GuestMemoryMmap) -> Result<(), Error> {
    write(mem, GDT_ADDR, &gdt_bytes())?;
    write(mem, IDT_ADDR, &idt_bytes())?;
    for (addr, bytes) in page_table_blobs() {
        write(mem, addr, &bytes)?;
    }
    Ok(())
}

/// Load kernel, initramfs, command line, zero page, MP table, ACPI tables, GDT/IDT and the
/// identity page tables into `mem` laid out as `layout`.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    layout: &GuestLayout,
    spec: &LinuxBootSpec,
) -> Result<LinuxBootInfo, Error> {
    let open = |p: &PathBuf| {
        File::open(p).map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })
    };
    let mut kernel = open(&spec.kernel)?;
    let loaded = BzImage::load(mem, None, &mut kernel, Some(GuestAddress(BIOS_AREA_END.0)))?;
    let mut hdr = loaded.setup_header.ok_or(Error::NotBzImage)?;

    let kernel_cmdline_size = hdr.cmdline_size;
    let cmdline_limit = match kernel_cmdline_size {
        0 => 255,
        n => (n as usize).min(CMDLINE_MAX_BYTES - 1),
    };
    if spec.cmdline.len() > cmdline_limit || spec.cmdline.contains('\0') {
        return Err(Error::CmdlineTooLong {
            len: spec.cmdline.len(),
            max: cmdline_limit,
        });
    }
    let mut cmdline = spec.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    write(mem, CMDLINE_ADDR, &cmdline)?;

    let mut initramfs = None;
    if let Some(path) = &spec.initramfs {
        let mut f = open(path)?;
        let size_bytes = f
            .metadata()
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?
            .len();
        let addr = place_initramfs(layout, &hdr, loaded.kernel_end, size_bytes)?;
        mem.read_exact_volatile_from(GuestAddress(addr.0), &mut f, size_bytes as usize)
            .map_err(|source| Error::GuestMemory {
                addr: addr.0,
                source,
            })?;
        initramfs = Some((addr, size_bytes));
    }

    let acpi = build_acpi_tables(&AcpiConfig {
        num_cpus: spec.num_cpus,
        pci_mmio32: layout.pci_mmio32_window(),
        pci_mmio64: spec.pci_mmio64.clone(),
        ram_ranges: layout.ram_ranges().to_vec(),
        numa: spec.numa.clone(),
    })?;
    write(mem, acpi.base, &acpi.bytes)?;
    write(
        mem,
        MPTABLE_ADDR,
        &build_mptable(MPTABLE_ADDR, spec.num_cpus)?,
    )?;
    write(mem, RESET_VECTOR_ADDR, &crate::acpi::reset_vector_stub())?;
    write_cpu_tables(mem)?;

    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.loadflags |= LOADFLAG_CAN_USE_HEAP;
    hdr.heap_end_ptr = 0xFE00;
    hdr.cmd_line_ptr = CMDLINE_ADDR.0 as u32;
    hdr.cmdline_size = cmdline.len() as u32;
    if let Some((addr, size)) = initramfs {
        hdr.ramdisk_image = addr.0 as u32;
        hdr.ramdisk_size = size as u32;
    }
    let mut page = [0u8; PAGE_BYTES as usize];
    let zp = ZeroPage::from_mut_slice(&mut page).ok_or(Error::NotBzImage)?;
    zp.0.hdr = hdr;
    zp.0.acpi_rsdp_addr = acpi.rsdp_addr.0;
    let e820 = build_e820(layout);
    let mut table = zp.0.e820_table;
    if e820.len() > table.len() {
        return Err(Error::TooManyE820Entries { count: e820.len() });
    }
    for (slot, e) in table.iter_mut().zip(&e820) {
        slot.addr = e.addr;
        slot.size = e.size_bytes;
        slot.r#type = e.kind.raw();
    }
    zp.0.e820_table = table;
    zp.0.e820_entries = e820.len() as u8;
    write(mem, ZERO_PAGE_ADDR, &page)?;

    Ok(LinuxBootInfo {
        entry: Gpa(loaded.kernel_load.0 + STARTUP_64_OFFSET),
        zero_page: ZERO_PAGE_ADDR,
        initramfs,
        rsdp: acpi.rsdp_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MIB;

    #[test]
    fn initramfs_goes_to_top_of_low_ram_page_aligned() {
        let layout = GuestLayout::new(512 * MIB).unwrap();
        let hdr = setup_header {
            initrd_addr_max: 0x7FFF_FFFF,
            ..Default::default()
        };
        let a = place_initramfs(&layout, &hdr, 32 * MIB, 10 * MIB + 5).unwrap();
        assert_eq!(a.0 % PAGE_BYTES, 0);
        assert!(a.0 + 10 * MIB + 5 <= 512 * MIB);
        assert!(a.0 >= 512 * MIB - 10 * MIB - PAGE_BYTES);
    }

    #[test]
    fn initramfs_respects_addr_max_and_kernel_end() {
        let layout = GuestLayout::new(2048 * MIB).unwrap();
        let hdr = setup_header {
            initrd_addr_max: (256 * MIB - 1) as u32,
            ..Default::default()
        };
        let a = place_initramfs(&layout, &hdr, 32 * MIB, MIB).unwrap();
        assert_eq!(a.0, 255 * MIB);
        assert!(place_initramfs(&layout, &hdr, 32 * MIB, 250 * MIB).is_err());
    }

    #[test]
    fn zero_page_is_one_page() {
        assert_eq!(std::mem::size_of::<ZeroPage>(), PAGE_BYTES as usize);
    }
}
