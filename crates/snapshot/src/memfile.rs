//! Sparse memory files.
//!
//! A region's file has the region's size; byte `o` of the file is byte `o` of the region. Only
//! pages that hold data are written: ranges the caller does not name (unplugged virtio-mem
//! blocks) are never read, pages the process never touched are found in `/proc/self/pagemap`
//! and skipped without reading them, and touched pages that hold only zeroes are skipped after
//! a read. Everything skipped is a hole (`SEEK_HOLE`, no blocks allocated), which reads as zero.

use std::fs::{File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::path::Path;

use hostmem::HostRegion;

use crate::{Error, Result};

/// Granule of the scan: pages are looked up and written in chunks of this size.
const CHUNK_BYTES: u64 = 2 << 20;
/// Size of one `/proc/self/pagemap` entry.
const PAGEMAP_ENTRY_BYTES: u64 = 8;
/// Pagemap bit 63: page present in RAM.
const PAGEMAP_PRESENT: u64 = 1 << 63;
/// Pagemap bit 62: page swapped out.
const PAGEMAP_SWAPPED: u64 = 1 << 62;

/// A byte range of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// Start, from the region's first byte.
    pub offset_bytes: u64,
    /// Length.
    pub size_bytes: u64,
}

/// Whether pages the process never touched can hold data.
#[derive(Debug, Clone, Copy)]
pub enum Untouched<'a> {
    /// Private anonymous memory: a page absent from the page tables reads as zero.
    ReadsZero,
    /// Shared file-backed memory (memfd, hugetlbfs): an absent page may still hold data, so
    /// every page in the named ranges is read.
    MayHoldData,
    /// A snapshot file mapped copy-on-write: an absent page holds this file's data, so only
    /// pages touched or inside the file's data extents are read.
    FileData(&'a File),
}

/// Host memory to save from or load into, borrowed for `'a`.
#[derive(Debug, Clone, Copy)]
pub struct HostMemory<'a> {
    addr: usize,
    size_bytes: u64,
    untouched: Untouched<'a>,
    _borrow: PhantomData<&'a [u8]>,
}

impl<'a> HostMemory<'a> {
    /// The whole of `region`.
    pub fn from_region(region: &'a HostRegion) -> Self {
        HostMemory {
            addr: region.host_addr(),
            size_bytes: region.size_bytes(),
            untouched: match region.snapshot_file() {
                Some(file) => Untouched::FileData(file),
                None if region.untouched_reads_zero() => Untouched::ReadsZero,
                None => Untouched::MayHoldData,
            },
            _borrow: PhantomData,
        }
    }

    /// Memory at `addr`.
    ///
    /// # Safety
    /// `[addr, addr + size_bytes)` must be mapped readable and writable for `'a`, and nothing
    /// else may access it while a save or load runs (the VM is paused).
    pub unsafe fn from_raw(addr: usize, size_bytes: u64, untouched: Untouched<'a>) -> Self {
        HostMemory {
            addr,
            size_bytes,
            untouched,
            _borrow: PhantomData,
        }
    }

    /// Size of the memory.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn check(&self, range: ByteRange) -> Result<()> {
        let end = range.offset_bytes.checked_add(range.size_bytes);
        if end.is_none_or(|e| e > self.size_bytes) {
            return Err(Error::BadRange {
                offset_bytes: range.offset_bytes,
                size_bytes: range.size_bytes,
                memory_size_bytes: self.size_bytes,
            });
        }
        Ok(())
    }

    fn bytes(&self, offset_bytes: u64, size_bytes: u64) -> &[u8] {
        // SAFETY: callers checked the range; `from_region`/`from_raw` guarantee the mapping is
        // readable for 'a and not written concurrently.
        unsafe {
            std::slice::from_raw_parts(
                (self.addr + offset_bytes as usize) as *const u8,
                size_bytes as usize,
            )
        }
    }

    #[allow(clippy::mut_from_ref)]
    fn bytes_mut(&self, offset_bytes: u64, size_bytes: u64) -> &mut [u8] {
        // SAFETY: as in `bytes`; the mapping is writable and nothing else accesses it during a
        // load, and the slices a load creates never overlap.
        unsafe {
            std::slice::from_raw_parts_mut(
                (self.addr + offset_bytes as usize) as *mut u8,
                size_bytes as usize,
            )
        }
    }
}

