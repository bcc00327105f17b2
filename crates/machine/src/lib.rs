//! A KVM x86_64 machine the VMM drives: VM with in-kernel irqchip and PIT, boot RAM,
//! vCPU threads, port-I/O and MMIO buses, and the legacy devices Linux needs.
//!
//! - [`machine`]: [`Machine`], the entry point (construct, load Linux, run, reboot).
//! - [`vm`]: the VM fd plus irqfd / MSI routing / ioeventfd helpers.
//! - [`bus`]: [`Bus`] and the [`BusDevice`] trait devices implement.
//! - [`exit`]: [`ExitSignal`] and [`ExitReason`], how the guest stops.
//! - [`gsi`]: GSI routing table and allocator.
//! - [`legacy`]: COM1, i8042, CMOS, ACPI power ports.
//! - [`cpuid`]: per-vCPU CPUID.
//! - [`throttle`]: [`VcpuThrottle`], slowing the vCPUs down (migration auto-converge).
//! - [`state`]: [`MachineState`], what [`Machine::save_state`] captures and
//!   [`Machine::restore`] applies.

pub mod bus;
pub mod cpuid;
mod error;
pub mod exit;
pub mod gsi;
pub mod legacy;
pub mod machine;
pub mod state;
pub mod throttle;
mod vcpu;
pub mod vm;

pub use bus::{Bus, BusDevice, BusKind, SharedDevice};
pub use cpuid::CpuPackages;
pub use error::Error;
pub use exit::{ExitReason, ExitSignal, StopRequest};
pub use gsi::{Gsi, MsiMessage};
pub use machine::{BootRamRange, Machine, MachineConfig, SerialOutput};
pub use state::MachineState;
pub use throttle::VcpuThrottle;
pub use vm::Vm;
