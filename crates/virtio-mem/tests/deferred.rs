//! Preallocating plugs served in three steps (prepare under the lock, populate outside it,
//! commit under it): answers stay in order, the reserved blocks cannot be raced, failures and
//! resets roll back.

use hostmem::{BlockMemory, FakeMemory};
use memslots::{FakeBackend, GIB, LayoutRequest, MIB, Memslots, SlotIds, SlotLayout, SlotPolicy};
use virtio_mem::{
    BlockRange, FeatureOffer, Prealloc, RangeState, Request, Response, VirtioMem, VirtioMemConfig,
};
use virtio_queue::Queue;
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const REQ_ADDR: u64 = 0x1_0000;
const RESP_ADDR: u64 = 0x2_0000;
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
        prealloc: Prealloc::OnPlug,
        offer: FeatureOffer::default(),
    };
    let mut dev = VirtioMem::new(config, slots, FakeMemory::new()).unwrap();
    dev.defer_populate();
    dev
}

fn range(offset: u64, nb_blocks: u16) -> BlockRange {
    BlockRange {
        guest_addr: GuestAddress(BASE + offset),
        nb_blocks,
    }
}

/// Queues `requests` as chains 0.. (request at REQ_ADDR + i * 0x100, response at RESP_ADDR + i
/// * 0x100).
fn queue_requests<'a>(
    mem: &'a GuestMemoryMmap,
    requests: &[Request],
) -> MockSplitQueue<'a, GuestMemoryMmap> {
    let vq = MockSplitQueue::new(mem, 16);
    let mut descs = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        let at = i as u64 * 0x100;
        mem.write_slice(&request.to_bytes(), GuestAddress(REQ_ADDR + at))
            .unwrap();
        let first = (2 * i) as u16;
        descs.push(RawDescriptor::from(Descriptor::new(
            REQ_ADDR + at,
            24,
            NEXT,
            first + 1,
        )));
        descs.push(RawDescriptor::from(Descriptor::new(
            RESP_ADDR + at,
            10,
            WRITE,
            0,
        )));
    }
    vq.add_desc_chains(&descs, 0).unwrap();
    vq
}

fn response(mem: &GuestMemoryMmap, index: u64) -> [u8; 10] {
    let mut bytes = [0u8; 10];
    mem.read_slice(&mut bytes, GuestAddress(RESP_ADDR + index * 0x100))
        .unwrap();
    bytes
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

#[test]
fn a_plug_is_answered_after_its_populate_and_later_requests_wait_for_it() {
    let mem = memory();
    let mut dev = device();
    let state = Request::State(range(0, 4));
    let vq = queue_requests(&mem, &[Request::Plug(range(0, 4)), state]);
    let mut queue: Queue = vq.create_queue().unwrap();

    let outcome = dev.process_queue(&mut queue, &mem);
    assert!(!outcome.used && !outcome.needs_reset);
    assert_eq!(
        vq.used().idx().load(),
        0,
        "nothing answered before the populate"
    );
    assert!(dev.plug_in_progress());
    let status = dev.status();
    assert_eq!(status.plugged_size_bytes, 0);
    assert_eq!(
        status.slots_mapped, 1,
        "the slot is mapped before the populate"
    );
    dev.check_invariants().unwrap();

    let job = dev.take_populate_job().unwrap();
    assert_eq!((job.offset_bytes, job.size_bytes), (0, 4 * BLOCK));
    assert_eq!(dev.take_populate_job(), None, "a job is handed out once");
    // Another notification meanwhile serves nothing: the STATE waits behind the plug.
    assert!(!dev.process_queue(&mut queue, &mem).used);
    assert_eq!(vq.used().idx().load(), 0);

    let populated = dev.memory_mut().populate(job.offset_bytes, job.size_bytes);
    dev.finish_populate(job.ticket, populated);
    assert!(dev.process_queue(&mut queue, &mem).used);
    assert_eq!(vq.used().idx().load(), 2);
    assert_eq!(response(&mem, 0), Response::Ack.to_bytes());
    assert_eq!(
        response(&mem, 1),
        Response::AckState(RangeState::Plugged).to_bytes()
    );
    assert_eq!(dev.status().plugged_size_bytes, 4 * BLOCK);
    assert_eq!(dev.stats().plug.ack, 1);
    dev.check_invariants().unwrap();
}

#[test]
fn a_failed_populate_rolls_back_and_answers_busy() {
    let mem = memory();
    let mut dev = device();
    let vq = queue_requests(&mem, &[Request::Plug(range(0, 4))]);
    let mut queue: Queue = vq.create_queue().unwrap();
    dev.process_queue(&mut queue, &mem);
    let job = dev.take_populate_job().unwrap();
    dev.memory_mut().fail_populates(1);
    let populated = dev.memory_mut().populate(job.offset_bytes, job.size_bytes);
    assert!(populated.is_err());
    dev.finish_populate(job.ticket, populated);
    assert!(dev.process_queue(&mut queue, &mem).used);
    assert_eq!(response(&mem, 0), Response::Busy.to_bytes());
    let status = dev.status();
    assert_eq!((status.plugged_size_bytes, status.slots_mapped), (0, 0));
    assert_eq!(
        (dev.stats().plug.busy, dev.stats().prealloc_failures),
        (1, 1)
    );
    assert!(!dev.plug_in_progress());
    dev.check_invariants().unwrap();
}

#[test]
fn a_reset_during_the_populate_rolls_the_plug_back_and_answers_nobody() {
    let mem = memory();
    let mut dev = device();
    let vq = queue_requests(&mem, &[Request::Plug(range(0, 4))]);
    let mut queue: Queue = vq.create_queue().unwrap();
    dev.process_queue(&mut queue, &mem);
    let job = dev.take_populate_job().unwrap();
    dev.system_reset().unwrap();
    // The reserved slot stays mapped while its populate runs.
    assert_eq!(dev.status().slots_mapped, 1);
    dev.check_invariants().unwrap();

    // A new driver's plug meanwhile cannot take the reserved blocks: BUSY, try again.
    let mem2 = memory();
    let vq2 = queue_requests(&mem2, &[Request::Plug(range(0, 4))]);
    let mut queue2: Queue = vq2.create_queue().unwrap();
    assert!(dev.process_queue(&mut queue2, &mem2).used);
    assert_eq!(response(&mem2, 0), Response::Busy.to_bytes());

    let populated = dev.memory_mut().populate(job.offset_bytes, job.size_bytes);
    dev.finish_populate(job.ticket, populated);
    let status = dev.status();
    assert_eq!((status.plugged_size_bytes, status.slots_mapped), (0, 0));
    assert!(!dev.process_queue(&mut queue, &mem).used);
    assert_eq!(vq.used().idx().load(), 0);
    dev.check_invariants().unwrap();
}
