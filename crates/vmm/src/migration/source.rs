//! The source: `PUT /v1/vm/migrate` starts the `migration` thread, which drives the pre-copy
//! loop of the `migration` crate over this VM ([`VmSource`]).
//!
//! - Dirty logging: boot RAM slots and every mapped device slot, slots mapped during the
//!   migration too (`memslots::SlotDirtyLog`); bits of slots unmapped meanwhile are read
//!   before KVM frees them.
//! - The VMM's own writes into guest memory (virtio-mem used rings and responses) are marked
//!   every round from each queue's rings and its device-writable descriptors.
//! - Guest PLUG and UNPLUG keep being served: reads of device memory hold the device lock and
//!   skip blocks that are unplugged now; unplugs are journaled by the device and sent as
//!   discards; the final bitmap and the device state (requested size included) go last.
//! - Success: the destination runs the VM and this hotmem stops (exit status 0). Failure or
//!   cancel: the guest is resumed if the migration paused it, and keeps running here.

use std::sync::Arc;
use std::time::Instant;

use api::ApiError;
use api::model::{
    DowntimeBreakdown, DowntimeStep, EventKind, MigrateBody, MigrationState, MigrationStatus,
    VmState,
};
use kvm_ioctls::VmFd;
use machine::{ExitSignal, StopRequest, VcpuThrottle};
use memslots::{KvmSlotId, LoggedSlot, SlotDirtyLog};
use migration::protocol::{BlockRun, CpuFeatureWord, DeviceShape, Handshake, RamShape};
use migration::source::{DeviceBlocks, Phase, Progress, RegionInfo, Settings, SourceMemory};
use migration::{Bitmap, DirtyPages, PAGE_BYTES, PROTOCOL_VERSION, RegionId};
use snapshot::{Component, DeviceSnapshot, MemoryManifest, VmSnapshot};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::Address;
use super::vhost::VhostSource;
use crate::control::VmControl;
use crate::devices::SharedMemoryDevice;
use crate::monitor::Monitor;
use crate::snapshot::restore::{SavedVmConfig, VM_CONFIG_COMPONENT, VM_CONFIG_VERSION};
use crate::snapshot::{
    HOTMEM_VERSION, MEM_DEVICE_COMPONENT, MEM_DEVICE_VERSION, RamRange, TRANSPORT_COMPONENT,
    TRANSPORT_VERSION,
};

/// A boot RAM range and its KVM slot.
#[derive(Debug, Clone, Copy)]
pub struct BootSlot {
    /// The range.
    pub range: RamRange,
    /// Its KVM slot.
    pub kvm_slot: u32,
}

/// What a migration needs from the VM (recorded once it is built).
#[derive(Debug)]
pub struct SourceContext {
    /// The VM.
    pub vm_fd: Arc<VmFd>,
    /// Boot RAM.
    pub boot_ram: Vec<BootSlot>,
    /// Memory devices.
    pub devices: Vec<SharedMemoryDevice>,
    /// Boot RAM as the devices see it (to read their rings).
    pub queue_memory: Arc<GuestMemoryMmap>,
    /// The VM configuration.
    pub vm_config: SavedVmConfig,
    /// This host's CPU features.
    pub cpu_features: Vec<CpuFeatureWord>,
    /// Stops this VMM once the destination runs the VM.
    pub exit: ExitSignal,
    /// The vCPUs' throttle (auto-converge).
    pub throttle: VcpuThrottle,
    /// vhost-user devices (their backends log what they write into guest memory).
    pub vhost: Vec<crate::vhost_user::PlacedVhostDevice>,
    /// Their backends' shared memory table.
    pub vhost_table: Option<vhost_frontend::SharedMemoryTable>,
}

/// Largest descriptor length marked as written by the device (guest-controlled).
const MAX_MARKED_DESCRIPTOR_BYTES: u64 = 1 << 20;
const VIRTQ_DESC_F_WRITE: u16 = 2;
/// How long the notification thread gets to serve requests queued just before the pause.
const PAUSE_SETTLE: std::time::Duration = std::time::Duration::from_millis(20);

