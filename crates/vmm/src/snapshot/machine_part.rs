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
