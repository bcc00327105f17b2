//! Lazy restore: a region mapped copy-on-write from a snapshot memory file.

use std::fs::File;
use std::os::unix::fs::FileExt;

use hostmem::{BlockMemory, HostRegion};

const MIB: u64 = 1 << 20;

fn read(region: &HostRegion, offset: u64) -> u8 {
    // SAFETY: inside the read-write mapping owned by `region`.
    unsafe { *((region.host_addr() + offset as usize) as *const u8) }
}

fn write(region: &HostRegion, offset: u64, value: u8) {
    // SAFETY: inside the read-write mapping owned by `region`.
    unsafe { *((region.host_addr() + offset as usize) as *mut u8) = value };
}

/// A 64 MiB sparse file with 0x11 in its first MiB and 0x22 in [32, 33) MiB.
fn memory_file(dir: &std::path::Path) -> File {
    let path = dir.join("memory");
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(64 * MIB).unwrap();
    file.write_all_at(&vec![0x11; MIB as usize], 0).unwrap();
    file.write_all_at(&vec![0x22; MIB as usize], 32 * MIB)
        .unwrap();
    file
}

#[test]
fn contents_come_from_the_file_and_writes_stay_private() {
    let dir = tempfile::tempdir().unwrap();
    let file = memory_file(dir.path());
    let region = HostRegion::from_snapshot_file(&file).unwrap();
    assert_eq!(region.size_bytes(), 64 * MIB);
    assert!(region.is_snapshot_backed());
    assert!(!region.untouched_reads_zero());
    assert_eq!(read(&region, 0), 0x11);
    assert_eq!(read(&region, 32 * MIB + 5), 0x22);
    assert_eq!(read(&region, 16 * MIB), 0);
    write(&region, 0, 0x99);
    assert_eq!(read(&region, 0), 0x99);
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, 0).unwrap();
    assert_eq!(byte, [0x11], "the file is never written");
}

#[test]
fn an_unplugged_then_replugged_block_reads_zeros_not_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = memory_file(dir.path());
    let mut region = HostRegion::from_snapshot_file(&file).unwrap();
    write(&region, 32 * MIB + 4096, 0x77); // a private copy of one page
    // Unplug the 2 MiB block at 32 MiB (file data plus a private page).
    region.discard(32 * MIB, 2 * MIB).unwrap();
    for offset in [32 * MIB, 32 * MIB + 4096, 33 * MIB] {
        assert_eq!(read(&region, offset), 0, "{offset:#x} after discard");
    }
    // Re-plug: the guest sees zeroes, then its own writes.
    region.populate(32 * MIB, 2 * MIB).unwrap();
    assert_eq!(read(&region, 32 * MIB + 100), 0);
    write(&region, 32 * MIB + 100, 0x55);
    assert_eq!(read(&region, 32 * MIB + 100), 0x55);
    // Neighbours keep their file contents.
    assert_eq!(read(&region, MIB - 1), 0x11);
    assert_eq!(read(&region, 34 * MIB), 0);
    assert_eq!(read(&region, 0), 0x11);
}

#[test]
fn an_empty_or_odd_sized_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd");
    let file = File::create(&path).unwrap();
    assert!(HostRegion::from_snapshot_file(&File::open(&path).unwrap()).is_err());
    file.set_len(4097).unwrap();
    let e = HostRegion::from_snapshot_file(&File::open(&path).unwrap()).unwrap_err();
    assert!(e.to_string().contains("not page-sized"), "{e}");
}
