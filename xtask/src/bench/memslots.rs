//! `cargo xtask bench memslots`: what a virtio-mem device's memslots cost on real KVM.
//!
//! For each slot policy, region size and plugged size, a fresh VM gets one device; memory is
//! plugged and unplugged through the device's request path, 128 MiB (one Linux memory block) per
//! request, bottom-up as Linux plugs. Reported: slots in the layout and mapped, bytes mapped,
//! host kernel memory (`VmallocUsed` delta: KVM's memslot metadata), and the time to create the
//! device, plug and unplug. A row that cannot work on this host (its metadata would not fit in
//! memory) says so instead of being run.

use std::sync::Arc;

use clap::Args;
use hostmem::{Backing, HostRegion};
use kvm_ioctls::{Kvm, VmFd};
use memslots::{
    GIB, KvmSlotBackend, KvmSlotBackendConfig, LayoutRequest, MIB, Memslots, Protection,
    SlotBudget, SlotLayout, SlotPolicy,
};
use serde::Serialize;
use virtio_mem::{
    BlockRange, FeatureOffer, Prealloc, Request, Response, VirtioMem, VirtioMemConfig,
};
use vm_memory::GuestAddress;

use super::measure::{
    estimated_kvm_metadata_bytes, mem_available_bytes, timed, vmalloc_used_bytes,
};

const TIB: u64 = 1 << 40;
const BLOCK_BYTES: u64 = 2 * MIB;
/// One Linux memory block: the unit the guest driver plugs in big-block steps.
const REQUEST_BYTES: u64 = 128 * MIB;
/// Where the device region starts in guest physical memory.
const GUEST_BASE: u64 = 64 * GIB;

#[derive(Args)]
pub struct MemslotsArgs {
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
    /// Only these region sizes in GiB (default: 64, 1024, 16384, 65536).
    #[arg(long, value_delimiter = ',')]
    regions_gib: Vec<u64>,
    /// Run inside the nested L1 (its KVM has the TDP MMU) instead of on this machine's KVM.
    #[arg(long)]
    nested: bool,
    /// Instead: plug/unplug latency with 0, 1 and 2 vhost-user backends (qemu-storage-daemon)
    /// following the slots.
    #[arg(long)]
    vhost: bool,
}

#[derive(Serialize)]
struct Row {
    policy: &'static str,
    mmu: &'static str,
    region_bytes: u64,
    plugged_bytes: u64,
    slots_total: usize,
    slots_mapped: Option<usize>,
    mapped_bytes: Option<u64>,
    host_kernel_bytes: Option<u64>,
    create_ms: Option<f64>,
    plug_ms: Option<f64>,
    unplug_ms: Option<f64>,
    /// Time to create the same KVM slots directly, without the device (the bare cost).
    bare_map_ms: Option<f64>,
    note: Option<String>,
}

type Device = VirtioMem<KvmSlotBackend, Arc<HostRegion>>;

pub fn run(args: &MemslotsArgs) -> Result<(), String> {
    if args.vhost {
        return super::vhost::run(args.json);
    }
    if args.nested {
        // L0's emulated CPU has 40 physical address bits: no slot above 1 TiB in L1.
        let regions: Vec<String> = if args.regions_gib.is_empty() {
            vec!["64".into(), "512".into()]
        } else {
            args.regions_gib.iter().map(u64::to_string).collect()
        };
        // One --regions-gib per value: the kernel command line carries the words comma-joined.
        let mut bench = vec!["memslots"];
        for r in &regions {
            bench.extend(["--regions-gib", r.as_str()]);
        }
        return super::nested::run(&bench, args.json);
    }
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let regions: Vec<u64> = if args.regions_gib.is_empty() {
        vec![64 * GIB, TIB, 16 * TIB, 64 * TIB]
    } else {
        args.regions_gib.iter().map(|g| g * GIB).collect()
    };
    if !args.json {
        print_header();
    }
    for &region in &regions {
        for plugged in [GIB, 16 * GIB, region / 2] {
            for policy in SlotPolicy::ALL {
                let row = bench_row(&kvm, policy, region, plugged)?;
                if args.json {
                    println!(
                        "{}",
                        serde_json::to_string(&row).map_err(|e| e.to_string())?
                    );
                } else {
                    print_row(&row);
                }
            }
        }
    }
    Ok(())
}

