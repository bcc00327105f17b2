//! x86_64 guest boot data, without KVM ioctls.
//!
//! - [`layout`]: guest physical map (boot RAM, 32-bit hole, APICs, device area allocator).
//! - [`e820`]: the memory map in the zero page (device regions are not RAM).
//! - [`mptable`]: MP spec table (fallback when the guest ignores ACPI).
//! - [`acpi`]: hardware-reduced ACPI (RSDP/XSDT/FADT/MADT/DSDT) with power-off and reset ports.
//! - [`numa`]: the NUMA topology the SRAT/SLIT describe.
//! - [`cpu_state`]: GDT, page tables and long-mode register state.
//! - [`loader`]: bzImage + initramfs + cmdline + zero page into guest memory.

pub mod acpi;
pub mod cpu_state;
pub mod e820;
mod error;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod numa;

pub use error::Error;
pub use layout::{DeviceAreaAllocator, Gpa, GuestLayout};
pub use loader::{LinuxBootInfo, LinuxBootSpec, load_linux, write_cpu_tables};
