//! The dirty log a vhost-user backend writes into while a migration runs: a bitmap in shared
//! memory (a memfd passed with SET_LOG_BASE), one bit per 4 KiB guest page, bit `p % 8` of byte
//! `p / 8` for page `p` (so bit `p % 64` of little-endian word `p / 64`). Backends set bits with
//! atomic ORs; [`BackendDirtyLog::take_range`] takes and clears them with atomic swaps, so a bit
//! set at any moment is reported exactly once.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Bytes of guest memory one bit of the log stands for (`VHOST_LOG_PAGE`).
pub const LOG_PAGE_BYTES: u64 = 4096;
/// Pages one word of the log covers.
const PAGES_PER_WORD: u64 = 64;

/// A dirty bitmap shared with vhost-user backends, covering guest addresses `[0, end)`.
#[derive(Debug)]
pub struct BackendDirtyLog {
    fd: OwnedFd,
    words: NonNull<AtomicU64>,
    word_count: usize,
    end_gpa_bytes: u64,
}

// SAFETY: the mapping is only accessed through `AtomicU64`s, which any thread may use at once;
// it lives as long as the value, and the fd is an ordinary owned fd.
unsafe impl Send for BackendDirtyLog {}
// SAFETY: as above: every access to the shared words is atomic.
unsafe impl Sync for BackendDirtyLog {}

impl BackendDirtyLog {
    /// A cleared log for guest addresses `[0, end_gpa_bytes)`; `end_gpa_bytes` must be a
    /// non-zero multiple of 4 KiB. The memfd holds whole 64-bit words.
    pub fn new(end_gpa_bytes: u64) -> Result<Self> {
        if end_gpa_bytes == 0 || !end_gpa_bytes.is_multiple_of(LOG_PAGE_BYTES) {
            return Err(Error::InvalidLogRange {
                start_gpa: 0,
                size_bytes: end_gpa_bytes,
                reason: "the log's end must be a non-zero multiple of 4 KiB",
            });
        }
        let pages = end_gpa_bytes / LOG_PAGE_BYTES;
        let word_count = usize::try_from(pages.div_ceil(PAGES_PER_WORD))
            .map_err(|_| log_error("the log does not fit in the address space"))?;
        let size_bytes = word_count * std::mem::size_of::<u64>();
        // SAFETY: memfd_create with a valid C string; the result is checked and owned below.
        let raw = unsafe { libc::memfd_create(c"hotmem-dirty-log".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(os_error("memfd_create"));
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = libc::off_t::try_from(size_bytes).map_err(|_| log_error("log too large"))?;
        // SAFETY: ftruncate on the memfd just created; it only sets the file's size.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
            return Err(os_error("ftruncate"));
        }
        // SAFETY: a new shared mapping of the whole memfd, which has exactly `size_bytes` bytes;
        // the kernel picks the address, so no existing mapping is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(os_error("mmap"));
        }
        let words =
            NonNull::new(ptr.cast::<AtomicU64>()).ok_or_else(|| log_error("mmap gave 0"))?;
        Ok(BackendDirtyLog {
            fd,
            words,
            word_count,
            end_gpa_bytes,
        })
    }

    /// The end of the guest addresses the log covers.
    pub fn end_gpa_bytes(&self) -> u64 {
        self.end_gpa_bytes
    }

    /// Size of the shared memory (whole 64-bit words): SET_LOG_BASE's `mmap_size`.
    pub fn size_bytes(&self) -> u64 {
        (self.word_count * std::mem::size_of::<u64>()) as u64
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping holds `word_count` page-aligned u64s, stays mapped while `self`
        // lives, and is only accessed atomically (here and by backends).
        unsafe { std::slice::from_raw_parts(self.words.as_ptr(), self.word_count) }
    }

