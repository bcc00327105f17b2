//! Serving a real split virtqueue in guest memory, with well-formed and malformed chains.

use hostmem::FakeMemory;
use memslots::{FakeBackend, GIB, LayoutRequest, MIB, Memslots, SlotIds, SlotLayout, SlotPolicy};
use virtio_mem::{
    BlockRange, FeatureOffer, Prealloc, QueueOutcome, RangeState, Request, Response, VirtioMem,
    VirtioMemConfig,
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
const OUTSIDE: u64 = 0x4000_0000;

const BASE: u64 = 4 * GIB;
const BLOCK: u64 = 2 * MIB;

type Dev = VirtioMem<FakeBackend, FakeMemory>;

fn device() -> Dev {
    let layout = SlotLayout::plan(LayoutRequest {
        policy: SlotPolicy::Fixed,
        region_size_bytes: 4 * GIB,
        block_size_bytes: BLOCK,
        slot_limit: 64,
    })
    .unwrap();
    let ids = SlotIds::new(0, layout.len() as u32);
    let slots = Memslots::new(layout, ids, BASE, FakeBackend::new()).unwrap();
    let config = VirtioMemConfig {
        guest_addr: GuestAddress(BASE),
        region_size_bytes: 4 * GIB,
        block_size_bytes: BLOCK,
        backing_page_size_bytes: 4096,
        requested_size_bytes: GIB,
        node_id: 0,
        prealloc: Prealloc::Off,
        offer: FeatureOffer::default(),
    };
    VirtioMem::new(config, slots, FakeMemory::new()).unwrap()
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_BYTES)]).unwrap()
}

