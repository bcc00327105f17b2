//! The snapshot crate's error type.

use std::io;
use std::path::PathBuf;

/// Why a snapshot could not be written or read.
///
/// Every refusal of a state file names what was wrong; nothing is restored from a refused file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the snapshot magic: not a hotmem state file.
    #[error("not a hotmem snapshot state file (magic {found:02x?}, expected {expected:02x?})")]
    WrongMagic {
        /// The first bytes found.
        found: Vec<u8>,
        /// The magic expected.
        expected: [u8; 8],
    },
    /// The format version is not one this reader knows (newer hotmem, or garbage).
    #[error(
        "snapshot format version {found} (written by hotmem {writer}) is not supported: this \
         hotmem reads versions {oldest} to {newest}"
    )]
    UnknownVersion {
        /// Version in the file.
        found: u32,
        /// hotmem version string of the writer, as recorded (or "unknown" if unreadable).
        writer: String,
        /// Oldest version this reader knows.
        oldest: u32,
        /// Newest version this reader knows.
        newest: u32,
    },
    /// The file ends before the length its header announces.
    #[error("state file is truncated: {needed_bytes} bytes needed, {actual_bytes} present")]
    Truncated {
        /// Bytes the header announces.
        needed_bytes: u64,
        /// Bytes in the file.
        actual_bytes: u64,
    },
    /// The file is longer than its header announces.
    #[error("state file has {extra_bytes} unexpected bytes after its payload")]
    TrailingBytes {
        /// Bytes past the payload.
        extra_bytes: u64,
    },
    /// The announced payload is larger than any state this reader accepts.
    #[error("state payload of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLarge {
        /// Announced size.
        size_bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
    /// The header's version string is not valid.
    #[error("state file header is corrupted: {0}")]
    BadHeader(String),
    /// The contents do not match the stored checksum.
    #[error(
        "state file is corrupted: CRC-32 {computed:#010x} does not match the stored {stored:#010x}"
    )]
    ChecksumMismatch {
        /// Stored in the header.
        stored: u32,
        /// Computed over the contents.
        computed: u32,
    },
    /// The payload passed the checksum but does not decode as this format version.
    #[error("state payload (format version {version}) does not decode: {source}")]
    Decode {
        /// Format version being decoded.
        version: u32,
        /// The decoder's error.
        #[source]
        source: postcard::Error,
    },
    /// Encoding the state failed.
    #[error("cannot encode the snapshot state: {0}")]
    Encode(#[source] postcard::Error),
    /// A component of the snapshot is missing, of the wrong kind or of an unknown version.
    #[error("snapshot component '{name}': {reason}")]
    Component {
        /// Component name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A file name inside the snapshot would leave the snapshot directory.
    #[error("snapshot names an unsafe file '{0}' (plain file names only)")]
    BadFileName(String),
    /// A memory file does not fit the region it should restore.
    #[error("memory file {}: {reason}", path.display())]
    MemoryFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A byte range lies outside the memory it refers to.
    #[error(
        "range {offset_bytes:#x}+{size_bytes:#x} lies outside memory of {memory_size_bytes:#x} bytes"
    )]
    BadRange {
        /// Start.
        offset_bytes: u64,
        /// Length.
        size_bytes: u64,
        /// Size of the memory.
        memory_size_bytes: u64,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
