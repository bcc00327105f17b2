//! virtio-mem serving a real split virtqueue in a small guest memory whose descriptor table,
//! available ring and request buffers the fuzzer writes.
//!
//! Checks, besides "no panic": the device invariants after every step; a pass that used no
//! buffer changed no state; the queue's used index moves only forward, by at most the queue size;
//! and once the device needs a reset it serves nothing until it is reset.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::device::{Harness, Op, Setup, near_request_bytes};
use crate::input::{Input, Output};

/// Size of the guest memory holding the queue and the buffers.
pub const MEM_BYTES: u64 = 0x1_0000;
/// Descriptor table address.
pub const DESC_ADDR: u64 = 0x0;
/// Available ring address.
pub const AVAIL_ADDR: u64 = 0x1000;
/// Used ring address.
pub const USED_ADDR: u64 = 0x2000;
/// Descriptor flag: another descriptor follows.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: device-writable.
pub const F_WRITE: u16 = 2;
/// Descriptor flag: indirect table.
pub const F_INDIRECT: u16 = 4;

/// One step of a queue run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOp {
    /// Write bytes into guest memory at an offset (clamped to the memory).
    Poke {
        /// Offset in guest memory.
        offset: u16,
        /// Bytes to write.
        bytes: Vec<u8>,
    },
    /// Write descriptor `index` (modulo the queue size).
    Desc {
        /// Descriptor index.
        index: u8,
        /// Buffer address (`raw` picks an arbitrary 64-bit one).
        addr: u64,
        /// Buffer length.
        len: u32,
        /// Flags (NEXT, WRITE, INDIRECT and junk).
        flags: u16,
        /// Next index.
        next: u16,
    },
    /// Make `head` available (writes the ring entry and bumps the index).
    Avail(u16),
    /// Overwrite the available index.
    AvailIdx(u16),
    /// Write a request near the region at a guest memory offset.
    Request {
        /// Offset in guest memory.
        offset: u16,
        /// Request type, block, count, skew as in [`Op::Near`].
        near: [u16; 3],
        /// Byte skew.
        skew_bytes: u32,
    },
    /// Serve the queue.
    Process,
    /// Device reset and a fresh queue, as a driver would after DEVICE_NEEDS_RESET.
    ResetDevice,
    /// A device-level operation.
    Device(Op),
}

impl QueueOp {
    /// Decodes one step.
    pub fn decode(input: &mut Input<'_>) -> Option<QueueOp> {
        Some(match input.u8()? % 8 {
            0 => {
                let offset = input.u16()?;
                let len = usize::from(input.u8()? % 32);
                QueueOp::Poke {
                    offset,
                    bytes: input.bytes(len)?.to_vec(),
                }
            }
            1 => QueueOp::Desc {
                index: input.u8()?,
                addr: input.u64()?,
                len: input.u32()?,
                flags: input.u16()?,
                next: input.u16()?,
            },
            2 => QueueOp::Avail(input.u16()?),
            3 => QueueOp::AvailIdx(input.u16()?),
            4 => QueueOp::Request {
                offset: input.u16()?,
                near: [input.u16()?, input.u16()?, input.u16()?],
                skew_bytes: input.u32()?,
            },
            5 => QueueOp::Process,
            6 => QueueOp::ResetDevice,
            _ => QueueOp::Device(Op::decode(input)?),
        })
    }

