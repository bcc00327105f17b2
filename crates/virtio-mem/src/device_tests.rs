use hostmem::{FakeMemory, MemoryOp};
use memslots::{
    BackendCall, FakeBackend, FakeFault, GIB, LayoutRequest, MIB, Memslots, SlotIds, SlotIndex,
    SlotLayout, SlotPolicy,
};
use vm_memory::GuestAddress;

use super::*;
use crate::features::{FeatureOffer, VIRTIO_F_VERSION_1};

const BASE: u64 = 8 * GIB;
const BLOCK: u64 = 2 * MIB;
const REGION: u64 = 4 * GIB;
const MODERN: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE);
const LEGACY: u64 = 1 << VIRTIO_F_VERSION_1;

type Dev = VirtioMem<FakeBackend, FakeMemory>;

fn slots(region: u64) -> Memslots<FakeBackend> {
    let layout = SlotLayout::plan(LayoutRequest {
        policy: SlotPolicy::Fixed,
        region_size_bytes: region,
        block_size_bytes: BLOCK,
        slot_limit: 256,
    })
    .unwrap();
    let ids = SlotIds::new(10, layout.len() as u32);
    Memslots::new(layout, ids, BASE, FakeBackend::new()).unwrap()
}

fn config(requested: u64) -> VirtioMemConfig {
    VirtioMemConfig {
        guest_addr: GuestAddress(BASE),
        region_size_bytes: REGION,
        block_size_bytes: BLOCK,
        backing_page_size_bytes: 4096,
        requested_size_bytes: requested,
        node_id: 3,
        prealloc: Prealloc::Off,
        offer: FeatureOffer::default(),
    }
}

fn device(requested: u64) -> Dev {
    let d = VirtioMem::new(config(requested), slots(REGION), FakeMemory::new()).unwrap();
    d.check_invariants().unwrap();
    d
}

fn prealloc_device(requested: u64) -> Dev {
    let mut c = config(requested);
    c.prealloc = Prealloc::OnPlug;
    VirtioMem::new(c, slots(REGION), FakeMemory::new()).unwrap()
}

fn range(offset: u64, nb_blocks: u16) -> BlockRange {
    BlockRange {
        guest_addr: GuestAddress(BASE + offset),
        nb_blocks,
    }
}

fn plug(d: &mut Dev, offset: u64, nb: u16) -> Response {
    let r = d.handle_request(Request::Plug(range(offset, nb)));
    d.check_invariants().unwrap();
    r
}

fn unplug(d: &mut Dev, offset: u64, nb: u16) -> Response {
    let r = d.handle_request(Request::Unplug(range(offset, nb)));
    d.check_invariants().unwrap();
    r
}

fn state(d: &mut Dev, offset: u64, nb: u16) -> Response {
    d.handle_request(Request::State(range(offset, nb)))
}

fn mapped(d: &Dev) -> Vec<usize> {
    d.memslots().mapped_slots().map(|s| s.0).collect()
}

#[test]
fn new_device_sizes_the_usable_region_and_maps_nothing() {
    let d = device(GIB);
    let s = d.status();
    assert_eq!(s.usable_region_size_bytes, GIB + 256 * MIB);
    assert_eq!(s.requested_size_bytes, GIB);
    assert_eq!(
        (s.slots_total, s.slots_mapped, s.plugged_size_bytes),
        (4, 0, 0)
    );
    assert!(!s.legacy_mapping);
    assert_eq!(device(0).status().usable_region_size_bytes, 0);
}

#[test]
fn new_rejects_a_layout_for_another_region() {
    let err = VirtioMem::new(config(0), slots(2 * GIB), FakeMemory::new()).unwrap_err();
    assert!(err.to_string().contains("layout covers"), "{err}");
    let mut c = config(0);
    c.guest_addr = GuestAddress(16 * GIB);
    let err = VirtioMem::new(c, slots(REGION), FakeMemory::new()).unwrap_err();
    assert!(err.to_string().contains("memslots start"), "{err}");
}

