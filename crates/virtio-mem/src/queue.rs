//! Serving the request queue: pop descriptor chains, decode, handle, respond.
//!
//! A chain is one readable buffer of at least 24 bytes (the request) followed by writable buffers
//! of at least 10 bytes (the response); either may be split over several descriptors. Anything
//! else — too-short buffers, a readable descriptor after a writable one, an unknown request type,
//! memory the device cannot read or write, a broken or looping chain, a corrupt ring — is a driver
//! bug: the chain gets no response (never one that lies), the device stops serving requests and
//! reports that it needs a reset, as QEMU's `virtio_error` does.

use hostmem::BlockMemory;
use log::warn;
use memslots::SlotBackend;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::device::VirtioMem;
use crate::populate::HeldChain;
use crate::request::{REQUEST_BYTES, RESPONSE_BYTES, Request};
use crate::{Error, Result};

/// What processing the queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueOutcome {
    /// At least one chain was put on the used ring: notify the driver if the queue asks for it.
    pub used: bool,
    /// The driver sent something malformed: set DEVICE_NEEDS_RESET and notify a config change.
    pub needs_reset: bool,
}

impl<B: SlotBackend, M: BlockMemory> VirtioMem<B, M> {
    /// Serves every available request on `queue`. Never panics on guest input.
    ///
    /// While the device needs a reset, nothing is popped and `needs_reset` is reported again.
    pub fn process_queue<G>(&mut self, queue: &mut Queue, mem: &G) -> QueueOutcome
    where
        G: GuestMemory,
    {
        let mut outcome = QueueOutcome::default();
        if !self.needs_reset {
            self.answer_held_chain(queue, mem, &mut outcome);
        }
        // A held chain (a plug still populating) keeps the queue waiting: answers stay in order.
        while !self.needs_reset && !self.populate.holds_chain() {
            let chain = match queue.iter(mem) {
                Ok(mut available) => available.next(),
                Err(virtio_queue::Error::QueueNotReady) => break,
                Err(e) => {
                    self.mark_needs_reset(&format!("queue error: {e}"));
                    break;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            match self.serve_chain(chain, mem) {
                Ok(Served::Answered) => {
                    if let Err(e) = queue.add_used(mem, head, RESPONSE_BYTES as u32) {
                        self.mark_needs_reset(&format!("cannot add used entry: {e}"));
                        break;
                    }
                    outcome.used = true;
                }
                Ok(Served::Held) => break,
                Err(e) => self.mark_needs_reset(&e.to_string()),
            }
        }
        outcome.needs_reset = self.needs_reset;
        outcome
    }

    /// Answers the chain of a deferred plug once it is committed (see [`crate::populate`]).
    fn answer_held_chain<G>(&mut self, queue: &mut Queue, mem: &G, outcome: &mut QueueOutcome)
    where
        G: GuestMemory,
    {
        let Some(chain) = self.populate.chain.take_if(|c| c.response.is_some()) else {
            return;
        };
        let Some(response) = chain.response else {
            return;
        };
        let written = write_response(mem, &chain.targets, &response.to_bytes());
        if let Err(e) = written {
            self.mark_needs_reset(&e.to_string());
            return;
        }
        if let Err(e) = queue.add_used(mem, chain.head, RESPONSE_BYTES as u32) {
            self.mark_needs_reset(&format!("cannot add used entry: {e}"));
            return;
        }
        outcome.used = true;
    }

    fn mark_needs_reset(&mut self, reason: &str) {
        warn!("virtio-mem: {reason}; the device needs a reset");
        self.stats.malformed_chains += 1;
        self.needs_reset = true;
    }

    fn serve_chain<G>(&mut self, chain: DescriptorChain<&G>, mem: &G) -> Result<Served>
    where
        G: GuestMemory,
    {
        let head = chain.head_index();
        let buffers = split_chain(chain)?;
        let mut request = [0u8; REQUEST_BYTES];
        let mut filled = 0;
        for &(addr, len) in &buffers.readable {
            let take = (len as usize).min(REQUEST_BYTES - filled);
            mem.read_slice(&mut request[filled..filled + take], addr)
                .map_err(|e| malformed(format!("cannot read the request at {:#x}: {e}", addr.0)))?;
            filled += take;
        }
        if filled < REQUEST_BYTES {
            return Err(malformed(format!(
                "request buffer holds {filled} bytes, needs {REQUEST_BYTES}"
            )));
        }
        let targets = response_targets(&buffers.writable, mem)?;
        let request = Request::parse(&request)?;
        let response = match request {
            Request::Plug(range) if self.defers_populate() => match self.prepare_plug(range) {
                Ok(ticket) => {
                    self.populate.chain = Some(HeldChain {
                        ticket,
                        head,
                        targets,
                        response: None,
                    });
                    return Ok(Served::Held);
                }
                Err(response) => {
                    self.stats.record(request.kind(), response.kind());
                    log::debug!("virtio-mem: {request:?} -> {response:?}");
                    response
                }
            },
            _ => self.handle_request(request),
        };
        write_response(mem, &targets, &response.to_bytes())?;
        Ok(Served::Answered)
    }
}

/// What serving one chain did.
enum Served {
    /// Answered: put it on the used ring.
    Answered,
    /// Held back until its preallocation is committed.
    Held,
}

fn write_response<G>(mem: &G, targets: &[(GuestAddress, usize)], response: &[u8]) -> Result<()>
where
    G: GuestMemory,
{
    let mut written = 0;
    for &(addr, len) in targets {
        mem.write_slice(&response[written..written + len], addr)
            .map_err(|e| malformed(format!("cannot write the response: {e}")))?;
        written += len;
    }
    Ok(())
}

/// The buffers of one chain, by direction.
struct ChainBuffers {
    readable: Vec<(GuestAddress, u32)>,
    writable: Vec<(GuestAddress, u32)>,
}

fn malformed(what: String) -> Error {
    Error::Malformed(what)
}

/// Walks the chain; a chain that ends on a descriptor still pointing to a next one was cut short
/// by the queue library (loop, next index out of range, unreadable descriptor or indirect table).
fn split_chain<G>(chain: DescriptorChain<&G>) -> Result<ChainBuffers>
where
    G: GuestMemory,
{
    let mut buffers = ChainBuffers {
        readable: Vec::new(),
        writable: Vec::new(),
    };
    let mut last_has_next = false;
    let mut count = 0usize;
    for desc in chain {
        count += 1;
        last_has_next = desc.has_next();
        if desc.is_write_only() {
            buffers.writable.push((desc.addr(), desc.len()));
        } else if buffers.writable.is_empty() {
            buffers.readable.push((desc.addr(), desc.len()));
        } else {
            return Err(malformed(
                "readable descriptor after a writable one".to_string(),
            ));
        }
    }
    if count == 0 {
        return Err(malformed(
            "empty or unreadable descriptor chain".to_string(),
        ));
    }
    if last_has_next {
        return Err(malformed(format!(
            "descriptor chain broken or looping after {count} descriptors"
        )));
    }
    Ok(buffers)
}

/// Where the 10 response bytes go, checked writable before the request is acted on.
fn response_targets<G>(
    writable: &[(GuestAddress, u32)],
    mem: &G,
) -> Result<Vec<(GuestAddress, usize)>>
where
    G: GuestMemory,
{
    let mut targets = Vec::new();
    let mut remaining = RESPONSE_BYTES;
    for &(addr, len) in writable {
        if remaining == 0 {
            break;
        }
        let take = (len as usize).min(remaining);
        if take == 0 {
            continue;
        }
        if !mem.check_range(addr, take, Permissions::Write) {
            return Err(malformed(format!(
                "response buffer at {:#x}+{take} is not writable guest memory",
                addr.0
            )));
        }
        targets.push((addr, take));
        remaining -= take;
    }
    if remaining > 0 {
        return Err(malformed(format!(
            "response buffer holds {} bytes, needs {RESPONSE_BYTES}",
            RESPONSE_BYTES - remaining
        )));
    }
    Ok(targets)
}
