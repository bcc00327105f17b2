//! How a device region is cut into memslots.
//!
//! Three policies:
//! - [`SlotPolicy::Single`]: one slot covering the whole region (what Cloud Hypervisor and QEMU
//!   without `dynamic-memslots` do). Kept for comparison.
//! - [`SlotPolicy::Fixed`]: QEMU's rule — equal slots of
//!   `max(align_up(region / limit, block), max(block, 1 GiB))`, the last one smaller when the region
//!   is not a multiple of that size.
//! - [`SlotPolicy::Adaptive`]: slots start at 1 GiB and grow geometrically, each about 1/8 of the
//!   offset where it starts. A guest that plugs from the bottom (as Linux does) then keeps mapped
//!   but unplugged memory under ~12.5 % of what it plugged, with fewer than 100 slots for 64 TiB.

use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::units::GIB;
use crate::{Error, Result};

/// The smallest slot the multi-slot policies use (the last slot may be smaller).
pub const MIN_SLOT_BYTES: u64 = GIB;

/// QEMU's soft limit on memslots across all memory devices; the `fixed` policy never asks more.
pub const FIXED_SOFT_SLOT_LIMIT: u32 = 256;

/// Adaptive slots are about `offset / ADAPTIVE_GROWTH_DIVISOR` large.
const ADAPTIVE_GROWTH_DIVISOR: u64 = 8;

/// Index of a slot inside one device's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotIndex(pub usize);

/// How to cut a region into slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SlotPolicy {
    /// One slot for the whole region.
    Single,
    /// Equal slots sized by QEMU's rule.
    Fixed,
    /// Geometrically growing slots (the default).
    #[default]
    Adaptive,
}

impl SlotPolicy {
    /// All policies, in the order benchmarks report them.
    pub const ALL: [SlotPolicy; 3] = [SlotPolicy::Single, SlotPolicy::Fixed, SlotPolicy::Adaptive];

    /// How many slots a device using this policy asks for when `available` are left in the
    /// VM's budget: `fixed` follows QEMU's soft limit of 256, the others may use what is left.
    pub fn slot_limit(self, available: u32) -> u32 {
        match self {
            SlotPolicy::Fixed => available.min(FIXED_SOFT_SLOT_LIMIT),
            SlotPolicy::Single | SlotPolicy::Adaptive => available,
        }
    }

    /// The policy's name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SlotPolicy::Single => "single",
            SlotPolicy::Fixed => "fixed",
            SlotPolicy::Adaptive => "adaptive",
        }
    }
}

impl FromStr for SlotPolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "single" => Ok(SlotPolicy::Single),
            "fixed" => Ok(SlotPolicy::Fixed),
            "adaptive" => Ok(SlotPolicy::Adaptive),
            other => Err(format!(
                "unknown slot policy '{other}': expected single, fixed or adaptive"
            )),
        }
    }
}

impl std::fmt::Display for SlotPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a layout must cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutRequest {
    /// The policy to apply.
    pub policy: SlotPolicy,
    /// Size of the device region; a multiple of the block size.
    pub region_size_bytes: u64,
    /// Device block size; a power of two. Slot boundaries are block aligned.
    pub block_size_bytes: u64,
    /// The most slots this device may use (from the VM's budget).
    pub slot_limit: u32,
}

/// One slot: a byte range of the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotSpec {
    /// Offset of the slot from the start of the region.
    pub offset_bytes: u64,
    /// Length of the slot.
    pub size_bytes: u64,
}

impl SlotSpec {
    /// One past the last byte of the slot.
    pub fn end_bytes(&self) -> u64 {
        self.offset_bytes + self.size_bytes
    }
}

/// A region cut into slots: contiguous, in order, covering the whole region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotLayout {
    policy: SlotPolicy,
    region_size_bytes: u64,
    slots: Vec<SlotSpec>,
}

