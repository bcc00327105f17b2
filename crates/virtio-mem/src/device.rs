//! The virtio-mem device state machine: plugged blocks, sizes, and the memslots that must be
//! mapped for them.
//!
//! Invariants (checked by [`VirtioMem::check_invariants`]):
//! - `plugged_size == plugged blocks × block_size`, every plugged block lies in the usable region;
//! - `requested ≤ region`, `requested ≤ usable ≤ region`, all multiples of the block size;
//! - every slot the rules below need is in KVM ([`SlotState::Mapped`] as the backend reported
//!   it), pending unmap retry or not: a plugged block is always reachable;
//! - inaccessible mode (a driver accepted UNPLUGGED_INACCESSIBLE, or no driver yet): a slot is
//!   mapped iff it holds at least one plugged block (a slot no longer needed may stay mapped or
//!   [`SlotState::ProtectPending`] only while an unmap retry is pending);
//! - legacy mode (a driver refused UNPLUGGED_INACCESSIBLE): a slot is mapped iff it overlaps the
//!   usable region (which contains every plugged block);
//! - a static layout ([`memslots::SlotPolicy::Single`]) keeps its one slot mapped throughout.

use std::ops::Range;

use hostmem::BlockMemory;
use log::{info, warn};
use memslots::{Memslots, SlotBackend, SlotSpec, SlotState};
use serde::Serialize;

use crate::blocks::PluggedBlocks;
use crate::config::ConfigSpace;
use crate::features::{VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE, feature_bit};
use crate::request::{BlockRange, RangeState, Request, Response};
use crate::settings::{Prealloc, VirtioMemConfig, check_requested_size, usable_target_bytes};
use crate::stats::Stats;
use crate::{Error, Result};

/// Returned when the driver must be sent a config-change notification.
#[must_use = "the transport must send a config-change interrupt"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigChanged;

/// A snapshot of the device for the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Block size.
    pub block_size_bytes: u64,
    /// Guest physical address of the region.
    pub guest_addr: u64,
    /// Region size.
    pub region_size_bytes: u64,
    /// Usable region size.
    pub usable_region_size_bytes: u64,
    /// Requested size.
    pub requested_size_bytes: u64,
    /// Plugged size.
    pub plugged_size_bytes: u64,
    /// Number of memslots the region is cut into.
    pub slots_total: usize,
    /// Number of memslots mapped now.
    pub slots_mapped: usize,
    /// Bytes covered by mapped memslots.
    pub mapped_bytes: u64,
    /// Whether the driver refused UNPLUGGED_INACCESSIBLE (the usable region is mapped).
    pub legacy_mapping: bool,
    /// Whether the device is waiting for a reset after a malformed request.
    pub needs_reset: bool,
}

/// A request range validated against the usable region, in region terms.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub(crate) offset_bytes: u64,
    pub(crate) size_bytes: u64,
    pub(crate) blocks: Range<usize>,
}

/// Decides whether a slot must be mapped.
struct SlotNeed<'a> {
    blocks: &'a PluggedBlocks,
    block_size_bytes: u64,
    /// `Some(usable)` in legacy mode.
    legacy_usable_bytes: Option<u64>,
    /// A static (single-slot) layout keeps its slot mapped for the device's lifetime.
    static_layout: bool,
    /// Blocks reserved by a plug whose preallocation is under way (see [`crate::populate`]).
    reserved: Option<Range<usize>>,
}

impl SlotNeed<'_> {
    fn needs(&self, slot: SlotSpec) -> bool {
        if self.static_layout {
            return true;
        }
        let first = (slot.offset_bytes / self.block_size_bytes) as usize;
        let end = slot.end_bytes().div_ceil(self.block_size_bytes) as usize;
        self.blocks.any_plugged_in(first..end)
            || self
                .reserved
                .as_ref()
                .is_some_and(|r| r.start < end && first < r.end)
            || self
                .legacy_usable_bytes
                .is_some_and(|usable| slot.offset_bytes < usable)
    }
}

