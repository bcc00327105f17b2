//! The virtio-mem device (virtio id 24), without a KVM dependency.
//!
//! The guest plugs and unplugs fixed-size blocks of a large device region; the device answers
//! exactly as QEMU does (ACK/NACK/BUSY/ERROR in QEMU's order of checks) and keeps the region's
//! memslots mapped only while they hold plugged memory ([`memslots::Memslots`]), giving memory
//! back to the host on unplug ([`hostmem::BlockMemory`]).
//!
//! - [`settings`]: creation settings ([`VirtioMemConfig`], [`Prealloc`]) and their validation.
//! - [`block_size`]: default and validation of the block size.
//! - [`features`]: feature bits offered and negotiated.
//! - [`config`]: the 56-byte config space.
//! - [`request`]: the request/response wire format as typed values.
//! - [`blocks`]: the plugged-block bitmap.
//! - [`device`]: the state machine ([`VirtioMem`]).
//! - [`queue`]: serving a virtqueue of requests.
//! - [`populate`]: preallocating plugs populated outside the caller's lock.
//! - [`state`]: saving and restoring the device.
//! - [`stats`]: counters for metrics.

pub mod block_size;
pub mod blocks;
pub mod config;
pub mod device;
mod error;
pub mod features;
pub mod populate;
pub mod queue;
pub mod request;
pub mod settings;
pub mod state;
pub mod stats;

pub use block_size::{BlockSizeInputs, default_block_size_bytes, validate_block_size};
pub use config::{CONFIG_SPACE_BYTES, ConfigSpace};
pub use device::{ConfigChanged, Status, VirtioMem};
pub use error::{Error, Result};
pub use features::{FeatureOffer, VIRTIO_ID_MEM};
pub use populate::PopulateJob;
pub use queue::QueueOutcome;
pub use request::{BlockRange, RangeState, Request, RequestKind, Response, ResponseKind};
pub use settings::{Prealloc, USABLE_EXTENT_BYTES, VirtioMemConfig};
pub use state::DeviceState;
pub use stats::{ResponseCounters, Stats};
