use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use hostmem::{Backing, HostRegion};

use super::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;

fn fill(region: &HostRegion, offset: u64, size: u64, byte: u8) {
    // SAFETY: inside the read-write mapping owned by `region`; the test is its only user.
    unsafe {
        std::ptr::write_bytes(
            (region.host_addr() + offset as usize) as *mut u8,
            byte,
            size as usize,
        )
    };
}

fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn range(offset_bytes: u64, size_bytes: u64) -> ByteRange {
    ByteRange {
        offset_bytes,
        size_bytes,
    }
}

#[test]
fn only_nonzero_touched_pages_in_named_ranges_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem");
    let region = HostRegion::new(&Backing::anon(64 * MIB)).unwrap();
    fill(&region, 0, 3 * PAGE, 0x11); // data
    fill(&region, 8 * PAGE, PAGE, 0); // touched, zero
    fill(&region, 16 * MIB, MIB, 0x22); // data
    fill(&region, 40 * MIB, MIB, 0x33); // data outside the named ranges
    let ranges = [range(0, 32 * MIB), range(48 * MIB, 16 * MIB)];
    let mut calls = 0;
    let stats = save(
        &HostMemory::from_region(&region),
        &ranges,
        &path,
        &mut |_| calls += 1,
    )
    .unwrap();
    assert_eq!(stats.scanned_bytes, 48 * MIB);
    assert_eq!(stats.data_bytes, 3 * PAGE + MIB);
    assert!(stats.zero_bytes >= PAGE);
    assert!(stats.untouched_bytes > 40 * MIB, "{stats:?}");
    assert_eq!(calls, 24, "one progress call per 2 MiB chunk");
    let file = File::open(&path).unwrap();
    assert_eq!(file.metadata().unwrap().len(), 64 * MIB);
    assert_eq!(
        data_extents(&file).unwrap(),
        [range(0, 3 * PAGE), range(16 * MIB, MIB)]
    );
    assert!(allocated_bytes(&path) <= 3 * PAGE + MIB + 64 * 1024);

    let restored = HostRegion::new(&Backing::anon(64 * MIB)).unwrap();
    let loaded = load(&path, &HostMemory::from_region(&restored)).unwrap();
    assert_eq!(loaded.data_bytes, 3 * PAGE + MIB);
    assert_eq!(loaded.extents, 2);
    let mem = HostMemory::from_region(&restored);
    assert!(mem.bytes(0, 3 * PAGE).iter().all(|&b| b == 0x11));
    assert!(
        mem.bytes(3 * PAGE, 16 * MIB - 3 * PAGE)
            .iter()
            .all(|&b| b == 0)
    );
    assert!(mem.bytes(16 * MIB, MIB).iter().all(|&b| b == 0x22));
    assert!(
        mem.bytes(40 * MIB, MIB).iter().all(|&b| b == 0),
        "not named"
    );
}

#[test]
fn file_backed_memory_is_read_even_where_untouched_by_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let region = HostRegion::new(&Backing {
        kind: hostmem::BackingKind::Memfd,
        size_bytes: 8 * MIB,
        hugetlbfs_dir: None,
    })
    .unwrap();
    fill(&region, MIB, PAGE, 0x44);
    let mem = HostMemory::from_region(&region);
    assert!(matches!(mem.untouched, Untouched::MayHoldData));
    let path = dir.path().join("mem");
    let stats = save(&mem, &[range(0, 8 * MIB)], &path, &mut |_| {}).unwrap();
    assert_eq!(stats.data_bytes, PAGE);
    assert_eq!(stats.untouched_bytes, 0);
}

#[test]
fn load_refuses_a_file_of_the_wrong_size_and_ranges_outside_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let region = HostRegion::new(&Backing::anon(8 * MIB)).unwrap();
    let e = load(&path, &HostMemory::from_region(&region)).unwrap_err();
    assert!(
        e.to_string()
            .contains("has 0x400000 bytes but the region has 0x800000"),
        "{e}"
    );
    let e = save(
        &HostMemory::from_region(&region),
        &[range(4 * MIB, 8 * MIB)],
        &path,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, Error::BadRange { .. }), "{e}");
}