#[test]
fn plug_within_requested_size_is_acked_and_maps_its_slot_first() {
    let mut d = device(GIB);
    assert_eq!(plug(&mut d, GIB - 2 * BLOCK, 4), Response::Ack);
    assert_eq!(d.status().plugged_size_bytes, 4 * BLOCK);
    assert_eq!(mapped(&d), [0, 1], "the range straddles slots 0 and 1");
    assert_eq!(
        state(&mut d, GIB - 2 * BLOCK, 4),
        Response::AckState(RangeState::Plugged)
    );
    assert_eq!(d.stats().plug.ack, 1);
    assert_eq!(d.stats().plugged_bytes_total, 4 * BLOCK);
}

#[test]
fn plug_beyond_requested_size_is_nacked() {
    let mut d = device(4 * BLOCK);
    assert_eq!(plug(&mut d, 0, 3), Response::Ack);
    assert_eq!(plug(&mut d, 3 * BLOCK, 2), Response::Nack);
    assert_eq!(d.status().plugged_size_bytes, 3 * BLOCK);
    assert_eq!(plug(&mut d, 3 * BLOCK, 1), Response::Ack);
    assert_eq!(d.stats().plug.nack, 1);
}

#[test]
fn overbudget_plug_of_plugged_blocks_is_nacked_not_error() {
    let mut d = device(4 * BLOCK);
    assert_eq!(plug(&mut d, 0, 4), Response::Ack);
    // Already plugged (would be ERROR) but over budget: the budget check comes first.
    assert_eq!(plug(&mut d, 0, 1), Response::Nack);
    // Within budget again after an unplug, the state check answers ERROR.
    assert_eq!(unplug(&mut d, 3 * BLOCK, 1), Response::Ack);
    assert_eq!(plug(&mut d, 0, 1), Response::Error);
}

#[test]
fn plug_of_a_partly_plugged_range_is_an_error_and_changes_nothing() {
    let mut d = device(GIB);
    assert_eq!(plug(&mut d, 2 * BLOCK, 1), Response::Ack);
    d.backend_mut().clear_calls();
    assert_eq!(plug(&mut d, 0, 4), Response::Error);
    assert_eq!(d.status().plugged_size_bytes, BLOCK);
    assert!(d.memslots().backend().calls().is_empty());
}

#[test]
fn invalid_ranges_are_errors_for_every_request_type() {
    let mut d = device(GIB);
    let usable = d.status().usable_region_size_bytes;
    let bad = [
        range(MIB, 1),            // not block aligned
        range(0, 0),              // no blocks
        range(usable, 1),         // starts at the end of the usable region
        range(usable - BLOCK, 2), // runs past it
        range(REGION, 1),         // outside the region
        BlockRange {
            guest_addr: GuestAddress(BASE - BLOCK),
            nb_blocks: 1,
        }, // below the region
        BlockRange {
            guest_addr: GuestAddress(u64::MAX - BLOCK + 1),
            nb_blocks: 2,
        }, // overflows
    ];
    for r in bad {
        assert_eq!(d.handle_request(Request::Plug(r)), Response::Error, "{r:?}");
        assert_eq!(
            d.handle_request(Request::Unplug(r)),
            Response::Error,
            "{r:?}"
        );
        assert_eq!(
            d.handle_request(Request::State(r)),
            Response::Error,
            "{r:?}"
        );
    }
    assert_eq!(d.stats().plug.error, 7);
    assert_eq!(plug(&mut d, usable - BLOCK, 1), Response::Ack);
}

#[test]
fn invalid_range_beats_the_budget_check() {
    let mut d = device(0);
    // Nothing requested, nothing usable: a plug is invalid (ERROR), not over budget (NACK).
    assert_eq!(plug(&mut d, 0, 1), Response::Error);
}

