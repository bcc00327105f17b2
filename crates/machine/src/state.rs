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

/// Sizes in bytes of the KVM structs stored raw, in a fixed order: regs, sregs, lapic, xcrs,
/// debugregs, vcpu_events, mp_state, msr_entry, cpuid_entry2, irqchip, pit_state2,
/// clock_data. kvm-bindings' deserialiser zero-pads or truncates a blob of another size
/// silently; comparing these catches a state written with other struct layouts.
pub fn kvm_struct_bytes() -> Vec<u32> {
    use kvm_bindings as k;
    use std::mem::size_of;
    [
        size_of::<k::kvm_regs>(),
        size_of::<k::kvm_sregs>(),
        size_of::<k::kvm_lapic_state>(),
        size_of::<k::kvm_xcrs>(),
        size_of::<k::kvm_debugregs>(),
        size_of::<k::kvm_vcpu_events>(),
        size_of::<k::kvm_mp_state>(),
        size_of::<k::kvm_msr_entry>(),
        size_of::<k::kvm_cpuid_entry2>(),
        size_of::<k::kvm_irqchip>(),
        size_of::<k::kvm_pit_state2>(),
        size_of::<k::kvm_clock_data>(),
    ]
    .into_iter()
    .map(|n| n as u32)
    .collect()
}

/// Everything needed to recreate a paused machine, except guest RAM and the devices the VMM
/// attaches (PCI, virtio).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineState {
    /// [`STATE_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// [`kvm_struct_bytes`] of the writer.
    pub kvm_struct_bytes: Vec<u32>,
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
        let sizes = |v: &[u32]| format!("{v:?}");
        mismatch(
            "kvm_struct_bytes",
            sizes(&self.kvm_struct_bytes),
            sizes(&kvm_struct_bytes()),
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_state(num_cpus: u8, ram_size_bytes: u64) -> MachineState {
        MachineState {
            format_version: STATE_FORMAT_VERSION,
            kvm_struct_bytes: kvm_struct_bytes(),
            num_cpus,
            ram_size_bytes,
            vcpus: Vec::new(),
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            gsi: GsiRoutingState::default(),
            legacy: LegacyState {
                serial: SerialRegs::from(vm_superio::SerialState::default()),
                cmos_index: 0,
            },
        }
    }

    fn field(r: Result<(), Error>) -> &'static str {
        match r {
            Err(Error::StateMismatch { field, .. }) => field,
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn wrong_shape_is_refused_naming_the_field() {
        let s = empty_state(2, 64 << 20);
        assert_eq!(field(s.check_fits(1, 64 << 20)), "num_cpus");
        assert_eq!(field(s.check_fits(2, 128 << 20)), "ram_size_bytes");
        // Right shape, but the vCPU list is missing.
        assert_eq!(field(s.check_fits(2, 64 << 20)), "vcpus.len()");
        let mut old = empty_state(0, 64 << 20);
        old.format_version = STATE_FORMAT_VERSION + 1;
        let e = old.check_fits(0, 64 << 20).unwrap_err();
        assert!(e.to_string().contains("format_version"), "{e}");
        let mut other_kvm = empty_state(0, 64 << 20);
        other_kvm.kvm_struct_bytes[0] += 8;
        assert_eq!(field(other_kvm.check_fits(0, 64 << 20)), "kvm_struct_bytes");
    }

    #[test]
    fn state_without_vcpus_round_trips_through_json() {
        let mut s = empty_state(0, 64 << 20);
        s.legacy.cmos_index = 0x8D;
        s.vm.clock.clock = 123_456_789;
        s.vm.pic_slave.chip_id = 1;
        let json = serde_json::to_vec(&s).unwrap();
        let back: MachineState = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.legacy, s.legacy);
        assert_eq!(back.vm.clock, s.vm.clock);
        assert_eq!(back.vm.pic_slave.chip_id, 1);
        back.check_fits(0, 64 << 20).unwrap();
    }
}
