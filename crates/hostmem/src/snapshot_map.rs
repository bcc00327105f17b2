//! Lazy restore: private memory whose initial contents are a snapshot's memory file.
//!
//! Only the file's data extents are mapped from the file (`MAP_PRIVATE`, copy-on-write); its
//! holes — pages the guest never touched, every block unplugged when the snapshot was taken —
//! are private anonymous memory, as in a fresh VM. Mapping the holes from the file too would
//! cost memory for nothing: a fault on a hole of a tmpfs file allocates a page *in the file*
//! (and a write fault a second, private copy), which is never freed while the file exists, not
//! even when the guest unplugs that memory. A VM restored from a tmpfs snapshot that grows and
//! shrinks would keep allocating pages the host cannot reclaim (the nested e2e host, with its
//! snapshot in a RAM-backed /tmp, ran out of memory and the guest stalled).
//!
//! Discarding (unplug) maps fresh anonymous memory over the range: `MADV_DONTNEED` on a
//! private file mapping drops the private copies and the next access reads the *file* again,
//! so an unplugged-then-replugged block would show the snapshot's data instead of zeroes.
//! `MADV_REMOVE` is refused on private mappings and punching holes in the file would change
//! the snapshot. Replacing the mapping (what Firecracker does for its balloon) frees the private
//! copies, zeroes the range, and KVM drops its view of the old pages through its MMU notifier.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use crate::region::{host_page_size, map_aligned};
use crate::{BackingKind, Error, HostRegion, Result};

/// At most this many separate file mappings per region: the kernel limits a process's
/// mappings (`vm.max_map_count`, 65530 by default), and later unplugs split them further.
pub const MAX_FILE_MAPPINGS: usize = 4096;

/// A byte range of the file and of the region (they coincide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRange {
    pub offset_bytes: u64,
    pub size_bytes: u64,
}

impl HostRegion {
    /// Private memory of the file's size whose contents are `file`: its data extents mapped
    /// copy-on-write (read from the file when the guest first touches them, writes stay
    /// private, the file is never modified), its holes anonymous memory. Nothing is read here,
    /// so this takes the same time whatever the amount of data. Discarding a range replaces it
    /// with fresh anonymous memory, so it reads as zero. The file must not change while mapped:
    /// write new snapshots to new files.
    pub fn from_snapshot_file(file: &File) -> Result<Self> {
        let size_bytes = file_size_bytes(file)?;
        let page_size_bytes = host_page_size();
        let size = usize::try_from(size_bytes)
            .ok()
            .filter(|&s| s > 0 && size_bytes.is_multiple_of(page_size_bytes))
            .ok_or_else(|| {
                Error::InvalidBacking(format!(
                    "snapshot memory file of {size_bytes:#x} bytes is empty or not page-sized"
                ))
            })?;
        let addr = map_aligned(
            size,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
        )?;
        // From here on, dropping `region` unmaps everything mapped so far.
        let mut region = HostRegion {
            addr,
            size_bytes,
            page_size_bytes,
            kind: BackingKind::Anon,
            fd: None,
            snapshot_file: None,
        };
        // SAFETY: advice on the mapping just created; failure only means no huge pages.
        unsafe { libc::madvise(addr as *mut libc::c_void, size, libc::MADV_HUGEPAGE) };
        region.overlay_snapshot_file(file)?;
        Ok(region)
    }

    /// Makes this private anonymous memory's contents `file`'s, as
    /// [`HostRegion::from_snapshot_file`] does for new memory: the file's data extents are
    /// mapped copy-on-write over the region (read when first touched), its holes left as they
    /// are (they must read zero: the region is fresh, or its owner zeroed them). Discarding a
    /// range later replaces it with fresh anonymous memory. Nothing may use the region while
    /// this runs (e.g. boot RAM before any vCPU runs); KVM follows the new pages through its
    /// MMU notifier. The file must not change while mapped.
    pub fn overlay_snapshot_file(&mut self, file: &File) -> Result<()> {
        if self.kind != BackingKind::Anon || self.fd.is_some() || self.snapshot_file.is_some() {
            return Err(Error::InvalidBacking(
                "only fresh private anonymous memory can map a snapshot file".into(),
            ));
        }
        let file_bytes = file_size_bytes(file)?;
        if file_bytes != self.size_bytes {
            return Err(Error::InvalidBacking(format!(
                "snapshot memory file of {file_bytes:#x} bytes for {:#x} bytes of memory",
                self.size_bytes
            )));
        }
        let extents = data_extents(file).map_err(|source| Error::Create {
            what: "snapshot memory file extents",
            source,
        })?;
        let kept = file.try_clone().map_err(|source| Error::Create {
            what: "snapshot memory file handle",
            source,
        })?;
        let mappings = file_mappings(
            &extents,
            self.page_size_bytes,
            self.size_bytes,
            MAX_FILE_MAPPINGS,
        );
        // Recorded first: once any range is mapped, untouched pages may hold file data.
        self.snapshot_file = Some(kept);
        for range in mappings {
            self.map_file_range(file, range)
                .map_err(|source| Error::Create {
                    what: "snapshot memory file mapping",
                    source,
                })?;
        }
        Ok(())
    }