#[test]
fn failed_map_answers_busy_and_changes_nothing() {
    let mut d = device(2 * GIB);
    assert_eq!(plug(&mut d, 0, 1), Response::Ack);
    // The range covers slots 0 (mapped) and 1 (needs mapping); the map fails.
    d.backend_mut().script_maps(&[Some(FakeFault::NoSlots)]);
    assert_eq!(plug(&mut d, GIB - BLOCK, 2), Response::Busy);
    assert_eq!(d.status().plugged_size_bytes, BLOCK);
    assert_eq!(mapped(&d), [0]);
    assert_eq!(
        state(&mut d, GIB - BLOCK, 2),
        Response::AckState(RangeState::Unplugged)
    );
    assert_eq!(d.stats().map_failures, 1);
    assert_eq!(d.stats().plug.busy, 1);
    // The retry succeeds.
    assert_eq!(plug(&mut d, GIB - BLOCK, 2), Response::Ack);
    assert_eq!(mapped(&d), [0, 1]);
}

#[test]
fn prealloc_populates_after_mapping() {
    let mut d = prealloc_device(GIB);
    assert_eq!(plug(&mut d, 4 * BLOCK, 2), Response::Ack);
    assert_eq!(d.memory().ops(), [MemoryOp::Populate(4 * BLOCK, 2 * BLOCK)]);
    assert!(matches!(
        d.memslots().backend().calls(),
        [BackendCall::Map(_)]
    ));
    // Without prealloc nothing is populated.
    let mut plain = device(GIB);
    assert_eq!(plug(&mut plain, 0, 1), Response::Ack);
    assert!(plain.memory().ops().is_empty());
}

#[test]
fn prealloc_failure_rolls_back_and_unmaps() {
    let mut d = prealloc_device(2 * GIB);
    d.memory_mut().fail_populates(1);
    assert_eq!(plug(&mut d, GIB - BLOCK, 2), Response::Busy);
    assert_eq!(
        d.memory().ops(),
        [
            MemoryOp::Populate(GIB - BLOCK, 2 * BLOCK),
            MemoryOp::Discard(GIB - BLOCK, 2 * BLOCK)
        ]
    );
    assert!(
        mapped(&d).is_empty(),
        "both slots were mapped for the plug and unmapped again"
    );
    assert_eq!(d.memslots().backend().mapped().count(), 0);
    assert_eq!(d.status().plugged_size_bytes, 0);
    assert_eq!(d.stats().prealloc_failures, 1);
}

#[test]
fn prealloc_failure_keeps_slots_that_hold_other_plugged_blocks() {
    let mut d = prealloc_device(2 * GIB);
    assert_eq!(plug(&mut d, 0, 1), Response::Ack);
    d.memory_mut().fail_populates(1);
    assert_eq!(plug(&mut d, GIB - BLOCK, 2), Response::Busy);
    assert_eq!(mapped(&d), [0]);
    assert_eq!(d.status().plugged_size_bytes, BLOCK);
}

#[test]
fn unplug_discards_clears_and_unmaps_the_emptied_slot() {
    let mut d = device(2 * GIB);
    assert_eq!(plug(&mut d, GIB, 3), Response::Ack);
    assert_eq!(mapped(&d), [1]);
    assert_eq!(unplug(&mut d, GIB, 3), Response::Ack);
    assert_eq!(d.memory().ops(), [MemoryOp::Discard(GIB, 3 * BLOCK)]);
    assert!(mapped(&d).is_empty());
    let calls = d.memslots().backend().calls();
    assert!(matches!(calls.last(), Some(BackendCall::Unmap(m)) if m.guest_addr == BASE + GIB));
    assert_eq!(d.stats().unplugged_bytes_total, 3 * BLOCK);
}

#[test]
fn unplug_keeps_a_slot_that_still_holds_plugged_blocks() {
    let mut d = device(2 * GIB);
    assert_eq!(plug(&mut d, GIB, 3), Response::Ack);
    assert_eq!(unplug(&mut d, GIB, 2), Response::Ack);
    assert_eq!(mapped(&d), [1]);
    assert!(d.memslots().is_mapped(SlotIndex(1)));
}

#[test]
fn unplug_of_unplugged_or_mixed_blocks_is_an_error() {
    let mut d = device(GIB);
    assert_eq!(unplug(&mut d, 0, 1), Response::Error);
    assert_eq!(plug(&mut d, 0, 1), Response::Ack);
    assert_eq!(unplug(&mut d, 0, 2), Response::Error);
    assert!(
        d.memory().ops().is_empty(),
        "nothing discarded for invalid unplugs"
    );
    assert_eq!(d.stats().unplug.error, 2);
}

