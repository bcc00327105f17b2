//! A mapped host memory region.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use crate::{Backing, BackingKind, BlockMemory, Error, Result};

/// Host memory for one device region, mapped read-write for its whole life.
#[derive(Debug)]
pub struct HostRegion {
    pub(crate) addr: usize,
    pub(crate) size_bytes: u64,
    pub(crate) page_size_bytes: u64,
    pub(crate) kind: BackingKind,
    pub(crate) fd: Option<OwnedFd>,
    /// For private memory whose initial contents are a snapshot file mapped copy-on-write
    /// (`MAP_PRIVATE`): that file; see [`HostRegion::from_snapshot_file`].
    pub(crate) snapshot_file: Option<File>,
}

// SAFETY: the region is plain memory owned by this value; the raw address is only used for
// madvise/fallocate/munmap, which are thread safe.
unsafe impl Send for HostRegion {}
// SAFETY: as above; shared references only read the address and size.
unsafe impl Sync for HostRegion {}

impl HostRegion {
    /// Maps a region as `backing` describes.
    pub fn new(backing: &Backing) -> Result<Self> {
        let size = usize::try_from(backing.size_bytes)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| Error::InvalidBacking("size must be non-zero".into()))?;
        let (fd, page_size_bytes) = match backing.kind {
            BackingKind::Anon => (None, host_page_size()),
            BackingKind::Memfd => (Some(memfd(backing.size_bytes)?), host_page_size()),
            BackingKind::Hugetlbfs => {
                let (fd, page) = hugetlbfs_file(backing)?;
                (Some(fd), page)
            }
        };
        if !backing.size_bytes.is_multiple_of(page_size_bytes) {
            return Err(Error::InvalidBacking(format!(
                "size {:#x} is not a multiple of the page size {page_size_bytes:#x}",
                backing.size_bytes
            )));
        }
        let (flags, raw_fd) = match &fd {
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
            ),
            Some(fd) => (libc::MAP_SHARED | libc::MAP_NORESERVE, fd.as_raw_fd()),
        };
        let addr = map_aligned(size, flags, raw_fd)?;
        if backing.kind == BackingKind::Anon {
            // Like QEMU: ask for transparent huge pages, so the guest gets 2 MiB mappings in the
            // host and in KVM's page tables (a THP "madvise" host gives none otherwise).
            // SAFETY: advice on the mapping just created; failure only means no huge pages.
            unsafe { libc::madvise(addr as *mut libc::c_void, size, libc::MADV_HUGEPAGE) };
        }
        Ok(HostRegion {
            addr,
            size_bytes: backing.size_bytes,
            page_size_bytes,
            kind: backing.kind,
            fd,
            snapshot_file: None,
        })
    }

    /// Whether the contents came from a snapshot file mapped copy-on-write.
    pub fn is_snapshot_backed(&self) -> bool {
        self.snapshot_file.is_some()
    }

    /// The snapshot file the contents came from (see [`HostRegion::from_snapshot_file`]): a
    /// page the process never touched holds that file's data there.
    pub fn snapshot_file(&self) -> Option<&File> {
        self.snapshot_file.as_ref()
    }

    /// Host address of the first byte.
    pub fn host_addr(&self) -> usize {
        self.addr
    }

    /// Size of the region.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Page size of the backing (the huge page size for hugetlbfs).
    pub fn page_size_bytes(&self) -> u64 {
        self.page_size_bytes
    }

    /// The kind of backing.
    pub fn kind(&self) -> BackingKind {
        self.kind
    }

    /// The file behind a memfd or hugetlbfs region (mapped `MAP_SHARED`); `None` for private
    /// anonymous memory, which cannot be shared with another process (e.g. a vhost-user backend).
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// Whether a page the process never touched reads as zero (private anonymous memory), so a
    /// snapshot may skip it unread; file-backed memory may hold data in untouched pages.
    pub fn untouched_reads_zero(&self) -> bool {
        self.fd.is_none() && self.snapshot_file.is_none()
    }

    fn check_range(&self, offset_bytes: u64, size_bytes: u64) -> Result<()> {
        let bad = Error::BadRange {
            offset_bytes,
            size_bytes,
        };
        let end = offset_bytes
            .checked_add(size_bytes)
            .ok_or(Error::BadRange {
                offset_bytes,
                size_bytes,
            })?;
        if end > self.size_bytes
            || !offset_bytes.is_multiple_of(self.page_size_bytes)
            || !size_bytes.is_multiple_of(self.page_size_bytes)
        {
            return Err(bad);
        }
        Ok(())
    }

    fn madvise(&self, offset_bytes: u64, size_bytes: u64, advice: libc::c_int) -> io::Result<()> {
        // SAFETY: the range was checked to lie inside this mapping, which lives as long as self.
        let ret = unsafe {
            libc::madvise(
                (self.addr + offset_bytes as usize) as *mut libc::c_void,
                size_bytes as usize,
                advice,
            )
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl HostRegion {
    /// Returns the range to the host (see [`BlockMemory::discard`]).
    pub fn discard_range(&self, offset_bytes: u64, size_bytes: u64) -> Result<()> {
        self.check_range(offset_bytes, size_bytes)?;
        if size_bytes == 0 {
            return Ok(());
        }
        let result = match &self.fd {
            // MADV_DONTNEED on a private file mapping would bring the file's bytes back: map
            // fresh anonymous memory instead (see `snapshot_map`).
            None if self.snapshot_file.is_some() => {
                self.replace_with_anon(offset_bytes, size_bytes)
            }
            // Private anonymous memory: dropping the pages frees them.
            None => self.madvise(offset_bytes, size_bytes, libc::MADV_DONTNEED),
            // Shared memory lives in the file: punch a hole to free it.
            Some(fd) => punch_hole(fd, offset_bytes, size_bytes),
        };
        result.map_err(|source| Error::Discard {
            offset_bytes,
            size_bytes,
            source,
        })
    }

    /// Allocates the range now (see [`BlockMemory::populate`]).
    pub fn populate_range(&self, offset_bytes: u64, size_bytes: u64) -> Result<()> {
        self.check_range(offset_bytes, size_bytes)?;
        if size_bytes == 0 {
            return Ok(());
        }
        self.madvise(offset_bytes, size_bytes, libc::MADV_POPULATE_WRITE)
            .map_err(|source| Error::Populate {
                offset_bytes,
                size_bytes,
                source,
            })
    }
}

impl BlockMemory for HostRegion {
    fn discard(&mut self, offset_bytes: u64, size_bytes: u64) -> Result<()> {
        self.discard_range(offset_bytes, size_bytes)
    }

    fn populate(&mut self, offset_bytes: u64, size_bytes: u64) -> Result<()> {
        self.populate_range(offset_bytes, size_bytes)
    }
}

/// A region shared with whoever else maps it (the KVM slot backend, the guest memory map).
impl BlockMemory for Arc<HostRegion> {
    fn discard(&mut self, offset_bytes: u64, size_bytes: u64) -> Result<()> {
        self.discard_range(offset_bytes, size_bytes)
    }

    fn populate(&mut self, offset_bytes: u64, size_bytes: u64) -> Result<()> {
        self.populate_range(offset_bytes, size_bytes)
    }
}

impl Drop for HostRegion {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`, which nobody uses past self.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.size_bytes as usize) };
    }
}

/// Alignment of the host mapping: a region's guest address is at least this aligned, and KVM
/// can only map a huge page where guest and host addresses agree modulo its size.
pub const HOST_ALIGN_BYTES: usize = 1 << 30;

/// Maps `size` bytes at an address aligned to [`HOST_ALIGN_BYTES`] (or the size, if smaller,
/// rounded to a power of two), trimming the slack mapped to find one.
pub(crate) fn map_aligned(size: usize, flags: libc::c_int, fd: libc::c_int) -> Result<usize> {
    let align = HOST_ALIGN_BYTES.min(size.next_power_of_two());
    let create = |source| Error::Create {
        what: "host mapping",
        source,
    };
    let padded = size
        .checked_add(align)
        .ok_or_else(|| create(io::Error::from_raw_os_error(libc::ENOMEM)))?;
    // SAFETY: reserves fresh address space of the kernel's choice; nothing else is affected.
    let reserved = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            padded,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if reserved == libc::MAP_FAILED {
        return Err(create(io::Error::last_os_error()));
    }
    let start = reserved as usize;
    let aligned = start.next_multiple_of(align);
    // SAFETY: replaces part of the reservation made above, which nothing else uses.
    let addr = unsafe {
        libc::mmap(
            aligned as *mut libc::c_void,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_FIXED,
            fd,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        let err = io::Error::last_os_error();
        // SAFETY: releases the reservation made above.
        unsafe { libc::munmap(reserved, padded) };
        return Err(create(err));
    }
    // SAFETY: the head and tail of the reservation lie outside the mapping kept; unused.
    unsafe {
        if aligned > start {
            libc::munmap(reserved, aligned - start);
        }
        let tail = aligned + size;
        if start + padded > tail {
            libc::munmap(tail as *mut libc::c_void, start + padded - tail);
        }
    }
    Ok(aligned)
}

pub(crate) fn host_page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

fn punch_hole(fd: &OwnedFd, offset_bytes: u64, size_bytes: u64) -> io::Result<()> {
    // SAFETY: fallocate on an fd we own; the kernel checks the range.
    let ret = unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset_bytes as libc::off_t,
            size_bytes as libc::off_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn memfd(size_bytes: u64) -> Result<OwnedFd> {
    let name = CString::new("hotmem-device").expect("no NUL in name");
    // SAFETY: memfd_create with a valid C string; the returned fd is owned below.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(Error::Create {
            what: "memfd",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_len(&fd, size_bytes, "memfd")?;
    Ok(fd)
}

fn hugetlbfs_file(backing: &Backing) -> Result<(OwnedFd, u64)> {
    let dir = backing.hugetlbfs_dir.as_ref().ok_or_else(|| {
        Error::InvalidBacking("hugetlbfs backing needs a hugetlbfs mount directory".into())
    })?;
    let c_dir = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::InvalidBacking("hugetlbfs path contains NUL".into()))?;
    // SAFETY: statfs fills a zeroed struct from a valid C path.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above: valid pointers for the duration of the call.
    if unsafe { libc::statfs(c_dir.as_ptr(), &mut stat) } != 0 {
        return Err(Error::Create {
            what: "hugetlbfs statfs",
            source: io::Error::last_os_error(),
        });
    }
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    if stat.f_type as i64 != HUGETLBFS_MAGIC {
        return Err(Error::InvalidBacking(format!(
            "{} is not a hugetlbfs mount",
            dir.display()
        )));
    }
    let page_size = stat.f_bsize as u64;
    let file = tempfile_in(dir)?;
    let fd = OwnedFd::from(file);
    set_len(
        &fd,
        backing.size_bytes.next_multiple_of(page_size),
        "hugetlbfs file",
    )?;
    Ok((fd, page_size))
}

fn tempfile_in(dir: &std::path::Path) -> Result<File> {
    let path = dir.join(format!("hotmem-{}-{}", std::process::id(), unique()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| Error::Create {
            what: "hugetlbfs file",
            source,
        })?;
    // The file lives on through the fd; nothing else should find it.
    let _ = std::fs::remove_file(&path);
    Ok(file)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn set_len(fd: &OwnedFd, size_bytes: u64, what: &'static str) -> Result<()> {
    // SAFETY: ftruncate on an fd we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size_bytes as libc::off_t) } != 0 {
        return Err(Error::Create {
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Bytes of `[offset, offset + size)` resident in host memory (mincore), so tests running
    /// in parallel threads do not disturb each other as a process-wide RSS would.
    fn resident_bytes(region: &HostRegion, offset: u64, size: u64) -> u64 {
        let pages = (size / 4096) as usize;
        let mut vec = vec![0u8; pages];
        // SAFETY: the range lies inside the mapping owned by `region`; `vec` has a byte per page.
        let ret = unsafe {
            libc::mincore(
                (region.host_addr() + offset as usize) as *mut libc::c_void,
                size as usize,
                vec.as_mut_ptr(),
            )
        };
        assert_eq!(ret, 0);
        vec.iter().filter(|&&b| b & 1 == 1).count() as u64 * 4096
    }

    fn touch(region: &HostRegion, offset: u64, size: u64) {
        for page in (offset..offset + size).step_by(4096) {
            // SAFETY: inside the read-write mapping owned by `region`.
            unsafe { *((region.host_addr() + page as usize) as *mut u8) = 0xA5 };
        }
    }

    fn read(region: &HostRegion, offset: u64) -> u8 {
        // SAFETY: inside the read-write mapping owned by `region`.
        unsafe { *((region.host_addr() + offset as usize) as *const u8) }
    }

    #[test]
    fn discard_returns_anonymous_memory_to_the_host_and_zeroes_it() {
        let mut r = HostRegion::new(&Backing::anon(256 * MIB)).unwrap();
        touch(&r, 0, 128 * MIB);
        assert_eq!(resident_bytes(&r, 0, 256 * MIB), 128 * MIB);
        r.discard(0, 64 * MIB).unwrap();
        assert_eq!(resident_bytes(&r, 0, 256 * MIB), 64 * MIB);
        assert_eq!(read(&r, 4096), 0);
    }

    #[test]
    fn discard_punches_holes_in_memfd_memory() {
        let mut r = HostRegion::new(&Backing {
            kind: BackingKind::Memfd,
            size_bytes: 64 * MIB,
            hugetlbfs_dir: None,
        })
        .unwrap();
        touch(&r, 0, 64 * MIB);
        let blocks = |r: &HostRegion| {
            let fd = r.fd.as_ref().unwrap().as_raw_fd();
            // SAFETY: fstat on a valid fd into a zeroed struct.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
            st.st_blocks as u64 * 512
        };
        assert!(blocks(&r) >= 64 * MIB);
        r.discard(0, 32 * MIB).unwrap();
        assert!(blocks(&r) <= 32 * MIB);
        assert_eq!(read(&r, 0), 0);
        assert_eq!(read(&r, 32 * MIB), 0xA5);
    }

    #[test]
    fn populate_allocates_up_front() {
        let mut r = HostRegion::new(&Backing::anon(128 * MIB)).unwrap();
        assert_eq!(resident_bytes(&r, 0, 128 * MIB), 0);
        r.populate(0, 64 * MIB).unwrap();
        assert_eq!(resident_bytes(&r, 0, 128 * MIB), 64 * MIB);
    }

    #[test]
    fn unaligned_or_outside_ranges_are_refused() {
        let mut r = HostRegion::new(&Backing::anon(4 * MIB)).unwrap();
        assert!(matches!(r.discard(1, 4096), Err(Error::BadRange { .. })));
        assert!(matches!(r.discard(0, 8 * MIB), Err(Error::BadRange { .. })));
        assert!(matches!(
            r.populate(u64::MAX - 4095, 4096),
            Err(Error::BadRange { .. })
        ));
    }

    #[test]
    fn host_mappings_are_aligned_for_huge_pages() {
        for size in [4 * MIB, 64 * MIB, 2048 * MIB] {
            let r = HostRegion::new(&Backing::anon(size)).unwrap();
            assert_eq!(
                r.host_addr() % (size as usize).min(HOST_ALIGN_BYTES),
                0,
                "{size}"
            );
        }
    }

    #[test]
    fn hugetlbfs_needs_a_hugetlbfs_mount() {
        let err = HostRegion::new(&Backing {
            kind: BackingKind::Hugetlbfs,
            size_bytes: 4 * MIB,
            hugetlbfs_dir: Some("/tmp".into()),
        })
        .unwrap_err();
        assert!(err.to_string().contains("not a hugetlbfs mount"), "{err}");
    }
}
