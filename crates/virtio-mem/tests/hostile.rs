//! A hostile driver, through a real split queue in test memory, against a device that already
//! holds plugged memory: every bad request gets the answer the spec (and QEMU) gives, every
//! malformed chain puts the device in needs-reset, and neither changes the device state.
//!
//! `queue.rs` covers the basic malformed-chain cases on a fresh device; this suite adds the
//! state comparison, the request-range edge cases and chain shapes it does not have.

use hostmem::FakeMemory;
use memslots::{FakeBackend, GIB, LayoutRequest, MIB, Memslots, SlotIds, SlotLayout, SlotPolicy};
use virtio_mem::{
    BlockRange, DeviceState, FeatureOffer, Prealloc, QueueOutcome, RangeState, Request, Response,
    VirtioMem, VirtioMemConfig,
};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
const MEM_BYTES: usize = 0x10_0000;
const REQ_ADDR: u64 = 0x1_0000;
const RESP_ADDR: u64 = 0x2_0000;
const TABLE_ADDR: u64 = 0x3_0000;

const BASE: u64 = 4 * GIB;
const BLOCK: u64 = 2 * MIB;
const REGION: u64 = 4 * GIB;
const REQUESTED: u64 = GIB;
/// `requested + 256 MiB`.
const USABLE: u64 = GIB + 256 * MIB;

type Dev = VirtioMem<FakeBackend, FakeMemory>;

/// A device with blocks 0..4 and the block at 1 GiB plugged (two slots mapped).
fn device() -> Dev {
    let layout = SlotLayout::plan(LayoutRequest {
        policy: SlotPolicy::Fixed,
        region_size_bytes: REGION,
        block_size_bytes: BLOCK,
        slot_limit: 64,
    })
    .unwrap();
    let ids = SlotIds::new(0, layout.len() as u32);
    let slots = Memslots::new(layout, ids, BASE, FakeBackend::new()).unwrap();
    let config = VirtioMemConfig {
        guest_addr: GuestAddress(BASE),
        region_size_bytes: REGION,
        block_size_bytes: BLOCK,
        backing_page_size_bytes: 4096,
        requested_size_bytes: REQUESTED,
        node_id: 0,
        prealloc: Prealloc::Off,
        offer: FeatureOffer::default(),
    };
    let mut dev = VirtioMem::new(config, slots, FakeMemory::new()).unwrap();
    for (offset, nb_blocks) in [(0, 4), (GIB - 2 * BLOCK, 1)] {
        let plug = Request::Plug(BlockRange {
            guest_addr: GuestAddress(BASE + offset),
            nb_blocks,
        });
        assert_eq!(dev.handle_request(plug), Response::Ack);
    }
    assert_eq!(dev.status().usable_region_size_bytes, USABLE);
    dev
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_BYTES)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// Request bytes with any type, address and block count.
fn raw_request(kind: u16, guest_addr: u64, nb_blocks: u16) -> [u8; 24] {
    let mut bytes = [0u8; 24];
    bytes[0..2].copy_from_slice(&kind.to_le_bytes());
    bytes[8..16].copy_from_slice(&guest_addr.to_le_bytes());
    bytes[16..18].copy_from_slice(&nb_blocks.to_le_bytes());
    bytes
}

/// What one pass over the queue did.
struct Pass {
    outcome: QueueOutcome,
    used: u16,
    response: [u8; 10],
}

