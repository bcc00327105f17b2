//! virtio-mem's state machine over [`FakeBackend`] and [`FakeMemory`], driven by decoded
//! operations: raw and structured requests, requested-size changes, feature acks, resets,
//! save/restore and injected map/unmap/mprotect/discard/populate faults.
//!
//! After every step: the invariants hold, the device's per-slot books equal the fake backend's
//! truth (which slots KVM has, which host ranges are still exposed), the host memory was only
//! asked about ranges inside the region, and a request answered NACK, BUSY or ERROR (or a refused
//! resize or feature ack) changed nothing.
//!
//! The per-slot checks after a step cover the slots the step can have changed: those the backend
//! was called for, those the request's range overlaps, those that held plugged blocks before an
//! unplug-all or system reset, and those below the usable region when the usable size or the
//! mapping mode changed; a restore and the end of every input get a check of every slot. The
//! sizes, the bitmap and the memory ranges are checked in full after every step.

use std::ops::Range;

use hostmem::{FakeMemory, MemoryOp};
use memslots::{
    BackendCall, FakeBackend, FakeFault, GIB, LayoutRequest, MIB, Memslots, SlotIds, SlotIndex,
    SlotLayout, SlotPolicy, SlotState,
};
use virtio_mem::request::REQUEST_BYTES;
use virtio_mem::{
    DeviceState, FeatureOffer, Prealloc, Request, Response, VirtioMem, VirtioMemConfig,
};
use vm_memory::GuestAddress;

use crate::input::{Input, Output};

/// The device under test.
pub type Dev = VirtioMem<FakeBackend, FakeMemory>;

/// Guest physical address of the region.
pub const GUEST_BASE: u64 = 4 * GIB;
/// First KVM slot number of the device (boot memory has the ones below).
const FIRST_KVM_SLOT: u32 = 2;
const BLOCK_SIZES: [u64; 4] = [2 * MIB, 4 * MIB, 128 * MIB, GIB];
/// Largest region, in blocks: enough for every layout shape (many slots, a smaller last slot,
/// adaptive growth) while keeping each step's work small.
const MAX_REGION_BLOCKS: u16 = 512;
/// Largest slot limit; layouts get up to this many slots.
const MAX_SLOT_LIMIT: u8 = 32;
const POLICIES: [SlotPolicy; 3] = [SlotPolicy::Fixed, SlotPolicy::Adaptive, SlotPolicy::Single];

/// How the device is built: decoded from the first six bytes of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// Index into the slot policies (fixed, adaptive, single).
    pub policy: u8,
    /// Preallocate on plug.
    pub prealloc: bool,
    /// Index into the block sizes (2M, 4M, 128M, 1G).
    pub block_size: u8,
    /// Region size in blocks, 1..=[`MAX_REGION_BLOCKS`].
    pub region_blocks: u16,
    /// Initial requested size in blocks (capped at the region).
    pub requested_blocks: u16,
    /// Slot limit minus one, below [`MAX_SLOT_LIMIT`].
    pub slot_limit: u8,
}

impl Setup {
    /// Decodes a setup.
    pub fn decode(input: &mut Input<'_>) -> Option<Setup> {
        let flags = input.u8()?;
        let block_size = input.u8()?;
        let region_blocks = 1 + input.u16()? % MAX_REGION_BLOCKS;
        let requested_blocks = input.u16()? % (region_blocks + 1);
        let slot_limit = input.u8()? % MAX_SLOT_LIMIT;
        Some(Setup {
            policy: flags & 0x7f,
            prealloc: flags & 0x80 != 0,
            block_size,
            region_blocks,
            requested_blocks,
            slot_limit,
        })
    }

    /// Encodes a setup so that [`Setup::decode`] reads it back.
    pub fn encode(&self, out: &mut Output) {
        out.u8(self.policy | if self.prealloc { 0x80 } else { 0 })
            .u8(self.block_size)
            .u16(self.region_blocks - 1)
            .u16(self.requested_blocks)
            .u8(self.slot_limit);
    }

    /// The block size.
    pub fn block_size_bytes(&self) -> u64 {
        BLOCK_SIZES[usize::from(self.block_size) % BLOCK_SIZES.len()]
    }

    /// The device configuration.
    pub fn config(&self) -> VirtioMemConfig {
        let block = self.block_size_bytes();
        VirtioMemConfig {
            guest_addr: GuestAddress(GUEST_BASE),
            region_size_bytes: u64::from(self.region_blocks) * block,
            block_size_bytes: block,
            backing_page_size_bytes: 4096,
            requested_size_bytes: u64::from(self.requested_blocks) * block,
            node_id: 0,
            prealloc: if self.prealloc {
                Prealloc::OnPlug
            } else {
                Prealloc::Off
            },
            offer: FeatureOffer::default(),
        }
    }