/// What a save did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SaveStats {
    /// Bytes in the ranges named.
    pub scanned_bytes: u64,
    /// Bytes written to the file.
    pub data_bytes: u64,
    /// Touched pages skipped because they hold only zeroes.
    pub zero_bytes: u64,
    /// Pages skipped unread because the process never touched them.
    pub untouched_bytes: u64,
}

/// What a load did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadStats {
    /// Bytes copied from data extents.
    pub data_bytes: u64,
    /// Data extents read.
    pub extents: u64,
}

/// Writes the pages of `ranges` that hold data to a new file at `path` of the memory's size;
/// `progress` gets the bytes scanned so far after each chunk.
///
/// The file is written under a temporary name and renamed over `path` at the end, so a region
/// lazily restored from the old file at `path` (mapped copy-on-write) keeps its contents.
pub fn save(
    memory: &HostMemory,
    ranges: &[ByteRange],
    path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<SaveStats> {
    for &range in ranges {
        memory.check(range)?;
    }
    let tmp = temporary_name(path);
    let io_err = |e| Error::io(&tmp, e);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err)?;
    file.set_len(memory.size_bytes).map_err(io_err)?;
    let (pagemap, file_data) = match memory.untouched {
        Untouched::ReadsZero => (File::open("/proc/self/pagemap").ok(), None),
        Untouched::MayHoldData => (None, None),
        Untouched::FileData(source) => (
            File::open("/proc/self/pagemap").ok(),
            Some(data_extents(source).map_err(io_err)?),
        ),
    };
    let page = page_size_bytes();
    let mut scan = Scan {
        memory,
        file: &file,
        pagemap: pagemap.as_ref(),
        file_data: file_data.as_deref(),
        page_bytes: page,
        stats: SaveStats::default(),
        entries: Vec::new(),
    };
    for range in ranges {
        let start = range.offset_bytes / page * page;
        let end = (range.offset_bytes + range.size_bytes).next_multiple_of(page);
        let mut at = start;
        while at < end {
            let len = (end - at).min(CHUNK_BYTES - at % CHUNK_BYTES);
            scan.chunk(at, len).map_err(io_err)?;
            at += len;
            progress(scan.stats.scanned_bytes);
        }
    }
    file.sync_all().map_err(io_err)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(scan.stats)
}

