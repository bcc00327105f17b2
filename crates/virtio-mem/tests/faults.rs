//! Fault injection on real KVM: the device answers BUSY, rolls its state back, leaves no slot
//! behind in KVM, and a later retry succeeds. Needs /dev/kvm; the hugetlbfs test needs root.
//!
//! - KVM refuses a slot because its guest range is taken (EEXIST).
//! - KVM refuses slot numbers past `KVM_CAP_NR_MEMSLOTS` (EINVAL): the budget ran out.
//! - Discarding host memory fails (a [`FakeMemory`] under the real slot backend).
//! - Preallocation fails: a hugetlbfs pool with too few huge pages.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use hostmem::{Backing, BackingKind, BlockMemory, FakeMemory, HostRegion};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use memslots::{
    GIB, KvmSlotBackend, KvmSlotBackendConfig, LayoutRequest, MIB, Memslots, Protection, SlotIds,
    SlotLayout, SlotPolicy,
};
use virtio_mem::{
    BlockRange, FeatureOffer, Prealloc, Request, Response, VirtioMem, VirtioMemConfig,
};
use vm_memory::GuestAddress;

const GUEST_BASE: u64 = 16 * GIB;
const REGION: u64 = 4 * GIB;
const BLOCK: u64 = 2 * MIB;
/// A slot number far from the device's, for foreign and probe slots.
const FOREIGN_SLOT: u32 = 300;

fn vm() -> (Kvm, Arc<VmFd>) {
    let kvm = Kvm::new().expect("these tests need /dev/kvm");
    let vm = kvm.create_vm().expect("create VM");
    (kvm, Arc::new(vm))
}

/// What to build a device from.
struct DeviceSpec<'a> {
    vm: &'a Arc<VmFd>,
    region: &'a HostRegion,
    first_slot_id: u32,
    prealloc: Prealloc,
}

fn device<M: BlockMemory>(spec: DeviceSpec<'_>, memory: M) -> VirtioMem<KvmSlotBackend, M> {
    let layout = SlotLayout::plan(LayoutRequest {
        policy: SlotPolicy::Fixed,
        region_size_bytes: REGION,
        block_size_bytes: BLOCK,
        slot_limit: 4,
    })
    .unwrap();
    assert_eq!(layout.len(), 4, "four 1 GiB slots");
    let ids = SlotIds::new(spec.first_slot_id, 4);
    // SAFETY: every test declares the region before the device, so the mapping outlives it.
    let backend = unsafe {
        KvmSlotBackend::new(KvmSlotBackendConfig {
            vm: spec.vm.clone(),
            host_base_addr: spec.region.host_addr(),
            region_size_bytes: spec.region.size_bytes(),
            protection: Protection::ProtectUnmapped,
        })
    }
    .unwrap();
    let slots = Memslots::new(layout, ids, GUEST_BASE, backend).unwrap();
    let config = VirtioMemConfig {
        guest_addr: GuestAddress(GUEST_BASE),
        region_size_bytes: REGION,
        block_size_bytes: BLOCK,
        backing_page_size_bytes: spec.region.page_size_bytes(),
        requested_size_bytes: 3 * GIB,
        node_id: 0,
        prealloc: spec.prealloc,
        offer: FeatureOffer::default(),
    };
    VirtioMem::new(config, slots, memory).unwrap()
}

fn range(offset: u64, nb_blocks: u16) -> BlockRange {
    BlockRange {
        guest_addr: GuestAddress(GUEST_BASE + offset),
        nb_blocks,
    }
}

/// Adds (or with `size 0` deletes) a KVM slot outside the device's control.
fn set_foreign_slot(vm: &VmFd, host: &HostRegion, gpa: u64, size_bytes: u64) -> i32 {
    let region = kvm_userspace_memory_region {
        slot: FOREIGN_SLOT,
        flags: 0,
        guest_phys_addr: gpa,
        memory_size: size_bytes,
        userspace_addr: host.host_addr() as u64,
    };
    // SAFETY: `host` is a live mapping of at least 2 MiB that outlives the VM in every test.
    match unsafe { vm.set_user_memory_region(region) } {
        Ok(()) => 0,
        Err(e) => e.errno(),
    }
}

/// Whether KVM has no slot at `gpa`: a probe slot there is accepted (and removed again).
fn kvm_gpa_is_free(vm: &VmFd, probe: &HostRegion, gpa: u64) -> bool {
    match set_foreign_slot(vm, probe, gpa, 2 * MIB) {
        0 => {
            assert_eq!(set_foreign_slot(vm, probe, gpa, 0), 0);
            true
        }
        libc::EEXIST => false,
        errno => panic!("probe at {gpa:#x}: errno {errno}"),
    }
}