    /// Fresh memslots over a fresh fake backend; `None` if the layout is refused.
    pub fn memslots(&self) -> Option<Memslots<FakeBackend>> {
        let config = self.config();
        let layout = SlotLayout::plan(LayoutRequest {
            policy: POLICIES[usize::from(self.policy) % POLICIES.len()],
            region_size_bytes: config.region_size_bytes,
            block_size_bytes: config.block_size_bytes,
            slot_limit: u32::from(self.slot_limit) + 1,
        })
        .ok()?;
        let ids = SlotIds::new(FIRST_KVM_SLOT, u32::try_from(layout.len()).ok()?);
        Memslots::new(layout, ids, GUEST_BASE, FakeBackend::new()).ok()
    }

    /// A new device; `None` if the setup is refused (which is fine: not every input is valid).
    pub fn build(&self) -> Option<Dev> {
        VirtioMem::new(self.config(), self.memslots()?, FakeMemory::new()).ok()
    }
}

/// One step of a device run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A raw 24-byte request, as the driver would put it in the queue.
    Raw([u8; REQUEST_BYTES]),
    /// A request near the region: type, block index from the region start (may be past its
    /// end), block count, and a byte offset added to the address (misalignment).
    Near {
        /// Request type (0..=3 valid).
        kind: u16,
        /// First block, counted from the region start.
        block: u16,
        /// Number of blocks.
        nb_blocks: u16,
        /// Added to the address.
        skew_bytes: u32,
    },
    /// `set_requested_size(blocks × block)`.
    SetRequestedBlocks(u16),
    /// `set_requested_size(raw)`.
    SetRequestedRaw(u64),
    /// `ack_features`.
    AckFeatures(u64),
    /// Device reset.
    Reset,
    /// System reset.
    SystemReset,
    /// Script the next eight maps: bit `i` set fails map `i` (odd bytes with ENOMEM, even with
    /// ENOSPC).
    FailMaps(u8),
    /// Script KVM's next eight slot deletions like [`Op::FailMaps`].
    FailUnmaps(u8),
    /// Script the next eight mprotects to `PROT_NONE` like [`Op::FailMaps`].
    FailProtects(u8),
    /// Fail the next `n % 4` discards.
    FailDiscards(u8),
    /// Fail the next `n % 4` populates.
    FailPopulates(u8),
    /// Save the state and restore it into a new device over fresh fakes.
    SaveRestore,
}

impl Op {
    /// Decodes one operation.
    pub fn decode(input: &mut Input<'_>) -> Option<Op> {
        Some(match input.u8()? % 13 {
            0 => Op::Raw(input.array()?),
            1 => Op::Near {
                kind: u16::from(input.u8()? % 5),
                block: input.u16()?,
                nb_blocks: input.u16()?,
                skew_bytes: input.u32()?,
            },
            2 => Op::SetRequestedBlocks(input.u16()?),
            3 => Op::SetRequestedRaw(input.u64()?),
            4 => Op::AckFeatures(input.u64()?),
            5 => Op::Reset,
            6 => Op::SystemReset,
            7 => Op::FailMaps(input.u8()?),
            8 => Op::FailUnmaps(input.u8()?),
            9 => Op::FailDiscards(input.u8()?),
            10 => Op::FailPopulates(input.u8()?),
            11 => Op::SaveRestore,
            _ => Op::FailProtects(input.u8()?),
        })
    }

    /// Encodes the operation so that [`Op::decode`] reads it back.
    pub fn encode(&self, out: &mut Output) {
        match *self {
            Op::Raw(bytes) => out.u8(0).raw(&bytes),
            Op::Near {
                kind,
                block,
                nb_blocks,
                skew_bytes,
            } => out
                .u8(1)
                .u8(kind as u8)
                .u16(block)
                .u16(nb_blocks)
                .u32(skew_bytes),
            Op::SetRequestedBlocks(b) => out.u8(2).u16(b),
            Op::SetRequestedRaw(v) => out.u8(3).u64(v),
            Op::AckFeatures(f) => out.u8(4).u64(f),
            Op::Reset => out.u8(5),
            Op::SystemReset => out.u8(6),
            Op::FailMaps(m) => out.u8(7).u8(m),
            Op::FailUnmaps(m) => out.u8(8).u8(m),
            Op::FailDiscards(n) => out.u8(9).u8(n),
            Op::FailPopulates(n) => out.u8(10).u8(n),
            Op::SaveRestore => out.u8(11),
            Op::FailProtects(m) => out.u8(12).u8(m),
        };
    }
}

