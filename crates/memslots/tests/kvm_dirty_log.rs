//! Dirty logging on real KVM: a slot mapped while logging is logged, and the bits of a slot
//! deleted while logging are read before KVM frees them. A few real-mode instructions write
//! the pages (no Linux guest). Needs /dev/kvm.

use std::sync::Arc;

use hostmem::{Backing, HostRegion};
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use memslots::{
    KvmSlotBackend, KvmSlotBackendConfig, KvmSlotId, Protection, SlotBackend, SlotDirtyBits,
    SlotMapping,
};

const SLOT_BYTES: u64 = 64 << 10;

/// mov ax, 0x1000; mov ds, ax; mov byte [0], 1; mov byte [0x2000], 1; hlt
const CODE: [u8; 16] = [
    0xb8, 0x00, 0x10, 0x8e, 0xd8, 0xc6, 0x06, 0x00, 0x00, 0x01, 0xc6, 0x06, 0x00, 0x20, 0x01, 0xf4,
];

struct Setup {
    _kvm: Kvm,
    vm: Arc<VmFd>,
    region: HostRegion,
    backend: KvmSlotBackend,
}

fn setup(test: &str) -> Option<Setup> {
    if !test_support::require_kvm(test) {
        return None;
    }
    let kvm = Kvm::new().unwrap();
    let vm = Arc::new(kvm.create_vm().unwrap());
    let region = HostRegion::new(&Backing::anon(2 * SLOT_BYTES)).unwrap();
    // SAFETY: the region outlives the backend (both in `Setup`, the backend used only while
    // the setup lives, and the VM holding the slots is dropped with it).
    let backend = unsafe {
        KvmSlotBackend::new(KvmSlotBackendConfig {
            vm: vm.clone(),
            host_base_addr: region.host_addr(),
            region_size_bytes: region.size_bytes(),
            protection: Protection::AlwaysAccessible,
        })
    }
    .unwrap();
    // SAFETY: the first slot's host memory is a live read-write mapping of 64 KiB.
    unsafe {
        std::ptr::copy_nonoverlapping(CODE.as_ptr(), region.host_addr() as *mut u8, CODE.len());
    }
    Some(Setup {
        _kvm: kvm,
        vm,
        region,
        backend,
    })
}

fn slot(index: u32) -> SlotMapping {
    SlotMapping {
        kvm_slot: KvmSlotId(index),
        guest_addr: u64::from(index) * SLOT_BYTES,
        region_offset_bytes: u64::from(index) * SLOT_BYTES,
        size_bytes: SLOT_BYTES,
    }
}

fn run_guest(vm: &VmFd) {
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = 0;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    match vcpu.run().unwrap() {
        VcpuExit::Hlt => {}
        other => panic!("unexpected exit {other:?}"),
    }
}

/// Dirty page offsets in the region, from collected bits.
fn dirty_offsets(bits: &[SlotDirtyBits]) -> Vec<u64> {
    let mut out = Vec::new();
    for b in bits {
        for (w, word) in b.bitmap.iter().enumerate() {
            for bit in 0..64 {
                if word & (1 << bit) != 0 {
                    out.push(b.region_offset_bytes + (w as u64 * 64 + bit) * 4096);
                }
            }
        }
    }
    out.sort_unstable();
    out
}

#[test]
fn a_slot_mapped_while_logging_is_logged() {
    let Some(mut s) = setup("a_slot_mapped_while_logging_is_logged") else {
        return;
    };
    s.backend.map(&slot(0)).unwrap();
    let log = s.backend.dirty_log();
    log.start().unwrap();
    s.backend.map(&slot(1)).unwrap();
    run_guest(&s.vm);
    let bits = log.collect().unwrap();
    assert_eq!(
        dirty_offsets(&bits),
        vec![SLOT_BYTES, SLOT_BYTES + 0x2000],
        "the two bytes the guest wrote into the second slot"
    );
    assert_eq!(dirty_offsets(&log.collect().unwrap()), Vec::<u64>::new());
    // SAFETY: reading the guest's write through the live host mapping.
    let byte = unsafe { *((s.region.host_addr() + SLOT_BYTES as usize + 0x2000) as *const u8) };
    assert_eq!(byte, 1);
}

#[test]
fn the_bits_of_a_slot_deleted_while_logging_are_collected_first() {
    let Some(mut s) = setup("the_bits_of_a_slot_deleted_while_logging_are_collected_first") else {
        return;
    };
    s.backend.map(&slot(0)).unwrap();
    s.backend.map(&slot(1)).unwrap();
    let log = s.backend.dirty_log();
    log.start().unwrap();
    run_guest(&s.vm);
    s.backend.unmap(&slot(1)).unwrap();
    assert_eq!(log.slot_count(), 1);
    assert_eq!(
        dirty_offsets(&log.collect().unwrap()),
        vec![SLOT_BYTES, SLOT_BYTES + 0x2000]
    );
    assert_eq!(dirty_offsets(&log.collect().unwrap()), Vec::<u64>::new());
}

#[test]
fn without_logging_nothing_is_collected_and_stop_turns_it_off() {
    let Some(mut s) = setup("without_logging_nothing_is_collected_and_stop_turns_it_off") else {
        return;
    };
    s.backend.map(&slot(0)).unwrap();
    let log = s.backend.dirty_log();
    assert!(log.collect().is_err(), "collect before start");
    log.start().unwrap();
    assert!(log.is_logging());
    log.stop().unwrap();
    assert!(!log.is_logging());
    assert!(log.collect().is_err(), "collect after stop");
    // A slot of a VM without logging: KVM refuses KVM_GET_DIRTY_LOG (ENOENT).
    assert!(s.vm.get_dirty_log(0, SLOT_BYTES as usize).is_err());
}
