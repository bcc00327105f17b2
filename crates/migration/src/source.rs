//! The pre-copy driver on the source.
//!
//! 1. Handshake; the destination accepts or refuses (naming the field).
//! 2. Dirty logging starts; the first pass sends every boot RAM page and every page of a
//!    plugged block (all-zero pages as markers, so untouched memory costs a few bytes).
//! 3. Rounds: collect the dirty log, send each device's blocks unplugged since the last round
//!    and its bitmap, then the dirty pages of plugged blocks (pages of unplugged blocks are
//!    dropped: the destination discards them). Guest plugs and unplugs keep being served: a
//!    newly plugged block's written pages are in the log, an unplugged block leaves the stream.
//! 4. When the expected downtime fits `max_downtime_ms`: pause, last round with the final
//!    bitmap, device state, done; the destination answers running. More than `max_rounds`
//!    rounds, a cancel, or any error: abort, resume the guest.
//!
//! The expected downtime is the dirty bytes at the measured bandwidth plus the switchover
//! cost, measured every round ([`SwitchoverEstimate`]): the pause's own cost, a dry run of the
//! device state (its build time, and its size at the bandwidth), the stream's round trip (a
//! ping), and the destination's own estimate of its restore (in the pong).

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::protocol::{BlockRun, Handshake, Message, PageEntry, Step, read_message, write_message};
use crate::tracker::{Bitmap, DirtyPages};
use crate::{Error, PAGE_BYTES, RegionId, Result};

/// A region taking part in the migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// Its id on the wire.
    pub id: RegionId,
    /// Its size.
    pub size_bytes: u64,
    /// Block size for device regions.
    pub block_size_bytes: Option<u64>,
}

/// A device's blocks right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceBlocks {
    /// Plugged blocks.
    pub plugged: Bitmap,
    /// Blocks unplugged (discarded) since the previous call, even if plugged again since.
    pub discarded: Vec<BlockRun>,
}

/// Guest memory and its dirty log, as the driver sees them.
pub trait SourceMemory {
    /// Boot RAM ranges (`RegionId::BootRam`) and device regions (`RegionId::Device`).
    fn regions(&self) -> Vec<RegionInfo>;
    /// Turns dirty logging on (every mapped slot, and every slot mapped from now on).
    fn start_dirty_log(&mut self) -> std::result::Result<(), String>;
    /// Adds every page written since the previous call (or the start) to `dirty`: the log of
    /// every logged slot, of slots unmapped since, and the VMM's own writes.
    fn collect_dirty(&mut self, dirty: &mut DirtyPages) -> std::result::Result<(), String>;
    /// Turns dirty logging off.
    fn stop_dirty_log(&mut self);
    /// Device `device`'s blocks.
    fn device_blocks(&mut self, device: u32) -> std::result::Result<DeviceBlocks, String>;
    /// Reads the pages at `offsets` of `region` into `out` (`PAGE_BYTES` each, in order);
    /// a `false` entry is a page of a block that is unplugged now (not read).
    fn read_pages(
        &mut self,
        region: RegionId,
        offsets: &[u64],
        out: &mut [u8],
    ) -> std::result::Result<Vec<bool>, String>;
    /// Stops the vCPUs.
    fn pause(&mut self) -> std::result::Result<(), String>;
    /// Restarts the vCPUs (after a failure).
    fn resume(&mut self) -> std::result::Result<(), String>;
    /// Called once paused, after the last dirty log is collected and before the final pass:
    /// the state that does not change any more (e.g. the vCPUs') may be read meanwhile.
    fn begin_final_state(&mut self) -> std::result::Result<(), String> {
        Ok(())
    }
    /// The paused VM's device state (snapshot state-file format).
    fn final_state(&mut self) -> std::result::Result<Vec<u8>, String>;
    /// The device state as [`SourceMemory::final_state`] would build it now, while the guest
    /// runs: timed, and its size counted, for the switchover estimate (parts that need a
    /// paused VM may be stood in for by something of their size and cost).
    fn preview_state(&mut self) -> std::result::Result<Vec<u8>, String>;
    /// What pausing costs on top of stopping the vCPUs (e.g. a settle time).
    fn pause_cost(&self) -> Duration {
        Duration::ZERO
    }
    /// Slows the vCPUs down to `100 - percent` % of their time (0: full speed again), for
    /// [`Settings::auto_converge`].
    fn set_throttle(&mut self, percent: u8) -> std::result::Result<(), String> {
        let _ = percent;
        Err("this VM's vCPUs cannot be throttled".into())
    }
}