/// A virtio-mem device over memslots `B` and host memory `M`.
#[derive(Debug)]
pub struct VirtioMem<B, M> {
    pub(crate) config: VirtioMemConfig,
    pub(crate) requested_size_bytes: u64,
    pub(crate) usable_region_size_bytes: u64,
    pub(crate) plugged_size_bytes: u64,
    pub(crate) blocks: PluggedBlocks,
    pub(crate) memslots: Memslots<B>,
    pub(crate) memory: M,
    /// The features the current driver accepted; `None` until it acks them.
    pub(crate) driver_features: Option<u64>,
    pub(crate) needs_reset: bool,
    unmap_retry_pending: bool,
    pub(crate) stats: Stats,
    /// Preallocating plugs served in three steps (see [`crate::populate`]).
    pub(crate) populate: crate::populate::Populate,
    /// Byte ranges discarded by unplugs since the journal was last taken, while a live
    /// migration wants to know (`None`: not recorded).
    discard_journal: Option<Vec<(u64, u64)>>,
}

impl<B: SlotBackend, M: BlockMemory> VirtioMem<B, M> {
    /// A device with nothing plugged and the usable region sized for the initial requested size.
    ///
    /// `memslots` must cover exactly the region at `config.guest_addr`, with block-aligned slot
    /// boundaries; slots it has mapped are unmapped. The backing memory is assumed to hold no data
    /// (fresh anonymous memory or a new file).
    pub fn new(config: VirtioMemConfig, memslots: Memslots<B>, memory: M) -> Result<Self> {
        let block_count = config.validate()?;
        check_layout(&config, &memslots)?;
        let mut device = VirtioMem {
            requested_size_bytes: config.requested_size_bytes,
            usable_region_size_bytes: 0,
            plugged_size_bytes: 0,
            blocks: PluggedBlocks::new(block_count),
            memslots,
            memory,
            driver_features: None,
            needs_reset: false,
            unmap_retry_pending: false,
            stats: Stats::default(),
            populate: Default::default(),
            discard_journal: None,
            config,
        };
        device.resize_usable_region(true);
        device.memslots.unmap_all()?;
        Ok(device)
    }

    /// Starts recording the ranges unplugs discard (a live migration sends them to the
    /// destination, which discards them too, even if they were plugged again since).
    pub fn start_discard_journal(&mut self) {
        self.discard_journal = Some(Vec::new());
    }

    /// The (offset, size) byte ranges unplugs discarded since the last call; empty when the
    /// journal is off.
    pub fn take_discard_journal(&mut self) -> Vec<(u64, u64)> {
        self.discard_journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Whether block `block` is plugged (false past the end).
    pub fn is_block_plugged(&self, block: u64) -> bool {
        usize::try_from(block)
            .ok()
            .filter(|&b| b < self.blocks.block_count())
            .is_some_and(|b| self.blocks.is_plugged(b))
    }

    /// Stops recording.
    pub fn stop_discard_journal(&mut self) {
        self.discard_journal = None;
    }

    fn journal_discard(&mut self, offset_bytes: u64, size_bytes: u64) {
        if let Some(journal) = &mut self.discard_journal {
            journal.push((offset_bytes, size_bytes));
        }
    }

    /// The settings the device was created with (its `requested_size_bytes` is the initial one).
    pub fn config(&self) -> &VirtioMemConfig {
        &self.config
    }

    /// The feature bits offered to the driver.
    pub fn device_features(&self) -> u64 {
        self.config.offer.device_features()
    }

    /// The features the current driver accepted, once it acked them.
    pub fn driver_features(&self) -> Option<u64> {
        self.driver_features
    }

    /// Whether the usable region is mapped for a driver that refused UNPLUGGED_INACCESSIBLE.
    pub fn legacy_mapping(&self) -> bool {
        self.legacy_usable_bytes().is_some()
    }

    /// Whether a malformed request put the device in the needs-reset state.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The memslots (e.g. to inspect a fake backend).
    pub fn memslots(&self) -> &Memslots<B> {
        &self.memslots
    }

    /// The memslot backend, mutably (e.g. to inject faults into a fake).
    pub fn backend_mut(&mut self) -> &mut B {
        self.memslots.backend_mut()
    }

    /// The host memory.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// The host memory, mutably (e.g. to inject faults into a fake).
    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.memory
    }

