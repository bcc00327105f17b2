//! The destination: `hotmem --incoming tcp:HOST:PORT|unix:PATH` waits for one migration.
//!
//! 1. Accept one connection and read the handshake; the VM configuration comes from it (with
//!    `--mem-device id=ID,slots=POLICY` overrides: the slot policy may differ).
//! 2. Build the machine (boot RAM) and each device's host memory and slots (layout under this
//!    run's slot policy, KVM slot numbers reserved, nothing mapped yet), place the regions like
//!    the source did, and check the handshake against them (refusals name the field).
//! 3. Receive memory: each bitmap maps exactly the slots holding its plugged blocks (and unmaps
//!    the ones left without any) before their pages arrive; pages go straight into boot RAM and
//!    the mapped device memory. The receiver refuses any page of a block the latest bitmap says
//!    is unplugged, so unplugged blocks are never written (their host memory stays PROT_NONE),
//!    and blocks unplugged on the source are discarded here.
//! 4. The device state (snapshot state-file format: version checks, CRC) restores the machine
//!    and the devices, which take over the slots already mapped; each device's final bitmap
//!    must equal the last one received.
//! 5. `running` goes back to the source, and the VM runs here.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use boot::DeviceAreaAllocator;
use hostmem::{Backing, HostRegion};
use machine::{CpuPackages, Machine, MachineConfig};
use memslots::SlotBudget;
use migration::destination::{DestinationMemory, Incoming, Received};
use migration::protocol::{DeviceShape, LocalFacts, RamShape};
use migration::{Bitmap, Handshake, PAGE_BYTES, PROTOCOL_VERSION, RegionId};
use snapshot::Component;
use virtio_mem::{BlockSizeInputs, DeviceState, default_block_size_bytes};

use super::{Address, Stream};
use crate::Error;
use crate::config::{Cli, MemDeviceConfig, VmConfig};
use crate::memory_device::{DeviceSlots, MemoryDevicePlacement};
use crate::shared_device::lock_or_recover;
use crate::snapshot::restore::{
    DeviceRestore, RestoreMemory, RestorePlan, SavedVmConfig, parse_override,
};
use crate::snapshot::{
    HOTMEM_VERSION, MACHINE_COMPONENT, MEM_DEVICE_COMPONENT, MEM_DEVICE_VERSION,
    TRANSPORT_COMPONENT, TRANSPORT_VERSION,
};

/// An accepted incoming migration, handshake read.
pub struct IncomingMigration {
    /// Where it came in.
    pub address: String,
    /// The source's handshake.
    pub handshake: Handshake,
    conn: Mutex<Option<Incoming<Stream>>>,
    /// The switchover steps done here (from the source's `done`).
    pub switchover: super::timing::StepClock,
}

impl std::fmt::Debug for IncomingMigration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingMigration")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

fn config_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("--incoming: {what}: {e}"))
}