/// Slowing the guest down when it dirties memory faster than the stream sends it (as QEMU's
/// auto-converge does): after `trigger_rounds` rounds in a row that dirtied more than
/// `trigger_percent` % of the bytes they sent, the vCPUs are throttled to `initial_percent`,
/// then `increment_percent` more each time the condition holds again, at most `max_percent`.
/// The throttle is lifted when the migration ends, however it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoConverge {
    /// First throttle.
    pub initial_percent: u8,
    /// Added at each further step.
    pub increment_percent: u8,
    /// Highest throttle (at most 99).
    pub max_percent: u8,
    /// Dirtied bytes, as a share of the bytes sent in the same round, that count as too many.
    pub trigger_percent: u8,
    /// Rounds in a row with too many dirtied bytes before a step.
    pub trigger_rounds: u32,
}

impl Default for AutoConverge {
    fn default() -> Self {
        AutoConverge {
            initial_percent: 20,
            increment_percent: 10,
            max_percent: 99,
            trigger_percent: 50,
            trigger_rounds: 2,
        }
    }
}

impl AutoConverge {
    /// Refuses settings that cannot work, naming the field.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.max_percent == 0 || self.max_percent > 99 {
            return Err(format!("max_percent {} must be 1 to 99", self.max_percent));
        }
        if self.initial_percent == 0 || self.initial_percent > self.max_percent {
            return Err(format!(
                "initial_percent {} must be 1 to max_percent ({})",
                self.initial_percent, self.max_percent
            ));
        }
        if self.trigger_rounds == 0 {
            return Err("trigger_rounds must be at least 1".into());
        }
        Ok(())
    }

    /// The throttle after `current` when the condition held again.
    fn next(&self, current: u8) -> u8 {
        let next = if current == 0 {
            self.initial_percent
        } else {
            current.saturating_add(self.increment_percent)
        };
        next.min(self.max_percent)
    }
}

/// How the driver runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest acceptable pause.
    pub max_downtime_ms: u64,
    /// Bandwidth cap (`None`: as fast as the stream goes).
    pub max_bandwidth_bytes_per_s: Option<u64>,
    /// Rounds (the first pass included) after which a migration that still does not fit
    /// `max_downtime_ms` fails.
    pub max_rounds: u32,
    /// Pages per message.
    pub batch_pages: usize,
    /// Set to cancel; checked between batches.
    pub cancel: Arc<AtomicBool>,
    /// `None`: the switchover cost is measured every round. `Some`: this cost is assumed
    /// instead (tests that want the old dirty-bytes-only criterion use zero).
    pub assumed_switchover: Option<Duration>,
    /// Throttle the vCPUs when the guest dirties memory too fast (`None`: never).
    pub auto_converge: Option<AutoConverge>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_downtime_ms: 300,
            max_bandwidth_bytes_per_s: None,
            max_rounds: 30,
            batch_pages: 256,
            cancel: Arc::default(),
            assumed_switchover: None,
            auto_converge: None,
        }
    }
}

/// Where the migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Handshake.
    Setup,
    /// Rounds with the guest running.
    PreCopy,
    /// Guest paused: last round and device state.
    Final,
    /// The destination runs the VM.
    Completed,
}

/// Progress, reported after every round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Phase.
    pub phase: Phase,
    /// Rounds done (0 = the first pass).
    pub round: u32,
    /// Bytes written to the stream.
    pub transferred_bytes: u64,
    /// Dirty bytes still to send.
    pub remaining_bytes: u64,
    /// Pages dirtied per second in the last round.
    pub dirty_rate_pages_per_s: u64,
    /// Estimated pause: the final pass plus the switchover.
    pub expected_downtime_ms: u64,
    /// Estimated switchover alone (pause, device state, round trip, destination restore).
    pub switchover_ms: u64,
    /// The switchover estimate's parts (zero until the first estimate).
    pub switchover: SwitchoverEstimate,
    /// Measured pause (when completed).
    pub downtime_ms: Option<u64>,
    /// `true` once per round, when it ended (the other reports come while pages are sent).
    pub end_of_round: bool,
    /// The vCPU throttle now (auto-converge; 0: full speed).
    pub throttle_percent: u8,
}

