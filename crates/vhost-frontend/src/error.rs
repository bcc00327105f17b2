//! The crate's error type.

/// Why a memory table could not follow the mapped slots, or a backend could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend lacks something this frontend needs (e.g. protocol features).
    #[error("vhost-user backend '{backend}': {what}")]
    Unsupported {
        /// The backend's name.
        backend: String,
        /// What is missing.
        what: String,
    },
    /// A request to the backend failed (socket error, non-zero ack, disconnect).
    #[error("vhost-user backend '{backend}' failed {request}: {reason}")]
    Request {
        /// The backend's name.
        backend: String,
        /// The request that failed.
        request: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// Adding the region would exceed the number of regions the backend accepts.
    #[error(
        "vhost-user backend '{backend}' holds {held} memory regions and accepts at most {limit}"
    )]
    BackendFull {
        /// The backend's name.
        backend: String,
        /// Regions it holds now.
        held: usize,
        /// Its limit.
        limit: u32,
    },
    /// The region is not usable for a backend (zero size, overlap, no fd).
    #[error("invalid shared region at guest address {guest_addr:#x}: {reason}")]
    InvalidRegion {
        /// Guest address of the region.
        guest_addr: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A dirty-log range that is not 4 KiB aligned or not inside the log.
    #[error("dirty log range {start_gpa:#x}+{size_bytes:#x} refused: {reason}")]
    InvalidLogRange {
        /// Guest address of the range.
        start_gpa: u64,
        /// Its size.
        size_bytes: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The dirty log's shared memory could not be made.
    #[error("dirty log: {reason}")]
    DirtyLog {
        /// What failed.
        reason: String,
    },
    /// A backend id this table does not know.
    #[error("unknown vhost-user backend id {0}")]
    UnknownBackend(u32),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
