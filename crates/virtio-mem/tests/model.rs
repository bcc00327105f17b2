//! Random request sequences, requested-size changes, resets, snapshots and injected faults,
//! checked against a small reference model of the virtio-mem rules (QEMU's order of checks, the
//! usable region, and "a slot is mapped iff it holds a plugged block", or "iff it overlaps the
//! usable region" for legacy drivers). Faults hit KVM adding a slot, KVM deleting one, and the
//! mprotect that makes an unmapped slot's host range inaccessible, separately; after every step
//! the device's books must equal the fake backend's truth (which slots KVM has, which host
//! ranges are still exposed) and the model's.

use hostmem::FakeMemory;
use memslots::{
    FakeBackend, FakeFault, LayoutRequest, MIB, Memslots, SlotIds, SlotIndex, SlotLayout,
    SlotPolicy, SlotSpec, SlotState,
};
use proptest::prelude::*;
use virtio_mem::{
    BlockRange, FeatureOffer, Prealloc, RangeState, Request, Response, VirtioMem, VirtioMemConfig,
};
use vm_memory::GuestAddress;

const BLOCK: u64 = 128 * MIB;
const BLOCKS: u64 = 28; // 3.5 GiB: with 1 GiB slots the last one is smaller
const REGION: u64 = BLOCKS * BLOCK;
const BASE: u64 = 1 << 32;
const EXTENT: u64 = 256 * MIB;
const VERSION_1: u64 = 1 << 32;
const UNPLUGGED_INACCESSIBLE: u64 = 1 << 1;

type Dev = VirtioMem<FakeBackend, FakeMemory>;

#[derive(Debug, Clone)]
enum Op {
    Plug(i64, u16, bool),
    Unplug(i64, u16, bool),
    State(i64, u16, bool),
    UnplugAll,
    SetRequested(u64, bool),
    Ack {
        legacy: bool,
    },
    Reset,
    SystemReset,
    FailMap,
    /// KVM refuses the next slot deletion.
    FailUnmap,
    /// The next mprotect to PROT_NONE fails.
    FailProtect,
    FailDiscards(u32),
    FailPopulate,
    Restore,
}

fn op() -> impl Strategy<Value = Op> {
    let first = -2i64..(BLOCKS as i64 + 2);
    let nb = prop_oneof![1 => Just(0u16), 8 => 1u16..6, 1 => Just(u16::MAX)];
    let misaligned = prop::bool::weighted(0.05);
    prop_oneof![
        6 => (first.clone(), nb.clone(), misaligned).prop_map(|(f, n, m)| Op::Plug(f, n, m)),
        4 => (first.clone(), nb.clone(), misaligned).prop_map(|(f, n, m)| Op::Unplug(f, n, m)),
        2 => (first, nb, misaligned).prop_map(|(f, n, m)| Op::State(f, n, m)),
        1 => Just(Op::UnplugAll),
        3 => (0..BLOCKS + 2, misaligned).prop_map(|(b, m)| Op::SetRequested(b, m)),
        1 => any::<bool>().prop_map(|legacy| Op::Ack { legacy }),
        1 => Just(Op::Reset),
        1 => Just(Op::SystemReset),
        1 => Just(Op::FailMap),
        1 => Just(Op::FailUnmap),
        1 => Just(Op::FailProtect),
        1 => (1u32..3).prop_map(Op::FailDiscards),
        1 => Just(Op::FailPopulate),
        1 => Just(Op::Restore),
    ]
}

fn policy() -> impl Strategy<Value = SlotPolicy> {
    prop_oneof![
        Just(SlotPolicy::Fixed),
        Just(SlotPolicy::Adaptive),
        Just(SlotPolicy::Single)
    ]
}

fn memslots(policy: SlotPolicy) -> Memslots<FakeBackend> {
    let layout = SlotLayout::plan(LayoutRequest {
        policy,
        region_size_bytes: REGION,
        block_size_bytes: BLOCK,
        slot_limit: 64,
    })
    .unwrap();
    let ids = SlotIds::new(2, layout.len() as u32);
    Memslots::new(layout, ids, BASE, FakeBackend::new()).unwrap()
}