/// What a completed migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Rounds, counting the first pass and the final (paused) one.
    pub rounds: u32,
    /// Bytes written to the stream.
    pub transferred_bytes: u64,
    /// Non-zero pages sent.
    pub data_pages: u64,
    /// Zero pages sent as markers.
    pub zero_pages: u64,
    /// From pause to the destination's "running".
    pub downtime: Duration,
    /// From start to the destination's "running".
    pub total: Duration,
    /// The estimate the pause was decided on (final pass plus switchover).
    pub expected_downtime_ms: u64,
    /// Its switchover part.
    pub switchover_ms: u64,
    /// Where the downtime went on this side: `pause`, `final_collect`, `final_pass`,
    /// `state_build`, `state_send`, `wait_running` (each step until the next).
    pub source_steps: Vec<Step>,
    /// The destination's steps, from `done` to `running` (as it reported them).
    pub destination_steps: Vec<Step>,
    /// The highest vCPU throttle auto-converge applied (0: none).
    pub max_throttle_percent: u8,
}

/// The measured fixed cost of the switchover, besides the dirty pages of the final pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchoverEstimate {
    /// [`SourceMemory::pause_cost`].
    pub pause: Duration,
    /// A dry run of the device state.
    pub state_build: Duration,
    /// Its size.
    pub state_bytes: u64,
    /// Ping to pong.
    pub round_trip: Duration,
    /// The destination's own estimate (in the pong).
    pub destination: Duration,
}

impl SwitchoverEstimate {
    /// The whole switchover at `bandwidth` bytes/s (the state has to be sent too).
    pub fn total(&self, bandwidth_bytes_per_s: u64) -> Duration {
        let send = if self.state_bytes == 0 {
            Duration::ZERO
        } else if bandwidth_bytes_per_s == 0 {
            Duration::MAX
        } else {
            Duration::from_secs_f64(self.state_bytes as f64 / bandwidth_bytes_per_s as f64)
        };
        self.pause
            .saturating_add(self.state_build)
            .saturating_add(send)
            .saturating_add(self.round_trip)
            .saturating_add(self.destination)
    }
}

/// Times consecutive steps.
struct Steps {
    last: Instant,
    steps: Vec<Step>,
}

impl Steps {
    fn start() -> Self {
        Steps {
            last: Instant::now(),
            steps: Vec::new(),
        }
    }

    fn mark(&mut self, name: &str) {
        let now = Instant::now();
        self.steps.push(Step {
            name: name.into(),
            micros: (now - self.last).as_micros() as u64,
        });
        self.last = now;
    }
}

/// How often progress is reported while pages are sent.
const LIVE_REPORT_INTERVAL: Duration = Duration::from_millis(500);

struct Driver<'a, S> {
    stream: &'a mut S,
    source: &'a mut dyn SourceMemory,
    settings: &'a Settings,
    regions: Vec<RegionInfo>,
    /// The last bitmap sent for each device.
    sent: Vec<Bitmap>,
    report: Report,
    paused: bool,
    pings: u32,
    last_estimate: SwitchoverEstimate,
    /// The vCPU throttle applied now.
    throttle_percent: u8,
    /// Rounds in a row that dirtied too much (auto-converge).
    fast_rounds: u32,
}

