//! VM-wide in-kernel devices: PIC master and slave, IOAPIC, PIT, and the KVM clock.
//!
//! Restore writes the irqchips and PIT before the vCPUs and the clock after them, right
//! before the machine may run (as QEMU does at resume). The clock's flags are cleared:
//! `KVM_CLOCK_TSC_STABLE` (and `HOST_TSC`) only describe the source host, older kernels
//! refuse any flag in `KVM_SET_CLOCK`, and `KVM_CLOCK_REALTIME` would advance the guest
//! clock by the wall time spent in the snapshot. So guest kvmclock time continues from the
//! saved value, as if the guest had been paused.

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_clock_data, kvm_irqchip,
    kvm_pit_state2,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::kvm_err;
use crate::Error;

/// In-kernel irqchip, PIT and clock state.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// 8259 master (`KVM_IRQCHIP_PIC_MASTER`).
    pub pic_master: kvm_irqchip,
    /// 8259 slave (`KVM_IRQCHIP_PIC_SLAVE`).
    pub pic_slave: kvm_irqchip,
    /// IOAPIC (`KVM_IRQCHIP_IOAPIC`).
    pub ioapic: kvm_irqchip,
    /// i8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock (nanoseconds) and flags as read.
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("pit", &self.pit)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

fn read_chip(fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip, Error> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip)
        .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Reads irqchips, PIT and clock (vCPUs out of KVM_RUN).
pub(crate) fn read_vm(fd: &VmFd) -> Result<VmState, Error> {
    Ok(VmState {
        clock: fd.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?,
        pic_master: read_chip(fd, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: read_chip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: read_chip(fd, KVM_IRQCHIP_IOAPIC)?,
        pit: fd.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
    })
}

/// Writes irqchips and PIT; each chip must carry its own id.
pub(crate) fn write_irqchips_and_pit(fd: &VmFd, state: &VmState) -> Result<(), Error> {
    for (chip, id, field) in [
        (&state.pic_master, KVM_IRQCHIP_PIC_MASTER, "vm.pic_master"),
        (&state.pic_slave, KVM_IRQCHIP_PIC_SLAVE, "vm.pic_slave"),
        (&state.ioapic, KVM_IRQCHIP_IOAPIC, "vm.ioapic"),
    ] {
        super::mismatch(field, chip.chip_id, id)?;
        fd.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
    }
    fd.set_pit2(&state.pit).map_err(kvm_err("KVM_SET_PIT2"))
}

/// Sets the clock to the saved value with no flags (see the module documentation).
pub(crate) fn write_clock(fd: &VmFd, clock: &kvm_clock_data) -> Result<(), Error> {
    let data = kvm_clock_data {
        clock: clock.clock,
        ..Default::default()
    };
    fd.set_clock(&data).map_err(kvm_err("KVM_SET_CLOCK"))
}