/// Puts `request` at REQ_ADDR, offers `descs` as chains, serves the queue.
fn serve(dev: &mut Dev, request: &[u8; 24], descs: &[RawDescriptor]) -> Pass {
    let mem = memory();
    mem.write_slice(request, GuestAddress(REQ_ADDR)).unwrap();
    mem.write_slice(&[0xee; 10], GuestAddress(RESP_ADDR))
        .unwrap();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(descs, 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let outcome = dev.process_queue(&mut queue, &mem);
    let mut response = [0u8; 10];
    mem.read_slice(&mut response, GuestAddress(RESP_ADDR))
        .unwrap();
    Pass {
        outcome,
        used: vq.used().idx().load(),
        response,
    }
}

fn usual_chain() -> [RawDescriptor; 2] {
    [desc(REQ_ADDR, 24, NEXT, 1), desc(RESP_ADDR, 10, WRITE, 0)]
}

/// Serves a well-formed chain carrying `request` and checks: answered `expected`, used once,
/// the device keeps serving, and the state is unchanged.
fn assert_answered_without_change(request: [u8; 24], expected: Response) {
    let mut dev = device();
    let before: DeviceState = dev.state();
    let pass = serve(&mut dev, &request, &usual_chain());
    assert_eq!(
        pass.response,
        expected.to_bytes(),
        "request {request:?} answered"
    );
    assert_eq!(
        (pass.outcome.used, pass.outcome.needs_reset, pass.used),
        (true, false, 1)
    );
    assert_eq!(dev.state(), before, "request {request:?} changed the state");
    dev.check_invariants().unwrap();
}

/// Serves a malformed chain and checks: no used entry, needs reset, state unchanged, no
/// memslot or host memory call made.
fn assert_needs_reset_without_change(request: [u8; 24], descs: &[RawDescriptor]) {
    let mut dev = device();
    let before = dev.state();
    dev.backend_mut().clear_calls();
    dev.memory_mut().clear_ops();
    let pass = serve(&mut dev, &request, descs);
    assert_eq!(
        (pass.outcome.used, pass.outcome.needs_reset, pass.used),
        (false, true, 0),
        "chain {descs:?}"
    );
    assert_eq!(pass.response, [0xee; 10], "no response may be written");
    assert!(dev.needs_reset());
    assert_eq!(dev.state(), before, "chain {descs:?} changed the state");
    assert!(dev.memslots().backend().calls().is_empty());
    assert!(dev.memory().ops().is_empty());
    dev.check_invariants().unwrap();
}

const PLUG: u16 = 0;
const UNPLUG: u16 = 1;
const UNPLUG_ALL: u16 = 2;
const STATE: u16 = 3;

/// Addresses and counts every range check must refuse, with what is wrong with each.
fn bad_ranges() -> Vec<(&'static str, u64, u16)> {
    vec![
        ("below the region", BASE - BLOCK, 1),
        ("straddling the region start", BASE - BLOCK, 2),
        ("at the usable end", BASE + USABLE, 1),
        ("crossing the usable end", BASE + USABLE - BLOCK, 2),
        ("past the region", BASE + REGION, 1),
        ("far past the region", u64::MAX - BLOCK + 1, 1),
        ("unaligned by one byte", BASE + 1, 1),
        ("unaligned by a page", BASE + 4096, 1),
        ("zero blocks", BASE, 0),
        ("65535 blocks", BASE, u16::MAX),
        (
            "addr + nb × block overflowing u64",
            u64::MAX - 2 * BLOCK + 1,
            4,
        ),
        ("address 0", 0, 1),
    ]
}

#[test]
fn bad_ranges_answer_error_for_plug_unplug_and_state_and_change_nothing() {
    for kind in [PLUG, UNPLUG, STATE] {
        for (what, addr, nb) in bad_ranges() {
            eprintln!("type {kind}: {what}");
            assert_answered_without_change(raw_request(kind, addr, nb), Response::Error);
        }
    }
}

#[test]
fn requests_on_the_wrong_block_state_answer_error_or_nack_and_change_nothing() {
    // Plug of plugged blocks: ERROR; plug past the requested size: NACK (QEMU's order).
    assert_answered_without_change(raw_request(PLUG, BASE, 1), Response::Error);
    assert_answered_without_change(raw_request(PLUG, BASE + 8 * BLOCK, 512), Response::Nack);
    // Unplug of unplugged or mixed ranges: ERROR.
    assert_answered_without_change(raw_request(UNPLUG, BASE + 8 * BLOCK, 1), Response::Error);
    assert_answered_without_change(raw_request(UNPLUG, BASE + 2 * BLOCK, 4), Response::Error);
    assert_answered_without_change(
        raw_request(STATE, BASE + 2 * BLOCK, 4),
        Response::AckState(RangeState::Mixed),
    );
}

#[test]
fn unplug_all_ignores_junk_in_its_address_fields() {
    let mut dev = device();
    let pass = serve(
        &mut dev,
        &raw_request(UNPLUG_ALL, u64::MAX, u16::MAX),
        &usual_chain(),
    );
    assert_eq!(pass.response, Response::Ack.to_bytes());
    assert_eq!(dev.status().plugged_size_bytes, 0);
}

#[test]
fn unknown_request_types_need_reset_and_change_nothing() {
    for kind in [4, 0x100, u16::MAX] {
        assert_needs_reset_without_change(raw_request(kind, BASE, 1), &usual_chain());
    }
}

#[test]
fn malformed_chains_need_reset_and_change_nothing() {
    let plug = raw_request(PLUG, BASE + 8 * BLOCK, 1);
    let outside = MEM_BYTES as u64;
    let cases: Vec<(&str, Vec<RawDescriptor>)> = vec![
        ("request only", vec![desc(REQ_ADDR, 24, 0, 0)]),
        (
            "request split but 23 bytes in total",
            vec![
                desc(REQ_ADDR, 20, NEXT, 1),
                desc(REQ_ADDR + 20, 3, NEXT, 2),
                desc(RESP_ADDR, 10, WRITE, 0),
            ],
        ),
        (
            "request device-writable (wrong direction)",
            vec![
                desc(REQ_ADDR, 24, WRITE | NEXT, 1),
                desc(RESP_ADDR, 10, WRITE, 0),
            ],
        ),
        (
            "response device-readable (wrong direction)",
            vec![desc(REQ_ADDR, 24, NEXT, 1), desc(RESP_ADDR, 10, 0, 0)],
        ),
        (
            "response split but 9 bytes in total",
            vec![
                desc(REQ_ADDR, 24, NEXT, 1),
                desc(RESP_ADDR, 5, WRITE | NEXT, 2),
                desc(RESP_ADDR + 5, 4, WRITE, 0),
            ],
        ),
        (
            "zero-length descriptors only",
            vec![desc(REQ_ADDR, 0, NEXT, 1), desc(RESP_ADDR, 0, WRITE, 0)],
        ),
        (
            "request crossing the end of guest memory",
            vec![
                desc(outside - 12, 24, NEXT, 1),
                desc(RESP_ADDR, 10, WRITE, 0),
            ],
        ),
        (
            "response at u64::MAX",
            vec![
                desc(REQ_ADDR, 24, NEXT, 1),
                desc(u64::MAX - 4, 10, WRITE, 0),
            ],
        ),
        (
            "request length 4 GiB - 1",
            vec![
                desc(REQ_ADDR, u32::MAX, NEXT, 1),
                desc(RESP_ADDR, 10, WRITE, 0),
            ],
        ),
        (
            "self loop",
            vec![desc(REQ_ADDR, 24, NEXT, 0), desc(RESP_ADDR, 10, WRITE, 0)],
        ),
        (
            "three-descriptor loop",
            vec![
                desc(REQ_ADDR, 8, NEXT, 1),
                desc(REQ_ADDR + 8, 8, NEXT, 2),
                desc(REQ_ADDR + 16, 8, NEXT, 0),
            ],
        ),
        (
            "next past the table",
            vec![desc(REQ_ADDR, 24, NEXT, 0xffff)],
        ),
        (
            "indirect table with a bad length",
            vec![desc(TABLE_ADDR, 17, INDIRECT, 0)],
        ),
        (
            "indirect table of zero length",
            vec![desc(TABLE_ADDR, 0, INDIRECT, 0)],
        ),
    ];
    for (what, descs) in cases {
        eprintln!("{what}");
        assert_needs_reset_without_change(plug, &descs);
    }
}

#[test]
fn an_indirect_table_holding_another_indirect_descriptor_needs_reset() {
    let mut dev = device();
    let before = dev.state();
    let mem = memory();
    mem.write_slice(
        &raw_request(PLUG, BASE + 8 * BLOCK, 1),
        GuestAddress(REQ_ADDR),
    )
    .unwrap();
    mem.write_obj(
        desc(TABLE_ADDR + 0x100, 32, INDIRECT, 0),
        GuestAddress(TABLE_ADDR),
    )
    .unwrap();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&[desc(TABLE_ADDR, 16, INDIRECT, 0)], 0)
        .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let outcome = dev.process_queue(&mut queue, &mem);
    assert!(outcome.needs_reset && !outcome.used);
    assert_eq!(dev.state(), before);
}

