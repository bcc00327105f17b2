//! The plugged-block bitmap (one bit per block, 1 = plugged) and range queries on it.

use std::ops::Range;

use fixedbitset::FixedBitSet;

use crate::request::RangeState;

/// Which blocks of the region are plugged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluggedBlocks {
    bits: FixedBitSet,
}

impl PluggedBlocks {
    /// `block_count` blocks, all unplugged.
    pub fn new(block_count: usize) -> Self {
        PluggedBlocks {
            bits: FixedBitSet::with_capacity(block_count),
        }
    }

    /// Wraps a saved bitmap.
    pub fn from_bits(bits: FixedBitSet) -> Self {
        PluggedBlocks { bits }
    }

    /// The raw bitmap (for saving).
    pub fn bits(&self) -> &FixedBitSet {
        &self.bits
    }

    /// Number of blocks in the region.
    pub fn block_count(&self) -> usize {
        self.bits.len()
    }

    /// Number of plugged blocks.
    pub fn plugged_count(&self) -> usize {
        self.bits.count_ones(..)
    }

    /// Number of plugged blocks in `blocks` (clamped to the region).
    pub fn plugged_in(&self, blocks: Range<usize>) -> usize {
        self.bits.count_ones(self.clamp(blocks))
    }

    /// Whether any block in `blocks` is plugged.
    pub fn any_plugged_in(&self, blocks: Range<usize>) -> bool {
        self.bits.contains_any_in_range(self.clamp(blocks))
    }

    /// Whether `block` is plugged.
    pub fn is_plugged(&self, block: usize) -> bool {
        self.bits.contains(block)
    }

    /// All plugged, all unplugged or mixed. `blocks` must be non-empty and inside the region.
    pub fn range_state(&self, blocks: Range<usize>) -> RangeState {
        let len = blocks.len();
        match self.plugged_in(blocks) {
            0 => RangeState::Unplugged,
            n if n == len => RangeState::Plugged,
            _ => RangeState::Mixed,
        }
    }

    /// Marks `blocks` plugged or unplugged.
    pub fn set_range(&mut self, blocks: Range<usize>, plugged: bool) {
        self.bits.set_range(blocks, plugged);
    }

    /// Unplugs every block.
    pub fn clear(&mut self) {
        self.bits.clear();
    }

    /// Maximal runs of consecutive plugged blocks, in order.
    pub fn plugged_runs(&self) -> PluggedRuns<'_> {
        PluggedRuns {
            words: self.bits.as_slice(),
            block_count: self.bits.len(),
            next_block: 0,
        }
    }

    /// Index one past the last plugged block, or 0 when nothing is plugged.
    pub fn end_of_plugged(&self) -> usize {
        self.bits.maximum().map_or(0, |m| m + 1)
    }

    fn clamp(&self, blocks: Range<usize>) -> Range<usize> {
        let end = blocks.end.min(self.bits.len());
        blocks.start.min(end)..end
    }
}

/// Iterator over runs of plugged blocks; see [`PluggedBlocks::plugged_runs`]. Skips a whole
/// word of the bitmap at a time, so it costs one step per run and per 64 blocks, not per block.
pub struct PluggedRuns<'a> {
    words: &'a [usize],
    block_count: usize,
    next_block: usize,
}

impl PluggedRuns<'_> {
    /// The first block at or after `from` whose bit is `plugged`, or the block count.
    fn first_block(&self, from: usize, plugged: bool) -> usize {
        const BITS: usize = usize::BITS as usize;
        // Searching for a zero is searching for a one in the inverted word.
        let invert = if plugged { 0 } else { usize::MAX };
        let mut index = from / BITS;
        let Some(&first) = self.words.get(index) else {
            return self.block_count;
        };
        let mut word = (first ^ invert) & (usize::MAX << (from % BITS));
        loop {
            if word != 0 {
                let block = index * BITS + word.trailing_zeros() as usize;
                return block.min(self.block_count);
            }
            index += 1;
            match self.words.get(index) {
                Some(&w) => word = w ^ invert,
                None => return self.block_count,
            }
        }
    }
}

impl Iterator for PluggedRuns<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        let start = self.first_block(self.next_block, true);
        if start >= self.block_count {
            self.next_block = self.block_count;
            return None;
        }
        let end = self.first_block(start, false);
        self.next_block = end;
        Some(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` blocks with the `(start, end)` runs plugged.
    fn with(count: usize, plugged: &[(usize, usize)]) -> PluggedBlocks {
        let mut b = PluggedBlocks::new(count);
        for &(start, end) in plugged {
            b.set_range(start..end, true);
        }
        b
    }

    #[test]
    fn range_state_distinguishes_all_plugged_unplugged_and_mixed() {
        let b = with(200, &[(10, 20)]);
        assert_eq!(b.range_state(10..20), RangeState::Plugged);
        assert_eq!(b.range_state(12..13), RangeState::Plugged);
        assert_eq!(b.range_state(0..10), RangeState::Unplugged);
        assert_eq!(b.range_state(20..200), RangeState::Unplugged);
        assert_eq!(b.range_state(9..11), RangeState::Mixed);
        assert_eq!(b.range_state(19..21), RangeState::Mixed);
        assert_eq!(b.plugged_count(), 10);
    }

    #[test]
    fn plugged_runs_are_maximal_and_ordered() {
        let b = with(300, &[(0, 3), (5, 6), (64, 130), (299, 300)]);
        let runs: Vec<_> = b.plugged_runs().collect();
        assert_eq!(runs, vec![0..3, 5..6, 64..130, 299..300]);
        assert_eq!(with(10, &[]).plugged_runs().count(), 0);
        assert_eq!(
            with(10, &[(0, 10)]).plugged_runs().collect::<Vec<_>>(),
            vec![0..10]
        );
    }

    proptest::proptest! {
        #[test]
        fn plugged_runs_match_a_block_by_block_scan(
            bits in proptest::collection::vec(proptest::bool::ANY, 0..300)
        ) {
            let mut b = PluggedBlocks::new(bits.len());
            for (i, &plugged) in bits.iter().enumerate() {
                b.set_range(i..i + 1, plugged);
            }
            let mut runs = Vec::new();
            let mut i = 0;
            while i < bits.len() {
                if bits[i] {
                    let start = i;
                    while i < bits.len() && bits[i] {
                        i += 1;
                    }
                    runs.push(start..i);
                } else {
                    i += 1;
                }
            }
            proptest::prop_assert_eq!(b.plugged_runs().collect::<Vec<_>>(), runs);
        }
    }

    #[test]
    fn unplugging_part_of_a_run_splits_it() {
        let mut b = with(100, &[(10, 40)]);
        b.set_range(20..25, false);
        assert_eq!(b.plugged_runs().collect::<Vec<_>>(), vec![10..20, 25..40]);
        assert_eq!(b.end_of_plugged(), 40);
        b.clear();
        assert_eq!(b.end_of_plugged(), 0);
        assert_eq!(b.plugged_count(), 0);
    }

    #[test]
    fn queries_past_the_end_are_clamped() {
        let b = with(10, &[(8, 10)]);
        assert_eq!(b.plugged_in(5..1000), 2);
        assert!(b.any_plugged_in(9..1000));
        assert!(!b.any_plugged_in(10..1000));
    }
}
