//! The device's construction-time settings and their validation.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use vm_memory::GuestAddress;

use crate::block_size::validate_block_size;
use crate::features::FeatureOffer;
use crate::{Error, Result};

/// How much the usable region extends past the requested size (x86: 2 × 128 MiB), so that the
/// Linux driver, which only adds memory blocks lying fully inside the usable region, can plug
/// up to the requested size.
pub const USABLE_EXTENT_BYTES: u64 = 256 << 20;

/// Whether host memory is allocated up front when blocks are plugged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prealloc {
    /// Memory is allocated when the guest first touches it.
    #[default]
    Off,
    /// Plugged ranges are populated before the plug is acknowledged; failure answers BUSY.
    OnPlug,
}

impl FromStr for Prealloc {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "off" => Ok(Prealloc::Off),
            "on-plug" | "on" => Ok(Prealloc::OnPlug),
            other => Err(format!(
                "unknown prealloc setting '{other}': expected off or on-plug"
            )),
        }
    }
}

/// Everything fixed when the device is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMemConfig {
    /// Guest physical address of the region (a multiple of the block size).
    pub guest_addr: GuestAddress,
    /// Size of the region: the most memory that can ever be plugged.
    pub region_size_bytes: u64,
    /// Plug granularity; see [`crate::validate_block_size`].
    pub block_size_bytes: u64,
    /// Page size of the backing memory (the block size must not be smaller).
    pub backing_page_size_bytes: u64,
    /// The initial requested size.
    pub requested_size_bytes: u64,
    /// NUMA node (or ACPI proximity domain with `acpi_pxm`) reported in the config space.
    pub node_id: u16,
    /// Preallocation on plug.
    pub prealloc: Prealloc,
    /// Optional features to offer.
    pub offer: FeatureOffer,
}

impl VirtioMemConfig {
    /// Checks the settings; returns the number of blocks in the region.
    pub fn validate(&self) -> Result<usize> {
        let block = self.block_size_bytes;
        validate_block_size(block, self.backing_page_size_bytes)?;
        if self.region_size_bytes == 0 || !self.region_size_bytes.is_multiple_of(block) {
            return Err(Error::Config(format!(
                "region size {:#x} must be a non-zero multiple of the block size {block:#x}",
                self.region_size_bytes
            )));
        }
        if !self.guest_addr.0.is_multiple_of(block) {
            return Err(Error::Config(format!(
                "guest address {:#x} must be a multiple of the block size {block:#x}",
                self.guest_addr.0
            )));
        }
        if self
            .guest_addr
            .0
            .checked_add(self.region_size_bytes)
            .is_none()
        {
            return Err(Error::Config(format!(
                "region {:#x}+{:#x} overflows the guest address space",
                self.guest_addr.0, self.region_size_bytes
            )));
        }
        check_requested_size(self.requested_size_bytes, block, self.region_size_bytes)?;
        usize::try_from(self.region_size_bytes / block)
            .map_err(|_| Error::Config("region has too many blocks".to_string()))
    }
}

/// Checks a requested size: a multiple of the block size, at most the region size.
pub(crate) fn check_requested_size(
    requested_bytes: u64,
    block_size_bytes: u64,
    region_size_bytes: u64,
) -> Result<()> {
    let reason = if !requested_bytes.is_multiple_of(block_size_bytes) {
        "not a multiple of the block size"
    } else if requested_bytes > region_size_bytes {
        "larger than the region size"
    } else {
        return Ok(());
    };
    Err(Error::RequestedSize {
        requested_bytes,
        reason,
        block_size_bytes,
        region_size_bytes,
    })
}

/// QEMU's `virtio_mem_resize_usable_region` target: `requested + extent`, capped at the region
/// and rounded up to the block size; 0 when nothing is requested.
pub(crate) fn usable_target_bytes(
    requested_bytes: u64,
    block_size_bytes: u64,
    region_size_bytes: u64,
) -> u64 {
    if requested_bytes == 0 {
        return 0;
    }
    // The region size is block aligned, so rounding up the capped value cannot pass it.
    requested_bytes
        .saturating_add(USABLE_EXTENT_BYTES)
        .min(region_size_bytes)
        .next_multiple_of(block_size_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn valid() -> VirtioMemConfig {
        VirtioMemConfig {
            guest_addr: GuestAddress(4 * GIB),
            region_size_bytes: 8 * GIB,
            block_size_bytes: 2 * MIB,
            backing_page_size_bytes: 4096,
            requested_size_bytes: 0,
            node_id: 0,
            prealloc: Prealloc::Off,
            offer: FeatureOffer::default(),
        }
    }

    #[test]
    fn valid_config_reports_its_block_count() {
        assert_eq!(valid().validate().unwrap(), 4096);
    }

    #[test]
    fn misaligned_or_empty_regions_are_refused() {
        let mut c = valid();
        c.region_size_bytes = 0;
        assert!(c.validate().is_err());
        c.region_size_bytes = GIB + MIB;
        assert!(c.validate().unwrap_err().to_string().contains("multiple"));
        let mut c = valid();
        c.guest_addr = GuestAddress(4 * GIB + MIB);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("guest address")
        );
        let mut c = valid();
        c.guest_addr = GuestAddress(u64::MAX - MIB * 2 + 1);
        assert!(c.validate().unwrap_err().to_string().contains("overflows"));
        let mut c = valid();
        c.block_size_bytes = 3 * MIB;
        assert!(matches!(c.validate(), Err(Error::BlockSize { .. })));
    }

    #[test]
    fn requested_size_errors_name_the_allowed_values() {
        let e = check_requested_size(3 * MIB, 2 * MIB, 8 * GIB)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a multiple of the block size"), "{e}");
        assert!(
            e.contains(
                "multiples of the block size 0x200000 from 0 to the region size 0x200000000"
            ),
            "{e}"
        );
        let e = check_requested_size(10 * GIB, 2 * MIB, 8 * GIB)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than the region size"), "{e}");
        check_requested_size(8 * GIB, 2 * MIB, 8 * GIB).unwrap();
        check_requested_size(0, 2 * MIB, 8 * GIB).unwrap();
    }

    #[test]
    fn usable_target_adds_the_extent_caps_and_aligns() {
        assert_eq!(usable_target_bytes(0, 2 * MIB, 8 * GIB), 0);
        assert_eq!(usable_target_bytes(GIB, 2 * MIB, 8 * GIB), GIB + 256 * MIB);
        assert_eq!(
            usable_target_bytes(8 * GIB - 2 * MIB, 2 * MIB, 8 * GIB),
            8 * GIB
        );
        // A block larger than the extent rounds the target up to the next block.
        assert_eq!(usable_target_bytes(GIB, GIB, 8 * GIB), 2 * GIB);
    }

    #[test]
    fn prealloc_parses_from_the_command_line() {
        assert_eq!("off".parse::<Prealloc>().unwrap(), Prealloc::Off);
        assert_eq!("on-plug".parse::<Prealloc>().unwrap(), Prealloc::OnPlug);
        assert!(
            "yes"
                .parse::<Prealloc>()
                .unwrap_err()
                .contains("off or on-plug")
        );
    }
}
