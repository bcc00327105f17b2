//! `cargo xtask bench dirty-log`: what KVM dirty logging costs a migration per round, on this
//! machine's KVM, for a virtio-mem region whose plugged part is mapped through one big slot
//! (`single`) or through only the slots that hold plugged blocks (`adaptive`, `fixed`).
//!
//! For each policy and plugged size a fresh VM maps the slots the plugged range `[0, plugged)`
//! needs (`single`: the whole region), turns on `KVM_MEM_LOG_DIRTY_PAGES` on each, and times
//! full passes of `KVM_GET_DIRTY_LOG` over them (the median of several rounds is `sync_us`).
//! No guest runs, so the bitmaps are clean: the time is the pass itself (bitmap scan, copy to
//! the VMM, write-protect bookkeeping), which is what grows with the logged size.
//! `bitmap_bytes` = the kernel's dirty bitmaps (x86 allocates two bitmaps per slot, one bit per
//! 4 KiB page each) + the VMM's copy (one bit per page); `vmalloc_delta_bytes` is the measured
//! `VmallocUsed` growth when logging is turned on (small bitmaps come from kmalloc and do not
//! show there).

use clap::Args;
use hostmem::{Backing, HostRegion};
use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VmFd};
use memslots::{GIB, LayoutRequest, MIB, SlotLayout, SlotPolicy};
use serde::Serialize;

use super::measure::{
    estimated_kvm_metadata_bytes, mem_available_bytes, mmu_kind, vmalloc_used_bytes,
};

const PAGE_BYTES: u64 = 4096;
const BLOCK_BYTES: u64 = 2 * MIB;
const GUEST_BASE: u64 = 64 * GIB;
const ROUNDS: usize = 7;
/// The largest power-of-two region L1's KVM accepts above the 64 GiB guest base.
const NESTED_REGION_GIB: u64 = 512;

#[derive(Args)]
pub struct DirtyLogArgs {
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
    /// Region size in GiB (default 1024; 512 with --nested, where L0's emulated CPU has 40
    /// physical address bits and L1's KVM refuses slots above 1 TiB).
    #[arg(long)]
    region_gib: Option<u64>,
    /// Run inside the nested L1 (its KVM has the TDP MMU) instead of on this machine's KVM.
    #[arg(long)]
    nested: bool,
}

#[derive(Serialize, Clone)]
struct Row {
    policy: &'static str,
    mmu: String,
    region_bytes: u64,
    plugged_bytes: u64,
    slots_logged: usize,
    logged_bytes: u64,
    sync_us: f64,
    bitmap_bytes: u64,
    vmalloc_delta_bytes: i64,
}

pub fn run(args: &DirtyLogArgs) -> Result<(), String> {
    if args.nested {
        let region = args.region_gib.unwrap_or(NESTED_REGION_GIB).to_string();
        return super::nested::run(&["dirty-log", "--region-gib", &region], args.json);
    }
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let region = args.region_gib.unwrap_or(1024) * GIB;
    let mmu = mmu_kind().to_string();
    let mut rows = Vec::new();
    for plugged in [GIB, 4 * GIB, 16 * GIB] {
        if plugged > region {
            continue;
        }
        for policy in [SlotPolicy::Single, SlotPolicy::Fixed, SlotPolicy::Adaptive] {
            let row = bench_row(&kvm, policy, region, plugged, &mmu)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&row).map_err(|e| e.to_string())?
                );
            }
            rows.push(row);
        }
    }
    if !args.json {
        print_table(&rows);
    }
    print_goal(&rows)
}

