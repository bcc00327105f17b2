//! Host memory behind a device region.
//!
//! [`HostRegion`] maps the region (private anonymous with `MAP_NORESERVE`, a shared memfd, or a
//! hugetlbfs file) and implements [`BlockMemory`]: giving memory back to the host on unplug
//! (`MADV_DONTNEED` or `fallocate(PUNCH_HOLE)`) and optionally populating it on plug
//! (`MADV_POPULATE_WRITE`). [`FakeMemory`] implements the same trait for tests, with faults on
//! request.

mod backing;
mod error;
mod fake;
mod region;
mod snapshot_map;

pub use backing::{Backing, BackingKind};
pub use error::{Error, Result};
pub use fake::{FakeMemory, MemoryOp};
pub use region::HostRegion;
pub use snapshot_map::{FileRange, MAX_FILE_MAPPINGS, data_extents};

/// What a memory device needs from the memory behind it.
pub trait BlockMemory {
    /// Returns `[offset_bytes, offset_bytes + size_bytes)` to the host; later reads see zeroes.
    fn discard(&mut self, offset_bytes: u64, size_bytes: u64) -> Result<()>;
    /// Allocates host memory for the range now, so the guest never faults on it.
    fn populate(&mut self, offset_bytes: u64, size_bytes: u64) -> Result<()>;
}
