//! The ioctl request numbers hotmem's threads use, computed as Linux's `_IOC` macros do
//! (`include/uapi/asm-generic/ioctl.h`): direction in bits 30–31, argument size in 16–29,
//! type in 8–15, number in 0–7.

use std::mem::size_of;

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_dirty_log, kvm_fpu,
    kvm_ioeventfd, kvm_irq_level, kvm_irq_routing, kvm_irqchip, kvm_irqfd, kvm_lapic_state,
    kvm_mp_state, kvm_msi, kvm_msr_list, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};

const KVMIO: u64 = 0xAE;
const NONE: u64 = 0;
const WRITE: u64 = 1;
const READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size_bytes: usize) -> u64 {
    (dir << 30) | ((size_bytes as u64) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(NONE, nr, 0)
}
const fn ior<T>(nr: u64) -> u64 {
    ioc(READ, nr, size_of::<T>())
}
const fn iow<T>(nr: u64) -> u64 {
    ioc(WRITE, nr, size_of::<T>())
}
const fn iowr<T>(nr: u64) -> u64 {
    ioc(READ | WRITE, nr, size_of::<T>())
}

/// A named ioctl request, so the documentation can list them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Linux's name for it.
    pub name: &'static str,
    /// The request number (second argument of `ioctl`).
    pub number: u64,
}

const fn r(name: &'static str, number: u64) -> Request {
    Request { name, number }
}

pub const KVM_RUN: Request = r("KVM_RUN", io(0x80));
pub const KVM_CHECK_EXTENSION: Request = r("KVM_CHECK_EXTENSION", io(0x03));
pub const KVM_GET_DIRTY_LOG: Request = r("KVM_GET_DIRTY_LOG", iow::<kvm_dirty_log>(0x42));
pub const KVM_CLEAR_DIRTY_LOG: Request =
    r("KVM_CLEAR_DIRTY_LOG", iowr::<kvm_clear_dirty_log>(0xc0));
pub const KVM_SIGNAL_MSI: Request = r("KVM_SIGNAL_MSI", iow::<kvm_msi>(0xa5));
pub const KVM_IRQ_LINE: Request = r("KVM_IRQ_LINE", iow::<kvm_irq_level>(0x61));
pub const KVM_SET_GSI_ROUTING: Request = r("KVM_SET_GSI_ROUTING", iow::<kvm_irq_routing>(0x6a));

/// Terminal and file-descriptor requests: `TCGETS` (is this a terminal?), `FIONBIO`
/// (`set_nonblocking`).
pub const TERMINAL: &[Request] = &[r("TCGETS", libc::TCGETS), r("FIONBIO", libc::FIONBIO)];

/// What a vCPU does to its own fd: run, and read or write its state (reset, snapshot,
/// diagnostics of a fatal exit).
pub const VCPU_STATE: &[Request] = &[
    KVM_RUN,
    r("KVM_GET_REGS", ior::<kvm_regs>(0x81)),
    r("KVM_SET_REGS", iow::<kvm_regs>(0x82)),
    r("KVM_GET_SREGS", ior::<kvm_sregs>(0x83)),
    r("KVM_SET_SREGS", iow::<kvm_sregs>(0x84)),
    r("KVM_GET_MSRS", iowr::<kvm_msrs>(0x88)),
    r("KVM_SET_MSRS", iow::<kvm_msrs>(0x89)),
    r("KVM_GET_FPU", ior::<kvm_fpu>(0x8c)),
    r("KVM_SET_FPU", iow::<kvm_fpu>(0x8d)),
    r("KVM_GET_LAPIC", ior::<kvm_lapic_state>(0x8e)),
    r("KVM_SET_LAPIC", iow::<kvm_lapic_state>(0x8f)),
    r("KVM_SET_CPUID2", iow::<kvm_cpuid2>(0x90)),
    r("KVM_GET_CPUID2", iowr::<kvm_cpuid2>(0x91)),
    r("KVM_GET_MP_STATE", ior::<kvm_mp_state>(0x98)),
    r("KVM_SET_MP_STATE", iow::<kvm_mp_state>(0x99)),
    r("KVM_GET_VCPU_EVENTS", ior::<kvm_vcpu_events>(0x9f)),
    r("KVM_SET_VCPU_EVENTS", iow::<kvm_vcpu_events>(0xa0)),
    r("KVM_GET_DEBUGREGS", ior::<kvm_debugregs>(0xa1)),
    r("KVM_SET_DEBUGREGS", iow::<kvm_debugregs>(0xa2)),
    r("KVM_GET_XSAVE", ior::<kvm_xsave>(0xa4)),
    r("KVM_SET_XSAVE", iow::<kvm_xsave>(0xa5)),
    r("KVM_GET_XSAVE2", ior::<kvm_xsave>(0xcf)),
    r("KVM_GET_XCRS", ior::<kvm_xcrs>(0xa6)),
    r("KVM_SET_XCRS", iow::<kvm_xcrs>(0xa7)),
    r("KVM_SET_TSC_KHZ", io(0xa2)),
    r("KVM_GET_TSC_KHZ", io(0xa3)),
    r("KVM_KVMCLOCK_CTRL", io(0xad)),
    r("KVM_NMI", io(0x9a)),
];

