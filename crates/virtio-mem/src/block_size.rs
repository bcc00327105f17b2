//! Choosing and validating the device block size.
//!
//! The default follows QEMU's `virtio_mem_default_block_size`: for normal pages the larger of the
//! page size and the host THP size (so that a plugged block can be backed by one huge page), for
//! hugetlbfs the larger of its page size and 1 MiB. The THP size comes from sysfs; when the file
//! is missing or unusable we assume 2 MiB, the x86-64 THP size (QEMU uses 1 MiB when the THP
//! directory is missing altogether; 2 MiB is never worse for a Linux guest, whose sub-block size
//! is at least the 2 MiB pageblock anyway).

use crate::{Error, Result};

/// The smallest block size virtio-mem allows.
pub const MIN_BLOCK_SIZE_BYTES: u64 = 1 << 20;
/// THP size assumed when sysfs cannot tell us.
pub const FALLBACK_THP_SIZE_BYTES: u64 = 2 << 20;

const THP_SIZE_PATH: &str = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size";

/// What the default block size depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizeInputs {
    /// Page size of the memory backing the region (4 KiB, or the hugetlbfs page size).
    pub backing_page_size_bytes: u64,
    /// The host's base page size.
    pub host_page_size_bytes: u64,
    /// The host THP size, if known (a power of two).
    pub thp_size_bytes: Option<u64>,
}

impl BlockSizeInputs {
    /// Inputs for the running host: its page size and THP size from sysfs.
    pub fn for_host(backing_page_size_bytes: u64) -> Self {
        BlockSizeInputs {
            backing_page_size_bytes,
            host_page_size_bytes: host_page_size_bytes(),
            thp_size_bytes: std::fs::read_to_string(THP_SIZE_PATH)
                .ok()
                .and_then(|s| parse_thp_size(&s)),
        }
    }
}

/// The default block size for `inputs`.
pub fn default_block_size_bytes(inputs: BlockSizeInputs) -> u64 {
    let page = inputs.backing_page_size_bytes;
    if page == inputs.host_page_size_bytes {
        page.max(inputs.thp_size_bytes.unwrap_or(FALLBACK_THP_SIZE_BYTES))
    } else {
        page.max(MIN_BLOCK_SIZE_BYTES)
    }
}

/// Checks a configured block size: a power of two, at least 1 MiB and at least the backing page
/// size.
pub fn validate_block_size(block_size_bytes: u64, backing_page_size_bytes: u64) -> Result<()> {
    let reason = if !block_size_bytes.is_power_of_two() {
        "not a power of two".to_string()
    } else if block_size_bytes < MIN_BLOCK_SIZE_BYTES {
        "smaller than 1 MiB".to_string()
    } else if block_size_bytes < backing_page_size_bytes {
        format!("smaller than the backing page size {backing_page_size_bytes:#x}")
    } else {
        return Ok(());
    };
    Err(Error::BlockSize {
        block_size_bytes,
        reason,
    })
}

/// Parses the sysfs THP size; `None` unless it is a power of two.
fn parse_thp_size(text: &str) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|v| v.is_power_of_two())
}

fn host_page_size_bytes() -> u64 {
    // SAFETY: sysconf only reads a system constant; it has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB4: u64 = 4096;
    const MIB: u64 = 1 << 20;

    fn inputs(backing: u64, thp: Option<u64>) -> BlockSizeInputs {
        BlockSizeInputs {
            backing_page_size_bytes: backing,
            host_page_size_bytes: KIB4,
            thp_size_bytes: thp,
        }
    }

    #[test]
    fn normal_pages_default_to_the_thp_size() {
        assert_eq!(
            default_block_size_bytes(inputs(KIB4, Some(2 * MIB))),
            2 * MIB
        );
        assert_eq!(
            default_block_size_bytes(inputs(KIB4, Some(32 * MIB))),
            32 * MIB
        );
    }

    #[test]
    fn unknown_thp_size_falls_back_to_2_mib() {
        assert_eq!(default_block_size_bytes(inputs(KIB4, None)), 2 * MIB);
    }

    #[test]
    fn hugetlb_defaults_to_its_page_size_but_at_least_1_mib() {
        assert_eq!(
            default_block_size_bytes(inputs(2 * MIB, Some(2 * MIB))),
            2 * MIB
        );
        assert_eq!(default_block_size_bytes(inputs(1 << 30, None)), 1 << 30);
        assert_eq!(default_block_size_bytes(inputs(64 * 1024, None)), MIB);
    }

    #[test]
    fn host_default_is_a_valid_block_size() {
        let block = default_block_size_bytes(BlockSizeInputs::for_host(KIB4));
        validate_block_size(block, KIB4).unwrap();
    }

    #[test]
    fn sysfs_thp_size_must_be_a_power_of_two() {
        assert_eq!(parse_thp_size("2097152\n"), Some(2 * MIB));
        assert_eq!(parse_thp_size("3000000\n"), None);
        assert_eq!(parse_thp_size("0"), None);
        assert_eq!(parse_thp_size("never"), None);
    }

    #[test]
    fn block_size_validation_names_the_problem_and_allowed_values() {
        validate_block_size(MIB, KIB4).unwrap();
        validate_block_size(1 << 30, 1 << 30).unwrap();
        let e = validate_block_size(3 * MIB, KIB4).unwrap_err().to_string();
        assert!(
            e.contains("not a power of two") && e.contains("at least 1 MiB"),
            "{e}"
        );
        let e = validate_block_size(512 * 1024, KIB4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("smaller than 1 MiB"), "{e}");
        let e = validate_block_size(2 * MIB, 1 << 30)
            .unwrap_err()
            .to_string();
        assert!(e.contains("backing page size 0x40000000"), "{e}");
        assert!(validate_block_size(0, KIB4).is_err());
    }
}