    /// Encodes the step so that [`QueueOp::decode`] reads it back.
    pub fn encode(&self, out: &mut Output) {
        match self {
            QueueOp::Poke { offset, bytes } => {
                out.u8(0).u16(*offset).u8(bytes.len() as u8).raw(bytes);
            }
            QueueOp::Desc {
                index,
                addr,
                len,
                flags,
                next,
            } => {
                out.u8(1)
                    .u8(*index)
                    .u64(*addr)
                    .u32(*len)
                    .u16(*flags)
                    .u16(*next);
            }
            QueueOp::Avail(head) => {
                out.u8(2).u16(*head);
            }
            QueueOp::AvailIdx(idx) => {
                out.u8(3).u16(*idx);
            }
            QueueOp::Request {
                offset,
                near,
                skew_bytes,
            } => {
                out.u8(4)
                    .u16(*offset)
                    .u16(near[0])
                    .u16(near[1])
                    .u16(near[2])
                    .u32(*skew_bytes);
            }
            QueueOp::Process => {
                out.u8(5);
            }
            QueueOp::ResetDevice => {
                out.u8(6);
            }
            QueueOp::Device(op) => {
                out.u8(7);
                op.encode(out);
            }
        }
    }
}

/// A device, its queue and the guest memory the queue lives in.
#[derive(Debug)]
pub struct QueueHarness {
    /// The device.
    pub harness: Harness,
    /// The guest memory.
    pub mem: GuestMemoryMmap,
    /// The queue.
    pub queue: Queue,
    size: u16,
    event_idx: bool,
    avail_idx: u16,
    used_idx: u16,
}

fn new_queue(size: u16, event_idx: bool) -> Queue {
    let mut queue = Queue::new(size).expect("power-of-two size up to 256");
    queue
        .try_set_desc_table_address(GuestAddress(DESC_ADDR))
        .expect("aligned");
    queue
        .try_set_avail_ring_address(GuestAddress(AVAIL_ADDR))
        .expect("aligned");
    queue
        .try_set_used_ring_address(GuestAddress(USED_ADDR))
        .expect("aligned");
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    queue
}

impl QueueHarness {
    /// A device per `setup` and a queue of `size` (a power of two ≤ 256) in zeroed memory.
    pub fn new(setup: Setup, size: u16, event_idx: bool) -> Option<QueueHarness> {
        let harness = Harness::new(setup)?;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_BYTES as usize)])
            .expect("small anonymous mapping");
        Some(QueueHarness {
            harness,
            mem,
            queue: new_queue(size, event_idx),
            size,
            event_idx,
            avail_idx: 0,
            used_idx: 0,
        })
    }

    fn write<T: vm_memory::ByteValued>(&self, value: T, addr: u64) {
        self.mem
            .write_obj(value, GuestAddress(addr))
            .expect("inside guest memory");
    }

    /// Applies one step and checks what it did.
    pub fn apply(&mut self, op: &QueueOp) {
        match op {
            QueueOp::Poke { offset, bytes } => {
                let start = u64::from(*offset).min(MEM_BYTES);
                let len = bytes.len().min((MEM_BYTES - start) as usize);
                self.mem
                    .write_slice(&bytes[..len], GuestAddress(start))
                    .expect("clamped");
            }
            QueueOp::Desc {
                index,
                addr,
                len,
                flags,
                next,
            } => {
                let at = DESC_ADDR + u64::from(u16::from(*index) % self.size) * 16;
                self.write(*addr, at);
                self.write(*len, at + 8);
                self.write(*flags, at + 12);
                self.write(*next, at + 14);
            }
            QueueOp::Avail(head) => {
                let slot = u64::from(self.avail_idx % self.size);
                self.write(*head, AVAIL_ADDR + 4 + slot * 2);
                self.avail_idx = self.avail_idx.wrapping_add(1);
                self.write(self.avail_idx, AVAIL_ADDR + 2);
            }
            QueueOp::AvailIdx(idx) => {
                self.avail_idx = *idx;
                self.write(*idx, AVAIL_ADDR + 2);
            }
            QueueOp::Request {
                offset,
                near,
                skew_bytes,
            } => {
                let bytes = near_request_bytes(
                    &self.harness.setup,
                    near[0] % 5,
                    near[1],
                    near[2],
                    *skew_bytes,
                );
                let start = u64::from(*offset).min(MEM_BYTES - bytes.len() as u64);
                self.mem
                    .write_slice(&bytes, GuestAddress(start))
                    .expect("clamped");
            }
            QueueOp::Process => self.process(),
            QueueOp::ResetDevice => {
                self.harness.dev.reset();
                self.queue = new_queue(self.size, self.event_idx);
                self.used_idx = 0;
            }
            QueueOp::Device(op) => self.harness.apply(*op),
        }
        self.harness.check(&op);
        self.harness.forget_history();
    }

    fn process(&mut self) {
        let before = self.harness.dev.state();
        let needed_reset = self.harness.dev.needs_reset();
        let outcome = self.harness.dev.process_queue(&mut self.queue, &self.mem);
        assert_eq!(outcome.needs_reset, self.harness.dev.needs_reset());
        // The queue's own index: the guest may scribble over the used ring in memory.
        let used_idx = self.queue.next_used();
        let advanced = used_idx.wrapping_sub(self.used_idx);
        assert!(advanced <= self.size, "used index jumped by {advanced}");
        assert_eq!(
            outcome.used,
            advanced > 0,
            "{outcome:?} but used moved {advanced}"
        );
        self.used_idx = used_idx;
        if !outcome.used {
            assert_eq!(
                before,
                self.harness.dev.state(),
                "nothing used but state changed"
            );
        }
        if needed_reset {
            assert!(!outcome.used, "a device needing reset served a request");
        }
    }
}