    /// Takes and clears the dirty bits of guest addresses `[start_gpa, start_gpa + size_bytes)`
    /// (both multiples of 4 KiB, inside the log): bit `i` of the result (bit `i % 64` of word
    /// `i / 64`) is page `start_gpa / 4096 + i`. Each word is cleared with one atomic swap (an
    /// atomic AND where the range covers part of it), so bits a backend sets meanwhile are
    /// either returned now or kept for the next call.
    pub fn take_range(&self, start_gpa: u64, size_bytes: u64) -> Result<Vec<u64>> {
        let refuse = |reason| Error::InvalidLogRange {
            start_gpa,
            size_bytes,
            reason,
        };
        if !start_gpa.is_multiple_of(LOG_PAGE_BYTES) || !size_bytes.is_multiple_of(LOG_PAGE_BYTES) {
            return Err(refuse("start and size must be multiples of 4 KiB"));
        }
        match start_gpa.checked_add(size_bytes) {
            Some(end) if end <= self.end_gpa_bytes => {}
            _ => return Err(refuse("the range ends past the end of the log")),
        }
        let first_page = start_gpa / LOG_PAGE_BYTES;
        let pages = size_bytes / LOG_PAGE_BYTES;
        let mut out = vec![0u64; pages.div_ceil(PAGES_PER_WORD) as usize];
        if pages == 0 {
            return Ok(out);
        }
        let last_page = first_page + pages - 1;
        let words = self.words();
        for w in first_page / PAGES_PER_WORD..=last_page / PAGES_PER_WORD {
            let word_first = w * PAGES_PER_WORD;
            let lo = first_page.max(word_first) - word_first;
            let hi = last_page.min(word_first + PAGES_PER_WORD - 1) - word_first;
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            let word = &words[w as usize];
            let old = if mask == u64::MAX {
                word.swap(0, Ordering::AcqRel)
            } else {
                word.fetch_and(!mask, Ordering::AcqRel)
            };
            place(&mut out, old & mask, word_first, first_page);
        }
        Ok(out)
    }
}

/// ORs `bits` (pages `word_first..word_first + 64`, only those at or after `first_page` set)
/// into `out`, whose bit 0 is `first_page`.
fn place(out: &mut [u64], bits: u64, word_first: u64, first_page: u64) {
    if bits == 0 {
        return;
    }
    if word_first < first_page {
        // Only the first log word can start before the range; it lands in out[0].
        out[0] |= bits >> (first_page - word_first);
        return;
    }
    let offset = word_first - first_page;
    let (index, shift) = ((offset / PAGES_PER_WORD) as usize, offset % PAGES_PER_WORD);
    out[index] |= bits << shift;
    if shift != 0
        && let Some(next) = out.get_mut(index + 1)
    {
        *next |= bits >> (PAGES_PER_WORD - shift);
    }
}

impl AsFd for BackendDirtyLog {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for BackendDirtyLog {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no reference to it outlives `self`.
        unsafe { libc::munmap(self.words.as_ptr().cast(), self.size_bytes() as usize) };
    }
}

fn log_error(reason: &str) -> Error {
    Error::DirtyLog {
        reason: reason.to_string(),
    }
}