impl SlotLayout {
    /// Cuts a region into slots by `request.policy`.
    pub fn plan(request: LayoutRequest) -> Result<Self> {
        validate(&request)?;
        let slots = match request.policy {
            SlotPolicy::Single => single(&request),
            SlotPolicy::Fixed => fixed(&request),
            SlotPolicy::Adaptive => adaptive(&request),
        };
        debug_assert!(slots.len() <= request.slot_limit as usize);
        Ok(SlotLayout {
            policy: request.policy,
            region_size_bytes: request.region_size_bytes,
            slots,
        })
    }

    /// The policy this layout was planned with.
    pub fn policy(&self) -> SlotPolicy {
        self.policy
    }

    /// Size of the region the layout covers.
    pub fn region_size_bytes(&self) -> u64 {
        self.region_size_bytes
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the layout has no slots (never true for a planned layout).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// All slots in order.
    pub fn slots(&self) -> &[SlotSpec] {
        &self.slots
    }

    /// One slot.
    pub fn slot(&self, index: SlotIndex) -> SlotSpec {
        self.slots[index.0]
    }

    /// The slot holding byte `offset_bytes` of the region.
    pub fn index_of(&self, offset_bytes: u64) -> Option<SlotIndex> {
        if offset_bytes >= self.region_size_bytes {
            return None;
        }
        let after = self
            .slots
            .partition_point(|s| s.offset_bytes <= offset_bytes);
        Some(SlotIndex(after - 1))
    }

    /// Indices of the slots overlapping `[offset_bytes, offset_bytes + size_bytes)`.
    pub fn overlapping(&self, offset_bytes: u64, size_bytes: u64) -> Result<Range<usize>> {
        let end = offset_bytes
            .checked_add(size_bytes)
            .filter(|&end| end <= self.region_size_bytes)
            .ok_or(Error::OutOfRegion {
                offset_bytes,
                size_bytes,
                region_bytes: self.region_size_bytes,
            })?;
        if size_bytes == 0 {
            return Ok(0..0);
        }
        let first = self
            .slots
            .partition_point(|s| s.end_bytes() <= offset_bytes);
        let last = self.slots.partition_point(|s| s.offset_bytes < end);
        Ok(first..last)
    }
}

fn validate(request: &LayoutRequest) -> Result<()> {
    let block = request.block_size_bytes;
    if block == 0 || !block.is_power_of_two() {
        return Err(Error::InvalidLayout("block size must be a power of two"));
    }
    if request.region_size_bytes == 0 {
        return Err(Error::InvalidLayout("region size must not be zero"));
    }
    if !request.region_size_bytes.is_multiple_of(block) {
        return Err(Error::InvalidLayout(
            "region size must be a multiple of the block size",
        ));
    }
    if request.slot_limit == 0 {
        return Err(Error::InvalidLayout("no memory slots are available"));
    }
    Ok(())
}

fn single(request: &LayoutRequest) -> Vec<SlotSpec> {
    vec![SlotSpec {
        offset_bytes: 0,
        size_bytes: request.region_size_bytes,
    }]
}

/// Equal slots of `slot_size_bytes`, the last one cut at the region's end.
fn equal_slots(region_size_bytes: u64, slot_size_bytes: u64) -> Vec<SlotSpec> {
    let count = region_size_bytes.div_ceil(slot_size_bytes);
    (0..count)
        .map(|i| {
            let offset_bytes = i * slot_size_bytes;
            SlotSpec {
                offset_bytes,
                // The last slot is smaller when the region is not a multiple of the slot size
                // (QEMU's v1 patch tested `idx == nb` here and got the last slot wrong).
                size_bytes: slot_size_bytes.min(region_size_bytes - offset_bytes),
            }
        })
        .collect()
}

fn fixed(request: &LayoutRequest) -> Vec<SlotSpec> {
    if request.slot_limit <= 1 {
        return single(request);
    }
    let block = request.block_size_bytes;
    let share = request
        .region_size_bytes
        .div_ceil(u64::from(request.slot_limit))
        .next_multiple_of(block);
    let slot_size = share.max(block.max(MIN_SLOT_BYTES));
    equal_slots(request.region_size_bytes, slot_size)
}

fn adaptive(request: &LayoutRequest) -> Vec<SlotSpec> {
    if request.slot_limit <= 1 {
        return single(request);
    }
    let region = request.region_size_bytes;
    // Slots are multiples of the granule, so every boundary is block and 1 GiB aligned.
    let granule = request.block_size_bytes.max(MIN_SLOT_BYTES);
    let slots = geometric_slots(region, granule, granule);
    if slots.len() <= request.slot_limit as usize {
        return slots;
    }
    // A tight budget: no slot smaller than region / limit keeps the count within the limit.
    let min_size = region
        .div_ceil(u64::from(request.slot_limit))
        .next_multiple_of(granule);
    geometric_slots(region, granule, min_size)
}

/// Slots of about `offset / 8`, never smaller than `min_size`, in multiples of `granule`.
fn geometric_slots(region: u64, granule: u64, min_size: u64) -> Vec<SlotSpec> {
    let mut slots = Vec::new();
    let mut offset = 0;
    while offset < region {
        let grown = (offset / ADAPTIVE_GROWTH_DIVISOR) / granule * granule;
        let size = grown.max(min_size).min(region - offset);
        slots.push(SlotSpec {
            offset_bytes: offset,
            size_bytes: size,
        });
        offset += size;
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::MIB;

    const TIB: u64 = 1 << 40;

    fn plan(policy: SlotPolicy, region: u64, block: u64, limit: u32) -> SlotLayout {
        SlotLayout::plan(LayoutRequest {
            policy,
            region_size_bytes: region,
            block_size_bytes: block,
            slot_limit: limit,
        })
        .unwrap()
    }

    fn assert_covers(layout: &SlotLayout, block: u64) {
        let mut expected_offset = 0;
        for s in layout.slots() {
            assert_eq!(s.offset_bytes, expected_offset);
            assert!(s.size_bytes > 0);
            assert_eq!(s.offset_bytes % block, 0);
            assert_eq!(s.size_bytes % block, 0);
            expected_offset = s.end_bytes();
        }
        assert_eq!(expected_offset, layout.region_size_bytes());
    }

    #[test]
    fn single_policy_is_one_slot_over_the_region() {
        let l = plan(SlotPolicy::Single, 64 * GIB, 2 * MIB, 256);
        assert_eq!(
            l.slots(),
            &[SlotSpec {
                offset_bytes: 0,
                size_bytes: 64 * GIB
            }]
        );
    }

    #[test]
    fn fixed_policy_uses_one_gib_slots_when_the_limit_allows() {
        let l = plan(SlotPolicy::Fixed, 64 * GIB, 2 * MIB, 256);
        assert_eq!(l.len(), 64);
        assert!(l.slots().iter().all(|s| s.size_bytes == GIB));
    }

    #[test]
    fn fixed_policy_last_slot_is_smaller_when_region_is_not_a_multiple() {
        // 10 GiB + 2 MiB over a limit of 4: slot = align_up(region/4, block) = 2.5 GiB + 2 MiB.
        let region = 10 * GIB + 2 * MIB;
        let l = plan(SlotPolicy::Fixed, region, 2 * MIB, 4);
        assert_covers(&l, 2 * MIB);
        assert_eq!(l.len(), 4);
        let first = l.slots()[0].size_bytes;
        assert_eq!(first, (region / 4).next_multiple_of(2 * MIB));
        let last = l.slots()[3];
        assert!(last.size_bytes < first);
        assert_eq!(last.end_bytes(), region);
    }

    #[test]
    fn fixed_policy_region_smaller_than_a_gib_is_one_slot() {
        let l = plan(SlotPolicy::Fixed, 512 * MIB, 2 * MIB, 256);
        assert_eq!(l.len(), 1);
        assert_eq!(l.slots()[0].size_bytes, 512 * MIB);
    }

    #[test]
    fn block_larger_than_a_gib_sets_the_slot_size() {
        let block = 4 * GIB;
        for policy in [SlotPolicy::Fixed, SlotPolicy::Adaptive] {
            let l = plan(policy, 64 * GIB, block, 256);
            assert_covers(&l, block);
            assert!(l.slots().iter().all(|s| s.size_bytes >= block), "{policy}");
        }
    }

    #[test]
    fn limit_of_one_gives_a_single_slot() {
        for policy in SlotPolicy::ALL {
            assert_eq!(plan(policy, 64 * GIB, 2 * MIB, 1).len(), 1);
        }
    }

    #[test]
    fn adaptive_uses_at_most_128_slots_for_64_tib() {
        let l = plan(SlotPolicy::Adaptive, 64 * TIB, 2 * MIB, 32_000);
        assert_covers(&l, 2 * MIB);
        assert!(l.len() <= 128, "{} slots", l.len());
        assert_eq!(l.slots()[0].size_bytes, GIB);
    }

    #[test]
    fn adaptive_slots_are_at_most_an_eighth_of_their_offset_past_the_start() {
        let l = plan(SlotPolicy::Adaptive, 16 * TIB, 2 * MIB, 32_000);
        for s in l.slots().iter().filter(|s| s.offset_bytes >= 8 * GIB) {
            assert!(s.size_bytes <= s.offset_bytes / 8, "{s:?}");
        }
    }

    #[test]
    fn adaptive_respects_a_small_limit() {
        let l = plan(SlotPolicy::Adaptive, TIB, 2 * MIB, 10);
        assert!(l.len() <= 10, "{} slots", l.len());
        assert_covers(&l, 2 * MIB);
    }

    #[test]
    fn invalid_requests_are_refused() {
        let ok = LayoutRequest {
            policy: SlotPolicy::Adaptive,
            region_size_bytes: GIB,
            block_size_bytes: 2 * MIB,
            slot_limit: 8,
        };
        for bad in [
            LayoutRequest {
                block_size_bytes: 3 * MIB,
                ..ok
            },
            LayoutRequest {
                region_size_bytes: 0,
                ..ok
            },
            LayoutRequest {
                region_size_bytes: GIB + MIB,
                ..ok
            },
            LayoutRequest {
                slot_limit: 0,
                ..ok
            },
        ] {
            assert!(SlotLayout::plan(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn index_of_and_overlapping_find_slots_of_differing_sizes() {
        let l = plan(SlotPolicy::Adaptive, 64 * GIB, 2 * MIB, 256);
        for (i, s) in l.slots().iter().enumerate() {
            assert_eq!(l.index_of(s.offset_bytes), Some(SlotIndex(i)));
            assert_eq!(l.index_of(s.end_bytes() - 1), Some(SlotIndex(i)));
        }
        assert_eq!(l.index_of(64 * GIB), None);
        let s3 = l.slots()[3];
        assert_eq!(l.overlapping(s3.offset_bytes, s3.size_bytes).unwrap(), 3..4);
        assert_eq!(
            l.overlapping(s3.offset_bytes - 2 * MIB, 4 * MIB).unwrap(),
            2..4
        );
        assert_eq!(l.overlapping(0, 0).unwrap(), 0..0);
        assert!(l.overlapping(64 * GIB - 2 * MIB, 4 * MIB).is_err());
        assert!(l.overlapping(u64::MAX, 2).is_err());
    }

    #[test]
    fn policy_names_round_trip() {
        for p in SlotPolicy::ALL {
            assert_eq!(p.name().parse::<SlotPolicy>().unwrap(), p);
        }
        assert!("huge".parse::<SlotPolicy>().is_err());
    }
}
