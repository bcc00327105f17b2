use std::os::unix::fs::FileExt;

use super::*;
use crate::{Backing, BlockMemory};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A sparse file on tmpfs (where a fault on a hole of a private file mapping allocates a page
/// in the file) with `0xA5` data at each of `data` (offset, size), `size` bytes long.
fn tmpfs_file(size: u64, data: &[(u64, u64)]) -> File {
    let file = tempfile::tempfile_in("/dev/shm").expect("these tests need tmpfs at /dev/shm");
    file.set_len(size).unwrap();
    for &(offset, len) in data {
        file.write_all_at(&vec![0xA5; len as usize], offset)
            .unwrap();
    }
    file
}

fn allocated_bytes(file: &File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    file.metadata().unwrap().blocks() * 512
}

fn read(region: &HostRegion, offset: u64) -> u8 {
    assert!(offset < region.size_bytes());
    // SAFETY: inside the read-write mapping owned by `region`.
    unsafe { std::ptr::read_volatile((region.host_addr() + offset as usize) as *const u8) }
}

fn write(region: &HostRegion, offset: u64, value: u8) {
    assert!(offset < region.size_bytes());
    // SAFETY: inside the read-write mapping owned by `region`.
    unsafe { std::ptr::write_volatile((region.host_addr() + offset as usize) as *mut u8, value) }
}

#[test]
fn snapshot_memory_reads_the_file_data_and_zero_in_its_holes() {
    let file = tmpfs_file(16 * MIB, &[(MIB, 64 * KIB), (8 * MIB, 4 * KIB)]);
    let region = HostRegion::from_snapshot_file(&file).unwrap();
    assert_eq!(region.size_bytes(), 16 * MIB);
    assert!(region.is_snapshot_backed() && !region.untouched_reads_zero());
    assert_eq!(read(&region, MIB), 0xA5);
    assert_eq!(read(&region, MIB + 64 * KIB - 1), 0xA5);
    assert_eq!(read(&region, MIB + 64 * KIB), 0);
    assert_eq!(read(&region, 8 * MIB + 100), 0xA5);
    assert_eq!(read(&region, 0), 0);
    assert_eq!(read(&region, 16 * MIB - 1), 0);
}

#[test]
fn touching_holes_of_snapshot_memory_allocates_nothing_in_the_file() {
    let file = tmpfs_file(64 * MIB, &[(0, 4 * MIB)]);
    let before = allocated_bytes(&file);
    let region = HostRegion::from_snapshot_file(&file).unwrap();
    for offset in (8 * MIB..40 * MIB).step_by(4096) {
        assert_eq!(read(&region, offset), 0);
        write(&region, offset + 1, 7);
    }
    assert_eq!(
        allocated_bytes(&file),
        before,
        "faults on holes allocated pages in the snapshot file"
    );
}

#[test]
fn writes_to_snapshot_memory_stay_private() {
    let file = tmpfs_file(8 * MIB, &[(0, MIB)]);
    let region = HostRegion::from_snapshot_file(&file).unwrap();
    write(&region, 4096, 1);
    write(&region, 4 * MIB, 2);
    assert_eq!((read(&region, 4096), read(&region, 4 * MIB)), (1, 2));
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, 4096).unwrap();
    assert_eq!(byte[0], 0xA5, "the snapshot file changed");
}

#[test]
fn discarded_snapshot_memory_reads_zero_not_the_file_and_is_usable_again() {
    let file = tmpfs_file(32 * MIB, &[(0, 16 * MIB)]);
    let mut region = HostRegion::from_snapshot_file(&file).unwrap();
    write(&region, 2 * MIB, 9);
    // Unplug blocks holding file data (touched and untouched), then replug and read.
    region.discard(2 * MIB, 4 * MIB).unwrap();
    assert_eq!(read(&region, 2 * MIB), 0, "a private copy came back");
    assert_eq!(
        read(&region, 3 * MIB),
        0,
        "the snapshot file's data came back"
    );
    assert_eq!(
        read(&region, MIB),
        0xA5,
        "data outside the discarded range was lost"
    );
    assert_eq!(read(&region, 6 * MIB), 0xA5);
    write(&region, 3 * MIB, 4);
    assert_eq!(read(&region, 3 * MIB), 4);
    region.discard(2 * MIB, 4 * MIB).unwrap();
    assert_eq!(read(&region, 3 * MIB), 0);
}