fn config(prealloc: Prealloc) -> VirtioMemConfig {
    VirtioMemConfig {
        guest_addr: GuestAddress(BASE),
        region_size_bytes: REGION,
        block_size_bytes: BLOCK,
        backing_page_size_bytes: 4096,
        requested_size_bytes: 0,
        node_id: 0,
        prealloc,
        offer: FeatureOffer::default(),
    }
}

/// The reference model. Sizes are in bytes, the bitmap in blocks.
struct Model {
    slots: Vec<SlotSpec>,
    static_layout: bool,
    plugged: Vec<bool>,
    requested: u64,
    usable: u64,
    legacy: Option<bool>,
    prealloc: bool,
    states: Vec<SlotState>,
    /// An unmap failed and the device retries before its next operation.
    retry_pending: bool,
    map_faults: usize,
    unmap_faults: usize,
    protect_faults: usize,
    discard_faults: u32,
    populate_faults: u32,
}

impl Model {
    fn plugged_bytes(&self) -> u64 {
        self.plugged.iter().filter(|&&p| p).count() as u64 * BLOCK
    }

    fn target(&self) -> u64 {
        if self.requested == 0 {
            0
        } else {
            (self.requested + EXTENT).min(REGION).div_ceil(BLOCK) * BLOCK
        }
    }

    fn needed(&self, slot: &SlotSpec) -> bool {
        if self.static_layout {
            return true;
        }
        let blocks = (slot.offset_bytes / BLOCK)..slot.end_bytes().div_ceil(BLOCK);
        blocks.clone().any(|b| self.plugged[b as usize])
            || (self.legacy == Some(true) && slot.offset_bytes < self.usable)
    }

