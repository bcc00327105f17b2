//! The virtio-mem crate's error type.

/// Errors from configuring, resizing, negotiating, restoring or serving the device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The block size is unusable.
    #[error(
        "invalid virtio-mem block size {block_size_bytes:#x}: {reason} \
         (allowed: a power of two, at least 1 MiB and at least the backing page size)"
    )]
    BlockSize {
        /// The rejected block size.
        block_size_bytes: u64,
        /// Why it was rejected.
        reason: String,
    },
    /// The device configuration is inconsistent.
    #[error("invalid virtio-mem configuration: {0}")]
    Config(String),
    /// A requested size the device cannot take.
    #[error(
        "invalid requested size {requested_bytes:#x}: {reason}; allowed values are multiples of \
         the block size {block_size_bytes:#x} from 0 to the region size {region_size_bytes:#x}"
    )]
    RequestedSize {
        /// The rejected value.
        requested_bytes: u64,
        /// Why it was rejected.
        reason: &'static str,
        /// The device block size.
        block_size_bytes: u64,
        /// The device region size.
        region_size_bytes: u64,
    },
    /// Mapping or unmapping memslots failed.
    #[error("virtio-mem memslot operation failed")]
    Memslots(#[from] memslots::Error),
    /// Discarding or populating host memory failed.
    #[error("virtio-mem host memory operation failed")]
    Memory(#[from] hostmem::Error),
    /// The driver's features cannot be served.
    #[error(
        "refusing driver features {driver_features:#x}: the driver did not accept \
         UNPLUGGED_INACCESSIBLE and mapping the usable region for it failed"
    )]
    LegacyMapping {
        /// The features the driver acknowledged.
        driver_features: u64,
        /// The mapping failure.
        #[source]
        source: memslots::Error,
    },
    /// A saved device state does not fit this device.
    #[error("cannot restore virtio-mem state: {0}")]
    State(String),
    /// Memory is still plugged and could not be unplugged now.
    #[error("unplugging all memory failed; memory stays plugged and the guest must retry")]
    UnplugAllFailed(#[source] hostmem::Error),
    /// The guest sent a malformed request chain.
    #[error("malformed virtio-mem request: {0}")]
    Malformed(String),
    /// An unknown request type.
    #[error("unknown virtio-mem request type {0}")]
    UnknownRequestType(u16),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
