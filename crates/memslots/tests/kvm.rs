//! Slots on real KVM: they really appear in and disappear from the VM, cost kernel memory only
//! while mapped, and unmapped host memory is inaccessible. Needs /dev/kvm.

use std::sync::Arc;

use hostmem::{Backing, HostRegion};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use memslots::{
    GIB, KvmSlotBackend, KvmSlotBackendConfig, LayoutRequest, MIB, Memslots, Protection,
    SlotBudget, SlotIndex, SlotLayout, SlotPolicy, SlotState,
};

const GUEST_BASE: u64 = 16 * GIB;

fn vm() -> (Kvm, Arc<VmFd>) {
    let kvm = Kvm::new().expect("these tests need /dev/kvm");
    let vm = kvm.create_vm().expect("create VM");
    (kvm, Arc::new(vm))
}

fn manager(
    vm: &Arc<VmFd>,
    region: &HostRegion,
    policy: SlotPolicy,
    budget: &mut SlotBudget,
) -> Memslots<KvmSlotBackend> {
    let layout = SlotLayout::plan(LayoutRequest {
        policy,
        region_size_bytes: region.size_bytes(),
        block_size_bytes: 2 * MIB,
        slot_limit: budget.available(),
    })
    .unwrap();
    let ids = budget.reserve("test", layout.len() as u32).unwrap();
    // SAFETY: `region` outlives the manager in every test (declared before it).
    let backend = unsafe {
        KvmSlotBackend::new(KvmSlotBackendConfig {
            vm: vm.clone(),
            host_base_addr: region.host_addr(),
            region_size_bytes: region.size_bytes(),
            protection: Protection::ProtectUnmapped,
        })
    }
    .unwrap();
    Memslots::new(layout, ids, GUEST_BASE, backend).unwrap()
}

/// Tries to add a 2 MiB probe slot at `gpa` with a spare slot id; KVM refuses overlaps (EEXIST).
fn gpa_is_free(vm: &VmFd, probe: &HostRegion, gpa: u64) -> bool {
    let slot = 32_000;
    let region = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: gpa,
        memory_size: 2 * MIB,
        userspace_addr: probe.host_addr() as u64,
    };
    // SAFETY: `probe` is a live 2 MiB mapping; the slot is deleted again right away.
    match unsafe { vm.set_user_memory_region(region) } {
        Ok(()) => {
            let delete = kvm_userspace_memory_region {
                memory_size: 0,
                ..region
            };
            // SAFETY: deleting the slot just added.
            unsafe { vm.set_user_memory_region(delete) }.unwrap();
            true
        }
        Err(e) if e.errno() == libc::EEXIST => false,
        Err(e) => panic!("unexpected KVM error {e}"),
    }
}

fn vmalloc_used_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|l| l.starts_with("VmallocUsed:"))
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

fn is_host_range_inaccessible(addr: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|l| {
        let mut parts = l.split_whitespace();
        let range = parts.next().unwrap();
        let perms = parts.next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let start = usize::from_str_radix(start, 16).unwrap();
        let end = usize::from_str_radix(end, 16).unwrap();
        start <= addr && addr < end && perms.starts_with("---")
    })
}

#[test]
fn mapped_slots_really_exist_in_kvm_and_vanish_when_unmapped() {
    let (kvm, vm) = vm();
    let probe = HostRegion::new(&Backing::anon(2 * MIB)).unwrap();
    let region = HostRegion::new(&Backing::anon(64 * GIB)).unwrap();
    let mut budget = SlotBudget::new(kvm.get_nr_memslots() as u32 - 1, 0);
    let mut slots = manager(&vm, &region, SlotPolicy::Adaptive, &mut budget);

    assert!(gpa_is_free(&vm, &probe, GUEST_BASE + 3 * GIB));
    slots.map_range(3 * GIB, 2 * MIB).unwrap();
    assert!(!gpa_is_free(&vm, &probe, GUEST_BASE + 3 * GIB));
    assert!(
        gpa_is_free(&vm, &probe, GUEST_BASE + 4 * GIB),
        "only the one slot is mapped"
    );

    slots.unmap_unneeded(3 * GIB, 2 * MIB, |_| false).unwrap();
    assert!(gpa_is_free(&vm, &probe, GUEST_BASE + 3 * GIB));
}