    fn overlapping(&self, offset: u64, size: u64) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| {
                let s = self.slots[i];
                s.offset_bytes < offset + size && offset < s.end_bytes()
            })
            .collect()
    }

    fn take_fault(faults: &mut usize) -> bool {
        let fault = *faults > 0;
        *faults = faults.saturating_sub(1);
        fault
    }

    /// The fake's mprotect(PROT_NONE): the state it leaves a slot KVM does not have in.
    fn protect(&mut self) -> SlotState {
        if Self::take_fault(&mut self.protect_faults) {
            SlotState::ProtectPending
        } else {
            SlotState::Unmapped
        }
    }

    /// The backend's `map`: a refused slot has its host range protected again.
    fn map_slot(&mut self, i: usize) -> bool {
        if Self::take_fault(&mut self.map_faults) {
            self.states[i] = self.protect();
            return false;
        }
        self.states[i] = SlotState::Mapped;
        true
    }

    /// The manager's unmap: only the missing half is redone.
    fn unmap_slot(&mut self, i: usize) -> bool {
        self.states[i] = match self.states[i] {
            SlotState::Unmapped => SlotState::Unmapped,
            SlotState::Mapped if Self::take_fault(&mut self.unmap_faults) => SlotState::Mapped,
            SlotState::Mapped | SlotState::ProtectPending => self.protect(),
        };
        self.states[i] == SlotState::Unmapped
    }

    /// `Memslots::map_range`: maps in order the slots KVM does not have; a fault rolls back this
    /// call's maps (best effort); then the device unmaps what is not needed.
    fn map_range(&mut self, offset: u64, size: u64) -> bool {
        let mut newly = Vec::new();
        for i in self.overlapping(offset, size) {
            if self.states[i] == SlotState::Mapped {
                continue;
            }
            if !self.map_slot(i) {
                for j in newly.into_iter().rev() {
                    self.unmap_slot(j);
                }
                self.unmap_unneeded(offset, size);
                return false;
            }
            newly.push(i);
        }
        true
    }

    /// The device's `unmap_unneeded`: every unneeded slot not fully unmapped is tried; a failure
    /// makes the device retry before its next operation.
    fn unmap_unneeded(&mut self, offset: u64, size: u64) {
        let mut ok = true;
        for i in self.overlapping(offset, size) {
            if self.states[i] != SlotState::Unmapped && !self.needed(&self.slots[i]) {
                ok &= self.unmap_slot(i);
            }
        }
        if !ok {
            self.retry_pending = true;
        }
    }

    fn retry_unmaps(&mut self) {
        if std::mem::take(&mut self.retry_pending) {
            self.unmap_unneeded(0, REGION);
        }
    }

    fn discard_ok(&mut self) -> bool {
        if self.discard_faults > 0 {
            self.discard_faults -= 1;
            false
        } else {
            true
        }
    }

    /// `Some((first block, count, offset bytes))` for a valid range.
    fn valid(&self, addr: u64, nb: u16) -> Option<(usize, usize, u64)> {
        let size = u64::from(nb) * BLOCK;
        let usable_end = BASE + self.usable;
        let ok = addr.is_multiple_of(BLOCK)
            && size != 0
            && addr >= BASE
            && addr < usable_end
            && addr + size <= usable_end;
        ok.then(|| {
            let off = addr - BASE;
            ((off / BLOCK) as usize, usize::from(nb), off)
        })
    }

    fn plug(&mut self, addr: u64, nb: u16) -> Response {
        let Some((first, n, off)) = self.valid(addr, nb) else {
            return Response::Error;
        };
        let size = n as u64 * BLOCK;
        if self.plugged_bytes() + size > self.requested {
            return Response::Nack;
        }
        if self.plugged[first..first + n].iter().any(|&p| p) {
            return Response::Error;
        }
        if !self.map_range(off, size) {
            return Response::Busy;
        }
        if self.prealloc && self.populate_faults > 0 {
            self.populate_faults -= 1;
            self.discard_ok();
            self.unmap_unneeded(off, size);
            return Response::Busy;
        }
        self.plugged[first..first + n].fill(true);
        Response::Ack
    }

    fn unplug(&mut self, addr: u64, nb: u16) -> Response {
        let Some((first, n, off)) = self.valid(addr, nb) else {
            return Response::Error;
        };
        if !self.plugged[first..first + n].iter().all(|&p| p) {
            return Response::Error;
        }
        if !self.discard_ok() {
            return Response::Busy;
        }
        self.plugged[first..first + n].fill(false);
        self.unmap_unneeded(off, n as u64 * BLOCK);
        Response::Ack
    }

    fn state(&self, addr: u64, nb: u16) -> Response {
        let Some((first, n, _)) = self.valid(addr, nb) else {
            return Response::Error;
        };
        let count = self.plugged[first..first + n]
            .iter()
            .filter(|&&p| p)
            .count();
        Response::AckState(match count {
            0 => RangeState::Unplugged,
            c if c == n => RangeState::Plugged,
            _ => RangeState::Mixed,
        })
    }

    fn unplug_all(&mut self) -> bool {
        if self.plugged_bytes() != 0 {
            // One discard per plugged run; the first failure stops everything.
            let runs = self
                .plugged
                .iter()
                .enumerate()
                .filter(|&(i, &p)| p && (i == 0 || !self.plugged[i - 1]))
                .count();
            for _ in 0..runs {
                if !self.discard_ok() {
                    return false;
                }
            }
            self.plugged.fill(false);
        }
        self.usable = self.target();
        self.unmap_unneeded(0, REGION);
        true
    }

    fn set_requested(&mut self, bytes: u64) -> bool {
        if !bytes.is_multiple_of(BLOCK) || bytes > REGION {
            return false;
        }
        self.retry_unmaps();
        let old = self.requested;
        self.requested = bytes;
        let target = self.target();
        self.requested = old;
        if target > self.usable {
            if self.legacy == Some(true) && !self.map_range(0, target) {
                return false;
            }
            self.usable = target;
        }
        self.requested = bytes;
        true
    }

    fn ack(&mut self, legacy: bool) -> bool {
        self.retry_unmaps();
        if legacy && !self.map_range(0, self.usable) {
            return false;
        }
        self.legacy = Some(legacy);
        self.unmap_unneeded(0, REGION);
        true
    }

    fn reset(&mut self) {
        self.legacy = None;
        self.retry_pending = false;
        self.unmap_unneeded(0, REGION);
    }
}

fn addr_of(first: i64, misaligned: bool) -> u64 {
    let addr = BASE as i64 + first * BLOCK as i64;
    addr as u64 + if misaligned { MIB } else { 0 }
}