#[test]
fn discard_failure_on_unplug_answers_busy() {
    let mut d = device(GIB);
    assert_eq!(plug(&mut d, 0, 2), Response::Ack);
    d.memory_mut().fail_discards(1);
    assert_eq!(unplug(&mut d, 0, 2), Response::Busy);
    assert_eq!(d.status().plugged_size_bytes, 2 * BLOCK);
    assert_eq!(mapped(&d), [0]);
    assert_eq!(d.stats().discard_failures, 1);
    assert_eq!(unplug(&mut d, 0, 2), Response::Ack);
}

#[test]
fn state_reports_plugged_unplugged_and_mixed() {
    let mut d = device(GIB);
    assert_eq!(plug(&mut d, 2 * BLOCK, 2), Response::Ack);
    assert_eq!(
        state(&mut d, 2 * BLOCK, 2),
        Response::AckState(RangeState::Plugged)
    );
    assert_eq!(
        state(&mut d, 0, 2),
        Response::AckState(RangeState::Unplugged)
    );
    assert_eq!(
        state(&mut d, BLOCK, 2),
        Response::AckState(RangeState::Mixed)
    );
    assert_eq!(d.stats().state.ack, 3);
}

#[test]
fn unplug_all_discards_runs_clears_unmaps_and_shrinks_usable() {
    let mut d = device(3 * GIB);
    assert_eq!(plug(&mut d, 0, 2), Response::Ack);
    assert_eq!(plug(&mut d, 2 * GIB, 1), Response::Ack);
    let _ = d.set_requested_size(GIB).unwrap();
    assert_eq!(d.status().usable_region_size_bytes, 3 * GIB + 256 * MIB);
    assert_eq!(d.handle_request(Request::UnplugAll), Response::Ack);
    d.check_invariants().unwrap();
    assert_eq!(
        d.memory().ops(),
        [
            MemoryOp::Discard(0, 2 * BLOCK),
            MemoryOp::Discard(2 * GIB, BLOCK)
        ]
    );
    let s = d.status();
    assert_eq!((s.plugged_size_bytes, s.slots_mapped), (0, 0));
    assert_eq!(s.usable_region_size_bytes, GIB + 256 * MIB);
    assert_eq!(d.stats().unplug_all.ack, 1);
}

#[test]
fn unplug_all_discard_failure_answers_busy_and_changes_nothing() {
    let mut d = device(3 * GIB);
    assert_eq!(plug(&mut d, 0, 2), Response::Ack);
    assert_eq!(plug(&mut d, 2 * GIB, 1), Response::Ack);
    let _ = d.set_requested_size(0).unwrap();
    let before = d.status();
    d.memory_mut().fail_discards(1);
    assert_eq!(d.handle_request(Request::UnplugAll), Response::Busy);
    d.check_invariants().unwrap();
    assert_eq!(d.status(), before);
    assert_eq!(d.stats().unplug_all.busy, 1);
}

#[test]
fn unplug_all_with_nothing_plugged_acks_and_shrinks_usable() {
    let mut d = device(2 * GIB);
    let _ = d.set_requested_size(0).unwrap();
    assert_eq!(d.status().usable_region_size_bytes, 2 * GIB + 256 * MIB);
    assert_eq!(d.handle_request(Request::UnplugAll), Response::Ack);
    assert_eq!(d.status().usable_region_size_bytes, 0);
    assert!(d.memory().ops().is_empty());
}

