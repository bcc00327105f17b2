//! Per-vCPU state and the order it is read and written in.
//!
//! Read (vCPU out of KVM_RUN): MP state first (`KVM_GET_MP_STATE` processes pending
//! INIT/SIPI and may change the LAPIC), then registers, XSAVE, XCRs, debug registers, LAPIC,
//! MSRs, and vCPU events last (pending exception/interrupt/NMI as left by the rest).
//!
//! The TSC travels as an MSR: the guest TSC continues from the saved value, as if the guest
//! had been paused, on a host of any TSC frequency (KVM scales to the saved `tsc_khz`).
//!
//! Write: CPUID first (MSR and XSAVE checks depend on it), TSC frequency, then SREGS
//! (restores the APIC base and may change the MP state), REGS (clears pending exceptions,
//! so before events), XSAVE, XCRs, LAPIC (before MSRs: the TSC deadline only sticks in
//! deadline mode), MSRs, events (with NMI pending and SIPI vector marked valid), MP state,
//! debug registers.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
    Xsave, kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Cap, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::kvm_err;
use super::msrs::{read_msrs, write_msrs};
use crate::Error;

/// 32-bit words in the legacy `kvm_xsave` region (4 KiB).
const XSAVE_LEGACY_WORDS: usize = 1024;

/// The XSAVE area as `KVM_GET_XSAVE2` (or `KVM_GET_XSAVE`) returned it: the 4 KiB legacy
/// region followed by any extended state. Holds the FPU/SSE state too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XsaveState {
    /// The area as 32-bit words.
    pub words: Vec<u32>,
}

/// One vCPU's architectural and KVM state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index (= APIC id).
    pub index: u8,
    /// CPUID as set on the vCPU (restore sets exactly this and checks the host offers it).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Guest TSC frequency, if KVM reports it.
    pub tsc_khz: Option<u32>,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// FPU, SSE, AVX, … state.
    pub xsave: XsaveState,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// DR0..3, DR6, DR7.
    pub debug_regs: kvm_debugregs,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// MSR values in restore order (TSC deadline last).
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exception / interrupt / NMI / SMI, interrupt shadow.
    pub vcpu_events: kvm_vcpu_events,
    /// Runnable, halted, waiting for SIPI, …
    pub mp_state: kvm_mp_state,
}

/// Bytes `KVM_GET_XSAVE2` needs on this VM, if the host has it.
pub(crate) fn xsave2_size_bytes(vm: &VmFd) -> Option<usize> {
    usize::try_from(vm.check_extension_int(Cap::Xsave2))
        .ok()
        .filter(|n| *n > 0)
}

fn xsave_wrapper(size_bytes: usize) -> Result<Xsave, Error> {
    let extra_words = size_bytes
        .saturating_sub(std::mem::size_of::<kvm_xsave>())
        .div_ceil(std::mem::size_of::<u32>());
    Xsave::new(extra_words).map_err(|_| Error::StateMismatch {
        field: "xsave",
        saved: String::new(),
        here: format!("{size_bytes} bytes cannot be allocated"),
    })
}

fn read_xsave(fd: &VcpuFd, xsave2_bytes: Option<usize>) -> Result<XsaveState, Error> {
    let Some(size) = xsave2_bytes else {
        let x = fd.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?;
        return Ok(XsaveState {
            words: x.region.to_vec(),
        });
    };
    let mut x = xsave_wrapper(size)?;
    // SAFETY: `x` has room for `size` bytes, the size KVM_CAP_XSAVE2 reports for this VM; we
    // enable no XSTATE features with arch_prctl, so the size cannot grow meanwhile.
    unsafe { fd.get_xsave2(&mut x) }.map_err(kvm_err("KVM_GET_XSAVE2"))?;
    let mut words = x.as_fam_struct_ref().xsave.region.to_vec();
    words.extend_from_slice(x.as_slice());
    Ok(XsaveState { words })
}