fn plug(offset: u64, nb_blocks: u16) -> Request {
    Request::Plug(BlockRange {
        guest_addr: GuestAddress(BASE + offset),
        nb_blocks,
    })
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// The usual driver chain: one readable request, one writable response.
fn request_chain(mem: &GuestMemoryMmap, request: Request) -> Vec<RawDescriptor> {
    mem.write_slice(&request.to_bytes(), GuestAddress(REQ_ADDR))
        .unwrap();
    vec![desc(REQ_ADDR, 24, NEXT, 1), desc(RESP_ADDR, 10, WRITE, 0)]
}

fn response(mem: &GuestMemoryMmap, addr: u64) -> [u8; 10] {
    let mut bytes = [0u8; 10];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    bytes
}

fn used_idx(vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
    vq.used().idx().load()
}

/// Runs one chain of raw descriptors and returns the outcome and the used-ring index.
fn run(dev: &mut Dev, mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> (QueueOutcome, u16) {
    let vq = MockSplitQueue::new(mem, 16);
    vq.add_desc_chains(descs, 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let outcome = dev.process_queue(&mut queue, mem);
    (outcome, used_idx(&vq))
}

fn assert_needs_reset_and_nothing_plugged(dev: &Dev, outcome: QueueOutcome, used: u16) {
    assert_eq!(
        outcome,
        QueueOutcome {
            used: false,
            needs_reset: true
        }
    );
    assert_eq!(used, 0, "a malformed chain gets no used entry");
    assert!(dev.needs_reset());
    assert_eq!(dev.status().plugged_size_bytes, 0);
    assert_eq!(dev.stats().malformed_chains, 1);
}

#[test]
fn well_formed_plug_is_served_and_used_with_length_10() {
    let mem = memory();
    let mut dev = device();
    let vq = MockSplitQueue::new(&mem, 16);
    let descs = request_chain(&mem, plug(0, 4));
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let outcome = dev.process_queue(&mut queue, &mem);
    assert_eq!(
        outcome,
        QueueOutcome {
            used: true,
            needs_reset: false
        }
    );
    assert_eq!(response(&mem, RESP_ADDR), Response::Ack.to_bytes());
    assert_eq!(used_idx(&vq), 1);
    let elem = vq.used().ring().ref_at(0).unwrap().load();
    assert_eq!((elem.id(), elem.len()), (0, 10));
    assert_eq!(dev.status().plugged_size_bytes, 4 * BLOCK);
}

#[test]
fn several_chains_are_served_in_order() {
    let mem = memory();
    let mut dev = device();
    let vq = MockSplitQueue::new(&mem, 16);
    mem.write_slice(&plug(0, 2).to_bytes(), GuestAddress(REQ_ADDR))
        .unwrap();
    let state = Request::State(BlockRange {
        guest_addr: GuestAddress(BASE + BLOCK),
        nb_blocks: 2,
    });
    mem.write_slice(&state.to_bytes(), GuestAddress(REQ_ADDR + 0x100))
        .unwrap();
    let descs = [
        desc(REQ_ADDR, 24, NEXT, 1),
        desc(RESP_ADDR, 10, WRITE, 0),
        desc(REQ_ADDR + 0x100, 24, NEXT, 3),
        desc(RESP_ADDR + 0x100, 10, WRITE, 0),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    assert!(dev.process_queue(&mut queue, &mem).used);
    assert_eq!(used_idx(&vq), 2);
    assert_eq!(response(&mem, RESP_ADDR), Response::Ack.to_bytes());
    assert_eq!(
        response(&mem, RESP_ADDR + 0x100),
        Response::AckState(RangeState::Mixed).to_bytes()
    );
    // Nothing more to do: a second pass uses nothing.
    assert!(!dev.process_queue(&mut queue, &mem).used);
}

#[test]
fn request_and_response_may_be_split_over_descriptors() {
    let mem = memory();
    let mut dev = device();
    mem.write_slice(&plug(0, 1).to_bytes(), GuestAddress(REQ_ADDR))
        .unwrap();
    // Fill the response area so we can see every byte being written.
    mem.write_slice(&[0xaa; 16], GuestAddress(RESP_ADDR))
        .unwrap();
    let descs = [
        desc(REQ_ADDR, 10, NEXT, 1),
        desc(REQ_ADDR + 10, 14, NEXT, 2),
        desc(RESP_ADDR, 4, WRITE | NEXT, 3),
        desc(RESP_ADDR + 8, 6, WRITE, 0),
    ];
    let (outcome, used) = run(&mut dev, &mem, &descs);
    assert!(outcome.used && !outcome.needs_reset);
    assert_eq!(used, 1);
    let mut bytes = [0u8; 14];
    mem.read_slice(&mut bytes, GuestAddress(RESP_ADDR)).unwrap();
    assert_eq!(
        bytes,
        [0, 0, 0, 0, 0xaa, 0xaa, 0xaa, 0xaa, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(dev.status().plugged_size_bytes, BLOCK);
}

#[test]
fn request_buffer_shorter_than_24_bytes_needs_reset() {
    let mem = memory();
    let mut dev = device();
    let mut descs = request_chain(&mem, plug(0, 1));
    descs[0] = desc(REQ_ADDR, 23, NEXT, 1);
    let (outcome, used) = run(&mut dev, &mem, &descs);
    assert_needs_reset_and_nothing_plugged(&dev, outcome, used);
}

#[test]
fn response_buffer_shorter_than_10_bytes_needs_reset_before_acting() {
    let mem = memory();
    let mut dev = device();
    let mut descs = request_chain(&mem, plug(0, 1));
    descs[1] = desc(RESP_ADDR, 9, WRITE, 0);
    let (outcome, used) = run(&mut dev, &mem, &descs);
    assert_needs_reset_and_nothing_plugged(&dev, outcome, used);
    assert!(dev.memslots().backend().calls().is_empty());
}

#[test]
fn missing_response_buffer_needs_reset() {
    let mem = memory();
    let mut dev = device();
    request_chain(&mem, plug(0, 1));
    let (outcome, used) = run(&mut dev, &mem, &[desc(REQ_ADDR, 24, 0, 0)]);
    assert_needs_reset_and_nothing_plugged(&dev, outcome, used);
}

#[test]
fn readable_descriptor_after_a_writable_one_needs_reset() {
    let mem = memory();
    let mut dev = device();
    request_chain(&mem, plug(0, 1));
    let descs = [
        desc(RESP_ADDR, 10, WRITE | NEXT, 1),
        desc(REQ_ADDR, 24, 0, 0),
    ];
    let (outcome, used) = run(&mut dev, &mem, &descs);
    assert_needs_reset_and_nothing_plugged(&dev, outcome, used);
}

#[test]
fn unknown_request_type_needs_reset() {
    let mem = memory();
    let mut dev = device();
    let descs = request_chain(&mem, plug(0, 1));
    mem.write_slice(&[7, 0], GuestAddress(REQ_ADDR)).unwrap();
    let (outcome, used) = run(&mut dev, &mem, &descs);
    assert_needs_reset_and_nothing_plugged(&dev, outcome, used);
}

#[test]
fn request_outside_guest_memory_needs_reset() {
    let mem = memory();
    let mut dev = device();
    let descs = [desc(OUTSIDE, 24, NEXT, 1), desc(RESP_ADDR, 10, WRITE, 0)];
    let (outcome, used) = run(&mut dev, &mem, &descs);
    assert_needs_reset_and_nothing_plugged(&dev, outcome, used);
}

#[test]
fn response_outside_guest_memory_needs_reset_before_acting() {
    let mem = memory();
    let mut dev = device();
    let mut descs = request_chain(&mem, plug(0, 1));
    descs[1] = desc(MEM_BYTES as u64 - 4, 10, WRITE, 0);
    let (outcome, used) = run(&mut dev, &mem, &descs);
    assert_needs_reset_and_nothing_plugged(&dev, outcome, used);
}

#[test]
fn looping_chain_needs_reset() {
    let mem = memory();
    let mut dev = device();
    request_chain(&mem, plug(0, 1));
    // Both readable, so only the loop (cut off by the queue library) is wrong.
    let descs = [desc(REQ_ADDR, 24, NEXT, 1), desc(REQ_ADDR, 24, NEXT, 0)];
    let (outcome, used) = run(&mut dev, &mem, &descs);
    assert_needs_reset_and_nothing_plugged(&dev, outcome, used);
}

#[test]
fn looping_chain_through_a_response_buffer_needs_reset() {
    let mem = memory();
    let mut dev = device();
    request_chain(&mem, plug(0, 1));
    let descs = [
        desc(REQ_ADDR, 24, NEXT, 1),
        desc(RESP_ADDR, 10, WRITE | NEXT, 1),
    ];
    let (outcome, used) = run(&mut dev, &mem, &descs);
    assert_needs_reset_and_nothing_plugged(&dev, outcome, used);
}

#[test]
fn next_index_past_the_queue_needs_reset() {
    let mem = memory();
    let mut dev = device();
    request_chain(&mem, plug(0, 1));
    let descs = [desc(REQ_ADDR, 24, NEXT, 200)];
    let (outcome, used) = run(&mut dev, &mem, &descs);
    assert_needs_reset_and_nothing_plugged(&dev, outcome, used);
}

#[test]
fn indirect_table_outside_guest_memory_needs_reset() {
    let mem = memory();
    let mut dev = device();
    let descs = [desc(OUTSIDE, 32, INDIRECT, 0)];
    let (outcome, used) = run(&mut dev, &mem, &descs);
    assert_needs_reset_and_nothing_plugged(&dev, outcome, used);
}

#[test]
fn indirect_chain_is_served() {
    let mem = memory();
    let mut dev = device();
    request_chain(&mem, plug(0, 1));
    let table = 0x3_0000u64;
    mem.write_obj(desc(REQ_ADDR, 24, NEXT, 1), GuestAddress(table))
        .unwrap();
    mem.write_obj(desc(RESP_ADDR, 10, WRITE, 0), GuestAddress(table + 16))
        .unwrap();
    let (outcome, used) = run(&mut dev, &mem, &[desc(table, 32, INDIRECT, 0)]);
    assert!(outcome.used && !outcome.needs_reset);
    assert_eq!(used, 1);
    assert_eq!(dev.status().plugged_size_bytes, BLOCK);
}

#[test]
fn corrupt_available_index_needs_reset() {
    let mem = memory();
    let mut dev = device();
    let vq = MockSplitQueue::new(&mem, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    vq.avail().idx().store(100);
    let outcome = dev.process_queue(&mut queue, &mem);
    assert!(outcome.needs_reset && !outcome.used);
}

#[test]
fn a_device_needing_reset_serves_nothing_until_reset() {
    let mem = memory();
    let mut dev = device();
    let (outcome, _) = run(&mut dev, &mem, &[desc(OUTSIDE, 24, 0, 0)]);
    assert!(outcome.needs_reset);
    let descs = request_chain(&mem, plug(0, 1));
    let (outcome, used) = run(&mut dev, &mem, &descs);
    assert_eq!(used, 0);
    assert!(outcome.needs_reset);
    dev.reset();
    let (outcome, used) = run(&mut dev, &mem, &descs);
    assert!(outcome.used && !outcome.needs_reset);
    assert_eq!(used, 1);
}

#[test]
fn a_queue_that_is_not_ready_is_left_alone() {
    let mem = memory();
    let mut dev = device();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&request_chain(&mem, plug(0, 1)), 0)
        .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    queue.set_ready(false);
    assert_eq!(dev.process_queue(&mut queue, &mem), QueueOutcome::default());
    assert_eq!(dev.status().plugged_size_bytes, 0);
}
