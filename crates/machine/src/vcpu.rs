//! vCPUs: creation, (re)setting to the boot state, and the KVM_RUN loop that dispatches
//! exits to the buses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use boot::LinuxBootInfo;
use boot::cpu_state::{boot_fpu, boot_regs, configure_sregs};
use kvm_bindings::{
    CpuId, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, Msrs, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_regs, kvm_sregs,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::Error;
use crate::bus::Bus;
use crate::cpuid::{CpuPackages, CpuTopology, vcpu_cpuid};
use crate::exit::{ExitReason, ExitSignal, StopRequest};
use crate::throttle::VcpuThrottle;
use crate::vm::Vm;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1A0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2FF;
const MSR_STAR: u32 = 0xC000_0081;
const MSR_LSTAR: u32 = 0xC000_0082;
const MSR_CSTAR: u32 = 0xC000_0083;
const MSR_SYSCALL_MASK: u32 = 0xC000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;
/// KVM paravirtual MSRs a previous kernel may have enabled; they make KVM write into guest
/// memory, so they are switched off before booting again.
const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4B56_4D01;
const MSR_KVM_ASYNC_PF_EN: u32 = 0x4B56_4D02;
const MSR_KVM_STEAL_TIME: u32 = 0x4B56_4D03;
const MSR_KVM_PV_EOI_EN: u32 = 0x4B56_4D04;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

fn get_reg(lapic: &kvm_lapic_state, off: usize) -> u32 {
    let b = &lapic.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_reg(lapic: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        lapic.regs[off + i] = *byte as _;
    }
}

/// LVT delivery mode lives in bits 8..11.
fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

/// One vCPU and its power-on state.
pub(crate) struct Vcpu {
    index: u8,
    fd: VcpuFd,
    initial_regs: kvm_regs,
    initial_sregs: kvm_sregs,
    initial_lapic: kvm_lapic_state,
}

/// What a running vCPU shares with the rest of the machine.
#[derive(Clone)]
pub(crate) struct RunContext {
    pub(crate) pio: Arc<Bus>,
    pub(crate) mmio: Arc<Bus>,
    pub(crate) exit: ExitSignal,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) throttle: VcpuThrottle,
}

impl Vcpu {
    /// Create vCPU `index` of `num_cpus` with CPUID derived from `supported`.
    pub(crate) fn new(
        vm: &Vm,
        index: u8,
        (num_cpus, packages): (u8, CpuPackages),
        supported: &CpuId,
    ) -> Result<Self, Error> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let cpuid = vcpu_cpuid(
            supported,
            CpuTopology {
                apic_id: index,
                num_cpus,
                packages,
            },
        );
        fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        Ok(Self {
            index,
            initial_regs: fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
            initial_sregs: fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?,
            initial_lapic: fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?,
            fd,
        })
    }

    /// Put the vCPU in its boot state. The bootstrap processor (index 0) gets the 64-bit
    /// Linux entry state for `boot`; the others wait for INIT/SIPI.
    pub(crate) fn reset(&mut self, boot: &LinuxBootInfo) -> Result<(), Error> {
        let bsp = self.index == 0;
        let mut sregs = self.initial_sregs;
        let regs = if bsp {
            configure_sregs(&mut sregs);
            boot_regs(boot.entry)
        } else {
            self.initial_regs
        };
        self.fd
            .set_sregs(&sregs)
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        self.fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
        self.fd
            .set_fpu(&boot_fpu())
            .map_err(kvm_err("KVM_SET_FPU"))?;
        self.set_boot_msrs()?;
        let mut lapic = self.initial_lapic;
        let lvt0 = with_delivery_mode(get_reg(&lapic, APIC_LVT0), APIC_MODE_EXTINT);
        let lvt1 = with_delivery_mode(get_reg(&lapic, APIC_LVT1), APIC_MODE_NMI);
        set_reg(&mut lapic, APIC_LVT0, lvt0);
        set_reg(&mut lapic, APIC_LVT1, lvt1);
        self.fd
            .set_lapic(&lapic)
            .map_err(kvm_err("KVM_SET_LAPIC"))?;
        let mp_state = if bsp {
            KVM_MP_STATE_RUNNABLE
        } else {
            KVM_MP_STATE_UNINITIALIZED
        };
        self.fd
            .set_mp_state(kvm_mp_state { mp_state })
            .map_err(kvm_err("KVM_SET_MP_STATE"))
    }

    fn set_boot_msrs(&self) -> Result<(), Error> {
        let required = [
            (MSR_IA32_SYSENTER_CS, 0),
            (MSR_IA32_SYSENTER_ESP, 0),
            (MSR_IA32_SYSENTER_EIP, 0),
            (MSR_STAR, 0),
            (MSR_LSTAR, 0),
            (MSR_CSTAR, 0),
            (MSR_SYSCALL_MASK, 0),
            (MSR_KERNEL_GS_BASE, 0),
            (MSR_IA32_TSC, 0),
            (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
            (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
        ];
        let entries: Vec<kvm_msr_entry> = required
            .iter()
            .map(|(index, data)| kvm_msr_entry {
                index: *index,
                data: *data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| Error::MsrSetup { written: 0 })?;
        let written = self.fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if written != entries.len() {
            return Err(Error::MsrSetup { written });
        }
        // Best effort: a host without one of these PV MSRs has nothing to switch off.
        for index in [
            MSR_KVM_SYSTEM_TIME,
            MSR_KVM_SYSTEM_TIME_NEW,
            MSR_KVM_ASYNC_PF_EN,
            MSR_KVM_STEAL_TIME,
            MSR_KVM_PV_EOI_EN,
        ] {
            let one = [kvm_msr_entry {
                index,
                ..Default::default()
            }];
            if let Ok(m) = Msrs::from_entries(&one)
                && !matches!(self.fd.set_msrs(&m), Ok(1))
            {
                log::debug!("vcpu{}: MSR {index:#x} not reset", self.index);
            }
        }
        Ok(())
    }

    /// The vCPU fd (state save/restore while the vCPU is out of KVM_RUN).
    pub(crate) fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// vCPU index.
    pub(crate) fn index(&self) -> u8 {
        self.index
    }

    /// Current general registers (for diagnostics while stopped).
    pub(crate) fn regs(&self) -> Result<kvm_regs, Error> {
        self.fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))
    }

    /// Run until `ctx.stop` is set or a stop is requested; returns the vCPU for reuse, with
    /// any I/O exit it handled last completed inside KVM.
    pub(crate) fn run(mut self, ctx: &RunContext) -> Self {
        let index = self.index;
        let stopping = || ctx.stop.load(Ordering::Acquire) || ctx.exit.is_pending();
        let mut pacer = ctx.throttle.pacer();
        while !stopping() {
            pacer.pace(&stopping);
            if stopping() {
                break;
            }
            if let Some(r) = dispatch(index, self.fd.run(), ctx) {
                ctx.exit.request(r);
            }
        }
        drop(pacer);
        self.complete_pending_io(ctx);
        log::debug!("vcpu{index}: leaving run loop");
        self
    }

    /// KVM finishes an I/O exit (stores an IN result in RAX and moves RIP past the
    /// instruction, finishes an MMIO read, continues a string instruction) only on the next
    /// KVM_RUN. Re-enter with `immediate_exit` so it does that and returns at once: the vCPU
    /// state a pause leaves behind, which a snapshot reads, then has no half-done I/O (an IN
    /// would otherwise be executed again after restore and its first result lost).
    fn complete_pending_io(&mut self, ctx: &RunContext) {
        self.fd.set_kvm_immediate_exit(1);
        for _ in 0..MAX_IO_COMPLETION_ROUNDS {
            match self.fd.run() {
                Err(e) if e.errno() == libc::EINTR => break,
                // A string instruction may need more rounds of userspace I/O.
                result => {
                    if let Some(r) = dispatch(self.index, result, ctx) {
                        ctx.exit.request(r);
                    }
                }
            }
        }
        self.fd.set_kvm_immediate_exit(0);
    }
}

