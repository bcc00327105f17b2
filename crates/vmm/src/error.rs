//! The VMM's error type.

/// What can stop the VMM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is wrong.
    #[error("{0}")]
    Config(String),
    /// A device could not be created or reset.
    #[error("{0}")]
    Device(String),
    /// The machine (KVM, vCPUs, boot) failed.
    #[error("machine")]
    Machine(#[from] machine::Error),
    /// Writing or reading a snapshot failed, or the snapshot does not fit this VM.
    #[error("snapshot")]
    Snapshot(#[from] snapshot::Error),
}
