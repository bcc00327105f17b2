use hostmem::{FakeMemory, MemoryOp};
use memslots::{
    FakeBackend, FakeFault, GIB, LayoutRequest, MIB, Memslots, SlotIds, SlotLayout, SlotPolicy,
};
use vm_memory::GuestAddress;

use super::*;
use crate::features::{FeatureOffer, VIRTIO_F_VERSION_1};
use crate::request::{BlockRange, Request, Response};

const BASE: u64 = 4 * GIB;
const BLOCK: u64 = 2 * MIB;
const REGION: u64 = 4 * GIB;

type Dev = VirtioMem<FakeBackend, FakeMemory>;

fn slots() -> Memslots<FakeBackend> {
    let layout = SlotLayout::plan(LayoutRequest {
        policy: SlotPolicy::Fixed,
        region_size_bytes: REGION,
        block_size_bytes: BLOCK,
        slot_limit: 256,
    })
    .unwrap();
    let ids = SlotIds::new(0, layout.len() as u32);
    Memslots::new(layout, ids, BASE, FakeBackend::new()).unwrap()
}

fn config(prealloc: Prealloc) -> VirtioMemConfig {
    VirtioMemConfig {
        guest_addr: GuestAddress(BASE),
        region_size_bytes: REGION,
        block_size_bytes: BLOCK,
        backing_page_size_bytes: 4096,
        requested_size_bytes: 3 * GIB,
        node_id: 1,
        prealloc,
        offer: FeatureOffer::default(),
    }
}

fn plugged_device() -> Dev {
    let mut d = VirtioMem::new(config(Prealloc::Off), slots(), FakeMemory::new()).unwrap();
    for (offset, nb) in [(0, 3), (2 * GIB, 1), (2 * GIB + 8 * BLOCK, 2)] {
        let r = Request::Plug(BlockRange {
            guest_addr: GuestAddress(BASE + offset),
            nb_blocks: nb,
        });
        assert_eq!(d.handle_request(r), Response::Ack);
    }
    d
}

fn restore(state: &DeviceState, prealloc: Prealloc) -> Result<Dev> {
    VirtioMem::restore(config(prealloc), slots(), FakeMemory::new(), state)
}

#[test]
fn state_round_trips_through_json_and_remaps_plugged_slots() {
    let d = plugged_device();
    let saved = d.state();
    let json = serde_json::to_string(&saved).unwrap();
    let loaded: DeviceState = serde_json::from_str(&json).unwrap();
    assert_eq!(loaded, saved);
    assert_eq!(
        saved.plugged_runs,
        [
            BlockRun {
                first_block: 0,
                block_count: 3
            },
            BlockRun {
                first_block: 1024,
                block_count: 1
            },
            BlockRun {
                first_block: 1032,
                block_count: 2
            }
        ]
    );
    let r = restore(&loaded, Prealloc::Off).unwrap();
    r.check_invariants().unwrap();
    assert_eq!(r.status(), d.status());
    assert_eq!(r.state(), saved);
    let mapped: Vec<_> = r.memslots().mapped_slots().map(|s| s.0).collect();
    assert_eq!(mapped, [0, 2]);
    assert!(r.memory().ops().is_empty());
}

#[test]
fn restore_with_prealloc_populates_each_plugged_run() {
    let saved = plugged_device().state();
    let r = restore(&saved, Prealloc::OnPlug).unwrap();
    assert_eq!(
        r.memory().ops(),
        [
            MemoryOp::Populate(0, 3 * BLOCK),
            MemoryOp::Populate(2 * GIB, BLOCK),
            MemoryOp::Populate(2 * GIB + 8 * BLOCK, 2 * BLOCK)
        ]
    );
}

#[test]
fn restore_of_a_legacy_driver_maps_the_usable_region() {
    let mut d = plugged_device();
    d.ack_features(1 << VIRTIO_F_VERSION_1).unwrap();
    let r = restore(&d.state(), Prealloc::Off).unwrap();
    assert!(r.legacy_mapping());
    assert_eq!(r.status().slots_mapped, 4, "usable region is 3.25 GiB");
    r.check_invariants().unwrap();
}

#[test]
fn restore_refuses_changed_sanity_fields() {
    let saved = plugged_device().state();
    let mut other = config(Prealloc::Off);
    other.node_id = 2;
    let e = VirtioMem::restore(other, slots(), FakeMemory::new(), &saved).unwrap_err();
    assert!(e.to_string().contains("node id changed from 0x1"), "{e}");
    let mut s = saved.clone();
    s.block_size_bytes = 4 * MIB;
    let e = restore(&s, Prealloc::Off).unwrap_err();
    assert!(e.to_string().contains("block size changed"), "{e}");
}

#[test]
fn restore_refuses_inconsistent_states() {
    let saved = plugged_device().state();
    let mut s = saved.clone();
    s.plugged_size_bytes += BLOCK;
    assert!(
        restore(&s, Prealloc::Off)
            .unwrap_err()
            .to_string()
            .contains("does not match")
    );
    let mut s = saved.clone();
    s.usable_region_size_bytes = GIB;
    assert!(
        restore(&s, Prealloc::Off).is_err(),
        "usable below requested"
    );
    let mut s = saved.clone();
    s.requested_size_bytes = 0;
    s.usable_region_size_bytes = GIB;
    let e = restore(&s, Prealloc::Off).unwrap_err().to_string();
    assert!(e.contains("past the usable region"), "{e}");
    let mut s = saved.clone();
    s.block_count += 1;
    assert!(
        restore(&s, Prealloc::Off)
            .unwrap_err()
            .to_string()
            .contains("saved bitmap has")
    );
    let mut s = saved.clone();
    s.plugged_runs.push(BlockRun {
        first_block: u64::MAX,
        block_count: 2,
    });
    assert!(
        restore(&s, Prealloc::Off)
            .unwrap_err()
            .to_string()
            .contains("outside the region")
    );
    let mut s = saved;
    s.driver_features = Some(1 << 40);
    assert!(restore(&s, Prealloc::Off).is_err());
}

#[test]
fn restore_map_failure_is_an_error_and_leaves_nothing_mapped() {
    let saved = plugged_device().state();
    let mut memslots = slots();
    memslots
        .backend_mut()
        .script_maps(&[None, Some(FakeFault::OutOfMemory)]);
    let e =
        VirtioMem::restore(config(Prealloc::Off), memslots, FakeMemory::new(), &saved).unwrap_err();
    assert!(matches!(e, Error::Memslots(_)), "{e}");
}