#[test]
fn set_requested_size_grows_usable_never_shrinks_and_always_notifies() {
    let mut d = device(0);
    assert!(matches!(d.set_requested_size(GIB), Ok(ConfigChanged)));
    assert_eq!(d.status().usable_region_size_bytes, GIB + 256 * MIB);
    let before = d.config_space();
    assert!(
        matches!(d.set_requested_size(GIB), Ok(ConfigChanged)),
        "unchanged still notifies"
    );
    assert_eq!(d.config_space(), before, "and changes nothing");
    assert!(matches!(d.set_requested_size(BLOCK), Ok(ConfigChanged)));
    assert_eq!(d.status().usable_region_size_bytes, GIB + 256 * MIB);
    assert_eq!(d.status().requested_size_bytes, BLOCK);
    let _ = d.set_requested_size(REGION).unwrap();
    assert_eq!(
        d.status().usable_region_size_bytes,
        REGION,
        "capped at the region"
    );
    d.check_invariants().unwrap();
    assert!(
        mapped(&d).is_empty(),
        "growing the usable region maps nothing for modern drivers"
    );
}

#[test]
fn set_requested_size_rejects_bad_values_and_changes_nothing() {
    let mut d = device(GIB);
    let before = d.status();
    let e = d.set_requested_size(GIB + MIB).unwrap_err().to_string();
    assert!(
        e.contains("not a multiple of the block size") && e.contains("0x200000"),
        "{e}"
    );
    let e = d
        .set_requested_size(REGION + BLOCK)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("larger than the region size") && e.contains("0x100000000"),
        "{e}"
    );
    assert_eq!(d.status(), before);
}

#[test]
fn requested_zero_keeps_usable_until_unplug_all() {
    let mut d = device(GIB);
    assert_eq!(plug(&mut d, 0, 1), Response::Ack);
    let _ = d.set_requested_size(0).unwrap();
    assert_eq!(d.status().usable_region_size_bytes, GIB + 256 * MIB);
    // The guest may still unplug what it has.
    assert_eq!(unplug(&mut d, 0, 1), Response::Ack);
    assert_eq!(plug(&mut d, 0, 1), Response::Nack);
}

#[test]
fn legacy_driver_gets_the_usable_region_mapped_and_it_follows_growth() {
    let mut d = device(GIB);
    d.ack_features(LEGACY).unwrap();
    assert!(d.legacy_mapping());
    assert_eq!(mapped(&d), [0, 1], "usable region is 1.25 GiB");
    d.check_invariants().unwrap();
    let _ = d.set_requested_size(2 * GIB).unwrap();
    assert_eq!(mapped(&d), [0, 1, 2]);
    assert_eq!(plug(&mut d, 2 * GIB, 1), Response::Ack);
    assert_eq!(unplug(&mut d, 2 * GIB, 1), Response::Ack);
    assert_eq!(
        mapped(&d),
        [0, 1, 2],
        "legacy slots stay mapped after unplug"
    );
    let _ = d.set_requested_size(0).unwrap();
    assert_eq!(
        mapped(&d),
        [0, 1, 2],
        "no shrink on a requested-size change"
    );
    assert_eq!(d.handle_request(Request::UnplugAll), Response::Ack);
    assert!(mapped(&d).is_empty(), "usable region shrank to 0");
    d.check_invariants().unwrap();
}

#[test]
fn legacy_mapping_shrinks_to_the_usable_region_on_unplug_all() {
    let mut d = device(3 * GIB);
    d.ack_features(LEGACY).unwrap();
    assert_eq!(mapped(&d), [0, 1, 2, 3]);
    let _ = d.set_requested_size(GIB - 256 * MIB).unwrap();
    assert_eq!(d.handle_request(Request::UnplugAll), Response::Ack);
    assert_eq!(d.status().usable_region_size_bytes, GIB);
    assert_eq!(mapped(&d), [0]);
    d.check_invariants().unwrap();
}

#[test]
fn legacy_mapping_failure_refuses_the_features() {
    let mut d = device(GIB);
    d.backend_mut()
        .script_maps(&[None, Some(FakeFault::OutOfMemory)]);
    let e = d.ack_features(LEGACY).unwrap_err();
    assert!(matches!(e, Error::LegacyMapping { .. }), "{e}");
    assert!(e.to_string().contains("UNPLUGGED_INACCESSIBLE"), "{e}");
    assert!(!d.legacy_mapping());
    assert_eq!(d.driver_features(), None);
    assert!(mapped(&d).is_empty());
    d.check_invariants().unwrap();
}

