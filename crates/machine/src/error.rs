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
    /// `start` called while vCPUs are running, or `run` after a host stop request.
    #[error("vCPUs are in the wrong state for this call: {0}")]
    VcpuState(&'static str),
}
