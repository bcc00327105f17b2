//! Which slots of a layout are mapped, kept in step with a backend.

use crate::backend::{BackendFailure, SlotBackend, SlotMapping, SlotState};
use crate::budget::SlotIds;
use crate::layout::{SlotIndex, SlotLayout, SlotPolicy, SlotSpec};
use crate::{Error, Result};

/// The slots of one device region and the state of each.
///
/// The owner decides *when* a slot is needed (for virtio-mem: while it holds a plugged block);
/// this type maps and unmaps through the backend, never maps a slot twice, and rolls back the
/// slots it mapped itself when a later one in the same call fails.
///
/// The state recorded for each slot is the one the backend reports, also after a partial
/// failure: a slot KVM refused to delete stays [`SlotState::Mapped`], a slot KVM deleted whose
/// host range could not be protected is [`SlotState::ProtectPending`] (KVM does not have it: a
/// map maps it again, an unmap only redoes the protection).
///
/// A [`SlotPolicy::Single`] layout is the old, static behaviour kept for comparison: its one slot
/// is mapped when the manager is created and never unmapped while the manager lives.
#[derive(Debug)]
pub struct Memslots<B> {
    layout: SlotLayout,
    ids: SlotIds,
    guest_base_addr: u64,
    states: Vec<SlotState>,
    backend: B,
}

impl<B: SlotBackend> Memslots<B> {
    /// Manages `layout` for a region at `guest_base_addr`, with KVM slot numbers from `ids`.
    pub fn new(layout: SlotLayout, ids: SlotIds, guest_base_addr: u64, backend: B) -> Result<Self> {
        if (ids.count() as usize) < layout.len() {
            return Err(Error::InvalidLayout(
                "fewer KVM slot numbers reserved than the layout has slots",
            ));
        }
        let mut slots = Memslots {
            states: vec![SlotState::Unmapped; layout.len()],
            layout,
            ids,
            guest_base_addr,
            backend,
        };
        if slots.is_static() {
            slots.map_slot(0)?;
        }
        Ok(slots)
    }

    /// Whether the mapping never changes (the `single` policy).
    pub fn is_static(&self) -> bool {
        self.layout.policy() == SlotPolicy::Single
    }

    /// Whether slot `index` must stay mapped whatever its owner says.
    fn is_pinned(&self, index: usize) -> bool {
        self.is_static() && self.states[index] == SlotState::Mapped
    }

    /// The layout being managed.
    pub fn layout(&self) -> &SlotLayout {
        &self.layout
    }

    /// Guest physical address of the region's first byte.
    pub fn guest_base_addr(&self) -> u64 {
        self.guest_base_addr
    }

    /// The backend (e.g. to inspect a fake).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (e.g. to inject faults into a fake).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The state of slot `index`.
    pub fn state(&self, index: SlotIndex) -> SlotState {
        self.states[index.0]
    }

    /// Whether KVM has slot `index`.
    pub fn is_mapped(&self, index: SlotIndex) -> bool {
        self.state(index) == SlotState::Mapped
    }

    /// How many slots KVM has.
    pub fn mapped_count(&self) -> usize {
        self.mapped_slots().count()
    }

