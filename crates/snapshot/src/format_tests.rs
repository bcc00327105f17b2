use proptest::prelude::*;

use super::*;
use crate::model::{Component, DeviceSnapshot, GuestAddr, MemoryManifest, RegionFile};
use crate::v1::RegionFileV1;

fn sample() -> VmSnapshot {
    VmSnapshot {
        created_unix_secs: 1_790_000_000,
        vm_config: Some(Component::encode("vm-config", 1, &"cfg".to_string()).unwrap()),
        machine: Component::encode("machine", 1, &(7u32, "vcpus".to_string())).unwrap(),
        devices: vec![DeviceSnapshot {
            id: "mem0".into(),
            components: vec![
                Component::encode("pci-config", 1, &vec![0u8; 256]).unwrap(),
                Component::encode("virtio-mem", 1, &(1u64 << 40)).unwrap(),
            ],
        }],
        memory: MemoryManifest {
            regions: vec![RegionFile {
                name: "mem0".into(),
                guest_addr: GuestAddr(1 << 32),
                size_bytes: 1 << 40,
                file_name: "memory-mem0".into(),
                data_bytes: 3 << 30,
            }],
        },
    }
}

/// The version-1 fixture's content (see `tests/fixtures/state-v1.bin`).
fn v1_sample() -> VmSnapshotV1 {
    VmSnapshotV1 {
        machine: Component::encode("machine", 1, &42u64).unwrap(),
        devices: vec![DeviceSnapshot {
            id: "mem0".into(),
            components: vec![Component::encode("virtio-mem", 1, &"state".to_string()).unwrap()],
        }],
        regions: vec![
            RegionFileV1 {
                name: "boot-ram".into(),
                guest_addr: GuestAddr(0),
                size_bytes: 1 << 30,
                file_name: "memory-boot-ram".into(),
            },
            RegionFileV1 {
                name: "mem0".into(),
                guest_addr: GuestAddr(4 << 30),
                size_bytes: 64 << 30,
                file_name: "memory-mem0".into(),
            },
        ],
    }
}

const V1_FIXTURE: &[u8] = include_bytes!("../tests/fixtures/state-v1.bin");

#[test]
#[ignore = "writes the committed fixture; run once when version 1 was current"]
fn write_v1_fixture() {
    let payload = postcard::to_allocvec(&v1_sample()).unwrap();
    let bytes = frame(1, "0.1.0-v1", &payload).unwrap();
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/state-v1.bin"),
        bytes,
    )
    .unwrap();
}

#[test]
fn round_trip_at_the_current_version() {
    let bytes = encode(&sample(), "0.1.0").unwrap();
    let d = decode(&bytes).unwrap();
    assert_eq!(d.format_version, CURRENT_FORMAT_VERSION);
    assert_eq!(d.hotmem_version, "0.1.0");
    assert_eq!(d.snapshot, sample());
}

#[test]
fn committed_v1_fixture_is_read_and_upgraded() {
    let d = decode(V1_FIXTURE).unwrap();
    assert_eq!(d.format_version, 1);
    assert_eq!(d.hotmem_version, "0.1.0-v1");
    let s = d.snapshot;
    assert_eq!(s, VmSnapshot::from(v1_sample()));
    assert_eq!(s.created_unix_secs, 0);
    assert_eq!(s.vm_config, None);
    assert_eq!(s.memory.regions[1].guest_addr, GuestAddr(4 << 30));
    assert_eq!(s.memory.regions[1].data_bytes, 0);
    let (version, value) = s.machine.decode::<u64>("machine", 1..=1).unwrap();
    assert_eq!((version, value), (1, 42));
}

#[test]
fn wrong_magic_is_refused() {
    let mut bytes = encode(&sample(), "0.1.0").unwrap();
    bytes[0] = b'X';
    let e = decode(&bytes).unwrap_err();
    assert!(matches!(e, Error::WrongMagic { .. }), "{e}");
    assert!(e.to_string().contains("not a hotmem snapshot"), "{e}");
    assert!(matches!(decode(b""), Err(Error::WrongMagic { .. })));
    assert!(matches!(
        decode(b"{\"json\": 1}"),
        Err(Error::WrongMagic { .. })
    ));
}