/// The 24 request bytes for a [`Op::Near`] request.
pub fn near_request_bytes(
    setup: &Setup,
    kind: u16,
    block: u16,
    nb_blocks: u16,
    skew_bytes: u32,
) -> [u8; REQUEST_BYTES] {
    let addr = GUEST_BASE
        .wrapping_add(u64::from(block) * setup.block_size_bytes())
        .wrapping_add(u64::from(skew_bytes));
    let mut bytes = [0u8; REQUEST_BYTES];
    bytes[0..2].copy_from_slice(&kind.to_le_bytes());
    bytes[8..16].copy_from_slice(&addr.to_le_bytes());
    bytes[16..18].copy_from_slice(&nb_blocks.to_le_bytes());
    bytes
}

fn script(mask: u8) -> Vec<Option<FakeFault>> {
    (0..8)
        .map(|i| {
            (mask & (1 << i) != 0).then_some(if i % 2 == 1 {
                FakeFault::OutOfMemory
            } else {
                FakeFault::NoSlots
            })
        })
        .collect()
}

/// A request sent and what came of it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    request: Request,
    response: Response,
    /// [`Harness::plugged_extent`] before the request.
    plugged_before: Option<(u64, u64)>,
}

/// What decides which slots are needed besides the bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    legacy: bool,
    usable_bytes: u64,
}

impl Mode {
    fn of(dev: &Dev) -> Mode {
        Mode {
            legacy: dev.legacy_mapping(),
            usable_bytes: dev.config_space().usable_region_size_bytes,
        }
    }
}

/// The smallest range of slot indices holding every range added.
#[derive(Debug, Default)]
struct Span(Option<Range<usize>>);

impl Span {
    fn add(&mut self, slots: Option<Range<usize>>) {
        let Some(slots) = slots.filter(|s| !s.is_empty()) else {
            return;
        };
        self.0 = Some(match self.0.take() {
            Some(r) => r.start.min(slots.start)..r.end.max(slots.end),
            None => slots,
        });
    }
}

/// A device and how it was built.
#[derive(Debug)]
pub struct Harness {
    /// How the device was built (for restore).
    pub setup: Setup,
    /// The device.
    pub dev: Dev,
}

impl Harness {
    /// Builds the device; `None` if the setup is refused.
    pub fn new(setup: Setup) -> Option<Harness> {
        let dev = setup.build()?;
        let harness = Harness { setup, dev };
        harness.check(&"creation");
        Some(harness)
    }

    /// Sends a request and checks its effect on the state; returns the response.
    pub fn request(&mut self, bytes: &[u8; REQUEST_BYTES]) -> Option<Response> {
        self.send(bytes).map(|sent| sent.response)
    }

    fn send(&mut self, bytes: &[u8; REQUEST_BYTES]) -> Option<Sent> {
        let request = Request::parse(bytes).ok()?;
        let before = self.dev.state();
        let response = self.dev.handle_request(request);
        let after = self.dev.state();
        match (request, response) {
            (_, Response::Nack | Response::Busy | Response::Error) | (Request::State(_), _) => {
                assert_eq!(
                    before, after,
                    "{request:?} answered {response:?} changed state"
                );
            }
            (Request::Plug(r), Response::Ack) => assert_eq!(
                after.plugged_size_bytes,
                before.plugged_size_bytes + u64::from(r.nb_blocks) * self.setup.block_size_bytes(),
                "{request:?} acked"
            ),
            (Request::Unplug(r), Response::Ack) => assert_eq!(
                after.plugged_size_bytes + u64::from(r.nb_blocks) * self.setup.block_size_bytes(),
                before.plugged_size_bytes,
                "{request:?} acked"
            ),
            (Request::UnplugAll, Response::Ack) => {
                assert_eq!(after.plugged_size_bytes, 0, "UNPLUG_ALL acked")
            }
            (_, Response::AckState(_)) => {
                panic!("{request:?} answered {response:?}")
            }
        }
        Some(Sent {
            request,
            response,
            plugged_before: self.plugged_extent(&before),
        })
    }

    /// The region bytes from the first plugged block to the last in `state`.
    fn plugged_extent(&self, state: &DeviceState) -> Option<(u64, u64)> {
        let block = self.setup.block_size_bytes();
        let first = state.plugged_runs.first()?;
        let last = state.plugged_runs.last()?;
        let start = first.first_block * block;
        Some((start, (last.first_block + last.block_count) * block - start))
    }

