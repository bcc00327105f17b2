//! Snapshot support: [`Machine::save_state`] reads everything KVM and the legacy devices
//! hold from a paused machine; [`Machine::restore`] builds a machine of the same shape and
//! writes a saved state into it, leaving it paused with boot RAM untouched (the caller fills
//! it through [`Machine::memory`] or [`Machine::boot_ram_ranges`], then calls
//! [`Machine::resume`]).
//!
//! vCPU state is read and written on the calling thread: a paused machine has joined its
//! vCPU threads and owns the idle vCPU fds, and KVM vCPU ioctls other than KVM_RUN work from
//! any thread while no thread is inside KVM_RUN.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use super::{Machine, MachineConfig};
use crate::Error;
use crate::state::cpuid_check::check_cpuid;
use crate::state::msrs::msrs_to_save;
use crate::state::vcpu::{read_vcpu, write_vcpu, xsave2_size_bytes};
use crate::state::vm::{read_vm, write_clock, write_irqchips_and_pit};
use crate::state::{
    LegacyState, MachineState, STATE_FORMAT_VERSION, SerialRegs, kvm_err, kvm_struct_bytes,
};
use crate::vcpu::Vcpu;

/// One boot RAM region: where the guest sees it and where it is mapped in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootRamRange {
    /// Guest physical start.
    pub guest_addr: u64,
    /// Length.
    pub size_bytes: u64,
    /// Start of the host mapping (valid while the machine lives).
    pub host_addr: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Machine {
    /// Boot RAM regions in guest address order, e.g. to save or fill guest RAM.
    pub fn boot_ram_ranges(&self) -> Vec<BootRamRange> {
        self.memory
            .iter()
            .map(|r| BootRamRange {
                guest_addr: r.start_addr().raw_value(),
                size_bytes: r.len(),
                host_addr: r.as_ptr() as u64,
            })
            .collect()
    }

    /// The idle vCPUs in index order; errors unless all are out of KVM_RUN.
    fn paused_vcpus(&self, what: &'static str) -> Result<Vec<&Vcpu>, Error> {
        if self.is_running() || self.idle.len() != usize::from(self.num_cpus) {
            return Err(Error::VcpuState(what));
        }
        let mut vcpus: Vec<&Vcpu> = self.idle.iter().collect();
        vcpus.sort_by_key(|v| v.index());
        Ok(vcpus)
    }

    /// Reads the machine's state: vCPUs, irqchip, PIT, clock, GSI routes, legacy devices.
    /// The vCPUs must be paused ([`Machine::pause`]) or never started; errors while they
    /// run. Guest RAM is not included.
    pub fn save_state(&self) -> Result<MachineState, Error> {
        let vcpus = self.paused_vcpus("save_state needs the vCPUs paused")?;
        let msr_indices = msrs_to_save(self.vm.kvm())?;
        let xsave2_bytes = xsave2_size_bytes(self.vm.fd());
        let vm = read_vm(self.vm.fd())?;
        let vcpus = vcpus
            .into_iter()
            .map(|v| read_vcpu(v.fd(), v.index(), &msr_indices, xsave2_bytes))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MachineState {
            format_version: STATE_FORMAT_VERSION,
            kvm_struct_bytes: kvm_struct_bytes(),
            num_cpus: self.num_cpus,
            ram_size_bytes: self.ram_size_bytes,
            vcpus,
            vm,
            gsi: self.vm.routing_state(),
            legacy: LegacyState {
                serial: SerialRegs::from(lock(&self.serial).state()),
                cmos_index: lock(&self.cmos).index(),
            },
        })
    }

    /// Creates a machine shaped by `config` and puts `state` into it, without loading a
    /// kernel. Refuses (before anything runs) a state for another vCPU count or RAM size, or
    /// whose CPUID has features this host's KVM lacks. The result is paused: fill boot RAM,
    /// attach and restore devices, register irqfds on the GSIs in `state.gsi`, then call
    /// [`Machine::resume`].
    pub fn restore(config: MachineConfig, state: &MachineState) -> Result<Self, Error> {
        state.check_fits(config.num_cpus, config.ram_size_bytes)?;
        let mut machine = Self::new(config)?;
        machine.check_cpuid(state)?;
        machine.apply_state(state)?;
        Ok(machine)
    }

    /// Puts `state` into this never-started machine (a live migration's destination builds the
    /// machine first, fills boot RAM while the source still runs, and applies the state at the
    /// end). Same checks and result as [`Machine::restore`].
    pub fn restore_state(&mut self, state: &MachineState) -> Result<(), Error> {
        state.check_fits(self.num_cpus, self.ram_size_bytes)?;
        self.check_cpuid(state)?;
        self.apply_state(state)
    }

    /// Compares each saved CPUID with the one this host gave the same vCPU in `new`.
    fn check_cpuid(&self, state: &MachineState) -> Result<(), Error> {
        for (vcpu, saved) in self.paused_vcpus("restore")?.iter().zip(&state.vcpus) {
            let here = vcpu
                .fd()
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .map_err(kvm_err("KVM_GET_CPUID2"))?;
            check_cpuid(vcpu.index(), &saved.cpuid, here.as_slice())?;
        }
        Ok(())
    }

    /// Writes irqchip, PIT, routes, vCPUs, clock and legacy devices; leaves the machine
    /// paused (resumable).
    fn apply_state(&mut self, state: &MachineState) -> Result<(), Error> {
        let vm_fd = self.vm.fd();
        write_irqchips_and_pit(vm_fd, &state.vm)?;
        self.vm.restore_routing(&state.gsi)?;
        let xsave2_bytes = xsave2_size_bytes(vm_fd);
        for (vcpu, saved) in self.paused_vcpus("restore")?.iter().zip(&state.vcpus) {
            write_vcpu(vcpu.fd(), saved, xsave2_bytes)?;
        }
        write_clock(vm_fd, &state.vm.clock)?;
        for vcpu in self.paused_vcpus("restore")? {
            // Tells a guest using kvmclock that it was stopped (no soft-lockup reports);
            // EINVAL when the guest has not enabled kvmclock, which is fine.
            if let Err(e) = vcpu.fd().kvmclock_ctrl() {
                log::debug!("vcpu{}: KVM_KVMCLOCK_CTRL: {e}", vcpu.index());
            }
        }
        lock(&self.serial)
            .restore_state(&(&state.legacy.serial).into())
            .map_err(|e| Error::StateMismatch {
                field: "legacy.serial",
                saved: format!("{} input bytes", state.legacy.serial.in_buffer.len()),
                here: e.to_string(),
            })?;
        lock(&self.cmos).set_index(state.legacy.cmos_index);
        // A later `start` (reboot) must reset the restored irqchip; `resume` needs `stop`.
        self.irqchip_dirty = true;
        self.stop.store(true, Ordering::Release);
        Ok(())
    }
}