/// The configuration of `hotmem --incoming ADDR`: waits for the source, reads its handshake
/// and builds the VM configuration from it.
pub fn incoming_config(cli: Cli) -> Result<VmConfig, Error> {
    let spec = cli.incoming.clone().unwrap_or_default();
    let address: Address = spec.parse().map_err(|e| config_error("address", e))?;
    log::info!("waiting for a migration on {spec}");
    let stream = address
        .accept_one()
        .map_err(|e| config_error(&format!("listening on {spec}"), e))?;
    let mut incoming = Incoming::accept(stream).map_err(|e| config_error("handshake", e))?;
    let handshake = incoming.handshake().clone();
    let saved = match saved_config(&handshake) {
        Ok(s) => s,
        Err(e) => {
            let refusal = migration::Refusal {
                field: "vm_config".into(),
                source: "undecodable".into(),
                destination: e.clone(),
            };
            return Err(config_error("handshake", incoming.refuse(refusal)));
        }
    };
    let mut mem_devices: Vec<MemDeviceConfig> = saved
        .mem_devices
        .iter()
        .map(|d| {
            let mut c = d.to_config(d.slots);
            c.node = handshake
                .devices
                .iter()
                .find(|s| s.id == d.id && s.node != 0)
                .and_then(|s| u16::try_from(s.node).ok())
                .map(boot::numa::NodeId);
            c
        })
        .collect();
    let vhost_user = match cli.vhost_user_specs().and_then(|specs| {
        super::vhost::match_devices(&saved.vhost_user, &specs).map_err(Error::Config)?;
        Ok(specs)
    }) {
        Ok(specs) => specs,
        Err(e) => {
            let refusal = migration::Refusal {
                field: "vhost_user".into(),
                source: super::vhost::describe(&saved.vhost_user),
                destination: e.to_string(),
            };
            return Err(config_error("handshake", incoming.refuse(refusal)));
        }
    };
    for spec in &cli.mem_devices {
        let (id, slots) =
            parse_override(spec).map_err(|e| Error::Config(format!("--mem-device {spec}: {e}")))?;
        let config = mem_devices.iter_mut().find(|c| c.id == id).ok_or_else(|| {
            Error::Config(format!(
                "--mem-device {spec}: the incoming VM has no memory device '{id}'"
            ))
        })?;
        if let Some(slots) = slots {
            config.slots = slots;
        }
    }
    Ok(VmConfig {
        kernel: saved.kernel.clone(),
        initramfs: saved.initramfs.clone(),
        cmdline: saved.cmdline.clone(),
        boot_memory_bytes: saved.boot_memory_bytes,
        vcpus: saved.vcpus,
        mem_devices,
        serial: crate::config::parse_serial(&cli.serial)?,
        api_socket: cli.api_socket,
        not_following_after: std::time::Duration::from_millis(cli.not_following_ms),
        restore: None,
        resume_after_restore: true,
        numa: None,
        // The source's devices are shared (memfd) exactly when it had vhost-user devices.
        shared_memory: !vhost_user.is_empty(),
        vhost_user,
        incoming: Some(Arc::new(IncomingMigration {
            address: spec,
            handshake,
            conn: Mutex::new(Some(incoming)),
            switchover: Default::default(),
        })),
    })
}

fn saved_config(handshake: &Handshake) -> Result<SavedVmConfig, String> {
    let component: Component =
        postcard::from_bytes(&handshake.vm_config).map_err(|e| e.to_string())?;
    crate::snapshot::vm_config::decode_vm_config(&component).map_err(|e| e.to_string())
}

/// Device memory being received, and its slots (mapped as the bitmaps arrive).
struct DeviceMemory {
    slots: DeviceSlots,
    /// Whether a bitmap came (the first one is always logged).
    bitmap_seen: bool,
    // Declared last: the host mapping must outlive the slots mapped from it.
    region: Arc<HostRegion>,
}

/// A device's memory as received: the host memory and the slots mapping its plugged blocks,
/// for the device that takes them over (once).
#[derive(Debug, Clone)]
pub struct ReceivedDevice {
    slots: Arc<Mutex<Option<DeviceSlots>>>,
    // Declared last: the host mapping must outlive the slots mapped from it.
    region: Arc<HostRegion>,
}

impl ReceivedDevice {
    /// The host memory.
    pub fn region(&self) -> &Arc<HostRegion> {
        &self.region
    }

    /// The slots, mapped for the last bitmap received; `None` once taken.
    pub fn take_slots(&self) -> Option<DeviceSlots> {
        lock_or_recover(&self.slots, "received device slots").take()
    }
}

/// A received VM: its machine (boot RAM filled, state applied), the plan that builds the
/// devices over the received memory, and the slot budget those devices already hold.
pub struct ReceivedVm {
    /// The machine.
    pub machine: Machine,
    /// How to build the devices.
    pub plan: RestorePlan,
    /// KVM slot numbers, with the devices' slots reserved.
    pub budget: SlotBudget,
    /// The budget as the devices' layouts were planned in (before they reserved theirs).
    pub planned_budget: SlotBudget,
    /// The vhost-user backends, connected before memory arrived (their tables hold boot RAM
    /// and every slot mapped since).
    pub vhost: Option<crate::vhost_user::VhostUserSetup>,
}