fn layout(policy: SlotPolicy, region: u64, available: u32) -> Result<SlotLayout, String> {
    SlotLayout::plan(LayoutRequest {
        policy,
        region_size_bytes: region,
        block_size_bytes: BLOCK_BYTES,
        slot_limit: policy.slot_limit(available),
    })
    .map_err(|e| e.to_string())
}

/// Bytes the layout maps once `[0, plugged)` is plugged.
fn mapped_after_plug(layout: &SlotLayout, plugged: u64) -> u64 {
    if layout.policy() == SlotPolicy::Single {
        return layout.region_size_bytes();
    }
    let range = layout.overlapping(0, plugged).unwrap_or(0..0);
    layout.slots()[range].iter().map(|s| s.size_bytes).sum()
}

fn bench_row(kvm: &Kvm, policy: SlotPolicy, region: u64, plugged: u64) -> Result<Row, String> {
    let available = kvm.get_nr_memslots() as u32;
    let layout = layout(policy, region, available)?;
    let mut row = Row {
        policy: policy.name(),
        mmu: super::measure::mmu_kind(),
        region_bytes: region,
        plugged_bytes: plugged,
        slots_total: layout.len(),
        slots_mapped: None,
        mapped_bytes: None,
        host_kernel_bytes: None,
        create_ms: None,
        plug_ms: None,
        unplug_ms: None,
        bare_map_ms: None,
        note: None,
    };
    let needed = estimated_kvm_metadata_bytes(mapped_after_plug(&layout, plugged));
    let have = mem_available_bytes();
    if needed > have / 2 {
        row.note = Some(format!(
            "cannot work here: needs ~{} MiB of KVM memslot metadata, host has {} MiB available",
            needed / MIB,
            have / MIB
        ));
        return Ok(row);
    }

    let vm = Arc::new(kvm.create_vm().map_err(|e| format!("create VM: {e}"))?);
    let region_mem = Arc::new(HostRegion::new(&Backing::anon(region)).map_err(|e| e.to_string())?);
    let before = vmalloc_used_bytes();
    let (device, create_ms) = timed(|| create_device(&vm, &region_mem, layout.clone(), available));
    let mut device = device?;
    row.create_ms = Some(create_ms);

    // No guest to notify here: the bench plays the driver itself.
    let _config_changed = device
        .set_requested_size(plugged)
        .map_err(|e| format!("set requested size: {e}"))?;
    let ((), plug_ms) = timed(|| requests(&mut device, plugged, Op::Plug));
    row.plug_ms = Some(plug_ms);
    let status = device.status();
    if status.plugged_size_bytes != plugged {
        return Err(format!(
            "{policy}: plugged {} of {plugged} bytes",
            status.plugged_size_bytes
        ));
    }
    row.slots_mapped = Some(status.slots_mapped);
    row.mapped_bytes = Some(status.mapped_bytes);
    row.host_kernel_bytes = Some(vmalloc_used_bytes().saturating_sub(before));

    let _config_changed = device.set_requested_size(0).map_err(|e| e.to_string())?;
    let ((), unplug_ms) = timed(|| requests(&mut device, plugged, Op::Unplug));
    row.unplug_ms = Some(unplug_ms);
    if device.status().plugged_size_bytes != 0 {
        return Err(format!("{policy}: unplug left memory plugged"));
    }
    drop(device);

    if policy != SlotPolicy::Single {
        row.bare_map_ms = Some(bare_map_ms(&vm, &region_mem, &layout, plugged)?);
    }
    Ok(row)
}

