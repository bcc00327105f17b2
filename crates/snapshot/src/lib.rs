//! hotmem snapshots, independent of KVM.
//!
//! A snapshot is a directory holding one state file ([`STATE_FILE_NAME`]) and one sparse memory
//! file per guest memory region (boot RAM, each virtio-mem device region).
//!
//! - [`format`]: the state file: magic, format version, hotmem version, payload length, CRC-32
//!   and a postcard payload; the reader dispatches on the format version and refuses bad files
//!   with distinct [`Error`] variants.
//! - [`model`]: what the payload holds ([`VmSnapshot`]): the machine and each device as named,
//!   versioned [`Component`] blobs, and the [`MemoryManifest`].
//! - [`v1`]: the frozen version-1 payload and its upgrade to the current one.
//! - [`memfile`]: writing guest memory to sparse files (untouched and all-zero pages, and every
//!   range the caller does not name, stay holes) and reading them back.
//! - [`dir`]: the directory layout and safe file names.

pub mod dir;
mod error;
pub mod format;
pub mod memfile;
pub mod model;
pub mod v1;

pub use dir::{STATE_FILE_NAME, SnapshotDir};
pub use error::{Error, Result};
pub use format::{CURRENT_FORMAT_VERSION, MAGIC, decode, encode};
pub use memfile::{ByteRange, HostMemory, LoadStats, SaveStats};
pub use model::{Component, DeviceSnapshot, GuestAddr, MemoryManifest, RegionFile, VmSnapshot};