fn write_xsave(fd: &VcpuFd, state: &XsaveState, xsave2_bytes: Option<usize>) -> Result<(), Error> {
    let here_bytes = xsave2_bytes
        .unwrap_or(0)
        .max(std::mem::size_of::<kvm_xsave>());
    let saved_bytes = state.words.len() * std::mem::size_of::<u32>();
    if saved_bytes > here_bytes || state.words.len() < XSAVE_LEGACY_WORDS {
        return Err(Error::StateMismatch {
            field: "vcpus[].xsave",
            saved: format!("{saved_bytes} bytes"),
            here: format!("{here_bytes} bytes"),
        });
    }
    let (legacy, extended) = state.words.split_at(XSAVE_LEGACY_WORDS);
    let mut x = xsave_wrapper(here_bytes)?;
    x.as_mut_slice()[..extended.len()].copy_from_slice(extended);
    // SAFETY: only the legacy region of the header is written; the FAM length stays.
    unsafe { x.as_mut_fam_struct() }
        .xsave
        .region
        .copy_from_slice(legacy);
    // SAFETY: `x` holds `here_bytes`, at least what KVM reads for this VM (KVM_CAP_XSAVE2
    // size, or 4 KiB without XSAVE2); no XSTATE features are enabled later.
    unsafe { fd.set_xsave2(&x) }.map_err(kvm_err("KVM_SET_XSAVE"))
}

/// Reads the state of a vCPU that is out of KVM_RUN (its thread parked or joined).
pub(crate) fn read_vcpu(
    fd: &VcpuFd,
    index: u8,
    msr_indices: &[u32],
    xsave2_bytes: Option<usize>,
) -> Result<VcpuState, Error> {
    let mp_state = fd.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let xsave = read_xsave(fd, xsave2_bytes)?;
    let xcrs = fd.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?;
    let debug_regs = fd.get_debug_regs().map_err(kvm_err("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_CPUID2"))?
        .as_slice()
        .to_vec();
    let (msrs, skipped) = read_msrs(fd, msr_indices)?;
    if !skipped.is_empty() {
        log::debug!("vcpu{index}: MSRs KVM does not give this guest: {skipped:x?}");
    }
    let vcpu_events = fd
        .get_vcpu_events()
        .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        index,
        cpuid,
        tsc_khz,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        msrs,
        vcpu_events,
        mp_state,
    })
}

/// Sets the TSC frequency if it differs from what the vCPU has now. Without TSC scaling KVM
/// can only emulate a faster guest TSC (by catch-up), so a slower one is refused.
fn write_tsc_khz(fd: &VcpuFd, saved: Option<u32>) -> Result<(), Error> {
    let Some(khz) = saved else { return Ok(()) };
    let here = fd.get_tsc_khz().ok();
    if here == Some(khz) {
        return Ok(());
    }
    fd.set_tsc_khz(khz).map_err(|e| Error::StateMismatch {
        field: "vcpus[].tsc_khz",
        saved: khz.to_string(),
        here: format!("{here:?} (KVM_SET_TSC_KHZ: {e})"),
    })
}

/// Writes `state` into a vCPU that has never run or is out of KVM_RUN, in the order the
/// module documentation gives.
pub(crate) fn write_vcpu(
    fd: &VcpuFd,
    state: &VcpuState,
    xsave2_bytes: Option<usize>,
) -> Result<(), Error> {
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| Error::StateMismatch {
        field: "vcpus[].cpuid",
        saved: format!("{} entries", state.cpuid.len()),
        here: format!("at most {KVM_MAX_CPUID_ENTRIES}"),
    })?;
    fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    write_tsc_khz(fd, state.tsc_khz)?;
    fd.set_sregs(&state.sregs)
        .map_err(kvm_err("KVM_SET_SREGS"))?;
    fd.set_regs(&state.regs).map_err(kvm_err("KVM_SET_REGS"))?;
    write_xsave(fd, &state.xsave, xsave2_bytes)?;
    fd.set_xcrs(&state.xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
    fd.set_lapic(&state.lapic)
        .map_err(kvm_err("KVM_SET_LAPIC"))?;
    write_msrs(fd, state.index, &state.msrs)?;
    let mut events = state.vcpu_events;
    events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    fd.set_vcpu_events(&events)
        .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
    fd.set_mp_state(state.mp_state)
        .map_err(kvm_err("KVM_SET_MP_STATE"))?;
    fd.set_debug_regs(&state.debug_regs)
        .map_err(kvm_err("KVM_SET_DEBUGREGS"))
}