    /// Applies one operation, then checks what it can have changed (see the module docs).
    pub fn apply(&mut self, op: Op) {
        let before = Mode::of(&self.dev);
        let mut request = None;
        // Region bytes whose blocks may have changed, besides the request's range.
        let mut cleared = None;
        match op {
            Op::Raw(bytes) => request = self.send(&bytes),
            Op::Near {
                kind,
                block,
                nb_blocks,
                skew_bytes,
            } => {
                let bytes = near_request_bytes(&self.setup, kind, block, nb_blocks, skew_bytes);
                request = self.send(&bytes);
            }
            Op::SetRequestedBlocks(blocks) => {
                self.set_requested(u64::from(blocks) * self.setup.block_size_bytes())
            }
            Op::SetRequestedRaw(bytes) => self.set_requested(bytes),
            Op::AckFeatures(features) => {
                let before = self.dev.state();
                if self.dev.ack_features(features).is_err() {
                    assert_eq!(before, self.dev.state(), "refused features changed state");
                }
            }
            Op::Reset => self.dev.reset(),
            Op::SystemReset => {
                let before = self.dev.state();
                cleared = self.plugged_extent(&before);
                if self.dev.system_reset().is_err() {
                    assert_eq!(before.plugged_runs, self.dev.state().plugged_runs);
                } else {
                    assert_eq!(self.dev.state().plugged_size_bytes, 0);
                }
            }
            Op::FailMaps(mask) => self.dev.backend_mut().script_maps(&script(mask)),
            Op::FailUnmaps(mask) => self.dev.backend_mut().script_unmaps(&script(mask)),
            Op::FailProtects(mask) => self.dev.backend_mut().script_protects(&script(mask)),
            Op::FailDiscards(n) => self.dev.memory_mut().fail_discards(u32::from(n % 4)),
            Op::FailPopulates(n) => self.dev.memory_mut().fail_populates(u32::from(n % 4)),
            Op::SaveRestore => self.save_restore(),
        }
        if op == Op::SaveRestore {
            // A new device over a new backend: check everything.
            self.check(&op);
            return;
        }
        let mut touched = [cleared, None];
        if let Some(sent) = request {
            touched[1] = self.request_span(sent.request);
            if sent.request == Request::UnplugAll {
                touched[0] = sent.plugged_before;
            }
        }
        let slots = self.changed_slots(before, &touched);
        self.check_slots(slots, &op);
    }

    /// The region bytes a plug, unplug or state request names, clamped to the region.
    fn request_span(&self, request: Request) -> Option<(u64, u64)> {
        let (Request::Plug(r) | Request::Unplug(r) | Request::State(r)) = request else {
            return None;
        };
        let region = self.dev.config().region_size_bytes;
        let start = r.guest_addr.0.checked_sub(GUEST_BASE)?.min(region);
        let size = u64::from(r.nb_blocks) * self.setup.block_size_bytes();
        Some((start, start.saturating_add(size).min(region) - start))
    }

    /// The slots whose invariants a step can have changed (see the module docs).
    fn changed_slots(&self, before: Mode, touched: &[Option<(u64, u64)>]) -> Range<usize> {
        let slots = self.dev.memslots();
        let layout = slots.layout();
        let mut changed = Span::default();
        for call in slots.backend().calls() {
            let (BackendCall::Map(m) | BackendCall::Unmap(m) | BackendCall::Protect(m)) = call;
            changed.add(layout.overlapping(m.region_offset_bytes, 1).ok());
        }
        for &(offset, size) in touched.iter().flatten() {
            changed.add(layout.overlapping(offset, size).ok());
        }
        let after = Mode::of(&self.dev);
        if after != before {
            let usable = before.usable_bytes.max(after.usable_bytes);
            changed.add(layout.overlapping(0, usable).ok());
        }
        changed.0.unwrap_or_default()
    }

    fn set_requested(&mut self, bytes: u64) {
        let before = self.dev.state();
        match self.dev.set_requested_size(bytes) {
            Ok(_) => assert_eq!(self.dev.state().requested_size_bytes, bytes),
            Err(_) => assert_eq!(before, self.dev.state(), "refused resize changed state"),
        }
    }

    fn save_restore(&mut self) {
        let state = self.dev.state();
        let memslots = self
            .setup
            .memslots()
            .expect("the layout was accepted before");
        let restored = VirtioMem::restore(self.setup.config(), memslots, FakeMemory::new(), &state)
            .unwrap_or_else(|e| panic!("restoring a saved state failed: {e}\n{state:?}"));
        assert_eq!(restored.state(), state, "restore changed the state");
        self.dev = restored;
    }