fn anon_region() -> HostRegion {
    HostRegion::new(&Backing::anon(REGION)).unwrap()
}

#[test]
fn plug_into_a_slot_whose_guest_range_is_taken_answers_busy_until_it_is_free() {
    let (_kvm, vm) = vm();
    let region = anon_region();
    let foreign = HostRegion::new(&Backing::anon(2 * MIB)).unwrap();
    let mut dev = device(
        DeviceSpec {
            vm: &vm,
            region: &region,
            first_slot_id: 1,
            prealloc: Prealloc::Off,
        },
        FakeMemory::new(),
    );
    // Something else holds the first 2 MiB of the device's second slot.
    assert_eq!(
        set_foreign_slot(&vm, &foreign, GUEST_BASE + GIB, 2 * MIB),
        0
    );
    let before = dev.state();
    let plug = Request::Plug(range(GIB + 4 * MIB, 2));
    assert_eq!(dev.handle_request(plug), Response::Busy);
    assert_eq!(dev.state(), before, "rolled back");
    assert_eq!(dev.status().slots_mapped, 0);
    assert_eq!(dev.stats().map_failures, 1);
    dev.check_invariants().unwrap();
    // The range frees up; the driver's retry succeeds and the slot is really in KVM.
    assert_eq!(set_foreign_slot(&vm, &foreign, GUEST_BASE + GIB, 0), 0);
    assert_eq!(dev.handle_request(plug), Response::Ack);
    assert_eq!(dev.status().plugged_size_bytes, 2 * BLOCK);
    assert!(!kvm_gpa_is_free(&vm, &foreign, GUEST_BASE + GIB));
    dev.check_invariants().unwrap();
}

#[test]
fn slot_numbers_past_the_kvm_limit_fail_the_map_and_the_partial_map_is_rolled_back() {
    let (kvm, vm) = vm();
    let region = anon_region();
    let probe = HostRegion::new(&Backing::anon(2 * MIB)).unwrap();
    let nr_memslots = u32::try_from(kvm.get_nr_memslots()).unwrap();
    assert!(
        nr_memslots > FOREIGN_SLOT + 8,
        "KVM offers {nr_memslots} slots"
    );
    // Slot 0 gets the last valid number; slots 1..4 get numbers KVM refuses (EINVAL).
    let mut dev = device(
        DeviceSpec {
            vm: &vm,
            region: &region,
            first_slot_id: nr_memslots - 1,
            prealloc: Prealloc::Off,
        },
        FakeMemory::new(),
    );
    let before = dev.state();
    // Spans slots 0 and 1: slot 0 maps, slot 1 fails, slot 0 is unmapped again.
    assert_eq!(
        dev.handle_request(Request::Plug(range(GIB - BLOCK, 2))),
        Response::Busy
    );
    assert_eq!(dev.state(), before);
    assert_eq!(dev.status().slots_mapped, 0);
    assert!(kvm_gpa_is_free(&vm, &probe, GUEST_BASE));
    dev.check_invariants().unwrap();
    // What fits in slot 0 still works.
    assert_eq!(
        dev.handle_request(Request::Plug(range(GIB - BLOCK, 1))),
        Response::Ack
    );
    assert!(!kvm_gpa_is_free(&vm, &probe, GUEST_BASE));
    assert_eq!(
        dev.handle_request(Request::Plug(range(GIB, 1))),
        Response::Busy,
        "slot 1 can never be mapped"
    );
    dev.check_invariants().unwrap();
}

#[test]
fn failed_discards_answer_busy_keep_the_slot_in_kvm_and_a_retry_unplugs() {
    let (_kvm, vm) = vm();
    let region = anon_region();
    let probe = HostRegion::new(&Backing::anon(2 * MIB)).unwrap();
    let mut dev = device(
        DeviceSpec {
            vm: &vm,
            region: &region,
            first_slot_id: 1,
            prealloc: Prealloc::Off,
        },
        FakeMemory::new(),
    );
    let slot2 = GUEST_BASE + 2 * GIB;
    assert_eq!(
        dev.handle_request(Request::Plug(range(2 * GIB, 4))),
        Response::Ack
    );
    assert!(!kvm_gpa_is_free(&vm, &probe, slot2));
    let plugged = dev.state();
    dev.memory_mut().fail_discards(1);
    let unplug = Request::Unplug(range(2 * GIB, 4));
    assert_eq!(dev.handle_request(unplug), Response::Busy);
    assert_eq!(dev.state(), plugged, "rolled back");
    assert!(
        !kvm_gpa_is_free(&vm, &probe, slot2),
        "still plugged, still mapped"
    );
    dev.memory_mut().fail_discards(1);
    assert_eq!(dev.handle_request(Request::UnplugAll), Response::Busy);
    assert_eq!(dev.state(), plugged);
    dev.check_invariants().unwrap();
    assert_eq!(dev.stats().discard_failures, 2);
    // The retry succeeds and the slot leaves KVM.
    assert_eq!(dev.handle_request(unplug), Response::Ack);
    assert_eq!(dev.status().plugged_size_bytes, 0);
    assert!(kvm_gpa_is_free(&vm, &probe, slot2));
    dev.check_invariants().unwrap();
}