#[test]
fn unknown_versions_are_refused_naming_the_writer() {
    let bytes = frame(3, "9.9.9", b"whatever").unwrap();
    let e = decode(&bytes).unwrap_err();
    assert!(matches!(e, Error::UnknownVersion { found: 3, .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("version 3") && msg.contains("hotmem 9.9.9"),
        "{msg}"
    );
    assert!(msg.contains("1 to 2"), "{msg}");
    assert!(matches!(
        decode(&frame(0, "x", b"").unwrap()),
        Err(Error::UnknownVersion { found: 0, .. })
    ));
}

#[test]
fn every_truncation_is_refused() {
    let bytes = encode(&sample(), "0.1.0").unwrap();
    for len in 1..bytes.len() {
        let e = decode(&bytes[..len]).unwrap_err();
        assert!(matches!(e, Error::Truncated { .. }), "len {len}: {e}");
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode(&sample(), "0.1.0").unwrap();
    bytes.push(0);
    assert!(matches!(
        decode(&bytes),
        Err(Error::TrailingBytes { extra_bytes: 1 })
    ));
}

#[test]
fn every_flipped_payload_or_length_bit_is_caught() {
    let bytes = encode(&sample(), "0.1.0").unwrap();
    let version_end = 14 + "0.1.0".len();
    for i in version_end..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        let e = decode(&b).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ChecksumMismatch { .. }
                    | Error::Truncated { .. }
                    | Error::TrailingBytes { .. }
                    | Error::TooLarge { .. }
            ),
            "byte {i}: {e}"
        );
    }
    let mut b = bytes.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    let e = decode(&b).unwrap_err();
    assert!(e.to_string().contains("corrupted: CRC-32"), "{e}");
}

#[test]
fn huge_announced_payloads_are_refused_before_reading() {
    let mut bytes = frame(2, "v", b"").unwrap();
    let len_at = 14 + 1;
    bytes[len_at..len_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(decode(&bytes), Err(Error::TooLarge { .. })));
}

#[test]
fn a_payload_that_does_not_decode_is_refused_with_its_version() {
    let bytes = frame(2, "v", &[0xff; 7]).unwrap();
    let e = decode(&bytes).unwrap_err();
    assert!(matches!(e, Error::Decode { version: 2, .. }), "{e}");
    let v1_as_v2 = frame(2, "v", &postcard::to_allocvec(&v1_sample()).unwrap()).unwrap();
    assert!(decode(&v1_as_v2).is_err());
}

#[test]
fn component_checks_name_and_version() {
    let c = Component::encode("virtio-mem", 2, &5u32).unwrap();
    assert_eq!(c.decode::<u32>("virtio-mem", 1..=2).unwrap(), (2, 5));
    let e = c.decode::<u32>("virtio-pci", 1..=2).unwrap_err();
    assert!(
        e.to_string().contains("found component 'virtio-mem'"),
        "{e}"
    );
    let e = c.decode::<u32>("virtio-mem", 1..=1).unwrap_err();
    assert!(
        e.to_string().contains("state version 2 is not supported"),
        "{e}"
    );
    let bad = Component { data: vec![], ..c };
    assert!(bad.decode::<u32>("virtio-mem", 1..=2).is_err());
}

fn arb_component() -> impl Strategy<Value = Component> {
    (
        "[a-z-]{1,12}",
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(name, version, data)| Component {
            name,
            version,
            data,
        })
}

fn arb_snapshot() -> impl Strategy<Value = VmSnapshot> {
    let region = ("[a-z0-9-]{1,10}", any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(name, addr, size, data)| RegionFile {
            file_name: format!("memory-{name}"),
            name,
            guest_addr: GuestAddr(addr),
            size_bytes: size,
            data_bytes: data,
        },
    );
    let device = (
        "[a-z0-9]{1,8}",
        proptest::collection::vec(arb_component(), 0..4),
    )
        .prop_map(|(id, components)| DeviceSnapshot { id, components });
    (
        any::<u64>(),
        proptest::option::of(arb_component()),
        arb_component(),
        proptest::collection::vec(device, 0..4),
        proptest::collection::vec(region, 0..4),
    )
        .prop_map(
            |(created, vm_config, machine, devices, regions)| VmSnapshot {
                created_unix_secs: created,
                vm_config,
                machine,
                devices,
                memory: MemoryManifest { regions },
            },
        )
}

proptest! {
    #[test]
    fn any_snapshot_round_trips(s in arb_snapshot(), version in "[ -~]{0,64}") {
        let bytes = encode(&s, &version).unwrap();
        let d = decode(&bytes).unwrap();
        prop_assert_eq!(d.snapshot, s);
        prop_assert_eq!(d.hotmem_version, version);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
        let mut framed = MAGIC.to_vec();
        framed.extend_from_slice(&bytes);
        let _ = decode(&framed);
    }
}