/// Where received pages go: boot RAM of the new machine, fresh device memory.
struct VmSink {
    boot_ram: Vec<machine::BootRamRange>,
    devices: Vec<DeviceMemory>,
    /// How long building the machine and device memory took here: KVM and mapping work of the
    /// kind the restore does, measured on this host, reported as the restore estimate.
    setup: std::time::Duration,
}

impl VmSink {
    fn page(&self, region: RegionId, offset_bytes: u64) -> Result<*mut u8, String> {
        let (base, size) = match region {
            RegionId::BootRam(i) => self
                .boot_ram
                .get(i as usize)
                .map(|r| (r.host_addr as usize, r.size_bytes)),
            RegionId::Device(i) => self
                .devices
                .get(i as usize)
                .map(|d| (d.region.host_addr(), d.region.size_bytes())),
        }
        .ok_or_else(|| format!("no region {region:?}"))?;
        if offset_bytes + PAGE_BYTES > size {
            return Err(format!("page {offset_bytes:#x} past {region:?}"));
        }
        Ok((base + offset_bytes as usize) as *mut u8)
    }
}

impl DestinationMemory for VmSink {
    fn write_page(
        &mut self,
        region: RegionId,
        offset_bytes: u64,
        data: Option<&[u8]>,
    ) -> Result<(), String> {
        let page = self.page(region, offset_bytes)?;
        // SAFETY: `page` is a whole page inside a live mapping of this machine's boot RAM or of
        // device memory; a device page belongs to a block the latest bitmap plugged (checked by
        // the receiver), so its slot is mapped and the page read-write; no vCPU runs yet.
        let memory = unsafe { std::slice::from_raw_parts_mut(page, PAGE_BYTES as usize) };
        match data {
            Some(bytes) => memory.copy_from_slice(bytes),
            // Untouched pages read as zero without being allocated: write only if needed.
            None => {
                if !migration::source::is_zero(memory) {
                    memory.fill(0);
                }
            }
        }
        Ok(())
    }

    fn discard_blocks(
        &mut self,
        device: u32,
        first_block: u64,
        block_count: u64,
    ) -> Result<(), String> {
        let d = self
            .devices
            .get(device as usize)
            .ok_or_else(|| format!("no device {device}"))?;
        let block = d.slots.block_size_bytes();
        d.region
            .discard_range(first_block * block, block_count * block)
            .map_err(|e| e.to_string())
    }

    /// Maps the slots holding the new bitmap's plugged blocks before their pages arrive and
    /// unmaps the ones left without any (their blocks were discarded just before).
    fn apply_bitmap(&mut self, device: u32, plugged: &Bitmap) -> Result<(), String> {
        let d = self
            .devices
            .get_mut(device as usize)
            .ok_or_else(|| format!("no device {device}"))?;
        let before = d.slots.mapped_count();
        d.slots
            .map_plugged(|b| plugged.get(b))
            .map_err(|e| e.to_string())?;
        let first = !std::mem::replace(&mut d.bitmap_seen, true);
        if first || d.slots.mapped_count() != before {
            log::info!(
                "device {device}: {} slots mapped ({} MiB) for {} plugged blocks",
                d.slots.mapped_count(),
                d.slots.mapped_bytes() >> 20,
                plugged.count_ones()
            );
        }
        Ok(())
    }

    fn restore_estimate(&self) -> std::time::Duration {
        self.setup
    }
}