/// How often a stopping vCPU serves further I/O exits of one string instruction.
const MAX_IO_COMPLETION_ROUNDS: usize = 64;

/// Handles one KVM_RUN result: I/O goes to the buses, guest stops and fatal conditions
/// become a stop request.
fn dispatch(
    index: u8,
    result: Result<VcpuExit<'_>, kvm_ioctls::Error>,
    ctx: &RunContext,
) -> Option<StopRequest> {
    let fatal = |reason: String| StopRequest::Fatal {
        vcpu: index,
        reason,
    };
    match result {
        Ok(VcpuExit::IoIn(port, data)) => {
            if !ctx.pio.read(u64::from(port), data) {
                log::debug!("vcpu{index}: unhandled in {port:#x}");
                data.fill(0xFF);
            }
            None
        }
        Ok(VcpuExit::IoOut(port, data)) => {
            if !ctx.pio.write(u64::from(port), data) {
                log::debug!("vcpu{index}: unhandled out {port:#x} {data:x?}");
            }
            None
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            if !ctx.mmio.read(addr, data) {
                log::debug!("vcpu{index}: unhandled MMIO read {addr:#x}");
                data.fill(0xFF);
            }
            None
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            if !ctx.mmio.write(addr, data) {
                log::debug!("vcpu{index}: unhandled MMIO write {addr:#x}");
            }
            None
        }
        Ok(VcpuExit::Shutdown) => {
            log::warn!("vcpu{index}: shutdown exit (triple fault); treating as reboot");
            Some(StopRequest::Guest(ExitReason::Reboot))
        }
        Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => StopRequest::Guest(ExitReason::Poweroff),
            KVM_SYSTEM_EVENT_RESET => StopRequest::Guest(ExitReason::Reboot),
            KVM_SYSTEM_EVENT_CRASH => fatal("guest crash system event".into()),
            other => fatal(format!("system event {other}")),
        }),
        Ok(VcpuExit::IoapicEoi(_) | VcpuExit::IrqWindowOpen | VcpuExit::Intr) => None,
        Ok(VcpuExit::Hlt) => Some(fatal("HLT exit with in-kernel LAPIC".into())),
        Ok(VcpuExit::FailEntry(reason, cpu)) => Some(fatal(format!(
            "VM entry failed: reason {reason:#x} on host cpu {cpu}"
        ))),
        Ok(other) => Some(fatal(format!("unhandled exit {other:?}"))),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
        Err(e) => Some(fatal(format!("KVM_RUN: {e}"))),
    }
}
