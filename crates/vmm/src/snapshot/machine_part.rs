//! The machine's part of a snapshot, behind a small trait so the VMM side does not depend on
//! how the machine captures its state.

use snapshot::Component;

/// One boot RAM range: guest address, size and host mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// Guest physical start.
    pub guest_addr: u64,
    /// Length.
    pub size_bytes: u64,
    /// Start of the host mapping (private anonymous memory, valid while the machine lives).
    pub host_addr: usize,
}

/// What a snapshot needs from the machine.
pub trait MachinePart {
    /// The machine state (vCPUs, irqchip, PIT, clock, GSI routes, legacy devices) as a
    /// component; the vCPUs are paused.
    fn save_component(&self) -> Result<Component, String>;
    /// Boot RAM, in guest address order.
    fn boot_ram(&self) -> Vec<RamRange>;
}

impl MachinePart for machine::Machine {
    fn save_component(&self) -> Result<Component, String> {
        Err("this build cannot capture the machine state (vCPUs, irqchip, clocks) yet".into())
    }

    fn boot_ram(&self) -> Vec<RamRange> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        self.memory()
            .iter()
            .map(|r| RamRange {
                guest_addr: r.start_addr().0,
                size_bytes: r.len(),
                host_addr: r.as_ptr() as usize,
            })
            .collect()
    }
}

/// A paused machine in the state `plan` recorded, with boot RAM filled from its memory files.
pub fn restore_machine(
    config: machine::MachineConfig,
    plan: &super::RestorePlan,
) -> Result<machine::Machine, crate::Error> {
    let _ = (config, &plan.machine);
    Err(crate::Error::Config(format!(
        "--restore {}: this build cannot restore the machine state (vCPUs, irqchip, clocks) yet",
        plan.dir.display()
    )))
}

/// Fills boot RAM from the plan's memory files; the ranges must match the machine's.
pub fn load_boot_ram(
    machine: &dyn MachinePart,
    plan: &super::RestorePlan,
) -> Result<u64, crate::Error> {
    let ranges = machine.boot_ram();
    if ranges.len() != plan.boot_ram.len() {
        return Err(crate::Error::Config(format!(
            "snapshot has {} boot RAM ranges, this machine {}",
            plan.boot_ram.len(),
            ranges.len()
        )));
    }
    let mut loaded = 0;
    for (range, saved) in ranges.iter().zip(&plan.boot_ram) {
        if range.guest_addr != saved.region.guest_addr.0
            || range.size_bytes != saved.region.size_bytes
        {
            return Err(crate::Error::Config(format!(
                "boot RAM {:#x}+{:#x} in the snapshot, {:#x}+{:#x} on this machine",
                saved.region.guest_addr.0,
                saved.region.size_bytes,
                range.guest_addr,
                range.size_bytes
            )));
        }
        // SAFETY: boot RAM is mapped read-write for the machine's life and no vCPU has run yet.
        let memory = unsafe {
            snapshot::HostMemory::from_raw(
                range.host_addr,
                range.size_bytes,
                snapshot::memfile::Untouched::ReadsZero,
            )
        };
        loaded += snapshot::memfile::load(&saved.memory_file, &memory)?.data_bytes;
    }
    Ok(loaded)
}
