//! Live migration between hotmem processes, independent of KVM.
//!
//! - [`protocol`]: framed, versioned messages over any `Read`/`Write` stream, and the
//!   handshake checks that refuse a mismatching destination by naming the field.
//! - [`tracker`]: dirty pages per memory region (KVM log bits, slots collected before they are
//!   unmapped, the VMM's own writes).
//! - [`source`]: the pre-copy driver behind [`source::SourceMemory`] (guest memory + dirty log).
//! - [`destination`]: the receiver behind [`destination::DestinationMemory`] (a memory sink);
//!   it never writes a block the latest bitmap says is unplugged.
//! - [`fake`]: in-memory implementations of both traits for tests.

pub mod destination;
mod error;
pub mod fake;
pub mod protocol;
pub mod source;
pub mod tracker;

pub use error::{Error, Result};
pub use protocol::{
    DeviceShape, Handshake, Message, PROTOCOL_VERSION, RamShape, Refusal, RegionId, Step,
};
pub use tracker::{Bitmap, DirtyPages};

/// Granule of dirty tracking and of memory on the wire (KVM logs 4 KiB pages).
pub const PAGE_BYTES: u64 = 4096;