/// Serializes the tests that change the host's huge page pool.
static HUGE_PAGES: Mutex<()> = Mutex::new(());
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// A private hugetlbfs mount and a resized pool, both undone on drop.
struct HugePool {
    dir: PathBuf,
    saved_pages: String,
}

impl HugePool {
    /// Mounts hugetlbfs (2 MiB pages) in a temporary directory; `None` when not permitted.
    fn mount() -> Option<HugePool> {
        let saved_pages = std::fs::read_to_string(NR_HUGEPAGES).ok()?;
        let dir = std::env::temp_dir().join(format!("hotmem-faults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "none"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(HugePool { dir, saved_pages })
    }

    /// Sets the pool to `pages` huge pages; returns how many the kernel really has now.
    fn resize(&self, pages: u64) -> u64 {
        std::fs::write(NR_HUGEPAGES, pages.to_string()).unwrap();
        std::fs::read_to_string(NR_HUGEPAGES)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for HugePool {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::write(NR_HUGEPAGES, self.saved_pages.trim());
    }
}

fn free_huge_pages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
fn prealloc_from_a_dry_hugetlbfs_pool_answers_busy_and_a_retry_after_growing_it_acks() {
    let _serial = HUGE_PAGES.lock().unwrap_or_else(|p| p.into_inner());
    if !test_support::require_root(
        "prealloc_from_a_dry_hugetlbfs_pool_answers_busy_and_a_retry_after_growing_it_acks",
    ) {
        return;
    }
    let pool = HugePool::mount().expect("root can mount hugetlbfs");
    let (_kvm, vm) = vm();
    let region = Arc::new(
        HostRegion::new(&Backing {
            kind: BackingKind::Hugetlbfs,
            size_bytes: REGION,
            hugetlbfs_dir: Some(pool.dir.clone()),
        })
        .unwrap(),
    );
    assert_eq!(region.page_size_bytes(), 2 * MIB);
    let probe = HostRegion::new(&Backing::anon(2 * MIB)).unwrap();
    let base_pages = free_huge_pages();
    let pages = pool.resize(base_pages + 3);
    assert!(pages >= 3, "the kernel gave {pages} huge pages");
    let mut dev = device(
        DeviceSpec {
            vm: &vm,
            region: &region,
            first_slot_id: 1,
            prealloc: Prealloc::OnPlug,
        },
        region.clone(),
    );
    let free = free_huge_pages();
    assert_eq!(
        dev.handle_request(Request::Plug(range(GIB, 2))),
        Response::Ack
    );
    assert_eq!(free_huge_pages(), free - 2, "preallocated");
    let before = dev.state();
    // Two more blocks need two pages; one is left.
    let plug = Request::Plug(range(GIB + 2 * BLOCK, 2));
    assert_eq!(dev.handle_request(plug), Response::Busy);
    assert_eq!(dev.state(), before, "rolled back");
    assert_eq!(dev.stats().prealloc_failures, 1);
    assert_eq!(
        free_huge_pages(),
        free - 2,
        "the partial allocation was given back"
    );
    assert!(
        !kvm_gpa_is_free(&vm, &probe, GUEST_BASE + GIB),
        "slot 1 still holds blocks"
    );
    // A plug into an empty slot fails the same way and leaves that slot out of KVM.
    assert_eq!(
        dev.handle_request(Request::Plug(range(2 * GIB, 2))),
        Response::Busy
    );
    assert!(kvm_gpa_is_free(&vm, &probe, GUEST_BASE + 2 * GIB));
    dev.check_invariants().unwrap();
    // The host grows the pool; the driver's retry succeeds.
    pool.resize(pages + 1);
    assert_eq!(dev.handle_request(plug), Response::Ack);
    assert_eq!(dev.status().plugged_size_bytes, 4 * BLOCK);
    dev.check_invariants().unwrap();
    drop(dev);
}