#[test]
fn legacy_growth_map_failure_leaves_requested_and_usable_unchanged() {
    let mut d = device(GIB);
    d.ack_features(LEGACY).unwrap();
    let before = d.status();
    d.backend_mut().script_maps(&[Some(FakeFault::NoSlots)]);
    assert!(d.set_requested_size(3 * GIB).is_err());
    assert_eq!(d.status(), before);
    d.check_invariants().unwrap();
    let _ = d.set_requested_size(3 * GIB).unwrap();
    assert_eq!(mapped(&d), [0, 1, 2, 3]);
}

#[test]
fn modern_driver_after_a_legacy_one_unmaps_unplugged_slots() {
    let mut d = device(3 * GIB);
    d.ack_features(LEGACY).unwrap();
    assert_eq!(plug(&mut d, GIB, 1), Response::Ack);
    d.reset();
    assert_eq!(
        mapped(&d),
        [1],
        "until features are acked only plugged slots stay mapped"
    );
    d.ack_features(LEGACY).unwrap();
    assert_eq!(mapped(&d), [0, 1, 2, 3]);
    d.ack_features(MODERN).unwrap();
    assert!(!d.legacy_mapping());
    assert_eq!(mapped(&d), [1]);
    d.check_invariants().unwrap();
}

#[test]
fn device_reset_keeps_the_plugged_state() {
    let mut d = device(GIB);
    d.ack_features(MODERN).unwrap();
    assert_eq!(plug(&mut d, 0, 5), Response::Ack);
    d.reset();
    let s = d.status();
    assert_eq!((s.plugged_size_bytes, s.slots_mapped), (5 * BLOCK, 1));
    assert_eq!(d.driver_features(), None);
    assert!(d.memory().ops().is_empty());
}

#[test]
fn system_reset_unplugs_everything_and_shrinks_usable() {
    let mut d = device(3 * GIB);
    d.ack_features(LEGACY).unwrap();
    assert_eq!(plug(&mut d, 0, 2), Response::Ack);
    let _ = d.set_requested_size(GIB).unwrap();
    d.system_reset().unwrap();
    d.check_invariants().unwrap();
    let s = d.status();
    assert_eq!((s.plugged_size_bytes, s.slots_mapped), (0, 0));
    assert_eq!(s.usable_region_size_bytes, GIB + 256 * MIB);
    assert!(!s.legacy_mapping);
    assert_eq!(d.memory().ops(), [MemoryOp::Discard(0, 2 * BLOCK)]);
    assert_eq!(d.memslots().backend().mapped().count(), 0);
}

#[test]
fn system_reset_discard_failure_keeps_memory_plugged() {
    let mut d = device(GIB);
    assert_eq!(plug(&mut d, 0, 2), Response::Ack);
    d.memory_mut().fail_discards(1);
    assert!(matches!(d.system_reset(), Err(Error::UnplugAllFailed(_))));
    d.check_invariants().unwrap();
    assert_eq!(d.status().plugged_size_bytes, 2 * BLOCK);
    assert_eq!(mapped(&d), [0]);
}

#[test]
fn the_smaller_last_slot_is_mapped_with_its_true_size() {
    let region = 3 * GIB + 512 * MIB;
    let mut c = config(region);
    c.region_size_bytes = region;
    let mut d = VirtioMem::new(c, slots(region), FakeMemory::new()).unwrap();
    let last_block = region - BLOCK;
    assert_eq!(plug(&mut d, last_block, 1), Response::Ack);
    let slot = d.memslots().backend().mapped().next().copied().unwrap();
    assert_eq!(
        (slot.region_offset_bytes, slot.size_bytes),
        (3 * GIB, 512 * MIB)
    );
    assert_eq!(unplug(&mut d, last_block, 1), Response::Ack);
    assert!(mapped(&d).is_empty());
}