/// Migrates the VM behind `source` over `stream`. On error the guest is resumed if it was
/// paused, logging is off, and an abort was sent if the stream still works.
pub fn migrate<S: Read + Write>(
    stream: &mut S,
    handshake: Handshake,
    source: &mut dyn SourceMemory,
    settings: &Settings,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report> {
    let started = Instant::now();
    let regions = source.regions();
    let devices = regions
        .iter()
        .filter(|r| r.block_size_bytes.is_some())
        .count();
    let mut driver = Driver {
        stream,
        source,
        settings,
        regions,
        sent: vec![Bitmap::default(); devices],
        report: Report {
            rounds: 0,
            transferred_bytes: 0,
            data_pages: 0,
            zero_pages: 0,
            downtime: Duration::ZERO,
            total: Duration::ZERO,
            expected_downtime_ms: 0,
            switchover_ms: 0,
            source_steps: Vec::new(),
            destination_steps: Vec::new(),
            max_throttle_percent: 0,
        },
        paused: false,
        pings: 0,
        last_estimate: SwitchoverEstimate::default(),
        throttle_percent: 0,
        fast_rounds: 0,
    };
    driver.report.transferred_bytes +=
        write_message(driver.stream, &Message::Hello(handshake), &[])?;
    match read_message(driver.stream)?.0 {
        Message::Accepted => {}
        Message::Refused(r) => return Err(Error::Refused(r)),
        other => {
            return Err(Error::Protocol(format!(
                "expected accepted or refused, got {}",
                crate::protocol::name(&other)
            )));
        }
    }
    let result = driver.run(started, progress);
    if driver.throttle_percent > 0 {
        if let Err(e) = driver.source.set_throttle(0) {
            log::warn!("lifting the vCPU throttle: {e}");
        }
        driver.throttle_percent = 0;
    }
    if let Err(e) = &result {
        let _ = write_message(
            driver.stream,
            &Message::Abort {
                reason: e.to_string(),
            },
            &[],
        );
        driver.source.stop_dirty_log();
        if driver.paused
            && let Err(resume) = driver.source.resume()
        {
            return Err(Error::Vm(format!(
                "{e}; resuming the guest failed too: {resume}"
            )));
        }
    }
    result
}

impl<S: Read + Write> Driver<'_, S> {
    fn run(&mut self, started: Instant, progress: &mut dyn FnMut(&Progress)) -> Result<Report> {
        let vm = Error::Vm;
        progress(&self.progress(Phase::Setup, 0, Duration::ZERO, Duration::ZERO));
        self.source.start_dirty_log().map_err(vm)?;
        let mut dirty = DirtyPages::default();
        for r in &self.regions {
            dirty.add_region(r.id, r.size_bytes);
        }
        // First pass: all of boot RAM, and (after the bitmaps are sent) every plugged block.
        for r in self.regions.iter().filter(|r| r.block_size_bytes.is_none()) {
            dirty.mark_range(r.id, 0, r.size_bytes);
        }
        let mut sent_before = self.report.transferred_bytes;
        let mut bandwidth = self.round(&mut dirty, Phase::Setup, progress)?;
        let mut sent_in_round = self.report.transferred_bytes - sent_before;
        let mut remaining;
        let mut last_collect = Instant::now();
        let (mut expected, mut switchover);
        loop {
            let before = dirty.count();
            self.source.collect_dirty(&mut dirty).map_err(vm)?;
            remaining = dirty.count() * PAGE_BYTES;
            let secs = last_collect.elapsed().as_secs_f64().max(1e-3);
            last_collect = Instant::now();
            let dirtied_pages = dirty.count().saturating_sub(before);
            let rate = (dirtied_pages as f64 / secs) as u64;
            switchover = self.switchover(bandwidth)?;
            expected = transfer_time(remaining, bandwidth).saturating_add(switchover);
            let mut p = self.progress(Phase::PreCopy, remaining, expected, switchover);
            p.dirty_rate_pages_per_s = rate;
            progress(&p);
            if expected <= Duration::from_millis(self.settings.max_downtime_ms) {
                break;
            }
            if self.report.rounds >= self.settings.max_rounds {
                return Err(Error::NotConverging {
                    rounds: self.report.rounds,
                    remaining_bytes: remaining,
                    expected_downtime_ms: millis(expected),
                    switchover_ms: millis(switchover),
                    max_downtime_ms: self.settings.max_downtime_ms,
                });
            }
            self.auto_converge(dirtied_pages * PAGE_BYTES, sent_in_round)?;
            sent_before = self.report.transferred_bytes;
            let measured = self.round(&mut dirty, Phase::PreCopy, progress)?;
            sent_in_round = self.report.transferred_bytes - sent_before;
            if measured > 0 {
                bandwidth = measured;
            }
        }
        self.report.expected_downtime_ms = millis(expected);
        self.report.switchover_ms = millis(switchover);
        // Final pass, guest paused: only what must happen while it is paused, each step timed.
        let paused_at = Instant::now();
        let mut steps = Steps::start();
        self.source.pause().map_err(vm)?;
        self.paused = true;
        steps.mark("pause");
        progress(&self.progress(Phase::Final, remaining, expected, switchover));
        self.source.collect_dirty(&mut dirty).map_err(vm)?;
        self.source.begin_final_state().map_err(vm)?;
        steps.mark("final_collect");
        self.round(&mut dirty, Phase::Final, progress)?;
        steps.mark("final_pass");
        let state = self.source.final_state().map_err(vm)?;
        steps.mark("state_build");
        self.report.transferred_bytes += write_message(self.stream, &Message::DeviceState, &state)?;
        self.report.transferred_bytes += write_message(self.stream, &Message::Done, &[])?;
        steps.mark("state_send");
        let destination_steps = {
            match read_message(self.stream)?.0 {
                Message::Running { steps } => steps,
                Message::Failed { reason } => return Err(Error::Aborted(reason)),
                other => {
                    return Err(Error::Protocol(format!(
                        "expected running, got {}",
                        crate::protocol::name(&other)
                    )));
                }
            }
        };
        steps.mark("wait_running");
        self.report.downtime = paused_at.elapsed();
        self.source.stop_dirty_log();
        self.report.total = started.elapsed();
        self.report.source_steps = steps.steps;
        self.report.destination_steps = destination_steps;
        let mut p = self.progress(Phase::Completed, 0, expected, switchover);
        p.downtime_ms = Some(self.report.downtime.as_millis() as u64);
        progress(&p);
        Ok(self.report.clone())
    }

    /// One auto-converge step: counts a round that dirtied more than its share of what it
    /// sent, and throttles the vCPUs harder after enough of them in a row.
    fn auto_converge(&mut self, dirtied_bytes: u64, sent_bytes: u64) -> Result<()> {
        let Some(ac) = self.settings.auto_converge else {
            return Ok(());
        };
        let too_fast = u128::from(dirtied_bytes) * 100
            > u128::from(sent_bytes) * u128::from(ac.trigger_percent);
        self.fast_rounds = if too_fast { self.fast_rounds + 1 } else { 0 };
        if self.fast_rounds < ac.trigger_rounds {
            return Ok(());
        }
        self.fast_rounds = 0;
        let next = ac.next(self.throttle_percent);
        if next == self.throttle_percent {
            return Ok(());
        }
        self.source.set_throttle(next).map_err(Error::Vm)?;
        self.throttle_percent = next;
        self.report.max_throttle_percent = self.report.max_throttle_percent.max(next);
        log::info!(
            "auto-converge: the guest dirtied {dirtied_bytes} bytes while {sent_bytes} were \
             sent; vCPUs throttled to {next} %"
        );
        Ok(())
    }

    /// The switchover cost now: a dry run of the device state and a ping (or the assumed cost).
    fn switchover(&mut self, bandwidth: u64) -> Result<Duration> {
        if let Some(assumed) = self.settings.assumed_switchover {
            return Ok(assumed);
        }
        let built = Instant::now();
        let state = self.source.preview_state().map_err(Error::Vm)?;
        let state_build = built.elapsed();
        self.pings += 1;
        let seq = self.pings;
        let sent = Instant::now();
        self.report.transferred_bytes += write_message(self.stream, &Message::Ping { seq }, &[])?;
        let destination = match read_message(self.stream)?.0 {
            Message::Pong {
                seq: answered,
                restore_estimate_micros,
            } if answered == seq => Duration::from_micros(restore_estimate_micros),
            Message::Failed { reason } => return Err(Error::Aborted(reason)),
            other => {
                return Err(Error::Protocol(format!(
                    "expected pong {seq}, got {}",
                    crate::protocol::name(&other)
                )));
            }
        };
        let estimate = SwitchoverEstimate {
            pause: self.source.pause_cost(),
            state_build,
            state_bytes: state.len() as u64,
            round_trip: sent.elapsed(),
            destination,
        };
        self.last_estimate = estimate;
        Ok(estimate.total(bandwidth))
    }

    fn progress(
        &self,
        phase: Phase,
        remaining_bytes: u64,
        expected: Duration,
        switchover: Duration,
    ) -> Progress {
        Progress {
            phase,
            round: self.report.rounds,
            transferred_bytes: self.report.transferred_bytes,
            remaining_bytes,
            dirty_rate_pages_per_s: 0,
            expected_downtime_ms: millis(expected),
            switchover_ms: millis(switchover),
            switchover: self.last_estimate,
            downtime_ms: None,
            end_of_round: true,
            throttle_percent: self.throttle_percent,
        }
    }

    fn check_cancel(&self) -> Result<()> {
        if self.settings.cancel.load(Ordering::Acquire) {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Sends bitmaps and every dirty page of boot RAM and plugged blocks; answers the
    /// measured bandwidth in bytes/s (0 if nothing was sent).
    fn round(
        &mut self,
        dirty: &mut DirtyPages,
        phase: Phase,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<u64> {
        let started = Instant::now();
        let mut reported = Instant::now();
        let sent_before = self.report.transferred_bytes;
        let regions = self.regions.clone();
        for r in &regions {
            let RegionId::Device(device) = r.id else {
                continue;
            };
            let blocks = self.source.device_blocks(device).map_err(Error::Vm)?;
            if !blocks.discarded.is_empty() {
                self.send(
                    &Message::Discard {
                        device,
                        runs: blocks.discarded,
                    },
                    &[],
                )?;
            }
            self.send(
                &Message::Bitmap {
                    device,
                    blocks: blocks.plugged.len(),
                    words: blocks.plugged.words().to_vec(),
                },
                &[],
            )?;
            if phase == Phase::Setup {
                // First pass: every page of every plugged block.
                let block = r.block_size_bytes.unwrap_or(PAGE_BYTES);
                for b in blocks.plugged.ones() {
                    dirty.mark_range(r.id, b * block, block);
                }
            }
            self.sent[device as usize] = blocks.plugged;
        }
        let mut left_pages = dirty.count();
        for r in &regions {
            let offsets = dirty.dirty_offsets(r.id);
            let offsets_len = offsets.len() as u64;
            for offset in &offsets {
                dirty.clear_page(r.id, *offset);
            }
            let wanted: Vec<u64> = match (r.id, r.block_size_bytes) {
                (RegionId::Device(d), Some(block)) => {
                    let plugged = &self.sent[d as usize];
                    offsets
                        .into_iter()
                        .filter(|o| plugged.get(o / block))
                        .collect()
                }
                _ => offsets,
            };
            left_pages = left_pages.saturating_sub(offsets_len - wanted.len() as u64);
            for batch in wanted.chunks(self.settings.batch_pages.max(1)) {
                self.check_cancel()?;
                self.send_pages(r.id, batch)?;
                self.limit_bandwidth(started, sent_before);
                left_pages = left_pages.saturating_sub(batch.len() as u64);
                if reported.elapsed() >= LIVE_REPORT_INTERVAL {
                    reported = Instant::now();
                    let mut p = self.progress(
                        phase,
                        left_pages * PAGE_BYTES,
                        Duration::ZERO,
                        Duration::ZERO,
                    );
                    p.end_of_round = false;
                    progress(&p);
                }
            }
        }
        self.report.rounds += 1;
        let bytes = self.report.transferred_bytes - sent_before;
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        Ok((bytes as f64 / secs) as u64)
    }

    fn send(&mut self, message: &Message, body: &[u8]) -> Result<()> {
        self.report.transferred_bytes += write_message(self.stream, message, body)?;
        Ok(())
    }

    fn send_pages(&mut self, region: RegionId, offsets: &[u64]) -> Result<()> {
        let mut buf = vec![0u8; offsets.len() * PAGE_BYTES as usize];
        let read = self
            .source
            .read_pages(region, offsets, &mut buf)
            .map_err(Error::Vm)?;
        let mut pages = Vec::with_capacity(offsets.len());
        let mut body = Vec::with_capacity(buf.len());
        for ((offset, ok), page) in offsets
            .iter()
            .zip(read)
            .zip(buf.chunks(PAGE_BYTES as usize))
        {
            if !ok {
                continue;
            }
            let zero = is_zero(page);
            if zero {
                self.report.zero_pages += 1;
            } else {
                self.report.data_pages += 1;
                body.extend_from_slice(page);
            }
            pages.push(PageEntry {
                offset_bytes: *offset,
                zero,
            });
        }
        if pages.is_empty() {
            return Ok(());
        }
        self.send(&Message::Pages { region, pages }, &body)
    }

    fn limit_bandwidth(&self, started: Instant, sent_before: u64) {
        let Some(limit) = self.settings.max_bandwidth_bytes_per_s.filter(|&l| l > 0) else {
            return;
        };
        let bytes = self.report.transferred_bytes - sent_before;
        let due = Duration::from_secs_f64(bytes as f64 / limit as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// Whether a page is all zeros (word at a time: this runs over every page of the first pass).
pub fn is_zero(page: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: every bit pattern is a valid u64; align_to only reinterprets aligned words.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Time to send `bytes` at `bandwidth` bytes/s (unknown bandwidth: zero only for 0 bytes).
fn transfer_time(bytes: u64, bandwidth_bytes_per_s: u64) -> Duration {
    if bytes == 0 {
        return Duration::ZERO;
    }
    if bandwidth_bytes_per_s == 0 {
        return Duration::MAX;
    }
    let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(bandwidth_bytes_per_s);
    u64::try_from(nanos).map_or(Duration::MAX, Duration::from_nanos)
}

/// Whole milliseconds, rounded up (a 0.2 ms switchover is reported as 1 ms, not 0).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "source_tests.rs"]
mod tests;
