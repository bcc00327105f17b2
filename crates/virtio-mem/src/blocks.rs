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
            ones: self.bits.ones(),
            pending: None,
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

/// Iterator over runs of plugged blocks; see [`PluggedBlocks::plugged_runs`].
pub struct PluggedRuns<'a> {
    ones: fixedbitset::Ones<'a>,
    pending: Option<Range<usize>>,
}

impl Iterator for PluggedRuns<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        loop {
            match self.ones.next() {
                Some(i) => match self.pending.as_mut() {
                    Some(run) if run.end == i => run.end += 1,
                    Some(_) => {
                        let done = self.pending.replace(i..i + 1);
                        return done;
                    }
                    None => self.pending = Some(i..i + 1),
                },
                None => return self.pending.take(),
            }
        }
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