fn range(addr: u64, nb_blocks: u16) -> BlockRange {
    BlockRange {
        guest_addr: GuestAddress(addr),
        nb_blocks,
    }
}

fn check(dev: &Dev, model: &Model, step: usize, op: &Op) -> Result<(), TestCaseError> {
    dev.check_invariants()
        .map_err(|e| TestCaseError::fail(format!("step {step} {op:?}: {e}")))?;
    let s = dev.status();
    prop_assert_eq!(
        s.plugged_size_bytes,
        model.plugged_bytes(),
        "step {} {:?}",
        step,
        op
    );
    prop_assert_eq!(
        s.usable_region_size_bytes,
        model.usable,
        "step {} {:?}",
        step,
        op
    );
    prop_assert_eq!(
        s.requested_size_bytes,
        model.requested,
        "step {} {:?}",
        step,
        op
    );
    prop_assert_eq!(s.legacy_mapping, model.legacy == Some(true));
    let slots = dev.memslots();
    let books: Vec<SlotState> = (0..model.slots.len())
        .map(|i| slots.state(SlotIndex(i)))
        .collect();
    let truth: Vec<SlotState> = (0..model.slots.len())
        .map(|i| {
            slots
                .backend()
                .state_of(slots.mapping(SlotIndex(i)).kvm_slot)
        })
        .collect();
    prop_assert_eq!(&books, &truth, "books vs fake KVM, step {} {:?}", step, op);
    let in_kvm = slots.backend().mapped().count();
    let exposed = slots.backend().exposed().count();
    let count = |state| books.iter().filter(|&&s| s == state).count();
    prop_assert_eq!(in_kvm, count(SlotState::Mapped), "step {} {:?}", step, op);
    prop_assert_eq!(exposed, count(SlotState::ProtectPending));
    prop_assert_eq!(&books, &model.states, "step {} {:?}", step, op);
    for (i, slot) in model.slots.iter().enumerate() {
        let needed = model.needed(slot);
        let ok = match model.states[i] {
            SlotState::Mapped => needed || model.retry_pending,
            SlotState::ProtectPending => !needed && model.retry_pending,
            SlotState::Unmapped => !needed,
        };
        prop_assert!(
            ok,
            "model invariant, slot {} {:?} needed={} retry={}, step {} {:?}",
            i,
            model.states[i],
            needed,
            model.retry_pending,
            step,
            op
        );
    }
    let state = dev.state();
    let mut bits = vec![false; BLOCKS as usize];
    for run in &state.plugged_runs {
        bits[run.first_block as usize..(run.first_block + run.block_count) as usize].fill(true);
    }
    prop_assert_eq!(&bits, &model.plugged, "step {} {:?}", step, op);
    Ok(())
}

