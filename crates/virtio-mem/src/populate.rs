//! Preallocating plugs in three steps, so the caller can populate without holding the lock that
//! guards the device.
//!
//! With `prealloc=on`, a PLUG must populate its whole range before the ACK — seconds for many
//! GiB. Once [`VirtioMem::defer_populate`] is called, a PLUG from the request queue is served as:
//!
//! 1. **prepare** (in [`VirtioMem::process_queue`], under the caller's lock): QEMU's checks, the
//!    slots mapped, the blocks *reserved* (slots holding them stay mapped; nothing else can plug
//!    them) and the chain held back: the queue serves nothing else until it is answered, so the
//!    driver sees its requests answered in order;
//! 2. **populate** ([`VirtioMem::take_populate_job`], then the caller populates the range itself,
//!    without the lock: the device is free for status reads, resizes and resets meanwhile);
//! 3. **commit** ([`VirtioMem::finish_populate`], under the lock): the blocks become plugged and
//!    the held chain is answered ACK on the next [`VirtioMem::process_queue`]; a failed populate
//!    is rolled back (discarded, slots unmapped) and answered BUSY, as the one-step plug does.
//!
//! A virtio or system reset between steps 1 and 3 drops the held chain (the queue it came from is
//! gone); the populate's result is then rolled back and nobody is answered.

use std::ops::Range;

use hostmem::BlockMemory;
use log::{info, warn};
use memslots::SlotBackend;
use vm_memory::GuestAddress;

use crate::device::{Span, VirtioMem};
use crate::request::{BlockRange, RequestKind, Response};

/// A range to populate without the device lock (step 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PopulateJob {
    /// Identifies the plug for [`VirtioMem::finish_populate`].
    pub ticket: u64,
    /// Offset of the range in the device region.
    pub offset_bytes: u64,
    /// Length of the range.
    pub size_bytes: u64,
}

#[derive(Debug)]
struct Reservation {
    ticket: u64,
    span: Span,
    job_taken: bool,
}

/// The request chain a deferred plug answers.
#[derive(Debug)]
pub(crate) struct HeldChain {
    pub(crate) ticket: u64,
    pub(crate) head: u16,
    pub(crate) targets: Vec<(GuestAddress, usize)>,
    /// Set at commit.
    pub(crate) response: Option<Response>,
}

/// The deferred-plug state of a device.
#[derive(Debug, Default)]
pub(crate) struct Populate {
    deferred: bool,
    reservation: Option<Reservation>,
    pub(crate) chain: Option<HeldChain>,
    next_ticket: u64,
}

impl Populate {
    pub(crate) fn reserved_blocks(&self) -> Option<Range<usize>> {
        self.reservation.as_ref().map(|r| r.span.blocks.clone())
    }

    /// A reset: the held chain's queue is gone; an ongoing populate is rolled back at commit.
    pub(crate) fn forget_chain(&mut self) {
        self.chain = None;
    }

    /// Whether the queue must wait for a held chain to be answered.
    pub(crate) fn holds_chain(&self) -> bool {
        self.chain.is_some()
    }
}

impl<B: SlotBackend, M: BlockMemory> VirtioMem<B, M> {
    /// From now on, a preallocating PLUG from the request queue is served in three steps (see
    /// the module docs); the caller must run every [`Self::take_populate_job`].
    pub fn defer_populate(&mut self) {
        self.populate.deferred = true;
    }

    /// Whether a PLUG from the queue is to be prepared now and populated by the caller.
    pub(crate) fn defers_populate(&self) -> bool {
        self.populate.deferred && self.config.prealloc == crate::Prealloc::OnPlug
    }

    /// Whether a plug is reserved and not committed yet.
    pub fn plug_in_progress(&self) -> bool {
        self.populate.reservation.is_some()
    }

    /// Step 1: checks the plug, maps its slots and reserves its blocks; answers the plug's
    /// ticket, or (`Err`) the answer when there is nothing to populate.
    pub(crate) fn prepare_plug(&mut self, range: BlockRange) -> Result<u64, Response> {
        self.retry_unmaps();
        if self.populate.reservation.is_some() {
            // Only after a reset, while the old driver's plug still populates: try again later.
            return Err(Response::Busy);
        }
        let span = self.plug_span(range)?;
        if let Err(e) = self.map_range(span.offset_bytes, span.size_bytes) {
            warn!("virtio-mem: plug answered BUSY: {e}");
            return Err(Response::Busy);
        }
        self.populate.next_ticket += 1;
        self.populate.reservation = Some(Reservation {
            ticket: self.populate.next_ticket,
            span,
            job_taken: false,
        });
        Ok(self.populate.next_ticket)
    }

    /// Step 2: the range the caller must populate now, once per prepared plug.
    pub fn take_populate_job(&mut self) -> Option<PopulateJob> {
        let r = self.populate.reservation.as_mut()?;
        if std::mem::replace(&mut r.job_taken, true) {
            return None;
        }
        Some(PopulateJob {
            ticket: r.ticket,
            offset_bytes: r.span.offset_bytes,
            size_bytes: r.span.size_bytes,
        })
    }

    /// Step 3: commits the plug of `ticket` if `populated` is `Ok` and its chain still waits
    /// (answer ACK), else rolls it back (answer BUSY, or nobody after a reset). Unknown tickets
    /// are ignored.
    pub fn finish_populate(&mut self, ticket: u64, populated: hostmem::Result<()>) {
        let Some(reservation) = self.populate.reservation.take_if(|r| r.ticket == ticket) else {
            return;
        };
        let waiting = self
            .populate
            .chain
            .as_ref()
            .is_some_and(|c| c.ticket == ticket);
        let response = match populated {
            Ok(()) if waiting => {
                self.commit_plug(reservation.span);
                Response::Ack
            }
            Ok(()) => {
                info!("virtio-mem: a plug prepared before a reset is rolled back");
                self.roll_back_plug(&reservation.span);
                Response::Busy
            }
            Err(e) => {
                warn!("virtio-mem: preallocation failed, plug answered BUSY: {e}");
                self.stats.prealloc_failures += 1;
                self.roll_back_plug(&reservation.span);
                Response::Busy
            }
        };
        if let Some(chain) = self.populate.chain.as_mut().filter(|_| waiting) {
            chain.response = Some(response);
            self.stats.record(RequestKind::Plug, response.kind());
            log::debug!("virtio-mem: deferred plug -> {response:?}");
        }
    }
}