/// Receives the VM: a machine with boot RAM filled and its state applied, and a plan that
/// restores the devices from the received memory and state.
pub fn receive_vm(
    incoming: &IncomingMigration,
    config: &VmConfig,
    machine_config: MachineConfig,
) -> Result<ReceivedVm, Error> {
    let mut conn = lock_or_recover(&incoming.conn, "incoming migration")
        .take()
        .ok_or_else(|| Error::Config("the incoming migration was already received".into()))?;
    let setup = std::time::Instant::now();
    let ram = if config.shared_memory {
        hostmem::BackingKind::Memfd
    } else {
        hostmem::BackingKind::Anon
    };
    let mut machine = Machine::with_packages_and_ram(machine_config, CpuPackages::Single, ram)?;
    let used_slots = machine.boot_memslots().iter().max().map_or(0, |m| m + 1);
    let total_slots = u32::try_from(machine.nr_memslots()).unwrap_or(u32::MAX);
    let mut budget = SlotBudget::new(total_slots, used_slots);
    // The backends come first: each slot mapped while memory arrives joins their tables, and
    // their region limits bound the layouts.
    let ring_memory = Arc::new(machine.memory().clone());
    let connecting = std::time::Instant::now();
    let vhost = crate::vhost_user::connect(&config.vhost_user, &machine, &ring_memory)?;
    // Restarting the backends' rings at the switchover takes about as many acknowledged
    // requests as connecting them (features, then per queue its size, addresses, base, call
    // and kick fds, enable): their connection time counts once more in the estimate.
    let vhost_restart = connecting.elapsed();
    for limit in vhost.iter().flat_map(|v| v.slot_limits()) {
        budget
            .add_limit(limit)
            .map_err(|e| Error::Config(e.to_string()))?;
    }
    let planned_budget = budget.clone();
    let mut area = DeviceAreaAllocator::new(machine.layout());
    let mut devices = Vec::new();
    let mut shapes = Vec::new();
    for c in &config.mem_devices {
        let placed = crate::devices::place_region(&mut area, c)?;
        let region = Arc::new(
            HostRegion::new(&Backing {
                kind: c.backing,
                size_bytes: c.size_bytes,
                hugetlbfs_dir: c.hugetlbfs_dir.clone(),
            })
            .map_err(|e| Error::Device(format!("memory device '{}': host memory: {e}", c.id)))?,
        );
        let block_size_bytes = c.block_size_bytes.unwrap_or_else(|| {
            default_block_size_bytes(BlockSizeInputs::for_host(region.page_size_bytes()))
        });
        let placement = MemoryDevicePlacement {
            vm: machine.vm().fd(),
            budget: &mut budget,
            guest_addr: placed.start,
            vhost_table: vhost.as_ref().map(|v| v.table.clone()),
        };
        let slots = DeviceSlots::new(c, placement, &region, block_size_bytes)?;
        shapes.push(DeviceShape {
            id: c.id.clone(),
            region_size_bytes: c.size_bytes,
            block_size_bytes,
            guest_addr: placed.start,
            node: c.node.map_or(0, |n| u32::from(n.0)),
        });
        devices.push(DeviceMemory {
            slots,
            bitmap_seen: false,
            region,
        });
    }
    let boot_ram = machine.boot_ram_ranges();
    let local = LocalFacts {
        protocol_version: PROTOCOL_VERSION,
        hotmem_version: HOTMEM_VERSION.into(),
        format_versions: snapshot::format::OLDEST_FORMAT_VERSION..=snapshot::CURRENT_FORMAT_VERSION,
        cpu_features: super::cpu_features()?,
        boot_ram: boot_ram
            .iter()
            .map(|r| RamShape {
                guest_addr: r.guest_addr,
                size_bytes: r.size_bytes,
            })
            .collect(),
        devices: shapes,
    };
    let built = setup.elapsed();
    let setup = if config.vhost_user.is_empty() {
        built
    } else {
        built + vhost_restart
    };
    log::info!(
        "machine and device memory built in {:.1} ms, vhost-user backends connected in {:.1} ms \
         (restore estimate sent to the source: {:.1} ms)",
        built.as_secs_f64() * 1e3,
        vhost_restart.as_secs_f64() * 1e3,
        setup.as_secs_f64() * 1e3
    );
    conn.check(&local)
        .map_err(|e| config_error("handshake", e))?;
    let started = std::time::Instant::now();
    let mut sink = VmSink {
        boot_ram,
        devices,
        setup,
    };
    let received = conn
        .receive(&mut sink)
        .map_err(|e| Error::Config(format!("--incoming: receiving the VM: {e}")))?;
    log::info!(
        "received {} bytes ({} data pages, {} zero pages) in {} ms",
        received.received_bytes,
        received.data_pages,
        received.zero_pages,
        started.elapsed().as_millis()
    );
    if let Some(done_at) = received.done_at {
        incoming.switchover.start(done_at);
    }
    match finish(&mut machine, incoming, config, sink, &received) {
        Ok(plan) => {
            *lock_or_recover(&incoming.conn, "incoming migration") = Some(conn);
            Ok(ReceivedVm {
                machine,
                plan,
                vhost,
                budget,
                planned_budget,
            })
        }
        Err(e) => {
            let _ = conn.failed(&e.to_string());
            Err(e)
        }
    }
}

