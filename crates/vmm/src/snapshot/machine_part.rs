//! The machine's part of a snapshot, behind a small trait so the VMM side does not depend on
//! how the machine captures its state.

use snapshot::memfile::Untouched;
use snapshot::{Component, HostMemory};

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
    /// Boot RAM as memory to save, in the same order: by default private anonymous memory
    /// (a page never touched reads zero).
    fn boot_ram_memory(&self) -> Vec<HostMemory<'_>> {
        self.boot_ram()
            .iter()
            // SAFETY: `boot_ram` ranges are mapped read-write while the machine lives, which
            // the returned borrow of `self` covers; snapshots are taken with the vCPUs paused.
            .map(|r| unsafe {
                HostMemory::from_raw(r.host_addr, r.size_bytes, Untouched::ReadsZero)
            })
            .collect()
    }
}

impl MachinePart for machine::Machine {
    fn save_component(&self) -> Result<Component, String> {
        let state = self
            .save_state()
            .map_err(|e| crate::control::error_chain(&e))?;
        Component::encode(
            super::MACHINE_COMPONENT,
            machine::state::STATE_FORMAT_VERSION,
            &state,
        )
        .map_err(|e| e.to_string())
    }

    fn boot_ram(&self) -> Vec<RamRange> {
        self.boot_ram_ranges()
            .into_iter()
            .map(|r| RamRange {
                guest_addr: r.guest_addr,
                size_bytes: r.size_bytes,
                host_addr: r.host_addr as usize,
            })
            .collect()
    }

    /// Each region says what its untouched pages hold (a lazily restored one: its snapshot
    /// file's data).
    fn boot_ram_memory(&self) -> Vec<HostMemory<'_>> {
        self.boot_ram_regions()
            .map(|(_, region)| HostMemory::from_region(region))
            .collect()
    }
}

/// A paused machine in the state `plan` recorded, with boot RAM from its memory files: mapped
/// copy-on-write in lazy mode (private anonymous boot RAM), read in eager mode.
pub fn restore_machine(
    config: machine::MachineConfig,
    plan: &super::RestorePlan,
) -> Result<machine::Machine, crate::Error> {
    let version = machine::state::STATE_FORMAT_VERSION;
    let (_, state): (u32, machine::MachineState) = plan
        .machine
        .decode(super::MACHINE_COMPONENT, version..=version)?;
    let mut machine = machine::Machine::restore(config, &state)?;
    let anonymous = machine
        .boot_ram_regions()
        .all(|(_, r)| r.untouched_reads_zero());
    if plan.memory == super::restore::RestoreMemory::Lazy && anonymous {
        check_boot_ram(&machine.boot_ram(), plan)?;
        for (index, saved) in plan.boot_ram.iter().enumerate() {
            let path = &saved.memory_file;
            let file = std::fs::File::open(path)
                .map_err(|e| crate::Error::Config(format!("{}: {e}", path.display())))?;
            machine.map_boot_ram_file(index, &file)?;
        }
        log::info!(
            "restored the machine; boot RAM maps {} bytes of data from its memory files",
            plan.boot_ram
                .iter()
                .map(|r| r.region.data_bytes)
                .sum::<u64>()
        );
    } else {
        let loaded = load_boot_ram(&machine, plan)?;
        log::info!("restored the machine; {loaded} bytes of boot RAM loaded");
    }
    Ok(machine)
}

/// Checks that the plan's boot RAM ranges are the machine's.
fn check_boot_ram(ranges: &[RamRange], plan: &super::RestorePlan) -> Result<(), crate::Error> {
    if ranges.len() != plan.boot_ram.len() {
        return Err(crate::Error::Config(format!(
            "snapshot has {} boot RAM ranges, this machine {}",
            plan.boot_ram.len(),
            ranges.len()
        )));
    }
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
    }
    Ok(())
}

/// Fills boot RAM from the plan's memory files; the ranges must match the machine's.
pub fn load_boot_ram(
    machine: &dyn MachinePart,
    plan: &super::RestorePlan,
) -> Result<u64, crate::Error> {
    let ranges = machine.boot_ram();
    check_boot_ram(&ranges, plan)?;
    let mut loaded = 0;
    for (range, saved) in ranges.iter().zip(&plan.boot_ram) {
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