/// `PUT /v1/vm/migrate`: checks, then starts the `migration` thread and answers at once.
pub fn start(
    control: &VmControl,
    monitor: &Monitor,
    body: MigrateBody,
) -> Result<MigrationStatus, ApiError> {
    let conflict = |message: String| ApiError {
        status: 409,
        message,
    };
    let context = control.migration.context().ok_or_else(|| {
        conflict(format!(
            "this VM cannot be migrated: {}",
            control
                .migration
                .blocker()
                .unwrap_or_else(|| "it was not set up for migration".into())
        ))
    })?;
    let address: Address = body
        .destination
        .parse()
        .map_err(|e: String| ApiError::bad_request(format!("destination {e}")))?;
    let state = monitor.vm_state();
    if !matches!(state, VmState::Running | VmState::Paused) {
        return Err(conflict(format!(
            "cannot migrate a VM that is {}: it must be running or paused",
            serde_json::to_value(state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        )));
    }
    let auto_converge = super::settings::auto_converge(&body)?;
    let cancel = control
        .migration
        .begin(&body.destination)
        .ok_or_else(|| conflict("a migration is already running".into()))?;
    let job = Job {
        control: control.clone(),
        monitor: monitor.clone(),
        context,
        address,
        destination: body.destination,
        settings: Settings {
            max_downtime_ms: body.max_downtime_ms.unwrap_or(300),
            max_bandwidth_bytes_per_s: body.max_bandwidth_bytes_per_s,
            cancel,
            auto_converge,
            ..Settings::default()
        },
    };
    control.migration.submit(job).map_err(|e| {
        control.migration.end();
        ApiError::internal(e)
    })?;
    Ok(control.migration.status())
}

/// Starts the `migration` thread, which carries out migrations one at a time. Called by the
/// VM thread once it runs under its seccomp list (the thread adds its own, `Migration`).
pub fn spawn_worker(slot: &super::MigrationSlot) -> std::io::Result<()> {
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("migration".into())
        .spawn(move || {
            sandbox::enter_or_abort(sandbox::ThreadKind::Migration);
            for job in queue {
                job.run();
            }
        })?;
    slot.set_worker(jobs);
    Ok(())
}

/// One migration, as the `migration` thread carries it out.
pub struct Job {
    control: VmControl,
    monitor: Monitor,
    context: Arc<SourceContext>,
    address: Address,
    destination: String,
    settings: Settings,
}

impl Job {
    fn run(self) {
        let started = Instant::now();
        log::info!("migration to {} started", self.destination);
        self.monitor.emit(EventKind::MigrationStarted {
            destination: self.destination.clone(),
        });
        let slot = self.control.migration.clone();
        let monitor = self.monitor.clone();
        let mut progress = |p: &Progress| {
            slot.update(|s| {
                s.state = match p.phase {
                    Phase::Setup => MigrationState::Setup,
                    Phase::PreCopy => MigrationState::Active,
                    Phase::Final => MigrationState::Final,
                    Phase::Completed => MigrationState::Completed,
                };
                s.round = p.round;
                s.transferred_bytes = p.transferred_bytes;
                s.remaining_bytes = p.remaining_bytes;
                s.dirty_rate_pages_per_s = p.dirty_rate_pages_per_s;
                s.expected_downtime_ms = p.expected_downtime_ms.min(u64::MAX / 2);
                s.switchover_ms = p.switchover_ms.min(u64::MAX / 2);
                s.throttle_percent = p.throttle_percent;
                s.downtime_ms = p.downtime_ms;
                s.total_ms = started.elapsed().as_millis() as u64;
            });
            if p.phase == Phase::PreCopy && p.end_of_round {
                let w = &p.switchover;
                log::info!(
                    "migration round {}: {} bytes sent, {} dirty, expected downtime {} ms \
                     (switchover {} ms: pause {:.1} ms, state {} bytes built in {:.1} ms, \
                     round trip {:.1} ms, destination {:.1} ms), vCPU throttle {} %",
                    p.round,
                    p.transferred_bytes,
                    p.remaining_bytes,
                    p.expected_downtime_ms,
                    p.switchover_ms,
                    w.pause.as_secs_f64() * 1e3,
                    w.state_bytes,
                    w.state_build.as_secs_f64() * 1e3,
                    w.round_trip.as_secs_f64() * 1e3,
                    w.destination.as_secs_f64() * 1e3,
                    p.throttle_percent,
                );
                monitor.emit(EventKind::MigrationRound {
                    round: p.round,
                    transferred_bytes: p.transferred_bytes,
                    remaining_bytes: p.remaining_bytes,
                    expected_downtime_ms: p.expected_downtime_ms.min(u64::MAX / 2),
                    throttle_percent: p.throttle_percent,
                });
            }
        };
        let result = self.migrate(&mut progress);
        let slot = &self.control.migration;
        match result {
            Ok(report) => {
                let (downtime_ms, total_ms) = (
                    report.downtime.as_millis() as u64,
                    report.total.as_millis() as u64,
                );
                log::info!(
                    "migration completed: {} bytes in {} rounds ({} data pages, {} zero pages), \
                     downtime {downtime_ms} ms of max {} ms (expected {} ms, switchover {} ms of \
                     it), total {total_ms} ms, highest vCPU throttle {} %; stopping here",
                    report.transferred_bytes,
                    report.rounds,
                    report.data_pages,
                    report.zero_pages,
                    self.settings.max_downtime_ms,
                    report.expected_downtime_ms,
                    report.switchover_ms,
                    report.max_throttle_percent,
                );
                log::info!(
                    "migration downtime here: {}; on the destination: {}",
                    super::timing::describe(&report.source_steps),
                    super::timing::describe(&report.destination_steps)
                );
                let steps = |steps: &[migration::Step]| {
                    steps
                        .iter()
                        .map(|s| DowntimeStep {
                            step: s.name.clone(),
                            us: s.micros,
                        })
                        .collect()
                };
                slot.update(|s| {
                    s.state = MigrationState::Completed;
                    s.round = report.rounds;
                    s.transferred_bytes = report.transferred_bytes;
                    s.remaining_bytes = 0;
                    s.expected_downtime_ms = report.expected_downtime_ms;
                    s.switchover_ms = report.switchover_ms;
                    s.throttle_percent = report.max_throttle_percent;
                    s.downtime_ms = Some(downtime_ms);
                    s.downtime_breakdown = Some(DowntimeBreakdown {
                        source: steps(&report.source_steps),
                        destination: steps(&report.destination_steps),
                    });
                    s.total_ms = total_ms;
                });
                self.monitor.emit(EventKind::MigrationCompleted {
                    transferred_bytes: report.transferred_bytes,
                    rounds: report.rounds,
                    downtime_ms,
                    total_ms,
                });
                // Let event followers see the completion before the API goes away.
                std::thread::sleep(std::time::Duration::from_millis(300));
                slot.end();
                self.context.exit.request(StopRequest::Host);
            }
            Err(e) => {
                let reason = e.to_string();
                log::error!("migration failed: {reason}; the guest keeps running here");
                let cancelled = matches!(e, migration::Error::Cancelled);
                slot.update(|s| {
                    s.state = if cancelled {
                        MigrationState::Cancelled
                    } else {
                        MigrationState::Failed
                    };
                    s.error = Some(reason.clone());
                    s.total_ms = started.elapsed().as_millis() as u64;
                });
                self.monitor.emit(EventKind::MigrationFailed { reason });
                slot.end();
            }
        }
    }

    fn migrate(
        &self,
        progress: &mut dyn FnMut(&Progress),
    ) -> migration::Result<migration::source::Report> {
        let mut stream = self.address.connect().map_err(|e| {
            migration::Error::Vm(format!("connecting to {}: {e}", self.destination))
        })?;
        let handshake = handshake(&self.context).map_err(migration::Error::Vm)?;
        let mut source = VmSource {
            context: self.context.clone(),
            control: self.control.clone(),
            monitor: self.monitor.clone(),
            boot_logs: Vec::new(),
            device_logs: Vec::new(),
            paused_by_us: false,
            machine_state_bytes: 0,
            machine_state_order: None,
            vhost: VhostSource::new(self.context.vhost.clone(), self.context.vhost_table.clone()),
        };
        migration::source::migrate(
            &mut stream,
            handshake,
            &mut source,
            &self.settings,
            progress,
        )
    }
}

/// The handshake: versions, CPU features, boot RAM, each device's shape, the VM config.
fn handshake(context: &SourceContext) -> Result<Handshake, String> {
    let devices = context
        .devices
        .iter()
        .map(|d| {
            let t = d.lock();
            let state = t.device().core().state();
            DeviceShape {
                id: d.id.clone(),
                region_size_bytes: state.region_size_bytes,
                block_size_bytes: state.block_size_bytes,
                guest_addr: state.guest_addr,
                node: u32::from(state.node_id),
            }
        })
        .collect();
    let vm_config = postcard::to_allocvec(
        &Component::encode(VM_CONFIG_COMPONENT, VM_CONFIG_VERSION, &context.vm_config)
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(Handshake {
        protocol_version: PROTOCOL_VERSION,
        hotmem_version: HOTMEM_VERSION.into(),
        format_version: snapshot::CURRENT_FORMAT_VERSION,
        cpu_features: context.cpu_features.clone(),
        boot_ram: context
            .boot_ram
            .iter()
            .map(|b| RamShape {
                guest_addr: b.range.guest_addr,
                size_bytes: b.range.size_bytes,
            })
            .collect(),
        devices,
        vm_config,
    })
}

/// This VM as the pre-copy driver sees it.
struct VmSource {
    context: Arc<SourceContext>,
    control: VmControl,
    monitor: Monitor,
    boot_logs: Vec<SlotDirtyLog>,
    device_logs: Vec<Arc<SlotDirtyLog>>,
    paused_by_us: bool,
    /// Size of the last machine state read (0 before the first).
    machine_state_bytes: usize,
    /// The machine state read the VM thread was asked for, not answered yet.
    machine_state_order: Option<u64>,
    /// The vhost-user devices' logs and rings.
    vhost: VhostSource,
}

impl VmSource {
    /// The region and offset of a guest physical address.
    fn locate(&self, gpa: u64) -> Option<(RegionId, u64)> {
        for (i, b) in self.context.boot_ram.iter().enumerate() {
            if (b.range.guest_addr..b.range.guest_addr + b.range.size_bytes).contains(&gpa) {
                return Some((RegionId::BootRam(i as u32), gpa - b.range.guest_addr));
            }
        }
        None
    }

    fn mark_guest_range(&self, dirty: &mut DirtyPages, gpa: u64, size_bytes: u64) {
        let size_bytes = size_bytes.min(MAX_MARKED_DESCRIPTOR_BYTES);
        let mut at = gpa;
        while at < gpa.saturating_add(size_bytes) {
            let Some((region, offset)) = self.locate(at) else {
                return;
            };
            dirty.mark_range(region, offset, 1);
            at = (at / PAGE_BYTES + 1) * PAGE_BYTES;
        }
    }

    /// Marks what the VMM writes into guest memory: each queue's rings, and every buffer its
    /// descriptor table lets the device write (responses).
    fn mark_vmm_writes(&self, dirty: &mut DirtyPages) {
        let memory = &self.context.queue_memory;
        for d in &self.context.devices {
            let queues = d.lock().save_state().queues;
            for q in queues.iter().filter(|q| q.enabled && q.size > 0) {
                let size = u64::from(q.size);
                self.mark_guest_range(dirty, q.desc_table, 16 * size);
                self.mark_guest_range(dirty, q.driver_area, 6 + 2 * size);
                self.mark_guest_range(dirty, q.device_area, 6 + 8 * size);
                for i in 0..size {
                    let mut desc = [0u8; 16];
                    if memory
                        .read_slice(&mut desc, GuestAddress(q.desc_table + 16 * i))
                        .is_err()
                    {
                        break;
                    }
                    let addr = u64::from_le_bytes(desc[0..8].try_into().expect("8 bytes"));
                    let len = u32::from_le_bytes(desc[8..12].try_into().expect("4 bytes"));
                    let flags = u16::from_le_bytes(desc[12..14].try_into().expect("2 bytes"));
                    if flags & VIRTQ_DESC_F_WRITE != 0 {
                        self.mark_guest_range(dirty, addr, u64::from(len));
                    }
                }
            }
        }
    }

    /// Every region as `(id, guest address, size)`.
    fn guest_ranges(&self) -> Vec<(RegionId, u64, u64)> {
        let boot = self.context.boot_ram.iter().enumerate().map(|(i, b)| {
            (
                RegionId::BootRam(i as u32),
                b.range.guest_addr,
                b.range.size_bytes,
            )
        });
        let devices = self.context.devices.iter().enumerate().map(|(i, d)| {
            let state = d.lock().device().core().state();
            (
                RegionId::Device(i as u32),
                state.guest_addr,
                state.region_size_bytes,
            )
        });
        boot.chain(devices).collect()
    }

    fn device(&self, device: u32) -> Result<&SharedMemoryDevice, String> {
        self.context
            .devices
            .get(device as usize)
            .ok_or_else(|| format!("no memory device {device}"))
    }
}

impl SourceMemory for VmSource {
    fn regions(&self) -> Vec<RegionInfo> {
        let boot = self
            .context
            .boot_ram
            .iter()
            .enumerate()
            .map(|(i, b)| RegionInfo {
                id: RegionId::BootRam(i as u32),
                size_bytes: b.range.size_bytes,
                block_size_bytes: None,
            });
        let devices = self.context.devices.iter().enumerate().map(|(i, d)| {
            let t = d.lock();
            let state = t.device().core().state();
            RegionInfo {
                id: RegionId::Device(i as u32),
                size_bytes: state.region_size_bytes,
                block_size_bytes: Some(state.block_size_bytes),
            }
        });
        boot.chain(devices).collect()
    }

    fn start_dirty_log(&mut self) -> Result<(), String> {
        for b in &self.context.boot_ram {
            let log = SlotDirtyLog::new(self.context.vm_fd.clone());
            log.adopt(LoggedSlot {
                kvm_slot: KvmSlotId(b.kvm_slot),
                guest_addr: b.range.guest_addr,
                size_bytes: b.range.size_bytes,
                userspace_addr: b.range.host_addr as u64,
                region_offset_bytes: 0,
            });
            log.start()
                .map_err(|e| format!("dirty logging of boot RAM: {e}"))?;
            self.boot_logs.push(log);
        }
        for d in &self.context.devices {
            let mut t = d.lock();
            let log = t.device().dirty_log().clone();
            log.start()
                .map_err(|e| format!("dirty logging of memory device '{}': {e}", d.id))?;
            t.device_mut().core_mut().start_discard_journal();
            self.device_logs.push(log);
        }
        if self.context.vhost.is_empty() {
            return Ok(());
        }
        let ranges = self.guest_ranges();
        self.vhost.start_log(ranges)
    }

    fn collect_dirty(&mut self, dirty: &mut DirtyPages) -> Result<(), String> {
        for (i, log) in self.boot_logs.iter().enumerate() {
            for bits in log
                .collect()
                .map_err(|e| format!("boot RAM dirty log: {e}"))?
            {
                dirty.merge_log(RegionId::BootRam(i as u32), 0, &bits.bitmap);
            }
        }
        for (i, log) in self.device_logs.iter().enumerate() {
            let bits = log
                .collect()
                .map_err(|e| format!("device dirty log: {e}"))?;
            for b in bits {
                dirty.merge_log(RegionId::Device(i as u32), b.region_offset_bytes, &b.bitmap);
            }
        }
        self.mark_vmm_writes(dirty);
        self.vhost.collect(dirty)
    }

    fn stop_dirty_log(&mut self) {
        if !self.context.vhost.is_empty() {
            self.vhost.stop_log();
            log::info!(
                "vhost-user backends wrote {} pages during the migration",
                self.vhost.pages_written()
            );
        }
        for log in self.boot_logs.drain(..) {
            if let Err(e) = log.stop() {
                log::warn!("stopping dirty logging of boot RAM: {e}");
            }
        }
        for (d, log) in self.context.devices.iter().zip(self.device_logs.drain(..)) {
            d.lock().device_mut().core_mut().stop_discard_journal();
            if let Err(e) = log.stop() {
                log::warn!("stopping dirty logging of memory device '{}': {e}", d.id);
            }
        }
    }

    fn device_blocks(&mut self, device: u32) -> Result<DeviceBlocks, String> {
        let d = self.device(device)?;
        let mut t = d.lock();
        let state = t.device().core().state();
        let mut plugged = Bitmap::new(state.block_count);
        for run in &state.plugged_runs {
            for b in run.first_block..run.first_block + run.block_count {
                plugged.set(b, true);
            }
        }
        let block = state.block_size_bytes;
        let discarded = t
            .device_mut()
            .core_mut()
            .take_discard_journal()
            .into_iter()
            .map(|(offset, size)| BlockRun {
                first_block: offset / block,
                block_count: size.div_ceil(block),
            })
            .collect();
        Ok(DeviceBlocks { plugged, discarded })
    }

    fn read_pages(
        &mut self,
        region: RegionId,
        offsets: &[u64],
        out: &mut [u8],
    ) -> Result<Vec<bool>, String> {
        let page = PAGE_BYTES as usize;
        match region {
            RegionId::BootRam(i) => {
                let b = self
                    .context
                    .boot_ram
                    .get(i as usize)
                    .ok_or_else(|| format!("no boot RAM range {i}"))?;
                for (n, &offset) in offsets.iter().enumerate() {
                    if offset + PAGE_BYTES > b.range.size_bytes {
                        return Err(format!("page {offset:#x} past boot RAM range {i}"));
                    }
                    // SAFETY: boot RAM is mapped read-write for the machine's life; the page
                    // lies inside the range. vCPUs may write it meanwhile: the dirty log has
                    // the page then, and it is sent again.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            (b.range.host_addr + offset as usize) as *const u8,
                            out[n * page..].as_mut_ptr(),
                            page,
                        );
                    }
                }
                Ok(vec![true; offsets.len()])
            }
            RegionId::Device(d) => {
                let dev = self.device(d)?;
                // Held while copying: no block can be unplugged (and its slot protected)
                // under the copy.
                let t = dev.lock();
                let core = t.device().core();
                let block = core.config().block_size_bytes;
                let region = t.device().region();
                let mut read = Vec::with_capacity(offsets.len());
                for (n, &offset) in offsets.iter().enumerate() {
                    let plugged = offset + PAGE_BYTES <= region.size_bytes()
                        && core.is_block_plugged(offset / block);
                    if plugged {
                        // SAFETY: a plugged block lies in a mapped slot, whose host range is
                        // read-write; the device lock keeps it plugged during the copy.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                (region.host_addr() + offset as usize) as *const u8,
                                out[n * page..].as_mut_ptr(),
                                page,
                            );
                        }
                    }
                    read.push(plugged);
                }
                Ok(read)
            }
        }
    }

    fn pause(&mut self) -> Result<(), String> {
        if self.monitor.vm_state() == VmState::Paused {
            return Ok(());
        }
        self.control
            .order(true, &self.monitor)
            .map_err(|e| format!("pausing the guest: {}", e.message))?;
        self.paused_by_us = true;
        // A queue notification the guest sent just before the pause may still be served by
        // the notification thread: give it time, then wait for any request being served, so
        // the bitmaps and rings read next are final.
        std::thread::sleep(PAUSE_SETTLE);
        for d in &self.context.devices {
            drop(d.lock());
        }
        // The backends stop too, once every request they took is answered: from here on
        // nothing writes guest memory.
        self.vhost.stop_rings(&self.context.queue_memory)
    }

    fn resume(&mut self) -> Result<(), String> {
        if let Some(id) = self.machine_state_order.take() {
            // The VM thread refuses other orders until it has answered this one.
            let _ = self.control.machine_state_answer(id);
        }
        self.vhost.restart_rings()?;
        if !self.paused_by_us {
            return Ok(());
        }
        self.control
            .order(false, &self.monitor)
            .map_err(|e| format!("resuming the guest: {}", e.message))?;
        self.paused_by_us = false;
        Ok(())
    }

    fn begin_final_state(&mut self) -> Result<(), String> {
        // The vCPUs are stopped and the devices settled: the VM thread reads the machine
        // state while this thread sends the final pass.
        self.machine_state_order = Some(self.control.request_machine_state(&self.monitor)?);
        Ok(())
    }

    fn final_state(&mut self) -> Result<Vec<u8>, String> {
        let machine = match self.machine_state_order.take() {
            Some(id) => self.control.machine_state_answer(id)?,
            None => self.control.save_machine_state(&self.monitor)?,
        };
        self.machine_state_bytes = machine.data.len();
        self.build_state(machine)
    }

    fn preview_state(&mut self) -> Result<Vec<u8>, String> {
        // The machine part needs a paused VM: stand in for it with as many bytes.
        let machine = Component {
            name: crate::snapshot::MACHINE_COMPONENT.into(),
            version: machine::state::STATE_FORMAT_VERSION,
            data: vec![0; self.machine_state_bytes],
        };
        self.build_state(machine)
    }

    fn pause_cost(&self) -> std::time::Duration {
        PAUSE_SETTLE
    }

    fn set_throttle(&mut self, percent: u8) -> Result<(), String> {
        self.context
            .throttle
            .set_percent(percent)
            .map_err(|e| e.to_string())
    }
}