/// Applies the device state: machine state into `machine`, a plan for the devices.
fn finish(
    machine: &mut Machine,
    incoming: &IncomingMigration,
    config: &VmConfig,
    sink: VmSink,
    received: &Received,
) -> Result<RestorePlan, Error> {
    let decoded = snapshot::decode(&received.device_state)?;
    let snap = decoded.snapshot;
    let version = machine::state::STATE_FORMAT_VERSION;
    let (_, state): (u32, machine::MachineState) =
        snap.machine.decode(MACHINE_COMPONENT, version..=version)?;
    incoming.switchover.mark("state_decode");
    machine.restore_state(&state)?;
    incoming.switchover.mark("machine_restore");
    let saved = saved_config(&incoming.handshake).map_err(Error::Config)?;
    let mut restores = Vec::new();
    let mut memories = sink.devices.into_iter();
    for (i, c) in config.mem_devices.iter().enumerate() {
        let device = snap.device(&c.id)?;
        let (_, transport) = device
            .component(TRANSPORT_COMPONENT)?
            .decode(TRANSPORT_COMPONENT, TRANSPORT_VERSION..=TRANSPORT_VERSION)?;
        let (_, state): (u32, DeviceState) = device.component(MEM_DEVICE_COMPONENT)?.decode(
            MEM_DEVICE_COMPONENT,
            MEM_DEVICE_VERSION..=MEM_DEVICE_VERSION,
        )?;
        let mut bitmap = Bitmap::new(state.block_count);
        for run in &state.plugged_runs {
            for b in run.first_block..run.first_block + run.block_count {
                bitmap.set(b, true);
            }
        }
        if received.bitmaps.get(i) != Some(&bitmap) {
            return Err(Error::Device(format!(
                "memory device '{}': the device state's bitmap differs from the last bitmap \
                 received",
                c.id
            )));
        }
        let memory = memories
            .next()
            .ok_or_else(|| Error::Device(format!("memory device '{}': no memory", c.id)))?;
        restores.push(DeviceRestore {
            id: c.id.clone(),
            transport,
            device: state,
            memory_file: PathBuf::new(),
            received: Some(ReceivedDevice {
                slots: Arc::new(Mutex::new(Some(memory.slots))),
                region: memory.region,
            }),
        });
    }
    let vhost = config
        .vhost_user
        .iter()
        .map(|spec| super::vhost::VhostRestore::from_snapshot(snap.device(&spec.id)?))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RestorePlan {
        memory: RestoreMemory::Eager,
        dir: PathBuf::from(format!("migration:{}", incoming.address)),
        written_by: decoded.hotmem_version,
        config: saved,
        machine: snap.machine,
        devices: restores,
        boot_ram: Vec::new(),
        vhost,
    })
}

/// Tells the source the VM runs here (the source then stops).
pub fn report_running(incoming: &IncomingMigration) {
    incoming.switchover.mark("vmm_setup");
    let steps = incoming.switchover.steps();
    log::info!(
        "migration switchover here: {}",
        super::timing::describe(&steps)
    );
    if let Some(conn) = lock_or_recover(&incoming.conn, "incoming migration").as_mut()
        && let Err(e) = conn.running(steps)
    {
        log::warn!("telling the source the VM runs here: {e}");
    }
}