fn backend(vm: &Arc<VmFd>, region: &Arc<HostRegion>) -> Result<KvmSlotBackend, String> {
    // SAFETY: `region` outlives every backend made here: both live only inside `bench_row`,
    // where the region is declared first and dropped last.
    unsafe {
        KvmSlotBackend::new(KvmSlotBackendConfig {
            vm: vm.clone(),
            host_base_addr: region.host_addr(),
            region_size_bytes: region.size_bytes(),
            protection: Protection::ProtectUnmapped,
        })
    }
    .map_err(|e| format!("KVM slot backend: {e}"))
}

fn create_device(
    vm: &Arc<VmFd>,
    region: &Arc<HostRegion>,
    layout: SlotLayout,
    available: u32,
) -> Result<Device, String> {
    let mut budget = SlotBudget::new(available, 0);
    let ids = budget
        .reserve("bench", layout.len() as u32)
        .map_err(|e| e.to_string())?;
    let slots =
        Memslots::new(layout, ids, GUEST_BASE, backend(vm, region)?).map_err(|e| e.to_string())?;
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

#[derive(Clone, Copy)]
enum Op {
    Plug,
    Unplug,
}

/// Plugs (bottom-up) or unplugs (top-down) `[0, size)` one memory block per request.
fn requests(device: &mut Device, size: u64, op: Op) {
    let nb_blocks = (REQUEST_BYTES / BLOCK_BYTES) as u16;
    let count = size / REQUEST_BYTES;
    for i in 0..count {
        let index = match op {
            Op::Plug => i,
            Op::Unplug => count - 1 - i,
        };
        let addr = GUEST_BASE + index * REQUEST_BYTES;
        let range = BlockRange {
            guest_addr: GuestAddress(addr),
            nb_blocks,
        };
        let request = match op {
            Op::Plug => Request::Plug(range),
            Op::Unplug => Request::Unplug(range),
        };
        let response = device.handle_request(request);
        assert_eq!(response, Response::Ack, "request at {addr:#x}");
    }
}

/// Creating the KVM slots that plugging `[0, plugged)` maps, directly through the slot manager.
fn bare_map_ms(
    vm: &Arc<VmFd>,
    region: &Arc<HostRegion>,
    layout: &SlotLayout,
    plugged: u64,
) -> Result<f64, String> {
    let ids = SlotBudget::new(layout.len() as u32, 0)
        .reserve("bare", layout.len() as u32)
        .map_err(|e| e.to_string())?;
    let mut slots = Memslots::new(layout.clone(), ids, GUEST_BASE, backend(vm, region)?)
        .map_err(|e| e.to_string())?;
    let (result, ms) = timed(|| slots.map_range(0, plugged));
    result.map_err(|e| e.to_string())?;
    slots.unmap_all().map_err(|e| e.to_string())?;
    Ok(ms)
}

fn print_header() {
    println!(
        "{:<9} {:>9} {:>9} {:>6} {:>6} {:>10} {:>12} {:>10} {:>10} {:>10} {:>9}  note",
        "policy",
        "region",
        "plugged",
        "slots",
        "mapped",
        "mapped",
        "kernel_mem",
        "create_ms",
        "plug_ms",
        "unplug_ms",
        "bare_ms"
    );
}

fn size(bytes: Option<u64>) -> String {
    match bytes {
        None => "-".into(),
        Some(b) if b >= TIB && b % TIB == 0 => format!("{}T", b / TIB),
        Some(b) if b >= GIB => format!("{:.1}G", b as f64 / GIB as f64),
        Some(b) => format!("{:.1}M", b as f64 / MIB as f64),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

fn print_row(r: &Row) {
    println!(
        "{:<9} {:>9} {:>9} {:>6} {:>6} {:>10} {:>12} {:>10} {:>10} {:>10} {:>9}  {}",
        r.policy,
        size(Some(r.region_bytes)),
        size(Some(r.plugged_bytes)),
        r.slots_total,
        r.slots_mapped.map_or("-".into(), |v| v.to_string()),
        size(r.mapped_bytes),
        size(r.host_kernel_bytes),
        ms(r.create_ms),
        ms(r.plug_ms),
        ms(r.unplug_ms),
        ms(r.bare_map_ms),
        r.note.as_deref().unwrap_or("")
    );
}
