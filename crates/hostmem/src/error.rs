//! The hostmem crate's error type.

use std::io;

/// Errors from mapping, discarding or populating host memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing configuration cannot work.
    #[error("invalid memory backing: {0}")]
    InvalidBacking(String),
    /// Creating the backing file or mapping failed.
    #[error("cannot create {what}")]
    Create {
        /// What was being created.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A range lies outside the region or is not page aligned.
    #[error("range {offset_bytes:#x}+{size_bytes:#x} is not page-aligned inside the region")]
    BadRange {
        /// Start offset.
        offset_bytes: u64,
        /// Length.
        size_bytes: u64,
    },
    /// Giving memory back to the host failed.
    #[error("discarding {size_bytes:#x} bytes at offset {offset_bytes:#x} failed")]
    Discard {
        /// Start offset.
        offset_bytes: u64,
        /// Length.
        size_bytes: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Allocating memory up front failed (e.g. too few huge pages).
    #[error("populating {size_bytes:#x} bytes at offset {offset_bytes:#x} failed")]
    Populate {
        /// Start offset.
        offset_bytes: u64,
        /// Length.
        size_bytes: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