#[test]
fn data_extents_are_page_aligned_and_merged() {
    let r = |offset_bytes, size_bytes| FileRange {
        offset_bytes,
        size_bytes,
    };
    let extents = [
        r(100, 10),
        r(4096, 4096),
        r(3 * 4096 + 1, 1),
        r(10 * 4096, 4096),
    ];
    assert_eq!(
        file_mappings(&extents, 4096, 64 * 4096, 100),
        vec![r(0, 2 * 4096), r(3 * 4096, 4096), r(10 * 4096, 4096)]
    );
}

#[test]
fn too_many_extents_are_widened_under_the_mapping_limit() {
    // Every other page holds data: 1000 extents, at most 10 mappings.
    let extents: Vec<FileRange> = (0..1000u64)
        .map(|i| FileRange {
            offset_bytes: i * 2 * 4096,
            size_bytes: 4096,
        })
        .collect();
    let size = 2000 * 4096;
    let mappings = file_mappings(&extents, 4096, size, 10);
    assert!(mappings.len() <= 10, "{}", mappings.len());
    for e in &extents {
        assert!(
            mappings.iter().any(|m| m.offset_bytes <= e.offset_bytes
                && e.offset_bytes + e.size_bytes <= m.offset_bytes + m.size_bytes),
            "extent at {:#x} lost",
            e.offset_bytes
        );
    }
    assert!(
        mappings
            .iter()
            .all(|m| m.offset_bytes + m.size_bytes <= size)
    );
}

#[test]
fn a_file_with_many_extents_maps_with_its_data() {
    let data: Vec<(u64, u64)> = (0..(MAX_FILE_MAPPINGS as u64 + 100))
        .map(|i| (i * 2 * 4096, 4096))
        .collect();
    let file = tmpfs_file((MAX_FILE_MAPPINGS as u64 + 100) * 2 * 4096, &data);
    let region = HostRegion::from_snapshot_file(&file).unwrap();
    for &(offset, _) in data.iter().step_by(97) {
        assert_eq!(read(&region, offset), 0xA5);
        assert_eq!(read(&region, offset + 4096), 0);
    }
}

#[test]
fn empty_or_unaligned_snapshot_files_are_refused() {
    for len in [0, 4096 + 1] {
        let file = tmpfs_file(len, &[]);
        let err = HostRegion::from_snapshot_file(&file).unwrap_err();
        assert!(matches!(err, Error::InvalidBacking(_)), "{err}");
    }
}

#[test]
fn existing_anonymous_memory_maps_a_snapshot_file_over_itself() {
    let file = tmpfs_file(16 * MIB, &[(MIB, 64 * KIB)]);
    let mut region = HostRegion::new(&Backing::anon(16 * MIB)).unwrap();
    write(&region, 8 * MIB, 7);
    region.overlay_snapshot_file(&file).unwrap();
    assert_eq!(read(&region, MIB), 0xA5, "the file's data");
    assert_eq!(
        read(&region, 8 * MIB),
        7,
        "a hole keeps what the memory held"
    );
    assert!(
        region.snapshot_file().is_some(),
        "saves know untouched pages hold data"
    );
    write(&region, MIB, 1);
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, MIB).unwrap();
    assert_eq!(byte[0], 0xA5, "writes stay private");
}

#[test]
fn only_anonymous_memory_of_the_file_size_maps_a_snapshot_file_once() {
    let file = tmpfs_file(16 * MIB, &[(MIB, 64 * KIB)]);
    let mut shared = HostRegion::new(&Backing {
        kind: BackingKind::Memfd,
        ..Backing::anon(16 * MIB)
    })
    .unwrap();
    assert!(
        shared.overlay_snapshot_file(&file).is_err(),
        "shared memory"
    );
    let mut smaller = HostRegion::new(&Backing::anon(8 * MIB)).unwrap();
    let err = smaller.overlay_snapshot_file(&file).unwrap_err();
    assert!(err.to_string().contains("0x1000000 bytes"), "{err}");
    let mut region = HostRegion::new(&Backing::anon(16 * MIB)).unwrap();
    region.overlay_snapshot_file(&file).unwrap();
    assert!(region.overlay_snapshot_file(&file).is_err(), "twice");
}