fn temporary_name(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

struct Scan<'a, 'm> {
    memory: &'a HostMemory<'m>,
    file: &'a File,
    pagemap: Option<&'a File>,
    /// Data extents of the file a copy-on-write mapping reads untouched pages from.
    file_data: Option<&'a [ByteRange]>,
    page_bytes: u64,
    stats: SaveStats,
    entries: Vec<u8>,
}

impl Scan<'_, '_> {
    /// Saves `[offset, offset + len)` (page aligned, within one chunk).
    fn chunk(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.stats.scanned_bytes += len;
        let pages = (len / self.page_bytes) as usize;
        let mut touched = self.touched_pages(offset, pages);
        if let (Some(touched), Some(extents)) = (touched.as_mut(), self.file_data) {
            mark_extents(touched, offset, self.page_bytes, extents);
        }
        let mut run: Option<(u64, u64)> = None;
        for index in 0..pages {
            let at = offset + index as u64 * self.page_bytes;
            let data = if touched.as_ref().is_none_or(|t| t[index]) {
                let bytes = self.memory.bytes(at, self.page_bytes);
                let zero = is_zero(bytes);
                if zero {
                    self.stats.zero_bytes += self.page_bytes;
                }
                !zero
            } else {
                self.stats.untouched_bytes += self.page_bytes;
                false
            };
            run = match (run, data) {
                (Some((start, end)), true) if end == at => Some((start, end + self.page_bytes)),
                (Some(r), true) => {
                    self.write(r)?;
                    Some((at, at + self.page_bytes))
                }
                (None, true) => Some((at, at + self.page_bytes)),
                (Some(r), false) => {
                    self.write(r)?;
                    None
                }
                (None, false) => None,
            };
        }
        if let Some(r) = run {
            self.write(r)?;
        }
        Ok(())
    }

    fn write(&mut self, (start, end): (u64, u64)) -> io::Result<()> {
        self.file
            .write_all_at(self.memory.bytes(start, end - start), start)?;
        self.stats.data_bytes += end - start;
        Ok(())
    }

    /// Which of the pages were ever touched (present or swapped), or `None` if unknown.
    fn touched_pages(&mut self, offset: u64, pages: usize) -> Option<Vec<bool>> {
        let pagemap = self.pagemap?;
        let vpage = (self.memory.addr as u64 + offset) / self.page_bytes;
        self.entries.resize(pages * PAGEMAP_ENTRY_BYTES as usize, 0);
        pagemap
            .read_exact_at(&mut self.entries, vpage * PAGEMAP_ENTRY_BYTES)
            .ok()?;
        Some(
            self.entries
                .chunks_exact(PAGEMAP_ENTRY_BYTES as usize)
                .map(|e| {
                    let entry = u64::from_le_bytes(e.try_into().expect("8-byte chunk"));
                    entry & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) != 0
                })
                .collect(),
        )
    }
}

/// Marks the pages of the chunk at `offset` that lie in one of `extents` (sorted).
fn mark_extents(pages: &mut [bool], offset: u64, page_bytes: u64, extents: &[ByteRange]) {
    let end = offset + pages.len() as u64 * page_bytes;
    let first = extents.partition_point(|e| e.offset_bytes + e.size_bytes <= offset);
    for extent in extents[first..].iter().take_while(|e| e.offset_bytes < end) {
        let from = extent.offset_bytes.max(offset);
        let to = (extent.offset_bytes + extent.size_bytes).min(end);
        let first_page = ((from - offset) / page_bytes) as usize;
        let last_page = (to - offset).div_ceil(page_bytes) as usize;
        pages[first_page..last_page].fill(true);
    }
}

fn is_zero(bytes: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets the aligned middle.
        unsafe { bytes.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

fn page_size_bytes() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Opens a memory file and checks that its size is `size_bytes`.
pub fn open_checked(path: &Path, size_bytes: u64) -> Result<File> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len != size_bytes {
        return Err(Error::MemoryFile {
            path: path.to_owned(),
            reason: format!("it has {len:#x} bytes but the region has {size_bytes:#x}"),
        });
    }
    Ok(file)
}

/// The data extents of `file` (`SEEK_DATA`/`SEEK_HOLE`), in order (`hostmem::data_extents`).
pub fn data_extents(file: &File) -> io::Result<Vec<ByteRange>> {
    Ok(hostmem::data_extents(file)?
        .into_iter()
        .map(|e| ByteRange {
            offset_bytes: e.offset_bytes,
            size_bytes: e.size_bytes,
        })
        .collect())
}

/// Copies the data extents of the memory file at `path` into `memory` (which must read as zero
/// everywhere else, e.g. fresh anonymous memory).
pub fn load(path: &Path, memory: &HostMemory) -> Result<LoadStats> {
    let file = open_checked(path, memory.size_bytes)?;
    let mut stats = LoadStats::default();
    for extent in data_extents(&file).map_err(|e| Error::io(path, e))? {
        memory.check(extent)?;
        let target = memory.bytes_mut(extent.offset_bytes, extent.size_bytes);
        file.read_exact_at(target, extent.offset_bytes)
            .map_err(|e| Error::io(path, e))?;
        stats.data_bytes += extent.size_bytes;
        stats.extents += 1;
    }
    Ok(stats)
}

#[cfg(test)]
#[path = "memfile_tests.rs"]
mod tests;
