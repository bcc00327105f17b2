//! Host measurements the benchmarks report.

use std::time::Instant;

/// Bytes of vmalloc'ed kernel memory (`VmallocUsed` in /proc/meminfo), where KVM keeps memslot
/// metadata (rmap, gfn_track, lpage_info).
pub fn vmalloc_used_bytes() -> u64 {
    meminfo_kib("VmallocUsed:") * 1024
}

/// Memory the kernel could still hand out (`MemAvailable`).
pub fn mem_available_bytes() -> u64 {
    meminfo_kib("MemAvailable:") * 1024
}

/// A field of /proc/meminfo in KiB (0 when missing).
pub fn meminfo_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `f`, returning its result and the milliseconds it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed().as_secs_f64() * 1e3)
}

/// KVM's memslot metadata per mapped byte. Without the TDP MMU: 8 bytes of rmap and 2 bytes of
/// gfn_track per 4 KiB page (the seed patch's arithmetic; ~2.5 GiB per TiB, as measured here).
/// With the TDP MMU rmaps are not allocated; large-page info (a few bytes per 2 MiB) remains.
pub fn estimated_kvm_metadata_bytes(mapped_bytes: u64) -> u64 {
    if mmu_kind() == "tdp" {
        mapped_bytes / (2 << 20) * 8
    } else {
        mapped_bytes / 4096 * 10
    }
}

/// `shadow` or `tdp`: whether this host's KVM uses two-dimensional paging (NPT/EPT).
pub fn mmu_kind() -> &'static str {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let tdp = [
        "/sys/module/kvm_amd/parameters/npt",
        "/sys/module/kvm_intel/parameters/ept",
    ]
    .iter()
    .any(|p| read(p).is_ok_and(|v| v == "1" || v == "Y"));
    if tdp { "tdp" } else { "shadow" }
}