#[test]
fn unmapped_host_memory_is_protected_and_mapped_memory_is_not() {
    let (kvm, vm) = vm();
    let region = HostRegion::new(&Backing::anon(8 * GIB)).unwrap();
    let mut budget = SlotBudget::new(kvm.get_nr_memslots() as u32, 0);
    let mut slots = manager(&vm, &region, SlotPolicy::Fixed, &mut budget);
    let slot2 = region.host_addr() + 2 * GIB as usize;
    assert!(is_host_range_inaccessible(slot2));
    slots.map_range(2 * GIB, GIB).unwrap();
    assert!(!is_host_range_inaccessible(slot2));
    // SAFETY: slot 2 is mapped read-write now and lies inside `region`.
    unsafe { (slot2 as *mut u64).write_volatile(0x1234) };
    slots.unmap_all().unwrap();
    assert!(is_host_range_inaccessible(slot2));
}

#[test]
fn kernel_metadata_is_paid_only_for_mapped_slots() {
    let (kvm, vm) = vm();
    let region = HostRegion::new(&Backing::anon(128 * GIB)).unwrap();
    let mut budget = SlotBudget::new(kvm.get_nr_memslots() as u32, 0);
    let mut slots = manager(&vm, &region, SlotPolicy::Adaptive, &mut budget);

    let before = vmalloc_used_bytes();
    slots.map_range(0, 2 * MIB).unwrap();
    let one_slot = vmalloc_used_bytes().saturating_sub(before);
    slots.map_range(0, 64 * GIB).unwrap();
    let half = vmalloc_used_bytes().saturating_sub(before);
    slots.unmap_all().unwrap();
    let after = vmalloc_used_bytes().saturating_sub(before);

    // A 64 GiB memslot costs ~160 MiB of rmap/gfn_track here; one 1 GiB slot ~2.5 MiB.
    assert!(one_slot < 16 * MIB, "one slot cost {one_slot} bytes");
    assert!(half > 100 * MIB, "64 GiB of slots cost only {half} bytes");
    assert!(after < 16 * MIB, "{after} bytes still held after unmapping");
}

#[test]
fn a_slot_kvm_refuses_is_booked_unmapped_with_its_host_range_protected_again() {
    let (kvm, vm) = vm();
    let probe = HostRegion::new(&Backing::anon(2 * MIB)).unwrap();
    let region = HostRegion::new(&Backing::anon(4 * GIB)).unwrap();
    let mut budget = SlotBudget::new(kvm.get_nr_memslots() as u32 - 1, 0);
    let mut slots = manager(&vm, &region, SlotPolicy::Fixed, &mut budget);
    // A foreign slot inside slot 1's guest range makes KVM refuse slot 1 (EEXIST).
    let foreign = kvm_userspace_memory_region {
        slot: 32_000,
        flags: 0,
        guest_phys_addr: GUEST_BASE + GIB + 2 * MIB,
        memory_size: 2 * MIB,
        userspace_addr: probe.host_addr() as u64,
    };
    // SAFETY: `probe` is a live 2 MiB mapping that outlives the slot (deleted below).
    unsafe { vm.set_user_memory_region(foreign) }.unwrap();
    let slot1 = region.host_addr() + GIB as usize;

    let err = slots.map_range(GIB, 2 * MIB).unwrap_err();
    assert!(
        matches!(err, memslots::Error::MapFailed { index: 1, .. }),
        "{err}"
    );
    assert_eq!(slots.state(SlotIndex(1)), SlotState::Unmapped);
    assert!(is_host_range_inaccessible(slot1), "protected again");

    let delete = kvm_userspace_memory_region {
        memory_size: 0,
        ..foreign
    };
    // SAFETY: deleting the foreign slot added above.
    unsafe { vm.set_user_memory_region(delete) }.unwrap();
    slots.map_range(GIB, 2 * MIB).unwrap();
    assert_eq!(slots.state(SlotIndex(1)), SlotState::Mapped);
    assert!(!gpa_is_free(&vm, &probe, GUEST_BASE + GIB));
    assert!(!is_host_range_inaccessible(slot1));
}
