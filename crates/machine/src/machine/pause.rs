//! Pausing and resuming a running machine: the vCPU threads stop and start again, the vCPUs
//! keep their state (registers, LAPIC, pending I/O live in KVM), unlike [`Machine::start`],
//! which resets them to the boot state.

use std::sync::atomic::Ordering;

use super::Machine;
use crate::Error;

impl Machine {
    /// Whether vCPU threads run now.
    pub fn is_running(&self) -> bool {
        !self.running.is_empty()
    }

    /// Stops the vCPU threads without resetting anything; [`Machine::resume`] continues where
    /// they were. Errors when they are not running.
    pub fn pause(&mut self) -> Result<(), Error> {
        if self.running.is_empty() {
            return Err(Error::VcpuState("pause needs running vCPUs"));
        }
        self.stop()
    }

    /// Starts the vCPU threads again after [`Machine::pause`], without resetting the vCPUs.
    pub fn resume(&mut self) -> Result<(), Error> {
        // `stop` is set by pause (and stop) only: before the first start there is nothing
        // to resume.
        if !self.running.is_empty()
            || self.idle.len() != usize::from(self.num_cpus)
            || !self.stop.load(Ordering::Acquire)
        {
            return Err(Error::VcpuState("resume needs all vCPUs paused"));
        }
        if self.exit.is_pending() {
            return Err(Error::VcpuState("the VM is stopping; resume refused"));
        }
        // A restored machine (snapshot, live migration) never went through `start`: without
        // the handler, the next pause's kick signal would kill the process.
        super::install_kick_handler()?;
        self.stop.store(false, Ordering::Release);
        self.spawn_vcpus()
    }
}
