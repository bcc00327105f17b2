//! Restoring a saved device under another slot policy and budget: the new device maps exactly
//! the slots (of its own layout) that hold plugged blocks, computed from the saved bitmap, and
//! nothing else; changed sanity fields are refused by name.

use hostmem::FakeMemory;
use memslots::{
    BackendCall, FakeBackend, GIB, LayoutRequest, MIB, Memslots, SlotIds, SlotLayout, SlotPolicy,
};
use proptest::prelude::*;
use virtio_mem::features::{VIRTIO_F_VERSION_1, VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE, feature_bit};
use virtio_mem::request::{BlockRange, Request, Response};
use virtio_mem::{DeviceState, FeatureOffer, Prealloc, VirtioMem, VirtioMemConfig};
use vm_memory::GuestAddress;

const BASE: u64 = 8 * GIB;
const BLOCK: u64 = 2 * MIB;
const REGION: u64 = 64 * GIB;

type Dev = VirtioMem<FakeBackend, FakeMemory>;

fn slots(policy: SlotPolicy, slot_limit: u32) -> Memslots<FakeBackend> {
    let layout = SlotLayout::plan(LayoutRequest {
        policy,
        region_size_bytes: REGION,
        block_size_bytes: BLOCK,
        slot_limit,
    })
    .unwrap();
    let ids = SlotIds::new(10, layout.len() as u32);
    Memslots::new(layout, ids, BASE, FakeBackend::new()).unwrap()
}

fn config() -> VirtioMemConfig {
    VirtioMemConfig {
        guest_addr: GuestAddress(BASE),
        region_size_bytes: REGION,
        block_size_bytes: BLOCK,
        backing_page_size_bytes: 4096,
        requested_size_bytes: REGION,
        node_id: 0,
        prealloc: Prealloc::Off,
        offer: FeatureOffer::default(),
    }
}

/// A device under `policy` with the driver's features acked and `runs` (first block, count)
/// plugged.
fn plugged(policy: SlotPolicy, slot_limit: u32, runs: &[(u64, u64)]) -> Dev {
    let mut d = VirtioMem::new(config(), slots(policy, slot_limit), FakeMemory::new()).unwrap();
    d.ack_features(
        feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE),
    )
    .unwrap();
    for &(first, count) in runs {
        let r = Request::Plug(BlockRange {
            guest_addr: GuestAddress(BASE + first * BLOCK),
            nb_blocks: count as u16,
        });
        assert_eq!(d.handle_request(r), Response::Ack, "plug {first}+{count}");
    }
    d
}

/// Slots of `memslots`' layout that overlap a plugged block of `state` (the `single` policy's
/// one slot is static: always mapped).
fn slots_holding_plugged(memslots: &Memslots<FakeBackend>, state: &DeviceState) -> Vec<usize> {
    let layout = memslots.layout();
    if memslots.is_static() {
        return (0..layout.len()).collect();
    }
    let mut wanted: Vec<usize> = state
        .plugged_runs
        .iter()
        .flat_map(|run| {
            layout
                .overlapping(run.first_block * BLOCK, run.block_count * BLOCK)
                .unwrap()
        })
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    wanted
}

/// Saves under `from`, restores under `to`, checks the mapping; returns the restored device.
fn check_restore(from: (SlotPolicy, u32), to: (SlotPolicy, u32), runs: &[(u64, u64)]) -> Dev {
    let source = plugged(from.0, from.1, runs);
    let json = serde_json::to_vec(&source.state()).unwrap();
    let saved: DeviceState = serde_json::from_slice(&json).unwrap();
    let target = slots(to.0, to.1);
    let expected = slots_holding_plugged(&target, &saved);
    let restored = VirtioMem::restore(config(), target, FakeMemory::new(), &saved).unwrap();
    restored.check_invariants().unwrap();
    let mapped: Vec<usize> = restored.memslots().mapped_slots().map(|s| s.0).collect();
    assert_eq!(mapped, expected, "{from:?} -> {to:?}");
    let calls = restored.memslots().backend().calls();
    assert!(
        calls.iter().all(|c| matches!(c, BackendCall::Map(_))),
        "only maps: {calls:?}"
    );
    assert_eq!(calls.len(), expected.len());
    assert_eq!(restored.state(), saved);
    assert!(restored.memory().ops().is_empty(), "no memory touched");
    restored
}

const RUNS: &[(u64, u64)] = &[(0, 3), (700, 1), (5000, 64), (32767, 1)];

#[test]
fn fixed_to_adaptive_maps_only_slots_with_plugged_blocks() {
    let d = check_restore((SlotPolicy::Fixed, 256), (SlotPolicy::Adaptive, 16), RUNS);
    assert!(d.memslots().layout().len() <= 16);
}

#[test]
fn adaptive_to_fixed_maps_only_slots_with_plugged_blocks() {
    let d = check_restore((SlotPolicy::Adaptive, 16), (SlotPolicy::Fixed, 256), RUNS);
    assert_eq!(d.status().slots_mapped, 4, "1 GiB slots: 0, 1, 9, 63");
}

#[test]
fn single_and_fixed_exchange_too() {
    check_restore((SlotPolicy::Single, 1), (SlotPolicy::Fixed, 256), RUNS);
    check_restore((SlotPolicy::Fixed, 256), (SlotPolicy::Single, 1), RUNS);
    let empty = check_restore((SlotPolicy::Fixed, 256), (SlotPolicy::Adaptive, 8), &[]);
    assert_eq!(empty.status().slots_mapped, 0);
}

#[test]
fn changed_region_geometry_is_refused_by_name() {
    let saved = plugged(SlotPolicy::Fixed, 256, RUNS).state();
    let restore = |c: VirtioMemConfig| {
        let layout = SlotLayout::plan(LayoutRequest {
            policy: SlotPolicy::Fixed,
            region_size_bytes: c.region_size_bytes,
            block_size_bytes: c.block_size_bytes,
            slot_limit: 256,
        })
        .unwrap();
        let ids = SlotIds::new(10, layout.len() as u32);
        let memslots = Memslots::new(layout, ids, c.guest_addr.0, FakeBackend::new()).unwrap();
        VirtioMem::restore(c, memslots, FakeMemory::new(), &saved)
            .unwrap_err()
            .to_string()
    };
    let mut c = config();
    c.guest_addr = GuestAddress(BASE + 64 * GIB);
    assert!(restore(c).contains("guest address changed"));
    let mut c = config();
    c.region_size_bytes = 2 * REGION;
    c.requested_size_bytes = 0;
    assert!(restore(c).contains("region size changed"));
    let mut c = config();
    c.block_size_bytes = 4 * MIB;
    assert!(restore(c).contains("block size changed"));
    let mut c = config();
    c.node_id = 1;
    assert!(restore(c).contains("node id changed"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn any_plug_pattern_restores_under_any_policy(
        starts in proptest::collection::btree_set(0u64..32000, 0..12),
        from in 0usize..3,
        to in 0usize..3,
        limit in 1u32..80,
    ) {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for s in starts {
            if runs.last().is_none_or(|&(first, count)| first + count <= s) {
                runs.push((s, 1 + s % 7));
            }
        }
        let policy = |i: usize| (SlotPolicy::ALL[i], if i == 0 { 1 } else { limit });
        check_restore(policy(from), policy(to), &runs);
    }
}
