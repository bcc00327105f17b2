//! Machine state for snapshot/restore: everything KVM and the legacy devices hold, as plain
//! serde types without file descriptors. Guest RAM is not part of it; the caller saves and
//! fills boot RAM through [`crate::Machine::memory`].
//!
//! KVM structs are kept as the `kvm-bindings` types (their `serde` feature serialises each
//! one as its raw bytes), so a state file is only meaningful on x86_64 with the same struct
//! layouts; [`STATE_FORMAT_VERSION`] guards changes of our own layout.
//!
//! - [`vcpu`]: per-vCPU registers, XSAVE, MSRs, LAPIC, events, CPUID (+ the restore order).
//! - [`vm`]: PIC, IOAPIC, PIT and KVM clock.
//! - [`legacy`]: COM1 registers and the CMOS index.
//! - [`msrs`]: which MSRs are saved and how they are read and written.
//! - [`cpuid_check`]: refusing a state whose CPUID this host cannot offer.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::gsi::{Gsi, MsiMessage};

pub mod cpuid_check;
pub mod legacy;
pub mod msrs;
pub mod vcpu;
pub mod vm;

pub use legacy::{LegacyState, SerialRegs};
pub use vcpu::{VcpuState, XsaveState};
pub use vm::VmState;

/// Version of the [`MachineState`] layout; bump on any incompatible change.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// Everything needed to recreate a paused machine, except guest RAM and the devices the VMM
/// attaches (PCI, virtio).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineState {
    /// [`STATE_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// vCPU count of the saved machine.
    pub num_cpus: u8,
    /// Boot RAM size of the saved machine.
    pub ram_size_bytes: u64,
    /// One entry per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// In-kernel irqchip, PIT and clock.
    pub vm: VmState,
    /// GSI allocator and MSI routes the guest programmed.
    pub gsi: GsiRoutingState,
    /// Userspace legacy devices.
    pub legacy: LegacyState,
}

/// One MSI route: GSI and the message it delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsiRoute {
    /// The routed GSI.
    pub gsi: Gsi,
    /// Message written to the LAPIC when the GSI fires.
    pub message: MsiMessage,
}

/// The GSI allocator and MSI routing table ([`crate::gsi::GsiRoutes`]). After restore the VMM
/// registers its irqfds on the same GSIs again (eventfds are not saved).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GsiRoutingState {
    /// Allocated GSIs, ascending.
    pub allocated: Vec<Gsi>,
    /// MSI routes, ascending by GSI.
    pub msi_routes: Vec<MsiRoute>,
}

impl MachineState {
    /// Refuses a state that does not fit a machine of `num_cpus` vCPUs and `ram_size_bytes`
    /// of boot RAM (or was written by another layout version), naming the field.
    pub fn check_fits(&self, num_cpus: u8, ram_size_bytes: u64) -> Result<(), Error> {
        mismatch("format_version", self.format_version, STATE_FORMAT_VERSION)?;
        mismatch("num_cpus", self.num_cpus, num_cpus)?;
        mismatch("ram_size_bytes", self.ram_size_bytes, ram_size_bytes)?;
        mismatch("vcpus.len()", self.vcpus.len(), usize::from(num_cpus))?;
        for (i, v) in self.vcpus.iter().enumerate() {
            mismatch("vcpus[].index", usize::from(v.index), i)?;
        }
        Ok(())
    }
}

/// `Err(StateMismatch)` unless `saved == here`.
pub(crate) fn mismatch<T: PartialEq + std::fmt::Display>(
    field: &'static str,
    saved: T,
    here: T,
) -> Result<(), Error> {
    if saved == here {
        Ok(())
    } else {
        Err(Error::StateMismatch {
            field,
            saved: saved.to_string(),
            here: here.to_string(),
        })
    }
}

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}