/// The `virtio_mem_queue` target: a setup, a queue size, then steps.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(setup) = Setup::decode(&mut input) else {
        return;
    };
    let Some(shape) = input.u8() else {
        return;
    };
    let size = 1u16 << (shape % 6);
    let Some(mut q) = QueueHarness::new(setup, size, shape & 0x80 != 0) else {
        return;
    };
    while let Some(op) = QueueOp::decode(&mut input) {
        q.apply(&op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_mem::Response;

    fn setup() -> Setup {
        Setup {
            policy: 0,
            prealloc: false,
            block_size: 0,
            region_blocks: 1024,
            requested_blocks: 256,
            slot_limit: 15,
        }
    }

    #[test]
    fn a_well_formed_chain_is_served_and_answered() {
        let mut q = QueueHarness::new(setup(), 4, false).unwrap();
        for op in [
            QueueOp::Request {
                offset: 0x4000,
                near: [0, 0, 4],
                skew_bytes: 0,
            },
            QueueOp::Desc {
                index: 0,
                addr: 0x4000,
                len: 24,
                flags: F_NEXT,
                next: 1,
            },
            QueueOp::Desc {
                index: 1,
                addr: 0x5000,
                len: 10,
                flags: F_WRITE,
                next: 0,
            },
            QueueOp::Avail(0),
            QueueOp::Process,
        ] {
            q.apply(&op);
        }
        let mut resp = [0u8; 10];
        q.mem.read_slice(&mut resp, GuestAddress(0x5000)).unwrap();
        assert_eq!(resp, Response::Ack.to_bytes());
        assert_eq!(q.harness.dev.status().plugged_size_bytes, 4 * (2 << 20));
    }

    #[test]
    fn steps_round_trip_through_their_encoding() {
        let ops = [
            QueueOp::Poke {
                offset: 3,
                bytes: vec![1, 2, 3],
            },
            QueueOp::Desc {
                index: 2,
                addr: u64::MAX,
                len: 7,
                flags: 0xffff,
                next: 9,
            },
            QueueOp::Avail(5),
            QueueOp::AvailIdx(500),
            QueueOp::Request {
                offset: 9,
                near: [1, 2, 3],
                skew_bytes: 4,
            },
            QueueOp::Process,
            QueueOp::ResetDevice,
            QueueOp::Device(Op::SaveRestore),
        ];
        let mut out = Output::default();
        for op in &ops {
            op.encode(&mut out);
        }
        let mut input = Input::new(&out.bytes);
        for op in ops {
            assert_eq!(QueueOp::decode(&mut input), Some(op));
        }
    }
}