    /// How many bytes the mapped slots cover.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_slots()
            .map(|i| self.layout.slot(i).size_bytes)
            .sum()
    }

    /// Indices of the slots KVM has, in order.
    pub fn mapped_slots(&self) -> impl Iterator<Item = SlotIndex> + '_ {
        self.slots_in(SlotState::Mapped)
    }

    /// Indices of the slots in `state`, in order.
    pub fn slots_in(&self, state: SlotState) -> impl Iterator<Item = SlotIndex> + '_ {
        (0..self.states.len())
            .filter(move |&i| self.states[i] == state)
            .map(SlotIndex)
    }

    /// The backend's view of slot `index`.
    pub fn mapping(&self, index: SlotIndex) -> SlotMapping {
        let spec = self.layout.slot(index);
        SlotMapping {
            kvm_slot: self.ids.get(index.0).expect("ids cover the layout"),
            guest_addr: self.guest_base_addr + spec.offset_bytes,
            region_offset_bytes: spec.offset_bytes,
            size_bytes: spec.size_bytes,
        }
    }

    /// Maps every slot overlapping `[offset_bytes, offset_bytes + size_bytes)` that KVM does not
    /// have (including a [`SlotState::ProtectPending`] one).
    ///
    /// On failure, the slots this call mapped are unmapped again (best effort: if such an unmap
    /// fails too, [`Memslots::state`] says how far it got; the owner retries).
    pub fn map_range(&mut self, offset_bytes: u64, size_bytes: u64) -> Result<()> {
        let range = self.layout.overlapping(offset_bytes, size_bytes)?;
        let mut newly_mapped = Vec::new();
        for i in range {
            if self.states[i] == SlotState::Mapped {
                continue;
            }
            if let Err(e) = self.map_slot(i) {
                for j in newly_mapped.into_iter().rev() {
                    // Best effort: the slot was mapped by us a moment ago; its state says the rest.
                    let _ = self.unmap_slot(j);
                }
                return Err(e);
            }
            newly_mapped.push(i);
        }
        Ok(())
    }

    /// Unmaps each slot overlapping the range that `still_needed` says is no longer needed and
    /// that is not fully unmapped yet. Every such slot is tried; the first error is returned.
    pub fn unmap_unneeded(
        &mut self,
        offset_bytes: u64,
        size_bytes: u64,
        mut still_needed: impl FnMut(SlotSpec) -> bool,
    ) -> Result<()> {
        let range = self.layout.overlapping(offset_bytes, size_bytes)?;
        let mut result = Ok(());
        for i in range {
            if self.is_unmappable(i) && !still_needed(self.layout.slots()[i]) {
                let unmapped = self.unmap_slot(i);
                result = result.and(unmapped);
            }
        }
        result
    }

    /// Makes the mapped set exactly the slots for which `wanted` is true.
    ///
    /// Unmaps first (every slot is tried), then maps; a failed map leaves the slots mapped so far
    /// in place and reports the error (the caller re-syncs later).
    pub fn sync(&mut self, mut wanted: impl FnMut(SlotSpec) -> bool) -> Result<()> {
        let want: Vec<bool> = self.layout.slots().iter().map(|s| wanted(*s)).collect();
        let mut unmapped = Ok(());
        for (i, &w) in want.iter().enumerate() {
            if !w && self.is_unmappable(i) {
                unmapped = unmapped.and(self.unmap_slot(i));
            }
        }
        unmapped?;
        for (i, &w) in want.iter().enumerate() {
            if w && self.states[i] != SlotState::Mapped {
                self.map_slot(i)?;
            }
        }
        Ok(())
    }

    /// Unmaps every slot (but a static layout's).
    pub fn unmap_all(&mut self) -> Result<()> {
        self.sync(|_| false)
    }

    /// Whether slot `index` is not fully unmapped and may be unmapped.
    fn is_unmappable(&self, index: usize) -> bool {
        self.states[index] != SlotState::Unmapped && !self.is_pinned(index)
    }

    fn map_slot(&mut self, index: usize) -> Result<()> {
        let mapping = self.mapping(SlotIndex(index));
        match self.backend.map(&mapping) {
            Ok(()) => {
                self.states[index] = SlotState::Mapped;
                Ok(())
            }
            Err(BackendFailure { left, error }) => {
                self.states[index] = left;
                Err(Error::MapFailed {
                    index,
                    kvm_slot: mapping.kvm_slot.0,
                    reason: error.to_string(),
                })
            }
        }
    }

    /// Takes a slot KVM has or whose protection is pending to [`SlotState::Unmapped`], redoing
    /// only the half that is missing.
    fn unmap_slot(&mut self, index: usize) -> Result<()> {
        let mapping = self.mapping(SlotIndex(index));
        let result = match self.states[index] {
            SlotState::Unmapped => return Ok(()),
            SlotState::Mapped => self.backend.unmap(&mapping),
            SlotState::ProtectPending => self.backend.protect(&mapping),
        };
        match result {
            Ok(()) => {
                self.states[index] = SlotState::Unmapped;
                Ok(())
            }
            Err(BackendFailure { left, error }) => {
                self.states[index] = left;
                Err(Error::UnmapFailed {
                    index,
                    kvm_slot: mapping.kvm_slot.0,
                    reason: format!("{error} (slot left {left:?})"),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SlotState;
    use crate::fake::{BackendCall, FakeBackend, FakeFault};
    use crate::layout::LayoutRequest;
    use crate::units::{GIB, MIB};

    const BASE: u64 = 8 * GIB;

    fn manager(region: u64) -> Memslots<FakeBackend> {
        let layout = SlotLayout::plan(LayoutRequest {
            policy: SlotPolicy::Fixed,
            region_size_bytes: region,
            block_size_bytes: 2 * MIB,
            slot_limit: 256,
        })
        .unwrap();
        let ids = SlotIds::new(5, layout.len() as u32);
        Memslots::new(layout, ids, BASE, FakeBackend::new()).unwrap()
    }

    #[test]
    fn map_range_maps_each_overlapping_slot_once() {
        let mut m = manager(8 * GIB);
        m.map_range(GIB - 2 * MIB, 4 * MIB).unwrap();
        m.map_range(GIB, 2 * MIB).unwrap();
        assert_eq!(
            m.mapped_slots().collect::<Vec<_>>(),
            [SlotIndex(0), SlotIndex(1)]
        );
        assert_eq!(m.backend().calls().len(), 2);
        assert_eq!(m.mapped_bytes(), 2 * GIB);
        let first = m.backend().mapped().next().unwrap();
        assert_eq!((first.kvm_slot.0, first.guest_addr), (5, BASE));
    }

    #[test]
    fn failed_map_rolls_back_slots_mapped_by_the_same_call() {
        let mut m = manager(8 * GIB);
        m.map_range(0, 2 * MIB).unwrap();
        // Slot 1 maps, slot 2 fails: slot 1 is unmapped again, slot 0 stays.
        m.backend_mut()
            .script_maps(&[None, Some(FakeFault::OutOfMemory)]);
        let err = m.map_range(GIB, 3 * GIB).unwrap_err();
        assert!(matches!(err, Error::MapFailed { index: 2, .. }), "{err}");
        assert_eq!(m.mapped_slots().collect::<Vec<_>>(), [SlotIndex(0)]);
        assert_eq!(m.backend().mapped().count(), 1);
        assert!(
            matches!(m.backend().calls().last(), Some(BackendCall::Unmap(s)) if s.region_offset_bytes == GIB)
        );
        // A retry succeeds.
        m.map_range(GIB, 3 * GIB).unwrap();
        assert_eq!(m.mapped_count(), 4);
    }

    /// Slot 0 mapped, then an unmap whose KVM half succeeds and whose mprotect fails.
    fn half_unmapped() -> Memslots<FakeBackend> {
        let mut m = manager(4 * GIB);
        m.map_range(0, 2 * MIB).unwrap();
        m.backend_mut()
            .script_protects(&[Some(FakeFault::OutOfMemory)]);
        let err = m.unmap_unneeded(0, 4 * GIB, |_| false).unwrap_err();
        assert!(matches!(err, Error::UnmapFailed { index: 0, .. }), "{err}");
        m
    }

    #[test]
    fn failed_mprotect_after_slot_delete_is_recorded_as_the_truth() {
        let m = half_unmapped();
        assert_eq!(m.state(SlotIndex(0)), SlotState::ProtectPending);
        assert!(!m.is_mapped(SlotIndex(0)));
        assert_eq!((m.mapped_count(), m.mapped_bytes()), (0, 0));
        assert_eq!(m.backend().mapped().count(), 0, "KVM deleted the slot");
        assert_eq!(m.backend().exposed().count(), 1);
        assert_eq!(
            m.backend().state_of(m.mapping(SlotIndex(0)).kvm_slot),
            m.state(SlotIndex(0))
        );
    }

    #[test]
    fn failed_mprotect_after_slot_delete_is_retried_without_touching_kvm() {
        let mut m = half_unmapped();
        m.backend_mut().clear_calls();
        m.unmap_unneeded(0, 4 * GIB, |_| false).unwrap();
        assert_eq!(
            m.backend().calls(),
            [BackendCall::Protect(m.mapping(SlotIndex(0)))]
        );
        assert_eq!(m.state(SlotIndex(0)), SlotState::Unmapped);
        assert_eq!(m.backend().exposed().count(), 0);
        // Nothing left to do.
        m.unmap_all().unwrap();
        assert_eq!(m.backend().calls().len(), 1);
    }

    #[test]
    fn plug_after_half_failed_unmap_maps_the_slot_again() {
        let mut m = half_unmapped();
        m.map_range(0, 2 * MIB).unwrap();
        assert_eq!(m.state(SlotIndex(0)), SlotState::Mapped);
        assert!(m.backend().is_guest_addr_mapped(BASE));
        assert_eq!(m.backend().exposed().count(), 0);
        assert!(
            matches!(m.backend().calls().last(), Some(BackendCall::Map(s)) if s.region_offset_bytes == 0)
        );
    }

    #[test]
    fn slot_kvm_refuses_to_delete_stays_mapped_and_the_retry_deletes_it() {
        let mut m = manager(4 * GIB);
        m.map_range(0, 2 * MIB).unwrap();
        m.backend_mut().script_unmaps(&[Some(FakeFault::NoSlots)]);
        assert!(m.unmap_unneeded(0, 4 * GIB, |_| false).is_err());
        assert_eq!(m.state(SlotIndex(0)), SlotState::Mapped);
        assert!(m.backend().is_guest_addr_mapped(BASE));
        m.unmap_unneeded(0, 4 * GIB, |_| false).unwrap();
        assert_eq!(m.state(SlotIndex(0)), SlotState::Unmapped);
        assert_eq!(m.backend().mapped().count(), 0);
    }

    #[test]
    fn refused_map_whose_protection_fails_only_needs_the_protection() {
        let mut m = manager(4 * GIB);
        m.backend_mut().script_maps(&[Some(FakeFault::NoSlots)]);
        m.backend_mut()
            .script_protects(&[Some(FakeFault::OutOfMemory)]);
        assert!(m.map_range(0, 2 * MIB).is_err());
        assert_eq!(m.state(SlotIndex(0)), SlotState::ProtectPending);
        m.backend_mut().clear_calls();
        m.sync(|_| false).unwrap();
        assert_eq!(
            m.backend().calls(),
            [BackendCall::Protect(m.mapping(SlotIndex(0)))]
        );
        assert_eq!(m.state(SlotIndex(0)), SlotState::Unmapped);
    }

    #[test]
    fn one_failed_unmap_does_not_stop_the_others() {
        let mut m = manager(4 * GIB);
        m.map_range(0, 3 * GIB).unwrap();
        m.backend_mut().script_unmaps(&[Some(FakeFault::NoSlots)]);
        assert!(m.unmap_unneeded(0, 4 * GIB, |_| false).is_err());
        assert_eq!(m.mapped_slots().collect::<Vec<_>>(), [SlotIndex(0)]);
        assert_eq!(m.backend().mapped().count(), 1);
    }

    #[test]
    fn unmap_unneeded_keeps_slots_the_owner_still_needs() {
        let mut m = manager(8 * GIB);
        m.map_range(0, 4 * GIB).unwrap();
        m.unmap_unneeded(0, 4 * GIB, |s| s.offset_bytes == 2 * GIB)
            .unwrap();
        assert_eq!(m.mapped_slots().collect::<Vec<_>>(), [SlotIndex(2)]);
        assert!(m.backend().is_guest_addr_mapped(BASE + 2 * GIB));
        assert!(!m.backend().is_guest_addr_mapped(BASE));
    }

    #[test]
    fn sync_maps_exactly_the_wanted_slots() {
        let mut m = manager(8 * GIB);
        m.map_range(5 * GIB, 1).unwrap();
        m.sync(|s| s.offset_bytes < 3 * GIB).unwrap();
        assert_eq!(m.mapped_count(), 3);
        assert!(!m.is_mapped(SlotIndex(5)));
        m.unmap_all().unwrap();
        assert_eq!(m.mapped_count(), 0);
        assert_eq!(m.backend().mapped().count(), 0);
    }

    #[test]
    fn single_policy_slot_is_mapped_at_creation_and_never_unmapped() {
        let layout = SlotLayout::plan(LayoutRequest {
            policy: SlotPolicy::Single,
            region_size_bytes: 4 * GIB,
            block_size_bytes: 2 * MIB,
            slot_limit: 256,
        })
        .unwrap();
        let mut m = Memslots::new(layout, SlotIds::new(0, 1), BASE, FakeBackend::new()).unwrap();
        assert!(m.is_static());
        assert_eq!(m.mapped_bytes(), 4 * GIB);
        m.unmap_unneeded(0, 4 * GIB, |_| false).unwrap();
        m.unmap_all().unwrap();
        assert_eq!(m.mapped_count(), 1);
        assert_eq!(m.backend().calls().len(), 1);
    }

    #[test]
    fn too_few_slot_ids_are_refused() {
        let layout = SlotLayout::plan(LayoutRequest {
            policy: SlotPolicy::Fixed,
            region_size_bytes: 4 * GIB,
            block_size_bytes: 2 * MIB,
            slot_limit: 256,
        })
        .unwrap();
        assert!(Memslots::new(layout, SlotIds::new(0, 3), 0, FakeBackend::new()).is_err());
    }

    #[test]
    fn out_of_region_ranges_are_errors_and_change_nothing() {
        let mut m = manager(4 * GIB);
        assert!(m.map_range(3 * GIB, 2 * GIB).is_err());
        assert_eq!(m.mapped_count(), 0);
        assert!(m.backend().calls().is_empty());
    }
}
