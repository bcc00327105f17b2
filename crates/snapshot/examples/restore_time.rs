//! Restore-ready time against plugged size: eager restore (read the sparse memory file into
//! fresh anonymous memory) and lazy restore (map the file copy-on-write).
//!
//! `cargo run --release -p snapshot --example restore_time -- [DIR] [GIB,GIB,...] [EAGER_MAX_GIB]`
//! (defaults: the system temp dir, `1,4,16`, 4). Each size writes a file with that much data in
//! a 1 TiB region, in 2 MiB blocks spread over the region, then times both restores; eager
//! restore is skipped above `EAGER_MAX_GIB` (it needs that much free RAM).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

use hostmem::{Backing, HostRegion};
use snapshot::HostMemory;

const GIB: u64 = 1 << 30;
const BLOCK: u64 = 2 << 20;
const REGION: u64 = 1 << 40;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map_or_else(std::env::temp_dir, PathBuf::from);
    let sizes: Vec<u64> = args
        .next()
        .unwrap_or_else(|| "1,4,16".into())
        .split(',')
        .map(|s| s.parse().expect("sizes in GiB"))
        .collect();
    let eager_max: u64 = args.next().map_or(4, |s| s.parse().expect("GiB"));
    println!("plugged_gib,file_write_s,lazy_ready_ms,lazy_first_touch_us,eager_ready_ms");
    for gib in sizes {
        let path = dir.join(format!("hotmem-restore-time-{gib}g"));
        let file = File::create(&path).expect("create");
        file.set_len(REGION).expect("set_len");
        let blocks = gib * GIB / BLOCK;
        let stride = REGION / BLOCK / blocks;
        let data = vec![0xa5u8; BLOCK as usize];
        let started = Instant::now();
        for i in 0..blocks {
            file.write_all_at(&data, i * stride * BLOCK).expect("write");
        }
        file.sync_all().expect("sync");
        let write_s = started.elapsed().as_secs_f64();
        drop(file);

        let started = Instant::now();
        let lazy = HostRegion::from_snapshot_file(&File::open(&path).expect("open")).expect("map");
        let lazy_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = Instant::now();
        // SAFETY: reads the first byte of the mapping `lazy` owns.
        let first = unsafe { *(lazy.host_addr() as *const u8) };
        let touch_us = started.elapsed().as_secs_f64() * 1e6;
        assert_eq!(first, 0xa5);
        drop(lazy);

        let eager_ms = if gib <= eager_max {
            let started = Instant::now();
            let region = HostRegion::new(&Backing::anon(REGION)).expect("anon");
            snapshot::memfile::load(&path, &HostMemory::from_region(&region)).expect("load");
            Some(started.elapsed().as_secs_f64() * 1e3)
        } else {
            None
        };
        let eager = eager_ms.map_or("skipped".into(), |ms| format!("{ms:.1}"));
        println!("{gib},{write_s:.1},{lazy_ms:.3},{touch_us:.1},{eager}");
        let _ = std::fs::remove_file(&path);
    }
}