    /// Maps `range` of `file` copy-on-write at the same offset of this region.
    fn map_file_range(&self, file: &File, range: FileRange) -> io::Result<()> {
        let at = (self.addr + range.offset_bytes as usize) as *mut libc::c_void;
        // SAFETY: replaces pages inside this region's own mapping (`file_mappings` keeps ranges
        // inside the region and page aligned); the callers own the region exclusively (fresh,
        // or `&mut self`) and nothing else uses its memory meanwhile.
        let ret = unsafe {
            libc::mmap(
                at,
                range.size_bytes as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE | libc::MAP_FIXED,
                file.as_raw_fd(),
                range.offset_bytes as libc::off_t,
            )
        };
        if ret == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Maps fresh private anonymous memory over a checked range of this mapping.
    pub(crate) fn replace_with_anon(&self, offset_bytes: u64, size_bytes: u64) -> io::Result<()> {
        let at = (self.addr + offset_bytes as usize) as *mut libc::c_void;
        // SAFETY: replaces pages inside this region's own mapping (range checked by the
        // caller); the old contents are being discarded, which is the point.
        let ret = unsafe {
            libc::mmap(
                at,
                size_bytes as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if ret == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: advice on the mapping just created; failure only means no huge pages.
        unsafe { libc::madvise(at, size_bytes as usize, libc::MADV_HUGEPAGE) };
        Ok(())
    }
}

/// The size of a snapshot memory file.
fn file_size_bytes(file: &File) -> Result<u64> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|source| Error::Create {
            what: "snapshot memory file",
            source,
        })
}

/// The data extents of `file` (`SEEK_DATA`/`SEEK_HOLE`), in order. A filesystem without
/// sparse-file support reports the whole file as one extent.
pub fn data_extents(file: &File) -> io::Result<Vec<FileRange>> {
    let len = file.metadata()?.len();
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        // SAFETY: lseek on an fd we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(err);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        extents.push(FileRange {
            offset_bytes: data as u64,
            size_bytes: (hole - data) as u64,
        });
        pos = hole as u64;
    }
    Ok(extents)
}

/// The file ranges to map: every extent widened to whole pages, touching ranges merged, and
/// — if that leaves more than `max_mappings` — widened to ever coarser power-of-two units until
/// it does not (a little hole mapped from the file costs only what the guest touches of it).
pub(crate) fn file_mappings(
    extents: &[FileRange],
    page_size_bytes: u64,
    size_bytes: u64,
    max_mappings: usize,
) -> Vec<FileRange> {
    let mut unit = page_size_bytes;
    loop {
        let mut merged: Vec<FileRange> = Vec::new();
        for e in extents {
            let start = e.offset_bytes / unit * unit;
            let end = e
                .offset_bytes
                .saturating_add(e.size_bytes)
                .next_multiple_of(unit)
                .min(size_bytes);
            if start >= end {
                continue;
            }
            match merged.last_mut() {
                Some(last) if last.offset_bytes + last.size_bytes >= start => {
                    last.size_bytes =
                        end.max(last.offset_bytes + last.size_bytes) - last.offset_bytes;
                }
                _ => merged.push(FileRange {
                    offset_bytes: start,
                    size_bytes: end - start,
                }),
            }
        }
        if merged.len() <= max_mappings.max(1) || unit >= size_bytes {
            return merged;
        }
        unit *= 2;
    }
}

#[cfg(test)]
#[path = "snapshot_map_tests.rs"]
mod tests;
