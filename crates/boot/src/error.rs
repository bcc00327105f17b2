//! The crate's error type.

use std::path::PathBuf;

/// Errors building boot data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Boot RAM size unusable.
    #[error("boot RAM size {ram_size_bytes} bytes must be >= 64 MiB and page aligned")]
    BadRamSize {
        /// Requested size.
        ram_size_bytes: u64,
    },
    /// The device area cannot hold another region.
    #[error("no room for a {size_bytes}-byte device region")]
    DeviceAreaExhausted {
        /// Requested size.
        size_bytes: u64,
    },
    /// vCPU count out of range for MP table / MADT.
    #[error("vCPU count {num_cpus} must be 1..=254")]
    BadCpuCount {
        /// Requested count.
        num_cpus: u8,
    },
    /// The NUMA topology cannot be described as given.
    #[error("NUMA topology: {reason}")]
    BadNumaTopology {
        /// What is wrong.
        reason: String,
    },
    /// A table would not fit where it must go.
    #[error("firmware table address {addr:#x} out of range")]
    TableAddress {
        /// Offending address.
        addr: u64,
    },
    /// Opening or reading a boot file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// linux-loader rejected the kernel.
    #[error("loading kernel: {0}")]
    KernelLoad(#[from] linux_loader::loader::Error),
    /// The image has no setup header.
    #[error("kernel image is not a bzImage with a setup header")]
    NotBzImage,
    /// Command line does not fit.
    #[error("command line of {len} bytes exceeds {max}")]
    CmdlineTooLong {
        /// Length given.
        len: usize,
        /// Kernel limit.
        max: usize,
    },
    /// Initramfs does not fit in low RAM above the kernel.
    #[error("initramfs of {size_bytes} bytes does not fit in low RAM")]
    InitramfsTooLarge {
        /// Size.
        size_bytes: u64,
    },
    /// More e820 entries than the zero page holds.
    #[error("{count} e820 entries exceed the zero page table")]
    TooManyE820Entries {
        /// Entries built.
        count: usize,
    },
    /// Writing guest memory failed.
    #[error("writing guest memory at {addr:#x}: {source}")]
    GuestMemory {
        /// Address.
        addr: u64,
        /// Cause.
        source: vm_memory::GuestMemoryError,
    },
}