#[test]
fn a_malformed_chain_after_good_ones_keeps_their_effects_and_stops_the_queue() {
    let mut dev = device();
    let mem = memory();
    mem.write_slice(
        &raw_request(PLUG, BASE + 8 * BLOCK, 2),
        GuestAddress(REQ_ADDR),
    )
    .unwrap();
    mem.write_slice(&raw_request(9, BASE, 1), GuestAddress(REQ_ADDR + 0x100))
        .unwrap();
    mem.write_slice(
        &raw_request(PLUG, BASE + 16 * BLOCK, 2),
        GuestAddress(REQ_ADDR + 0x200),
    )
    .unwrap();
    let vq = MockSplitQueue::new(&mem, 16);
    let descs = [
        desc(REQ_ADDR, 24, NEXT, 1),
        desc(RESP_ADDR, 10, WRITE, 0),
        desc(REQ_ADDR + 0x100, 24, NEXT, 3),
        desc(RESP_ADDR + 0x100, 10, WRITE, 0),
        desc(REQ_ADDR + 0x200, 24, NEXT, 5),
        desc(RESP_ADDR + 0x200, 10, WRITE, 0),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let before = dev.status().plugged_size_bytes;
    let outcome = dev.process_queue(&mut queue, &mem);
    assert_eq!(
        outcome,
        QueueOutcome {
            used: true,
            needs_reset: true
        }
    );
    assert_eq!(vq.used().idx().load(), 1, "only the first chain is used");
    assert_eq!(dev.status().plugged_size_bytes, before + 2 * BLOCK);
    let state_after = dev.state();
    // The third chain is not served, now or on the next notification.
    assert!(dev.process_queue(&mut queue, &mem).needs_reset);
    assert_eq!(vq.used().idx().load(), 1);
    assert_eq!(dev.state(), state_after);
    dev.check_invariants().unwrap();
}

#[test]
fn a_guest_scribbling_the_response_over_its_own_ring_does_not_confuse_the_device() {
    // The response buffer overlaps the used ring: the device writes the response first, then
    // its used entry, and keeps its own idea of the used index.
    let mut dev = device();
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, 16);
    let used_ring = vq.used_addr().0;
    mem.write_slice(&raw_request(STATE, BASE, 1), GuestAddress(REQ_ADDR))
        .unwrap();
    vq.add_desc_chains(
        &[desc(REQ_ADDR, 24, NEXT, 1), desc(used_ring, 10, WRITE, 0)],
        0,
    )
    .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let before = dev.state();
    let outcome = dev.process_queue(&mut queue, &mem);
    assert!(outcome.used && !outcome.needs_reset);
    assert_eq!(queue.next_used(), 1);
    assert_eq!(dev.state(), before);
}