#[test]
fn config_space_reflects_the_live_sizes() {
    let mut d = device(GIB);
    assert_eq!(plug(&mut d, 0, 3), Response::Ack);
    let mut bytes = [0u8; 56];
    d.read_config(0, &mut bytes);
    let le64 = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    assert_eq!(le64(0), BLOCK);
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 3);
    assert_eq!(le64(16), BASE);
    assert_eq!(le64(24), REGION);
    assert_eq!(le64(32), GIB + 256 * MIB);
    assert_eq!(le64(40), 3 * BLOCK);
    assert_eq!(le64(48), GIB);
    let mut past = [0xffu8; 4];
    d.read_config(1000, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn device_features_offer_unplugged_inaccessible_and_version_1() {
    let d = device(0);
    assert_eq!(d.device_features(), MODERN);
}

#[test]
fn a_static_single_slot_layout_stays_mapped_through_unplug_and_reset() {
    let layout = SlotLayout::plan(LayoutRequest {
        policy: SlotPolicy::Single,
        region_size_bytes: REGION,
        block_size_bytes: BLOCK,
        slot_limit: 256,
    })
    .unwrap();
    let slots = Memslots::new(layout, SlotIds::new(0, 1), BASE, FakeBackend::new()).unwrap();
    let mut d = VirtioMem::new(config(GIB), slots, FakeMemory::new()).unwrap();
    assert_eq!(mapped(&d), [0]);
    assert_eq!(plug(&mut d, 0, 1), Response::Ack);
    assert_eq!(unplug(&mut d, 0, 1), Response::Ack);
    d.system_reset().unwrap();
    d.check_invariants().unwrap();
    assert_eq!(mapped(&d), [0]);
    assert_eq!(
        d.memslots().backend().calls().len(),
        1,
        "mapped once, never unmapped"
    );
}

#[test]
fn failed_unmap_keeps_the_ack_and_is_retried_before_the_next_request() {
    let mut d = device(2 * GIB);
    assert_eq!(plug(&mut d, GIB, 1), Response::Ack);
    d.backend_mut()
        .script_unmaps(&[Some(FakeFault::OutOfMemory)]);
    // The memory was discarded and the bitmap updated, so the answer is still ACK; the slot
    // stays mapped for now (harmless: the guest was told the blocks are unplugged).
    assert_eq!(unplug(&mut d, GIB, 1), Response::Ack);
    assert_eq!(mapped(&d), [1]);
    assert_eq!(d.stats().unmap_failures, 1);
    assert_eq!(
        state(&mut d, 0, 1),
        Response::AckState(RangeState::Unplugged)
    );
    assert!(
        mapped(&d).is_empty(),
        "retried before serving the next request"
    );
    d.check_invariants().unwrap();
}

#[test]
fn slots_left_mapped_by_a_failed_plug_rollback_are_unmapped_later() {
    let mut d = device(2 * GIB);
    // The plug spans slots 0 and 1: slot 0 maps, slot 1 fails, and unmapping slot 0 again fails
    // as well (found by the virtio_mem_device fuzz target).
    d.backend_mut()
        .script_maps(&[None, Some(FakeFault::NoSlots)]);
    d.backend_mut()
        .script_unmaps(&[Some(FakeFault::OutOfMemory), Some(FakeFault::OutOfMemory)]);
    assert_eq!(plug(&mut d, GIB - BLOCK, 2), Response::Busy);
    assert_eq!(mapped(&d), [0], "still mapped: both unmaps failed");
    assert_eq!(d.stats().unmap_failures, 1);
    assert_eq!(
        state(&mut d, 0, 1),
        Response::AckState(RangeState::Unplugged)
    );
    assert!(mapped(&d).is_empty(), "retried before the next request");
    d.check_invariants().unwrap();
}

#[test]
fn slots_left_mapped_by_a_failed_legacy_mapping_rollback_are_unmapped() {
    let mut d = device(2 * GIB);
    // The usable region (2.25 GiB) covers slots 0..=2: 0 and 1 map, 2 fails, and the rollback's
    // unmap of slot 1 fails; the device unmaps it itself.
    d.backend_mut()
        .script_maps(&[None, None, Some(FakeFault::OutOfMemory)]);
    d.backend_mut().script_unmaps(&[Some(FakeFault::NoSlots)]);
    assert!(d.ack_features(LEGACY).is_err());
    assert!(mapped(&d).is_empty());
    assert_eq!(d.driver_features(), None);
    d.check_invariants().unwrap();
}

/// Plugs block `offset`, then unplugs it with the slot deletion succeeding and the mprotect
/// failing `protect_faults` times.
fn half_failed_unplug(d: &mut Dev, offset: u64, protect_faults: usize) {
    assert_eq!(plug(d, offset, 1), Response::Ack);
    d.backend_mut()
        .script_protects(&vec![Some(FakeFault::OutOfMemory); protect_faults]);
    assert_eq!(unplug(d, offset, 1), Response::Ack);
}

#[test]
fn plug_after_a_half_failed_unmap_maps_the_slot_again() {
    let mut d = device(2 * GIB);
    // Two faults: the unplug's own mprotect and the retry before the next request.
    half_failed_unplug(&mut d, GIB, 2);
    let slot = SlotIndex(1);
    assert_eq!(d.memslots().state(slot), SlotState::ProtectPending);
    assert_eq!(d.memslots().backend().mapped().count(), 0);
    assert_eq!(plug(&mut d, GIB, 1), Response::Ack);
    assert_eq!(d.memslots().state(slot), SlotState::Mapped);
    assert!(
        d.memslots().backend().is_guest_addr_mapped(BASE + GIB),
        "an acked plug must be in KVM"
    );
    assert_eq!(d.memslots().backend().exposed().count(), 0);
}

#[test]
fn half_failed_unmap_is_finished_by_protecting_only() {
    let mut d = device(2 * GIB);
    half_failed_unplug(&mut d, GIB, 1);
    assert_eq!(d.stats().unmap_failures, 1);
    d.backend_mut().clear_calls();
    assert_eq!(
        state(&mut d, GIB, 1),
        Response::AckState(RangeState::Unplugged)
    );
    let slot = d.memslots().mapping(SlotIndex(1));
    assert_eq!(
        d.memslots().backend().calls(),
        [BackendCall::Protect(slot)],
        "KVM is not asked to delete the slot again"
    );
    assert_eq!(d.memslots().state(SlotIndex(1)), SlotState::Unmapped);
    d.check_invariants().unwrap();
}

#[test]
fn invariants_refuse_a_plugged_block_whose_slot_kvm_does_not_have() {
    let mut d = device(2 * GIB);
    half_failed_unplug(&mut d, GIB, 1);
    d.check_invariants().unwrap();
    // Mark the block plugged behind the device's back: KVM does not have its slot.
    let first = (GIB / BLOCK) as usize;
    d.blocks.set_range(first..first + 1, true);
    d.plugged_size_bytes += BLOCK;
    let err = d.check_invariants().unwrap_err();
    assert!(
        err.contains("slot 1") && err.contains("ProtectPending"),
        "{err}"
    );
    assert_eq!(d.check_invariants_in(1..2), Err(err));
    d.check_invariants_in(0..1).unwrap();
    d.check_invariants_in(2..9).unwrap();
    d.check_invariants_in(40..50).unwrap();
}

#[test]
fn the_discard_journal_records_unplugs_only_while_on() {
    let mut d = device(GIB);
    d.driver_features = Some(MODERN);
    assert_eq!(plug(&mut d, 0, 4), Response::Ack);
    assert_eq!(unplug(&mut d, 0, 1), Response::Ack);
    assert!(d.take_discard_journal().is_empty(), "journal off");
    d.start_discard_journal();
    assert_eq!(unplug(&mut d, BLOCK, 1), Response::Ack);
    assert_eq!(plug(&mut d, BLOCK, 1), Response::Ack);
    assert_eq!(d.handle_request(Request::UnplugAll), Response::Ack);
    assert_eq!(
        d.take_discard_journal(),
        vec![(BLOCK, BLOCK), (BLOCK, 3 * BLOCK)],
        "the unplug, then unplug-all's one run (blocks 1..4)"
    );
    assert!(d.take_discard_journal().is_empty());
    d.stop_discard_journal();
}
