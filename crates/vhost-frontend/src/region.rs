//! A piece of guest memory as a vhost-user backend sees it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use vhost::VhostUserMemoryRegionInfo;

/// One mapped memslot, shareable with a backend: guest range, the VMM's mapping of it, and the
/// file (memfd or hugetlbfs) plus offset the backend maps itself.
#[derive(Debug, Clone)]
pub struct SharedRegion {
    /// Guest physical address of the first byte.
    pub guest_addr: u64,
    /// Length of the region.
    pub size_bytes: u64,
    /// The VMM's (frontend's) virtual address of the first byte.
    pub host_addr: u64,
    /// The file behind the memory; must be mapped `MAP_SHARED` by the VMM.
    pub fd: Arc<OwnedFd>,
    /// Offset of the first byte in `fd`.
    pub fd_offset_bytes: u64,
}

/// What identifies a region towards a backend: REM_MEM_REG names exactly these three values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionKey {
    /// Guest physical address of the first byte.
    pub guest_addr: u64,
    /// Length of the region.
    pub size_bytes: u64,
    /// The frontend's virtual address of the first byte.
    pub host_addr: u64,
}

impl SharedRegion {
    /// The region's identity towards a backend.
    pub fn key(&self) -> RegionKey {
        RegionKey {
            guest_addr: self.guest_addr,
            size_bytes: self.size_bytes,
            host_addr: self.host_addr,
        }
    }

    /// One past the last guest address (saturating; valid regions never wrap).
    pub fn guest_end(&self) -> u64 {
        self.guest_addr.saturating_add(self.size_bytes)
    }

    /// Whether the guest ranges of `self` and `other` share a byte.
    pub fn overlaps(&self, other: &SharedRegion) -> bool {
        self.guest_addr < other.guest_end() && other.guest_addr < self.guest_end()
    }

    /// The description the `vhost` crate sends; the fd stays owned by `self`.
    pub(crate) fn info(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: self.guest_addr,
            memory_size: self.size_bytes,
            userspace_addr: self.host_addr,
            mmap_offset: self.fd_offset_bytes,
            mmap_handle: self.fd.as_raw_fd(),
        }
    }

    pub(crate) fn check(&self) -> crate::Result<()> {
        let bad = |reason| crate::Error::InvalidRegion {
            guest_addr: self.guest_addr,
            reason,
        };
        if self.size_bytes == 0 {
            return Err(bad("size is zero"));
        }
        if self.guest_addr.checked_add(self.size_bytes).is_none()
            || self.host_addr.checked_add(self.size_bytes).is_none()
            || self.fd_offset_bytes.checked_add(self.size_bytes).is_none()
        {
            return Err(bad("range wraps around"));
        }
        Ok(())
    }
}