/// What device work does to the VM fd while the guest runs: memory slots for plugs and
/// unplugs, interrupt routes and eventfds for moved BARs and MSI-X vectors, interrupts.
pub const VM_DEVICES: &[Request] = &[
    KVM_CHECK_EXTENSION,
    r(
        "KVM_SET_USER_MEMORY_REGION",
        iow::<kvm_userspace_memory_region>(0x46),
    ),
    KVM_IRQ_LINE,
    KVM_SET_GSI_ROUTING,
    r("KVM_IRQFD", iow::<kvm_irqfd>(0x76)),
    r("KVM_IOEVENTFD", iow::<kvm_ioeventfd>(0x79)),
    KVM_SIGNAL_MSI,
];

/// What the VM thread does to the VM fd between runs: reset the irqchip and the PIT at a
/// reboot, save or restore them and the clock for a snapshot.
pub const VM_STATE: &[Request] = &[
    r("KVM_GET_IRQCHIP", iowr::<kvm_irqchip>(0x62)),
    r("KVM_SET_IRQCHIP", ior::<kvm_irqchip>(0x63)),
    r("KVM_GET_PIT2", ior::<kvm_pit_state2>(0x9f)),
    r("KVM_SET_PIT2", iow::<kvm_pit_state2>(0xa0)),
    r("KVM_GET_CLOCK", ior::<kvm_clock_data>(0x7c)),
    r("KVM_SET_CLOCK", iow::<kvm_clock_data>(0x7b)),
];

/// What the VM thread asks the `/dev/kvm` fd for a snapshot: the MSRs to save.
pub const SYSTEM: &[Request] = &[
    r("KVM_GET_MSR_INDEX_LIST", iowr::<kvm_msr_list>(0x02)),
    r("KVM_GET_SUPPORTED_CPUID", iowr::<kvm_cpuid2>(0x05)),
];

/// What migration reads from the VM fd: the pages the guest wrote since the last look.
pub const DIRTY_LOG: &[Request] = &[KVM_GET_DIRTY_LOG, KVM_CLEAR_DIRTY_LOG];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_kernel_headers() {
        // Values from linux/kvm.h as printed by a C program on x86_64.
        assert_eq!(KVM_RUN.number, 0xae80);
        assert_eq!(KVM_CHECK_EXTENSION.number, 0xae03);
        assert_eq!(VM_DEVICES[1].number, 0x4020_ae46);
        assert_eq!(VM_DEVICES[4].number, 0x4020_ae76);
        assert_eq!(VCPU_STATE[1].number, 0x8090_ae81);
        assert_eq!(VCPU_STATE[3].number, 0x8138_ae83);
        assert_eq!(KVM_SIGNAL_MSI.number, 0x4020_aea5);
        assert_eq!(KVM_GET_DIRTY_LOG.number, 0x4010_ae42);
        assert_eq!(KVM_CLEAR_DIRTY_LOG.number, 0xc018_aec0);
    }

    #[test]
    fn no_request_is_listed_twice_with_two_names() {
        let all: Vec<Request> = [
            TERMINAL, VCPU_STATE, VM_DEVICES, VM_STATE, SYSTEM, DIRTY_LOG,
        ]
        .concat();
        for a in &all {
            for b in &all {
                assert!(a.number != b.number || a.name == b.name, "{a:?} {b:?}");
            }
        }
    }
}
