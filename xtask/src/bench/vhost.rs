//! `cargo xtask bench memslots --vhost`: plug/unplug latency of a virtio-mem device whose slots
//! vhost-user backends must follow, with 0, 1 and 2 real backends (qemu-storage-daemon
//! vhost-user-blk exports on a null block device), on this machine's KVM.
//!
//! Each row: a fresh VM, a memfd-backed device region, the backends attached to the VM-wide
//! memory table, then `plugged` bytes plugged bottom-up and unplugged top-down, 128 MiB per
//! request, through the device's request path. Reported: total plug/unplug time, the ratio to
//! the row without backends, and the regions each backend held at the peak against the slots
//! mapped (they must be equal: one region per slot, nothing merged). Times are medians of
//! [`RUNS`] runs.

use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostmem::{Backing, BackingKind, HostRegion};
use kvm_ioctls::{Kvm, VmFd};
use memslots::{
    GIB, KvmSlotBackend, KvmSlotBackendConfig, Memslots, Protection, SlotBudget, SlotPolicy,
};
use serde::Serialize;
use vhost_frontend::{
    AttachConfig, SharedMemoryTable, VhostSlotBackend, VhostSlotBackendConfig, VhostUserMemory,
    negotiate,
};
use virtio_mem::{
    BlockRange, FeatureOffer, Prealloc, Request, Response, VirtioMem, VirtioMemConfig,
};
use vm_memory::GuestAddress;

use super::measure::timed;

const MIB: u64 = 1 << 20;
const BLOCK_BYTES: u64 = 2 * MIB;
const REQUEST_BYTES: u64 = 128 * MIB;
const GUEST_BASE: u64 = 64 * GIB;
/// Each row is the median of this many runs (after one unreported warm-up run).
const RUNS: usize = 5;

type Device = VirtioMem<VhostSlotBackend<KvmSlotBackend>, Arc<HostRegion>>;

#[derive(Serialize)]
struct Row {
    policy: &'static str,
    backends: usize,
    region_bytes: u64,
    plugged_bytes: u64,
    slots_mapped: usize,
    /// Regions each backend held after the plug (boot RAM is not part of this bench).
    backend_regions: Vec<usize>,
    plug_ms: f64,
    unplug_ms: f64,
    plug_ratio: Option<f64>,
    unplug_ratio: Option<f64>,
}

struct Daemon {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_daemon(index: usize) -> Result<(Daemon, UnixStream), String> {
    let dir = std::env::temp_dir().join(format!("hotmem-bench-qsd-{}-{index}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sock = dir.join("blk.sock");
    let child = Command::new("qemu-storage-daemon")
        .args([
            "--blockdev",
            "driver=null-co,node-name=n0,size=67108864",
            "--export",
            &format!(
                "type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path={}",
                sock.display()
            ),
        ])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("qemu-storage-daemon (package qemu-utils) cannot run: {e}"))?;
    let mut daemon = Daemon { child, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return Err(format!("qemu-storage-daemon exited: {status}"));
        }
        match UnixStream::connect(&sock) {
            Ok(s) => return Ok((daemon, s)),
            Err(e) if Instant::now() > deadline => return Err(format!("{}: {e}", sock.display())),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

pub fn run(json: bool) -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    if !json {
        println!(
            "{:<9} {:>8} {:>8} {:>8} {:>7} {:>16} {:>9} {:>10} {:>6} {:>6}",
            "policy",
            "backends",
            "region",
            "plugged",
            "mapped",
            "backend_regions",
            "plug_ms",
            "unplug_ms",
            "plug×",
            "unpl×"
        );
    }
    for (policy, region, plugged) in [
        (SlotPolicy::Adaptive, 64 * GIB, 16 * GIB),
        (SlotPolicy::Fixed, 64 * GIB, 16 * GIB),
    ] {
        let mut base: Option<(f64, f64)> = None;
        bench_row(&kvm, policy, (region, plugged), 0)?;
        for backends in 0..=2 {
            let mut runs = (0..RUNS)
                .map(|_| bench_row(&kvm, policy, (region, plugged), backends))
                .collect::<Result<Vec<_>, _>>()?;
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let mut plugs: Vec<f64> = runs.iter().map(|r| r.plug_ms).collect();
            let mut unplugs: Vec<f64> = runs.iter().map(|r| r.unplug_ms).collect();
            let mut row = runs.remove(0);
            row.plug_ms = median(&mut plugs);
            row.unplug_ms = median(&mut unplugs);
            if let Some((p, u)) = base {
                row.plug_ratio = Some(row.plug_ms / p);
                row.unplug_ratio = Some(row.unplug_ms / u);
            } else {
                base = Some((row.plug_ms, row.unplug_ms));
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&row).map_err(|e| e.to_string())?
                );
            } else {
                let ratio = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}"));
                println!(
                    "{:<9} {:>8} {:>7}G {:>7}G {:>7} {:>16} {:>9.2} {:>10.2} {:>6} {:>6}",
                    row.policy,
                    row.backends,
                    row.region_bytes / GIB,
                    row.plugged_bytes / GIB,
                    row.slots_mapped,
                    format!("{:?}", row.backend_regions),
                    row.plug_ms,
                    row.unplug_ms,
                    ratio(row.plug_ratio),
                    ratio(row.unplug_ratio)
                );
            }
        }
    }
    Ok(())
}

