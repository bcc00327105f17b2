//! A migration destination's device slots (`DeviceSlots`) on real KVM, before any device
//! exists: nothing is mapped until a bitmap says which blocks are plugged; then exactly the
//! slots holding them are mapped (their host memory writable), and a later bitmap without them
//! unmaps them again. Needs /dev/kvm.

mod common;

use std::sync::Arc;

use hostmem::{Backing, BackingKind, HostRegion};
use memslots::SlotBudget;
use vmm::config::MemDeviceConfig;
use vmm::memory_device::{DeviceSlots, MemoryDevicePlacement};

const MIB: u64 = 1 << 20;
const BLOCK_BYTES: u64 = 2 * MIB;

fn region(size_bytes: u64) -> Arc<HostRegion> {
    Arc::new(
        HostRegion::new(&Backing {
            kind: BackingKind::Anon,
            size_bytes,
            hugetlbfs_dir: None,
        })
        .unwrap(),
    )
}

/// The slots of `config`'s device over `memory`, placed at 1 TiB, as a destination makes them.
fn device_slots(
    m: &machine::Machine,
    config: &MemDeviceConfig,
    memory: &Arc<HostRegion>,
) -> DeviceSlots {
    let mut budget = SlotBudget::new(m.nr_memslots() as u32, 1);
    DeviceSlots::new(
        config,
        MemoryDevicePlacement {
            vm: m.vm().fd(),
            budget: &mut budget,
            guest_addr: 1 << 40,
            vhost_table: None,
        },
        memory,
        BLOCK_BYTES,
    )
    .unwrap()
}

#[test]
fn slots_follow_each_bitmap_and_only_plugged_blocks_are_mapped() {
    let m = common::machine();
    let config = MemDeviceConfig::parse("id=mem0,size=16G,slots=adaptive").unwrap();
    let memory = region(config.size_bytes);
    let mut slots = device_slots(&m, &config, &memory);
    assert_eq!(slots.mapped_count(), 0, "nothing plugged, nothing mapped");

    let last_block = config.size_bytes / BLOCK_BYTES - 1;
    let plugged = |b: u64| b == 3 || b == last_block;
    slots.map_plugged(plugged).unwrap();
    assert_eq!(slots.mapped_count(), 2, "one slot per plugged block's slot");
    assert!(
        slots.mapped_bytes() < config.size_bytes / 2,
        "only the slots of two blocks: {} bytes mapped",
        slots.mapped_bytes()
    );
    // Pages of plugged blocks are written straight into host memory (a PROT_NONE page would
    // kill the test).
    for block in [3, last_block] {
        let page = (memory.host_addr() as u64 + block * BLOCK_BYTES) as *mut u8;
        // SAFETY: the page is inside `memory`'s live mapping, in a block whose slot is mapped
        // (read-write); nothing else uses it.
        unsafe { page.write_volatile(0x5a) };
    }

    slots.map_plugged(|b| b == last_block).unwrap();
    assert_eq!(
        slots.mapped_count(),
        1,
        "block 3's slot went with its block"
    );
    slots.map_plugged(|_| false).unwrap();
    assert_eq!(slots.mapped_count(), 0);
    assert_eq!(slots.mapped_bytes(), 0);
}

#[test]
fn a_single_layout_keeps_its_one_slot_whatever_the_bitmap() {
    let m = common::machine();
    let config = MemDeviceConfig::parse("id=mem0,size=4G,slots=single").unwrap();
    let memory = region(config.size_bytes);
    let mut slots = device_slots(&m, &config, &memory);
    assert_eq!(slots.mapped_bytes(), config.size_bytes);
    slots.map_plugged(|_| false).unwrap();
    assert_eq!(slots.mapped_bytes(), config.size_bytes);
}