impl VmSource {
    /// The device state around `machine`: each device's transport and virtio-mem state, the VM
    /// configuration, in the snapshot state-file format.
    fn build_state(&self, machine: Component) -> Result<Vec<u8>, String> {
        let mut devices = Vec::new();
        for d in &self.context.devices {
            let t = d.lock();
            if t.device().core().plug_in_progress() {
                return Err(format!(
                    "memory device '{}' is preallocating a plug; try again",
                    d.id
                ));
            }
            let state = t.device().core().state();
            devices.push(DeviceSnapshot {
                id: d.id.clone(),
                components: vec![
                    Component::encode(TRANSPORT_COMPONENT, TRANSPORT_VERSION, &t.save_state())
                        .map_err(|e| e.to_string())?,
                    Component::encode(MEM_DEVICE_COMPONENT, MEM_DEVICE_VERSION, &state)
                        .map_err(|e| e.to_string())?,
                ],
            });
        }
        devices.extend(self.vhost.states()?);
        let snapshot = VmSnapshot {
            created_unix_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            vm_config: Some(
                Component::encode(
                    VM_CONFIG_COMPONENT,
                    VM_CONFIG_VERSION,
                    &self.context.vm_config,
                )
                .map_err(|e| e.to_string())?,
            ),
            machine,
            devices,
            memory: MemoryManifest::default(),
        };
        snapshot::encode(&snapshot, HOTMEM_VERSION).map_err(|e| e.to_string())
    }
}