fn bench_row(
    kvm: &Kvm,
    policy: SlotPolicy,
    (region, plugged): (u64, u64),
    backends: usize,
) -> Result<Row, String> {
    let vm = Arc::new(kvm.create_vm().map_err(|e| format!("create VM: {e}"))?);
    let memory = Arc::new(
        HostRegion::new(&Backing {
            kind: BackingKind::Memfd,
            ..Backing::anon(region)
        })
        .map_err(|e| e.to_string())?,
    );
    let table: SharedMemoryTable = Arc::new(Mutex::new(VhostUserMemory::new()));
    let mut daemons = Vec::new();
    for i in 0..backends {
        let (daemon, stream) = start_daemon(i)?;
        let negotiated = negotiate(stream, &AttachConfig::named(&format!("qsd{i}")))
            .map_err(|e| e.to_string())?;
        table
            .lock()
            .map_err(|e| e.to_string())?
            .attach(&format!("qsd{i}"), negotiated)
            .map_err(|e| e.to_string())?;
        daemons.push(daemon);
    }
    let mut device = create_device(&vm, &memory, &table, policy)?;
    let _changed = device
        .set_requested_size(plugged)
        .map_err(|e| e.to_string())?;
    let (result, plug_ms) = timed(|| requests(&mut device, plugged, true));
    result?;
    let slots_mapped = device.status().slots_mapped;
    let backend_regions = table
        .lock()
        .map_err(|e| e.to_string())?
        .status()
        .iter()
        .map(|s| s.regions_held)
        .collect();
    let _changed = device.set_requested_size(0).map_err(|e| e.to_string())?;
    let (result, unplug_ms) = timed(|| requests(&mut device, plugged, false));
    result?;
    drop(device);
    drop(daemons);
    Ok(Row {
        policy: policy.name(),
        backends,
        region_bytes: region,
        plugged_bytes: plugged,
        slots_mapped,
        backend_regions,
        plug_ms,
        unplug_ms,
        plug_ratio: None,
        unplug_ratio: None,
    })
}

fn create_device(
    vm: &Arc<VmFd>,
    region: &Arc<HostRegion>,
    table: &SharedMemoryTable,
    policy: SlotPolicy,
) -> Result<Device, String> {
    let layout = memslots::SlotLayout::plan(memslots::LayoutRequest {
        policy,
        region_size_bytes: region.size_bytes(),
        block_size_bytes: BLOCK_BYTES,
        slot_limit: policy.slot_limit(500),
    })
    .map_err(|e| e.to_string())?;
    let ids = SlotBudget::new(32_000, 0)
        .reserve("bench", layout.len() as u32)
        .map_err(|e| e.to_string())?;
    // SAFETY: `region` outlives the device: both live only inside `bench_row`, where the region
    // is created first and dropped after the device.
    let kvm = unsafe {
        KvmSlotBackend::new(KvmSlotBackendConfig {
            vm: vm.clone(),
            host_base_addr: region.host_addr(),
            region_size_bytes: region.size_bytes(),
            protection: Protection::ProtectUnmapped,
        })
    }
    .map_err(|e| format!("KVM slot backend: {e}"))?;
    let fd = region
        .fd()
        .ok_or("memfd region without fd")?
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let backend = VhostSlotBackend::new(
        kvm,
        VhostSlotBackendConfig {
            table: table.clone(),
            host_base_addr: region.host_addr() as u64,
            fd: Arc::new(fd),
            fd_base_offset_bytes: 0,
        },
    );
    let slots = Memslots::new(layout, ids, GUEST_BASE, backend).map_err(|e| e.to_string())?;
    let config = VirtioMemConfig {
        guest_addr: GuestAddress(GUEST_BASE),
        region_size_bytes: region.size_bytes(),
        block_size_bytes: BLOCK_BYTES,
        backing_page_size_bytes: region.page_size_bytes(),
        requested_size_bytes: 0,
        node_id: 0,
        prealloc: Prealloc::Off,
        offer: FeatureOffer::default(),
    };
    VirtioMem::new(config, slots, region.clone()).map_err(|e| e.to_string())
}

/// Plugs (bottom-up) or unplugs (top-down) `[0, size)` one memory block per request.
fn requests(device: &mut Device, size: u64, plug: bool) -> Result<(), String> {
    let nb_blocks = (REQUEST_BYTES / BLOCK_BYTES) as u16;
    let count = size / REQUEST_BYTES;
    for i in 0..count {
        let index = if plug { i } else { count - 1 - i };
        let range = BlockRange {
            guest_addr: GuestAddress(GUEST_BASE + index * REQUEST_BYTES),
            nb_blocks,
        };
        let request = if plug {
            Request::Plug(range)
        } else {
            Request::Unplug(range)
        };
        let response = device.handle_request(request);
        if response != Response::Ack {
            return Err(format!("request {i}: {response:?}"));
        }
    }
    Ok(())
}