fn run(policy: SlotPolicy, prealloc: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let prealloc_setting = if prealloc {
        Prealloc::OnPlug
    } else {
        Prealloc::Off
    };
    let mut dev = VirtioMem::new(
        config(prealloc_setting),
        memslots(policy),
        FakeMemory::new(),
    )
    .unwrap();
    let slots = dev.memslots().layout().slots().to_vec();
    let static_layout = policy == SlotPolicy::Single;
    let mut model = Model {
        states: vec![
            if static_layout {
                SlotState::Mapped
            } else {
                SlotState::Unmapped
            };
            slots.len()
        ],
        retry_pending: false,
        static_layout,
        slots,
        plugged: vec![false; BLOCKS as usize],
        requested: 0,
        usable: 0,
        legacy: None,
        prealloc,
        map_faults: 0,
        unmap_faults: 0,
        protect_faults: 0,
        discard_faults: 0,
        populate_faults: 0,
    };
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Plug(first, nb, mis) => {
                let addr = addr_of(first, mis);
                model.retry_unmaps();
                let want = model.plug(addr, nb);
                prop_assert_eq!(dev.handle_request(Request::Plug(range(addr, nb))), want);
            }
            Op::Unplug(first, nb, mis) => {
                let addr = addr_of(first, mis);
                model.retry_unmaps();
                let want = model.unplug(addr, nb);
                prop_assert_eq!(dev.handle_request(Request::Unplug(range(addr, nb))), want);
            }
            Op::State(first, nb, mis) => {
                let addr = addr_of(first, mis);
                model.retry_unmaps();
                let want = model.state(addr, nb);
                prop_assert_eq!(dev.handle_request(Request::State(range(addr, nb))), want);
            }
            Op::UnplugAll => {
                model.retry_unmaps();
                let want = if model.unplug_all() {
                    Response::Ack
                } else {
                    Response::Busy
                };
                prop_assert_eq!(dev.handle_request(Request::UnplugAll), want);
            }
            Op::SetRequested(blocks, mis) => {
                let bytes = blocks * BLOCK + if mis { MIB } else { 0 };
                let want = model.set_requested(bytes);
                prop_assert_eq!(dev.set_requested_size(bytes).is_ok(), want);
            }
            Op::Ack { legacy } => {
                let features = if legacy {
                    VERSION_1
                } else {
                    VERSION_1 | UNPLUGGED_INACCESSIBLE
                };
                let want = model.ack(legacy);
                prop_assert_eq!(dev.ack_features(features).is_ok(), want);
            }
            Op::Reset => {
                model.reset();
                dev.reset();
            }
            Op::SystemReset => {
                model.reset();
                let want = model.unplug_all();
                prop_assert_eq!(dev.system_reset().is_ok(), want);
            }
            Op::FailMap => {
                model.map_faults += 1;
                dev.backend_mut()
                    .script_maps(&[Some(FakeFault::OutOfMemory)]);
            }
            Op::FailUnmap => {
                model.unmap_faults += 1;
                dev.backend_mut()
                    .script_unmaps(&[Some(FakeFault::OutOfMemory)]);
            }
            Op::FailProtect => {
                model.protect_faults += 1;
                dev.backend_mut()
                    .script_protects(&[Some(FakeFault::OutOfMemory)]);
            }
            Op::FailDiscards(n) => {
                model.discard_faults = n;
                dev.memory_mut().fail_discards(n);
            }
            Op::FailPopulate => {
                model.populate_faults = 1;
                dev.memory_mut().fail_populates(1);
            }
            Op::Restore => {
                let state = dev.state();
                dev = VirtioMem::restore(
                    config(prealloc_setting),
                    memslots(policy),
                    FakeMemory::new(),
                    &state,
                )
                .unwrap();
                // Fresh fakes: no pending faults, exactly the needed slots mapped.
                model.states = model
                    .slots
                    .iter()
                    .map(|s| {
                        if model.needed(s) {
                            SlotState::Mapped
                        } else {
                            SlotState::Unmapped
                        }
                    })
                    .collect();
                model.retry_pending = false;
                model.map_faults = 0;
                model.unmap_faults = 0;
                model.protect_faults = 0;
                model.discard_faults = 0;
                model.populate_faults = 0;
            }
        }
        check(&dev, &model, step, op)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn device_matches_the_reference_model(
        policy in policy(),
        prealloc in any::<bool>(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(policy, prealloc, &ops)?;
    }
}

#[test]
fn model_sequence_with_legacy_driver_and_faults() {
    use Op::*;
    let ops = [
        SetRequested(10, false),
        Ack { legacy: true },
        Plug(0, 3, false),
        FailMap,
        SetRequested(20, false),
        SetRequested(20, false),
        FailDiscards(1),
        UnplugAll,
        Restore,
        Ack { legacy: false },
        Unplug(1, 1, false),
        SystemReset,
    ];
    run(SlotPolicy::Fixed, true, &ops).unwrap();
}

#[test]
fn model_sequence_with_half_failed_unmaps() {
    use Op::*;
    let ops = [
        SetRequested(10, false),
        Plug(8, 1, false),
        FailProtect,
        FailProtect,
        Unplug(8, 1, false),
        Plug(8, 1, false),
        FailUnmap,
        FailProtect,
        Unplug(8, 1, false),
        State(0, 1, false),
        Plug(8, 2, false),
        FailMap,
        FailProtect,
        Plug(16, 1, false),
        Ack { legacy: true },
        FailUnmap,
        Reset,
        SystemReset,
    ];
    for policy in [SlotPolicy::Fixed, SlotPolicy::Adaptive, SlotPolicy::Single] {
        run(policy, false, &ops).unwrap();
    }
}