fn bench_row(
    kvm: &Kvm,
    policy: SlotPolicy,
    region: u64,
    plugged: u64,
    mmu: &str,
) -> Result<Row, String> {
    let layout = SlotLayout::plan(LayoutRequest {
        policy,
        region_size_bytes: region,
        block_size_bytes: BLOCK_BYTES,
        slot_limit: policy.slot_limit(kvm.get_nr_memslots() as u32),
    })
    .map_err(|e| e.to_string())?;
    let slots: Vec<(u64, u64)> = match policy {
        SlotPolicy::Single => vec![(0, region)],
        _ => {
            let range = layout.overlapping(0, plugged).map_err(|e| e.to_string())?;
            layout.slots()[range]
                .iter()
                .map(|s| (s.offset_bytes, s.size_bytes))
                .collect()
        }
    };
    let logged_bytes: u64 = slots.iter().map(|(_, size)| size).sum();
    let needed = estimated_kvm_metadata_bytes(logged_bytes) + 3 * logged_bytes / PAGE_BYTES / 8;
    if needed > mem_available_bytes() / 2 {
        return Err(format!(
            "{}: {} GiB logged needs ~{} MiB of kernel memory, more than this host can spare; \
             use --region-gib",
            policy.name(),
            logged_bytes / GIB,
            needed / MIB
        ));
    }
    let vm = kvm.create_vm().map_err(|e| format!("create VM: {e}"))?;
    let memory = HostRegion::new(&Backing::anon(region)).map_err(|e| e.to_string())?;
    for (i, &(offset, size)) in slots.iter().enumerate() {
        set_slot(&vm, &memory, i as u32, (offset, size), 0)?;
    }
    let before = vmalloc_used_bytes();
    for (i, &(offset, size)) in slots.iter().enumerate() {
        set_slot(
            &vm,
            &memory,
            i as u32,
            (offset, size),
            KVM_MEM_LOG_DIRTY_PAGES,
        )?;
    }
    let vmalloc_delta_bytes = vmalloc_used_bytes() as i64 - before as i64;
    let mut rounds_us = Vec::with_capacity(ROUNDS);
    let mut vmm_bitmap_bytes = 0;
    for _ in 0..ROUNDS {
        let started = std::time::Instant::now();
        vmm_bitmap_bytes = 0;
        for (i, &(_, size)) in slots.iter().enumerate() {
            let bitmap = vm
                .get_dirty_log(i as u32, size as usize)
                .map_err(|e| format!("KVM_GET_DIRTY_LOG slot {i}: {e}"))?;
            if bitmap.iter().any(|w| *w != 0) {
                return Err(format!(
                    "slot {i} reports dirty pages with no guest running"
                ));
            }
            vmm_bitmap_bytes += (bitmap.len() * 8) as u64;
        }
        rounds_us.push(started.elapsed().as_secs_f64() * 1e6);
    }
    rounds_us.sort_by(|a, b| a.total_cmp(b));
    let kernel_bitmap_bytes: u64 = slots
        .iter()
        .map(|(_, size)| 2 * (size / PAGE_BYTES).div_ceil(64) * 8)
        .sum();
    drop(vm);
    Ok(Row {
        policy: policy.name(),
        mmu: mmu.to_string(),
        region_bytes: region,
        plugged_bytes: plugged,
        slots_logged: slots.len(),
        logged_bytes,
        sync_us: rounds_us[ROUNDS / 2],
        bitmap_bytes: kernel_bitmap_bytes + vmm_bitmap_bytes,
        vmalloc_delta_bytes,
    })
}

fn set_slot(
    vm: &VmFd,
    memory: &HostRegion,
    slot: u32,
    (offset, size): (u64, u64),
    flags: u32,
) -> Result<(), String> {
    let region = kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: GUEST_BASE + offset,
        memory_size: size,
        userspace_addr: memory.host_addr() as u64 + offset,
    };
    // SAFETY: the range lies inside `memory`, a live mapping that outlives the VM (the VM is
    // dropped in `bench_row` before the region).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION slot {slot} flags {flags}: {e}"))
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<9} {:<7} {:>8} {:>8} {:>6} {:>10} {:>12} {:>13} {:>14}",
        "policy",
        "mmu",
        "region",
        "plugged",
        "slots",
        "logged",
        "sync_us",
        "bitmap_KiB",
        "vmalloc_KiB"
    );
    for r in rows {
        println!(
            "{:<9} {:<7} {:>7}G {:>7}G {:>6} {:>9}G {:>12.1} {:>13} {:>14}",
            r.policy,
            r.mmu,
            r.region_bytes / GIB,
            r.plugged_bytes / GIB,
            r.slots_logged,
            r.logged_bytes / GIB,
            r.sync_us,
            r.bitmap_bytes / 1024,
            r.vmalloc_delta_bytes / 1024
        );
    }
}

/// The goal at 1 GiB plugged: adaptive needs ≥ 100× less time and bitmap memory than single.
fn print_goal(rows: &[Row]) -> Result<(), String> {
    let at = |policy: &str| {
        rows.iter()
            .find(|r| r.policy == policy && r.plugged_bytes == GIB)
            .ok_or_else(|| format!("no {policy} row at 1 GiB plugged"))
    };
    let (single, adaptive) = (at("single")?, at("adaptive")?);
    if adaptive.sync_us <= 0.0 || adaptive.bitmap_bytes == 0 {
        return Err("adaptive row measured nothing".into());
    }
    eprintln!(
        "goal at {} GiB region, 1 GiB plugged: single/adaptive sync time {:.0}×, bitmap memory \
         {:.0}× (goal ≥ 100× each)",
        single.region_bytes / GIB,
        single.sync_us / adaptive.sync_us,
        single.bitmap_bytes as f64 / adaptive.bitmap_bytes as f64
    );
    Ok(())
}