    /// The current config space contents.
    pub fn config_space(&self) -> ConfigSpace {
        ConfigSpace {
            block_size_bytes: self.config.block_size_bytes,
            node_id: self.config.node_id,
            guest_addr: self.config.guest_addr.0,
            region_size_bytes: self.config.region_size_bytes,
            usable_region_size_bytes: self.usable_region_size_bytes,
            plugged_size_bytes: self.plugged_size_bytes,
            requested_size_bytes: self.requested_size_bytes,
        }
    }

    /// Reads the config space at `offset`; bytes past its end read as zero.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config_space().read(offset, data);
    }

    /// A snapshot for the API.
    pub fn status(&self) -> Status {
        Status {
            block_size_bytes: self.config.block_size_bytes,
            guest_addr: self.config.guest_addr.0,
            region_size_bytes: self.config.region_size_bytes,
            usable_region_size_bytes: self.usable_region_size_bytes,
            requested_size_bytes: self.requested_size_bytes,
            plugged_size_bytes: self.plugged_size_bytes,
            slots_total: self.memslots.layout().len(),
            slots_mapped: self.memslots.mapped_count(),
            mapped_bytes: self.memslots.mapped_bytes(),
            legacy_mapping: self.legacy_mapping(),
            needs_reset: self.needs_reset,
        }
    }

    /// Sets the size the guest should plug. Grows the usable region (never shrinks it) and, in
    /// legacy mode, maps the slots it grows into first. On error nothing changes.
    ///
    /// The driver must always be notified afterwards, even when nothing changed (as QEMU does).
    pub fn set_requested_size(&mut self, requested_bytes: u64) -> Result<ConfigChanged> {
        check_requested_size(
            requested_bytes,
            self.config.block_size_bytes,
            self.config.region_size_bytes,
        )?;
        self.retry_unmaps();
        let target = usable_target_bytes(
            requested_bytes,
            self.config.block_size_bytes,
            self.config.region_size_bytes,
        );
        if target > self.usable_region_size_bytes {
            if self.legacy_mapping()
                && let Err(e) = self.map_range(0, target)
            {
                return Err(e.into());
            }
            info!(
                "virtio-mem: usable region {:#x} -> {target:#x}",
                self.usable_region_size_bytes
            );
            self.usable_region_size_bytes = target;
        }
        self.requested_size_bytes = requested_bytes;
        Ok(ConfigChanged)
    }

    /// Records the driver's accepted features and picks the mapping mode.
    ///
    /// A driver that refuses UNPLUGGED_INACCESSIBLE (Linux 5.8–5.15) may touch any memory in the
    /// usable region, so the slots overlapping it are mapped now; if that fails, the features are
    /// refused with an error and nothing changes.
    pub fn ack_features(&mut self, driver_features: u64) -> Result<()> {
        self.retry_unmaps();
        let accepted = driver_features & self.device_features();
        let legacy = accepted & feature_bit(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE) == 0;
        if legacy {
            if let Err(source) = self.map_range(0, self.usable_region_size_bytes) {
                return Err(Error::LegacyMapping {
                    driver_features,
                    source,
                });
            }
            info!("virtio-mem: driver without UNPLUGGED_INACCESSIBLE; mapping the usable region");
        }
        self.driver_features = Some(accepted);
        self.unmap_unneeded(0, self.config.region_size_bytes);
        Ok(())
    }

    /// Virtio device reset: the plugged state stays; the driver's features are forgotten, so only
    /// slots holding plugged blocks stay mapped until the next driver acks its features.
    pub fn reset(&mut self) {
        self.driver_features = None;
        self.needs_reset = false;
        self.unmap_retry_pending = false;
        self.populate.forget_chain();
        self.unmap_unneeded(0, self.config.region_size_bytes);
    }

    /// System reset: a device reset, then everything is unplugged (discarded, unmapped) and the
    /// usable region shrinks to fit the requested size. If discarding fails, memory stays plugged
    /// and the next driver will send UNPLUG_ALL itself.
    pub fn system_reset(&mut self) -> Result<()> {
        self.reset();
        self.unplug_all().map_err(Error::UnplugAllFailed)
    }

    /// Serves one request and counts it.
    pub fn handle_request(&mut self, request: Request) -> Response {
        self.retry_unmaps();
        let response = match request {
            Request::Plug(range) => self.plug(range),
            Request::Unplug(range) => self.unplug(range),
            Request::UnplugAll => match self.unplug_all() {
                Ok(()) => Response::Ack,
                Err(_) => Response::Busy,
            },
            Request::State(range) => match self.span(range) {
                Some(span) => Response::AckState(self.blocks.range_state(span.blocks)),
                None => Response::Error,
            },
        };
        self.stats.record(request.kind(), response.kind());
        log::debug!("virtio-mem: {request:?} -> {response:?}");
        response
    }

    /// Checks the invariants listed in the module docs; returns every violation found.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.check_invariants_in(0..self.memslots.layout().len())
    }

    /// Like [`Self::check_invariants`], but checks the per-slot rules only for the slots with an
    /// index in `slots` (the sizes and the bitmap are always checked). For callers that know which
    /// slots a step can have changed, e.g. a fuzzer checking after every step.
    pub fn check_invariants_in(&self, slots: Range<usize>) -> std::result::Result<(), String> {
        let mut problems = Vec::new();
        let block = self.config.block_size_bytes;
        let region = self.config.region_size_bytes;
        let usable = self.usable_region_size_bytes;
        let requested = self.requested_size_bytes;
        let plugged = self.plugged_size_bytes;
        if self.blocks.plugged_count() as u64 * block != plugged {
            problems.push(format!(
                "bitmap holds {} blocks but plugged size is {plugged:#x}",
                self.blocks.plugged_count()
            ));
        }
        if plugged > region || usable > region || requested > region {
            problems.push(format!(
                "plugged {plugged:#x}, usable {usable:#x} or requested {requested:#x} exceeds the \
                 region {region:#x}"
            ));
        }
        if !(usable.is_multiple_of(block) && requested.is_multiple_of(block)) {
            problems.push("usable or requested size not block aligned".to_string());
        }
        if usable < usable_target_bytes(requested, block, region) || usable < requested {
            problems.push(format!(
                "usable {usable:#x} too small for requested {requested:#x}"
            ));
        }
        if self.blocks.end_of_plugged() as u64 * block > usable {
            problems.push(format!("blocks plugged past the usable region {usable:#x}"));
        }
        let need = self.slot_need();
        let layout = self.memslots.layout().slots();
        let end = slots.end.min(layout.len());
        let slots = slots.start.min(end)..end;
        for (index, slot) in layout[slots.clone()].iter().enumerate() {
            let index = slots.start + index;
            let state = self.memslots.state(memslots::SlotIndex(index));
            let needed = need.needs(*slot);
            // A slot that must be reachable must be in KVM, retry or not; a slot that is not
            // needed may only be left over while an unmap retry is pending.
            let ok = match state {
                SlotState::Mapped => needed || self.unmap_retry_pending,
                SlotState::ProtectPending => !needed && self.unmap_retry_pending,
                SlotState::Unmapped => !needed,
            };
            if !ok {
                problems.push(format!(
                    "slot {index} at {:#x}+{:#x}: {state:?} but needed={needed} (unmap retry \
                     pending: {})",
                    slot.offset_bytes, slot.size_bytes, self.unmap_retry_pending
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    fn plug(&mut self, range: BlockRange) -> Response {
        let span = match self.plug_span(range) {
            Ok(span) => span,
            Err(response) => return response,
        };
        if let Err(e) = self.map_range(span.offset_bytes, span.size_bytes) {
            warn!("virtio-mem: plug answered BUSY: {e}");
            return Response::Busy;
        }
        if self.config.prealloc == Prealloc::OnPlug
            && let Err(e) = self.memory.populate(span.offset_bytes, span.size_bytes)
        {
            warn!("virtio-mem: preallocation failed, plug answered BUSY: {e}");
            self.stats.prealloc_failures += 1;
            self.roll_back_plug(&span);
            return Response::Busy;
        }
        self.commit_plug(span);
        Response::Ack
    }

    /// The checks of a plug, in QEMU's order: the range, then the budget, then the blocks.
    pub(crate) fn plug_span(&self, range: BlockRange) -> std::result::Result<Span, Response> {
        let span = self.span(range).ok_or(Response::Error)?;
        // Checked before the block state, as in QEMU: an over-budget plug of plugged blocks is
        // NACKed, not an ERROR.
        if span.size_bytes.saturating_add(self.plugged_size_bytes) > self.requested_size_bytes {
            return Err(Response::Nack);
        }
        if self.blocks.range_state(span.blocks.clone()) != RangeState::Unplugged {
            return Err(Response::Error);
        }
        Ok(span)
    }

    /// Undoes a plug whose memory could not be preallocated: discards what was populated and
    /// unmaps the slots that hold nothing.
    pub(crate) fn roll_back_plug(&mut self, span: &Span) {
        if let Err(e) = self.memory.discard(span.offset_bytes, span.size_bytes) {
            warn!("virtio-mem: discarding a failed preallocation failed: {e}");
            self.stats.discard_failures += 1;
        }
        self.unmap_unneeded(span.offset_bytes, span.size_bytes);
    }

    /// Marks a mapped (and preallocated) span plugged.
    pub(crate) fn commit_plug(&mut self, span: Span) {
        self.plugged_size_bytes += span.size_bytes;
        self.stats.plugged_bytes_total += span.size_bytes;
        self.blocks.set_range(span.blocks, true);
    }

    fn unplug(&mut self, range: BlockRange) -> Response {
        let Some(span) = self.span(range) else {
            return Response::Error;
        };
        if self.blocks.range_state(span.blocks.clone()) != RangeState::Plugged {
            return Response::Error;
        }
        if let Err(e) = self.memory.discard(span.offset_bytes, span.size_bytes) {
            warn!("virtio-mem: unplug answered BUSY: {e}");
            self.stats.discard_failures += 1;
            return Response::Busy;
        }
        self.journal_discard(span.offset_bytes, span.size_bytes);
        self.blocks.set_range(span.blocks, false);
        self.plugged_size_bytes -= span.size_bytes;
        self.stats.unplugged_bytes_total += span.size_bytes;
        self.unmap_unneeded(span.offset_bytes, span.size_bytes);
        Response::Ack
    }

    /// UNPLUG_ALL: discard every plugged run (failure: nothing changes), clear the bitmap, unmap,
    /// then shrink the usable region.
    fn unplug_all(&mut self) -> std::result::Result<(), hostmem::Error> {
        if self.plugged_size_bytes != 0 {
            let block = self.config.block_size_bytes;
            for run in self.blocks.plugged_runs() {
                let offset = run.start as u64 * block;
                let size = run.len() as u64 * block;
                if let Err(e) = self.memory.discard(offset, size) {
                    warn!("virtio-mem: unplug-all failed: {e}");
                    self.stats.discard_failures += 1;
                    return Err(e);
                }
                if let Some(journal) = &mut self.discard_journal {
                    journal.push((offset, size));
                }
            }
            self.blocks.clear();
            self.stats.unplugged_bytes_total += self.plugged_size_bytes;
            self.plugged_size_bytes = 0;
        }
        self.resize_usable_region(true);
        self.unmap_unneeded(0, self.config.region_size_bytes);
        Ok(())
    }

    /// QEMU's `virtio_mem_resize_usable_region` for the current requested size.
    fn resize_usable_region(&mut self, can_shrink: bool) {
        let target = usable_target_bytes(
            self.requested_size_bytes,
            self.config.block_size_bytes,
            self.config.region_size_bytes,
        );
        if target < self.usable_region_size_bytes && !can_shrink {
            return;
        }
        self.usable_region_size_bytes = target;
    }

    /// Validates a request range (QEMU's `virtio_mem_valid_range`).
    fn span(&self, range: BlockRange) -> Option<Span> {
        let block = self.config.block_size_bytes;
        let addr = range.guest_addr.0;
        let size = u64::from(range.nb_blocks).checked_mul(block)?;
        let end = addr.checked_add(size)?;
        let base = self.config.guest_addr.0;
        let usable_end = base + self.usable_region_size_bytes;
        if size == 0 || !addr.is_multiple_of(block) {
            return None;
        }
        if addr < base || addr >= usable_end || end > usable_end {
            return None;
        }
        let offset_bytes = addr - base;
        let first = (offset_bytes / block) as usize;
        Some(Span {
            offset_bytes,
            size_bytes: size,
            blocks: first..first + usize::from(range.nb_blocks),
        })
    }

    fn legacy_usable_bytes(&self) -> Option<u64> {
        let accepted = self.driver_features?;
        (accepted & feature_bit(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE) == 0)
            .then_some(self.usable_region_size_bytes)
    }

    fn slot_need(&self) -> SlotNeed<'_> {
        SlotNeed {
            blocks: &self.blocks,
            block_size_bytes: self.config.block_size_bytes,
            legacy_usable_bytes: self.legacy_usable_bytes(),
            static_layout: self.memslots.is_static(),
            reserved: self.populate.reserved_blocks(),
        }
    }

    /// Maps the slots overlapping the range. On failure, the slots the call mapped before failing
    /// are unmapped again; [`Memslots::map_range`] does that best effort, so whatever its rollback
    /// left mapped goes through [`Self::unmap_unneeded`] (retried later if it fails again).
    pub(crate) fn map_range(&mut self, offset_bytes: u64, size_bytes: u64) -> memslots::Result<()> {
        let result = self.memslots.map_range(offset_bytes, size_bytes);
        if result.is_err() {
            self.stats.map_failures += 1;
            self.unmap_unneeded(offset_bytes, size_bytes);
        }
        result
    }

    /// Unmaps the slots overlapping the range that are no longer needed. A failure leaves the slot
    /// mapped (harmless for the guest) and is retried before the next operation.
    pub(crate) fn unmap_unneeded(&mut self, offset_bytes: u64, size_bytes: u64) {
        let need = SlotNeed {
            blocks: &self.blocks,
            block_size_bytes: self.config.block_size_bytes,
            legacy_usable_bytes: self.legacy_usable_bytes(),
            static_layout: self.memslots.is_static(),
            reserved: self.populate.reserved_blocks(),
        };
        if let Err(e) = self
            .memslots
            .unmap_unneeded(offset_bytes, size_bytes, |slot| need.needs(slot))
        {
            warn!("virtio-mem: {e}; will retry");
            self.stats.unmap_failures += 1;
            self.unmap_retry_pending = true;
        }
    }

    /// Maps exactly the needed slots (used on restore).
    pub(crate) fn sync_slots(&mut self) -> Result<()> {
        let need = SlotNeed {
            blocks: &self.blocks,
            block_size_bytes: self.config.block_size_bytes,
            legacy_usable_bytes: self.legacy_usable_bytes(),
            static_layout: self.memslots.is_static(),
            reserved: self.populate.reserved_blocks(),
        };
        self.memslots.sync(|slot| need.needs(slot))?;
        Ok(())
    }

    pub(crate) fn retry_unmaps(&mut self) {
        if std::mem::take(&mut self.unmap_retry_pending) {
            self.unmap_unneeded(0, self.config.region_size_bytes);
        }
    }
}

fn check_layout<B: SlotBackend>(config: &VirtioMemConfig, memslots: &Memslots<B>) -> Result<()> {
    let layout = memslots.layout();
    if layout.region_size_bytes() != config.region_size_bytes {
        return Err(Error::Config(format!(
            "the memslot layout covers {:#x} bytes but the region is {:#x}",
            layout.region_size_bytes(),
            config.region_size_bytes
        )));
    }
    if memslots.guest_base_addr() != config.guest_addr.0 {
        return Err(Error::Config(format!(
            "the memslots start at {:#x} but the region at {:#x}",
            memslots.guest_base_addr(),
            config.guest_addr.0
        )));
    }
    if let Some(slot) = layout
        .slots()
        .iter()
        .find(|s| !s.offset_bytes.is_multiple_of(config.block_size_bytes))
    {
        return Err(Error::Config(format!(
            "memslot boundary {:#x} is not a multiple of the block size {:#x}",
            slot.offset_bytes, config.block_size_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