    /// Checks the invariants, the fake backend against the device, and the memory ranges, for
    /// every slot. `when` (the step just done) is only formatted when a check fails.
    pub fn check(&self, when: &dyn std::fmt::Debug) {
        self.check_slots(0..self.dev.memslots().layout().len(), when);
        let slots = self.dev.memslots();
        let backend = slots.backend();
        // KVM slot numbers grow with the slot index, so both sides list in the same order.
        let books = |state| slots.slots_in(state).map(|i| slots.mapping(i));
        assert!(
            books(SlotState::Mapped).eq(backend.mapped().copied()),
            "after {when:?}: the device's books and KVM disagree on the mapped slots"
        );
        assert!(
            books(SlotState::ProtectPending).eq(backend.exposed().copied()),
            "after {when:?}: the device's books and the backend disagree on the exposed slots"
        );
    }

    /// The full checks but for the per-slot ones, which cover only `slots`.
    fn check_slots(&self, slots: Range<usize>, when: &dyn std::fmt::Debug) {
        if let Err(problems) = self.dev.check_invariants_in(slots.clone()) {
            panic!("after {when:?}: invariants broken: {problems}");
        }
        let memslots = self.dev.memslots();
        let backend = memslots.backend();
        for index in slots.map(SlotIndex) {
            let mapping = memslots.mapping(index);
            let books = memslots.state(index);
            assert_eq!(
                books,
                backend.state_of(mapping.kvm_slot),
                "after {when:?}: slot {index:?}: the device's books disagree with the backend"
            );
            if books == SlotState::Mapped {
                assert_eq!(
                    backend.mapped_slot(mapping.kvm_slot),
                    Some(&mapping),
                    "after {when:?}: KVM has slot {index:?} with another shape"
                );
            }
        }
        let region = self.dev.config().region_size_bytes;
        for op in self.dev.memory().ops() {
            let (MemoryOp::Discard(offset, size) | MemoryOp::Populate(offset, size)) = *op;
            assert!(
                size > 0 && offset.checked_add(size).is_some_and(|end| end <= region),
                "after {when:?}: host memory op {op:?} outside the region {region:#x}"
            );
        }
    }

    /// Forgets recorded calls so long runs stay small.
    pub fn forget_history(&mut self) {
        self.dev.backend_mut().clear_calls();
        self.dev.memory_mut().clear_ops();
    }
}

/// The `virtio_mem_device` target: a setup, then operations until the input runs out.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(setup) = Setup::decode(&mut input) else {
        return;
    };
    let Some(mut harness) = Harness::new(setup) else {
        return;
    };
    while let Some(op) = Op::decode(&mut input) {
        harness.apply(op);
        harness.forget_history();
    }
    harness.check(&"the last step (every slot)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips_through_its_encoding() {
        let ops = [
            Op::Raw([7; REQUEST_BYTES]),
            Op::Near {
                kind: 3,
                block: 9,
                nb_blocks: 65535,
                skew_bytes: 4096,
            },
            Op::SetRequestedBlocks(17),
            Op::SetRequestedRaw(u64::MAX),
            Op::AckFeatures(1 << 32),
            Op::Reset,
            Op::SystemReset,
            Op::FailMaps(0xa5),
            Op::FailUnmaps(1),
            Op::FailDiscards(2),
            Op::FailPopulates(3),
            Op::SaveRestore,
            Op::FailProtects(0x81),
        ];
        let mut out = Output::default();
        for op in &ops {
            op.encode(&mut out);
        }
        let mut input = Input::new(&out.bytes);
        for op in ops {
            assert_eq!(Op::decode(&mut input), Some(op));
        }
        assert!(input.is_empty());
    }

    #[test]
    fn a_plug_and_unplug_sequence_runs_with_its_checks() {
        let setup = Setup {
            policy: 1,
            prealloc: true,
            block_size: 0,
            region_blocks: 512,
            requested_blocks: 256,
            slot_limit: 31,
        };
        let mut out = Output::default();
        setup.encode(&mut out);
        assert_eq!(Setup::decode(&mut Input::new(&out.bytes)), Some(setup));
        let mut harness = Harness::new(setup).unwrap();
        let plug = near_request_bytes(&setup, 0, 0, 8, 0);
        assert_eq!(harness.request(&plug), Some(Response::Ack));
        assert_eq!(harness.dev.status().slots_mapped, 1);
        harness.apply(Op::FailDiscards(1));
        let unplug = near_request_bytes(&setup, 1, 0, 8, 0);
        assert_eq!(harness.request(&unplug), Some(Response::Busy));
        assert_eq!(harness.request(&unplug), Some(Response::Ack));
        harness.apply(Op::SaveRestore);
        harness.check(&"end");
    }
}