fn os_error(call: &str) -> Error {
    log_error(&format!("{call}: {}", std::io::Error::last_os_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_page(log: &BackendDirtyLog, page: u64) {
        log.words()[(page / 64) as usize].fetch_or(1 << (page % 64), Ordering::SeqCst);
    }

    fn pages_of(bits: &[u64]) -> Vec<u64> {
        (0..bits.len() as u64 * 64)
            .filter(|i| bits[(i / 64) as usize] & (1 << (i % 64)) != 0)
            .collect()
    }

    #[test]
    fn the_memfd_holds_whole_words_for_the_pages_up_to_the_end() {
        let log = BackendDirtyLog::new(65 * LOG_PAGE_BYTES).unwrap();
        assert_eq!(log.size_bytes(), 16);
        let file = std::fs::File::from(log.as_fd().try_clone_to_owned().unwrap());
        assert_eq!(file.metadata().unwrap().len(), 16);
    }

    #[test]
    fn taken_bits_are_aligned_to_the_range_start_and_cleared() {
        let log = BackendDirtyLog::new(1 << 30).unwrap();
        for page in [3, 63, 64, 100, 200] {
            set_page(&log, page);
        }
        // A range starting mid-word: bit i is page 60 + i.
        let bits = log
            .take_range(60 * LOG_PAGE_BYTES, 100 * LOG_PAGE_BYTES)
            .unwrap();
        assert_eq!(bits.len(), 2);
        assert_eq!(pages_of(&bits), [3, 4, 40]);
        // Taken bits are gone; bits outside the range stay.
        assert_eq!(
            pages_of(&log.take_range(0, 256 * LOG_PAGE_BYTES).unwrap()),
            [3, 200]
        );
        assert!(pages_of(&log.take_range(0, 256 * LOG_PAGE_BYTES).unwrap()).is_empty());
    }

    #[test]
    fn a_word_shared_with_another_range_keeps_the_other_ranges_bits() {
        let log = BackendDirtyLog::new(1 << 20).unwrap();
        set_page(&log, 1);
        set_page(&log, 10);
        assert_eq!(
            pages_of(
                &log.take_range(8 * LOG_PAGE_BYTES, 8 * LOG_PAGE_BYTES)
                    .unwrap()
            ),
            [2]
        );
        assert_eq!(
            pages_of(&log.take_range(0, 8 * LOG_PAGE_BYTES).unwrap()),
            [1]
        );
    }

    #[test]
    fn a_range_at_the_end_of_the_log_is_taken_and_one_past_it_refused() {
        let end = 130 * LOG_PAGE_BYTES;
        let log = BackendDirtyLog::new(end).unwrap();
        set_page(&log, 129);
        let bits = log
            .take_range(end - 2 * LOG_PAGE_BYTES, 2 * LOG_PAGE_BYTES)
            .unwrap();
        assert_eq!(bits, [0b10]);
        let err = log
            .take_range(end - LOG_PAGE_BYTES, 2 * LOG_PAGE_BYTES)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidLogRange { .. }), "{err}");
        assert!(log.take_range(u64::MAX - 4095, 4096).is_err());
    }

    #[test]
    fn bits_set_while_taking_are_reported_exactly_once() {
        const PAGES: u64 = 4096;
        let log = std::sync::Arc::new(BackendDirtyLog::new(PAGES * LOG_PAGE_BYTES).unwrap());
        let writer = {
            let log = log.clone();
            // Like a backend: every page once, with atomic ORs, while the log is taken.
            std::thread::spawn(move || {
                (0..PAGES)
                    .map(|p| p * 7 % PAGES)
                    .for_each(|p| set_page(&log, p))
            })
        };
        let mut seen = vec![0u32; PAGES as usize];
        let mut take = |start_page: u64, pages: u64| {
            let bits = log
                .take_range(start_page * LOG_PAGE_BYTES, pages * LOG_PAGE_BYTES)
                .unwrap();
            for p in pages_of(&bits) {
                seen[(start_page + p) as usize] += 1;
            }
        };
        while !writer.is_finished() {
            // Ranges that start and end inside words, so the atomic AND path runs too.
            take(0, 1000);
            take(1000, PAGES - 1000);
        }
        writer.join().unwrap();
        take(0, PAGES);
        assert!(seen.iter().all(|&n| n == 1), "pages seen other than once");
    }

    #[test]
    fn unaligned_ranges_and_ends_are_refused() {
        assert!(BackendDirtyLog::new(0).is_err());
        assert!(BackendDirtyLog::new(4097).is_err());
        let log = BackendDirtyLog::new(1 << 20).unwrap();
        set_page(&log, 0);
        for (start, size) in [(1, 4096), (0, 4095), (2048, 8192)] {
            let err = log.take_range(start, size).unwrap_err();
            assert!(err.to_string().contains("4 KiB"), "{err}");
        }
        // Nothing was taken by the refused calls.
        assert_eq!(log.take_range(0, 4096).unwrap(), [1]);
    }
}