/// A 1 TiB device region with 3 GiB plugged, of which 1 GiB holds data: the file is 1 TiB
/// apparent, allocation stays within 5% of the data, and the unplugged 1021 GiB are never read.
#[test]
fn one_tib_region_with_a_few_gib_plugged_stays_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem");
    let region = HostRegion::new(&Backing::anon(1 << 40)).unwrap();
    let plugged = [range(0, GIB), range(100 * GIB, GIB), range(1023 * GIB, GIB)];
    fill(&region, 0, 512 * MIB, 0x5a);
    fill(&region, 100 * GIB + 256 * MIB, 256 * MIB, 0xa5);
    fill(&region, 1023 * GIB + 768 * MIB, 256 * MIB, 0x77);
    fill(&region, 1023 * GIB, 64 * MIB, 0); // touched, still zero
    let touched_data = GIB;
    let started = Instant::now();
    let stats = save(
        &HostMemory::from_region(&region),
        &plugged,
        &path,
        &mut |_| {},
    )
    .unwrap();
    let elapsed = started.elapsed();
    let allocated = allocated_bytes(&path);
    eprintln!(
        "1 TiB region, 3 GiB plugged, 1 GiB data: {stats:?}, allocated {allocated} bytes, {elapsed:?}"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 40);
    assert_eq!(stats.scanned_bytes, 3 * GIB);
    assert_eq!(stats.data_bytes, touched_data);
    assert!(allocated as f64 <= 1.05 * (3 * GIB) as f64);
    assert!(
        allocated as f64 <= 1.05 * touched_data as f64,
        "{allocated}"
    );
    let file = File::open(&path).unwrap();
    assert_eq!(
        data_extents(&file).unwrap(),
        [
            range(0, 512 * MIB),
            range(100 * GIB + 256 * MIB, 256 * MIB),
            range(1023 * GIB + 768 * MIB, 256 * MIB)
        ]
    );
}

#[test]
fn saving_over_the_file_a_region_was_lazily_restored_from_keeps_the_region_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem");
    let source = HostRegion::new(&Backing::anon(8 * MIB)).unwrap();
    fill(&source, 0, MIB, 0x31);
    let mem = HostMemory::from_region(&source);
    save(&mem, &[range(0, 8 * MIB)], &path, &mut |_| {}).unwrap();
    let lazy = HostRegion::from_snapshot_file(&File::open(&path).unwrap()).unwrap();
    fill(&lazy, 4 * MIB, PAGE, 0x42);
    let lazy_mem = HostMemory::from_region(&lazy);
    assert!(matches!(lazy_mem.untouched, Untouched::FileData(_)));
    let stats = save(&lazy_mem, &[range(0, 8 * MIB)], &path, &mut |_| {}).unwrap();
    assert_eq!(stats.data_bytes, MIB + PAGE);
    // The file's hole at 4 MiB is anonymous memory with transparent huge pages: touching one
    // page there may bring in its whole 2 MiB huge page, which is then read (and found zero).
    assert!(
        stats.untouched_bytes >= 5 * MIB,
        "pages neither touched nor in the file are skipped unread: {stats:?}"
    );
    assert!(
        lazy_mem.bytes(0, MIB).iter().all(|&b| b == 0x31),
        "old file still mapped"
    );
    let file = File::open(&path).unwrap();
    assert_eq!(
        data_extents(&file).unwrap(),
        [range(0, MIB), range(4 * MIB, PAGE)]
    );
}

#[test]
fn a_lazily_restored_region_saves_file_data_and_private_writes_but_not_discarded_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let source = HostRegion::new(&Backing::anon(16 * MIB)).unwrap();
    fill(&source, 0, 2 * MIB, 0x11);
    fill(&source, 8 * MIB, 2 * MIB, 0x22);
    save(
        &HostMemory::from_region(&source),
        &[range(0, 16 * MIB)],
        &first,
        &mut |_| {},
    )
    .unwrap();
    let mut lazy = HostRegion::from_snapshot_file(&File::open(&first).unwrap()).unwrap();
    // Untouched file data at [0, 2M), a private write at 4M, and [8M, 10M) discarded.
    fill(&lazy, 4 * MIB, PAGE, 0x33);
    hostmem::BlockMemory::discard(&mut lazy, 8 * MIB, 2 * MIB).unwrap();
    let second = dir.path().join("second");
    let stats = save(
        &HostMemory::from_region(&lazy),
        &[range(0, 16 * MIB)],
        &second,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(stats.data_bytes, 2 * MIB + PAGE, "{stats:?}");
    assert_eq!(
        data_extents(&File::open(&second).unwrap()).unwrap(),
        [range(0, 2 * MIB), range(4 * MIB, PAGE)]
    );
}

#[test]
fn extents_mark_exactly_their_pages() {
    let mut pages = vec![false; 8];
    let extents = [
        range(0, PAGE),
        range(3 * PAGE + 1, PAGE),
        range(100 * PAGE, PAGE),
    ];
    mark_extents(&mut pages, 0, PAGE, &extents);
    assert_eq!(pages, [true, false, false, true, true, false, false, false]);
    let mut pages = vec![false; 2];
    mark_extents(&mut pages, 99 * PAGE, PAGE, &extents);
    assert_eq!(pages, [false, true]);
}
