//! The crate's error type.

use crate::bus::BusKind;

/// Errors creating or running a machine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// errno.
        source: kvm_ioctls::Error,
    },
    /// Boot data could not be built or loaded.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// Host memory for boot RAM could not be mapped.
    #[error("mapping boot RAM: {0}")]
    GuestMemory(String),
    /// A bus range overlaps an existing one or is empty.
    #[error("{kind:?} bus range {base:#x}+{len:#x} is empty or overlaps")]
    BusOverlap {
        /// Bus.
        kind: BusKind,
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
    /// No device at that address.
    #[error("no device at {addr:#x} on the {kind:?} bus")]
    BusNoDevice {
        /// Bus.
        kind: BusKind,
        /// Address.
        addr: u64,
    },
    /// No free GSI left.
    #[error("no free GSI for MSI routing")]
    GsiExhausted,
    /// Routing a GSI that was never allocated.
    #[error("GSI {gsi} was not allocated")]
    GsiNotAllocated {
        /// The GSI.
        gsi: u32,
    },
    /// KVM accepted fewer boot MSRs than given.
    #[error("KVM set only {written} boot MSRs")]
    MsrSetup {
        /// How many were accepted.
        written: usize,
    },
    /// Bad machine configuration.
    #[error("invalid machine config: {0}")]
    Config(String),
    /// Host I/O (eventfd, serial output file, thread spawn).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// A vCPU hit an unrecoverable condition.
    #[error("vcpu{vcpu}: {reason}")]
    VcpuFatal {
        /// vCPU index.
        vcpu: u8,
        /// What happened.
        reason: String,
    },
    /// A saved state does not fit this machine or host.
    #[error("saved state does not fit: {field} is {saved} in the state, {here} here")]
    StateMismatch {
        /// Which field of the state.
        field: &'static str,
        /// Its value in the state.
        saved: String,
        /// What this machine or host has.
        here: String,
    },
    /// A saved vCPU's CPUID has features this host's KVM does not offer.
    #[error(
        "saved state does not fit: vcpu{vcpu} CPUID leaf {leaf:#x}.{subleaf} {register} needs bits {missing_bits:#x} this host's KVM lacks"
    )]
    CpuidUnsupported {
        /// vCPU index.
        vcpu: u8,
        /// CPUID leaf (function).
        leaf: u32,
        /// Subleaf (index).
        subleaf: u32,
        /// Register name, or "vendor" for a different CPU vendor.
        register: &'static str,
        /// Feature bits missing here.
        missing_bits: u32,
    },
    /// KVM refused a saved MSR value.
    #[error("vcpu{vcpu}: KVM refused saved MSR {msr_index:#x}")]
    MsrRestore {
        /// vCPU index.
        vcpu: u8,
        /// The MSR.
        msr_index: u32,
    },
    /// `start` called while vCPUs are running, or `run` after a host stop request.
    #[error("vCPUs are in the wrong state for this call: {0}")]
    VcpuState(&'static str),
}
