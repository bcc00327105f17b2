//! Dirty pages per memory region: KVM's per-slot log bits are merged in at the slot's offset
//! (including the bits of slots collected just before they were unmapped), and the VMM's own
//! writes into guest memory are marked by range.

use std::collections::BTreeMap;

use crate::{PAGE_BYTES, RegionId};

/// A fixed-size bitmap, 64 bits a word.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bitmap {
    len: u64,
    words: Vec<u64>,
}

impl Bitmap {
    /// `len` clear bits.
    pub fn new(len: u64) -> Self {
        Bitmap {
            len,
            words: vec![0; len.div_ceil(64) as usize],
        }
    }

    /// From words (bits past `len` are ignored).
    pub fn from_words(len: u64, mut words: Vec<u64>) -> Self {
        words.resize(len.div_ceil(64) as usize, 0);
        if !len.is_multiple_of(64)
            && let Some(last) = words.last_mut()
        {
            *last &= (1u64 << (len % 64)) - 1;
        }
        Bitmap { len, words }
    }

    /// Bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// No bits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The words.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Bit `i` (false past the end).
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets or clears bit `i` (ignored past the end).
    pub fn set(&mut self, i: u64, value: bool) {
        if i >= self.len {
            return;
        }
        let word = &mut self.words[(i / 64) as usize];
        if value {
            *word |= 1 << (i % 64);
        } else {
            *word &= !(1 << (i % 64));
        }
    }

    /// Set bits.
    pub fn count_ones(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Indices of set bits, ascending.
    pub fn ones(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros();
                w &= w - 1;
                Some(i as u64 * 64 + u64::from(bit))
            })
        })
    }

    /// ORs `words` in, bit 0 of `words` landing on bit `first`.
    pub fn or_at(&mut self, first: u64, words: &[u64]) {
        for (i, &w) in words.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let bit = w.trailing_zeros();
                w &= w - 1;
                self.set(first + i as u64 * 64 + u64::from(bit), true);
            }
        }
    }

    /// Clears every bit.
    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }
}

/// Dirty pages of every region taking part in a migration.
#[derive(Debug, Clone, Default)]
pub struct DirtyPages {
    regions: BTreeMap<RegionId, Bitmap>,
}

impl DirtyPages {
    /// Tracks `region` of `size_bytes` (nothing dirty yet).
    pub fn add_region(&mut self, region: RegionId, size_bytes: u64) {
        self.regions
            .insert(region, Bitmap::new(size_bytes.div_ceil(PAGE_BYTES)));
    }

    /// Marks the pages `[offset, offset + size)` touches (a VMM write into guest memory).
    pub fn mark_range(&mut self, region: RegionId, offset_bytes: u64, size_bytes: u64) {
        let Some(map) = self.regions.get_mut(&region) else {
            return;
        };
        if size_bytes == 0 {
            return;
        }
        let first = offset_bytes / PAGE_BYTES;
        let last = (offset_bytes + size_bytes - 1) / PAGE_BYTES;
        for page in first..=last {
            map.set(page, true);
        }
    }

    /// Merges a KVM dirty log (one bit per page) of a slot starting at `slot_offset_bytes`.
    pub fn merge_log(&mut self, region: RegionId, slot_offset_bytes: u64, words: &[u64]) {
        if let Some(map) = self.regions.get_mut(&region) {
            map.or_at(slot_offset_bytes / PAGE_BYTES, words);
        }
    }

    /// Whether a page is dirty.
    pub fn is_dirty(&self, region: RegionId, offset_bytes: u64) -> bool {
        self.regions
            .get(&region)
            .is_some_and(|m| m.get(offset_bytes / PAGE_BYTES))
    }

    /// Clears a page.
    pub fn clear_page(&mut self, region: RegionId, offset_bytes: u64) {
        if let Some(map) = self.regions.get_mut(&region) {
            map.set(offset_bytes / PAGE_BYTES, false);
        }
    }

    /// Dirty page offsets of `region`, ascending.
    pub fn dirty_offsets(&self, region: RegionId) -> Vec<u64> {
        self.regions
            .get(&region)
            .map(|m| m.ones().map(|p| p * PAGE_BYTES).collect())
            .unwrap_or_default()
    }

    /// Regions tracked.
    pub fn regions(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.regions.keys().copied()
    }

    /// Dirty pages in all regions.
    pub fn count(&self) -> u64 {
        self.regions.values().map(Bitmap::count_ones).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_log_lands_at_the_slot_offset() {
        let mut d = DirtyPages::default();
        let r = RegionId::Device(0);
        d.add_region(r, 1 << 30);
        // Slot at 512 MiB, pages 0 and 65 dirty.
        d.merge_log(r, 512 << 20, &[1, 2]);
        assert_eq!(
            d.dirty_offsets(r),
            vec![512 << 20, (512 << 20) + 65 * PAGE_BYTES]
        );
    }

    #[test]
    fn a_vmm_write_marks_every_page_it_touches() {
        let mut d = DirtyPages::default();
        let r = RegionId::BootRam(0);
        d.add_region(r, 64 * PAGE_BYTES);
        d.mark_range(r, PAGE_BYTES - 2, 4);
        assert_eq!(d.dirty_offsets(r), vec![0, PAGE_BYTES]);
        d.mark_range(RegionId::BootRam(9), 0, 4);
        assert_eq!(d.count(), 2);
    }

    #[test]
    fn bitmap_from_words_drops_bits_past_the_end() {
        let b = Bitmap::from_words(3, vec![0xff]);
        assert_eq!(b.ones().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(!b.get(3));
    }
}
