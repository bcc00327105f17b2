use super::*;

fn facts() -> LocalFacts {
    LocalFacts {
        protocol_version: PROTOCOL_VERSION,
        hotmem_version: "0.1.0".into(),
        format_versions: 1..=2,
        cpu_features: vec![CpuFeatureWord {
            name: "leaf_0x7.ebx".into(),
            bits: 0b1011,
        }],
        boot_ram: vec![RamShape {
            guest_addr: 0,
            size_bytes: 512 << 20,
        }],
        devices: vec![DeviceShape {
            id: "mem0".into(),
            region_size_bytes: 64 << 30,
            block_size_bytes: 2 << 20,
            guest_addr: 0x1_0000_0000,
            node: 0,
        }],
    }
}

fn hello() -> Handshake {
    let f = facts();
    Handshake {
        protocol_version: f.protocol_version,
        hotmem_version: f.hotmem_version,
        format_version: 2,
        cpu_features: vec![CpuFeatureWord {
            name: "leaf_0x7.ebx".into(),
            bits: 0b0011,
        }],
        boot_ram: f.boot_ram,
        devices: f.devices,
        vm_config: vec![1, 2, 3],
    }
}

type Change = Box<dyn FnOnce(&mut Handshake)>;

fn refused(change: impl FnOnce(&mut Handshake)) -> Refusal {
    let mut h = hello();
    change(&mut h);
    h.check(&facts()).expect_err("must be refused")
}

#[test]
fn a_matching_handshake_is_accepted() {
    assert_eq!(hello().check(&facts()), Ok(()));
}

#[test]
fn every_mismatch_is_refused_naming_its_field() {
    let cases: Vec<(&str, Change)> = vec![
        ("protocol_version", Box::new(|h| h.protocol_version = 9)),
        (
            "hotmem_version",
            Box::new(|h| h.hotmem_version = "0.2.0".into()),
        ),
        ("format_version", Box::new(|h| h.format_version = 3)),
        (
            "cpu_features.leaf_0x7.ebx",
            Box::new(|h| h.cpu_features[0].bits = 0b0100),
        ),
        (
            "cpu_features.leaf_0x1.ecx",
            Box::new(|h| {
                h.cpu_features.push(CpuFeatureWord {
                    name: "leaf_0x1.ecx".into(),
                    bits: 1,
                })
            }),
        ),
        ("boot_ram.len", Box::new(|h| h.boot_ram.clear())),
        (
            "boot_ram[0].size_bytes",
            Box::new(|h| h.boot_ram[0].size_bytes = 1 << 30),
        ),
        (
            "boot_ram[0].guest_addr",
            Box::new(|h| h.boot_ram[0].guest_addr = 4096),
        ),
        ("devices", Box::new(|h| h.devices[0].id = "mem1".into())),
        (
            "devices[mem0].region_size_bytes",
            Box::new(|h| h.devices[0].region_size_bytes = 32 << 30),
        ),
        (
            "devices[mem0].block_size_bytes",
            Box::new(|h| h.devices[0].block_size_bytes = 4 << 20),
        ),
        (
            "devices[mem0].guest_addr",
            Box::new(|h| h.devices[0].guest_addr = 0x2_0000_0000),
        ),
        ("devices[mem0].node", Box::new(|h| h.devices[0].node = 1)),
    ];
    for (field, change) in cases {
        let r = refused(change);
        assert_eq!(r.field, field, "{r}");
        assert!(r.to_string().contains(field), "{r}");
    }
}

#[test]
fn the_source_having_fewer_cpu_features_is_fine() {
    let mut h = hello();
    h.cpu_features[0].bits = 0;
    assert_eq!(h.check(&facts()), Ok(()));
}

#[test]
fn frames_round_trip_with_their_body() {
    let mut buf = Vec::new();
    let msg = Message::Pages {
        region: RegionId::Device(1),
        pages: vec![PageEntry {
            offset_bytes: 4096,
            zero: false,
        }],
    };
    write_message(&mut buf, &msg, &[7; 4096]).unwrap();
    write_message(&mut buf, &Message::Done, &[]).unwrap();
    let mut r = &buf[..];
    assert_eq!(read_message(&mut r).unwrap(), (msg, vec![7; 4096]));
    assert_eq!(read_message(&mut r).unwrap(), (Message::Done, vec![]));
    assert!(matches!(read_message(&mut r), Err(Error::Io(_))));
}

#[test]
fn a_stream_that_is_not_migration_is_refused() {
    let mut r = &b"GET / HTTP/1.1\r\n\r\n"[..];
    let e = read_message(&mut r).unwrap_err();
    assert!(
        e.to_string().contains("not a hotmem migration stream"),
        "{e}"
    );
}

#[test]
fn an_oversized_frame_is_refused_before_allocating() {
    let mut buf = MAGIC.to_vec();
    buf.extend_from_slice(&1u32.to_le_bytes());
    buf.extend_from_slice(&u64::MAX.to_le_bytes());
    let e = read_message(&mut &buf[..]).unwrap_err();
    assert!(e.to_string().contains("exceeds"), "{e}");
}

/// A stream that hands out its bytes and remembers the largest buffer it was asked to fill.
struct Recording<'a> {
    bytes: &'a [u8],
    largest_read: usize,
}

impl std::io::Read for Recording<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.largest_read = self.largest_read.max(buf.len());
        self.bytes.read(buf)
    }
}

#[test]
fn a_body_length_alone_reserves_no_memory() {
    // A peer announces a 200 MiB body (within MAX_BODY_BYTES) and sends 3 bytes: the frame
    // fails as cut short, and no buffer of the announced size was ever handed out.
    let mut buf = Vec::new();
    write_message(&mut buf, &Message::DeviceState, &[]).unwrap();
    buf[8..16].copy_from_slice(&(200u64 << 20).to_le_bytes());
    buf.extend_from_slice(&[1, 2, 3]);
    let mut r = Recording {
        bytes: &buf,
        largest_read: 0,
    };
    let e = read_message(&mut r).unwrap_err();
    assert!(
        e.to_string().contains("cut short: 3 of 209715200 bytes"),
        "{e}"
    );
    assert!(
        r.largest_read <= 2 << 20,
        "asked to fill {} bytes",
        r.largest_read
    );
}
