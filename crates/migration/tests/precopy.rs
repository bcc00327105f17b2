//! The pre-copy driver against the receiver over a socket pair, with a scripted guest that
//! writes, plugs and unplugs while rounds run.

use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::thread;

use migration::destination::{Incoming, Received};
use migration::fake::{FakeSink, FakeSource, GuestOp};
use migration::protocol::{CpuFeatureWord, DeviceShape, LocalFacts, RamShape};
use migration::source::{Report, Settings, migrate};
use migration::{Error, Handshake, PAGE_BYTES, PROTOCOL_VERSION, RegionId};
use proptest::prelude::*;

const BOOT: u64 = 64 * PAGE_BYTES;
const BLOCK: u64 = 4 * PAGE_BYTES;
const BLOCKS: u64 = 32;

fn handshake(source: &FakeSource) -> Handshake {
    Handshake {
        protocol_version: PROTOCOL_VERSION,
        hotmem_version: "t".into(),
        format_version: 2,
        cpu_features: vec![],
        boot_ram: vec![RamShape {
            guest_addr: 0,
            size_bytes: source.boot_ram[0].len() as u64,
        }],
        devices: source
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| DeviceShape {
                id: format!("mem{i}"),
                region_size_bytes: d.memory.len() as u64,
                block_size_bytes: d.block_size_bytes,
                guest_addr: 1 << 32,
                node: 0,
            })
            .collect(),
        vm_config: vec![],
    }
}

fn facts(h: &Handshake) -> LocalFacts {
    LocalFacts {
        protocol_version: PROTOCOL_VERSION,
        hotmem_version: h.hotmem_version.clone(),
        format_versions: 1..=2,
        cpu_features: vec![CpuFeatureWord {
            name: "x".into(),
            bits: 0,
        }],
        boot_ram: h.boot_ram.clone(),
        devices: h.devices.clone(),
    }
}

type Outcome = (
    migration::Result<Report>,
    FakeSource,
    migration::Result<Received>,
    FakeSink,
);

fn run(mut source: FakeSource, settings: Settings, local: Option<LocalFacts>) -> Outcome {
    let (a, b) = UnixStream::pair().unwrap();
    let hello = handshake(&source);
    let local = local.unwrap_or_else(|| facts(&hello));
    let mut sink = FakeSink::like(&source);
    let src = thread::spawn(move || {
        let mut a = a;
        let r = migrate(&mut a, hello, &mut source, &settings, &mut |_| {});
        (r, source)
    });
    let mut incoming = Incoming::accept(b).unwrap();
    let received = incoming.check(&local).and_then(|()| {
        let r = incoming.receive(&mut sink)?;
        incoming.running(vec![])?;
        Ok(r)
    });
    let (report, source) = src.join().unwrap();
    (report, source, received, sink)
}

fn op() -> impl Strategy<Value = GuestOp> {
    prop_oneof![
        (0..BOOT, any::<u8>()).prop_map(|(o, b)| GuestOp::Write {
            region: RegionId::BootRam(0),
            offset_bytes: o,
            byte: b
        }),
        (0..BLOCK * BLOCKS, 1..=255u8).prop_map(|(o, b)| GuestOp::Write {
            region: RegionId::Device(0),
            offset_bytes: o,
            byte: b
        }),
        (0..BLOCKS).prop_map(|b| GuestOp::Plug {
            device: 0,
            block: b
        }),
        (0..BLOCKS).prop_map(|b| GuestOp::Unplug {
            device: 0,
            block: b
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_destination_equals_the_source_in_plugged_blocks_and_holds_nothing_elsewhere(
        before in prop::collection::vec(op(), 0..40),
        during in prop::collection::vec(op(), 0..200),
        ops_per_call in 1usize..5,
        batch_pages in 1usize..8,
    ) {
        let mut source = FakeSource::new(BOOT, &[(BLOCK * BLOCKS, BLOCK)]);
        for op in before {
            source.apply(op);
        }
        source.script = during.into();
        source.ops_per_call = ops_per_call;
        // Only a round with nothing dirty fits: as many rounds as the script makes necessary.
        let settings = Settings {
            max_downtime_ms: 0,
            max_rounds: 10_000,
            batch_pages,
            assumed_switchover: Some(std::time::Duration::ZERO),
            ..Settings::default()
        };
        let (report, source, received, sink) = run(source, settings, None);
        report.unwrap();
        let received = received.unwrap();
        prop_assert_eq!(&sink.boot_ram, &source.boot_ram);
        let dev = &source.devices[0];
        prop_assert_eq!(&received.bitmaps[0], &dev.plugged, "the final bitmap wins");
        for block in 0..BLOCKS {
            let range = (block * BLOCK) as usize..((block + 1) * BLOCK) as usize;
            if dev.plugged.get(block) {
                prop_assert_eq!(&sink.devices[0][range.clone()], &dev.memory[range], "block {}", block);
            } else {
                prop_assert!(sink.devices[0][range].iter().all(|&b| b == 0), "unplugged block {} holds data", block);
            }
        }
        prop_assert_eq!(received.device_state, source.state.clone());
        prop_assert_eq!((source.pauses, source.resumes), (1, 0));
    }
}

#[test]
fn zero_pages_travel_as_markers_and_unplugged_blocks_not_at_all() {
    let mut source = FakeSource::new(BOOT, &[(BLOCK * BLOCKS, BLOCK)]);
    source.apply(GuestOp::Plug {
        device: 0,
        block: 3,
    });
    source.apply(GuestOp::Write {
        region: RegionId::Device(0),
        offset_bytes: 3 * BLOCK + 5,
        byte: 9,
    });
    let (report, _, received, _) = run(source, Settings::default(), None);
    let report = report.unwrap();
    let received = received.unwrap();
    // Boot RAM (64 pages) + one plugged block (4 pages), one of them with data.
    assert_eq!(received.data_pages, 1);
    assert_eq!(received.zero_pages, 64 + 3);
    assert_eq!(report.data_pages, 1);
    assert!(
        report.transferred_bytes < 4 * PAGE_BYTES,
        "{} bytes for one data page",
        report.transferred_bytes
    );
}

#[test]
fn a_guest_dirtying_faster_than_the_limit_allows_fails_after_max_rounds_and_resumes() {
    let mut source = FakeSource::new(BOOT, &[(BLOCK * BLOCKS, BLOCK)]);
    source.script = (0..100_000u64)
        .map(|i| GuestOp::Write {
            region: RegionId::BootRam(0),
            offset_bytes: (i * PAGE_BYTES) % BOOT,
            byte: i as u8,
        })
        .collect();
    source.ops_per_call = 8;
    let settings = Settings {
        max_downtime_ms: 0,
        max_rounds: 3,
        ..Settings::default()
    };
    let (report, source, received, _) = run(source, settings, None);
    let e = report.unwrap_err();
    assert!(matches!(e, Error::NotConverging { rounds: 3, .. }), "{e}");
    assert!(
        e.to_string().contains("did not converge after 3 rounds"),
        "{e}"
    );
    assert_eq!(source.pauses, 0, "the guest was never paused");
    assert!(matches!(received, Err(Error::Aborted(r)) if r.contains("converge")));
}

#[test]
fn a_cancel_aborts_and_leaves_the_guest_running() {
    let source = FakeSource::new(BOOT, &[(BLOCK * BLOCKS, BLOCK)]);
    let settings = Settings::default();
    settings.cancel.store(true, Ordering::Release);
    let (report, source, received, _) = run(source, settings, None);
    assert!(matches!(report, Err(Error::Cancelled)));
    assert!(!source.paused);
    assert!(matches!(received, Err(Error::Aborted(r)) if r.contains("cancelled")));
}

#[test]
fn a_refusal_reaches_the_source_with_the_field_and_nothing_is_sent() {
    let source = FakeSource::new(BOOT, &[(BLOCK * BLOCKS, BLOCK)]);
    let mut local = facts(&handshake(&source));
    local.devices[0].block_size_bytes *= 2;
    let (report, source, received, sink) = run(source, Settings::default(), Some(local));
    let Err(Error::Refused(r)) = report else {
        panic!("not refused: {report:?}");
    };
    assert_eq!(r.field, "devices[mem0].block_size_bytes");
    assert!(matches!(received, Err(Error::Refused(_))));
    assert_eq!(sink.pages_written, 0);
    assert_eq!(source.pauses, 0);
}

#[test]
fn a_page_of_an_unplugged_block_is_refused_by_the_destination() {
    use migration::protocol::{Message, PageEntry, write_message};
    let source = FakeSource::new(BOOT, &[(BLOCK * BLOCKS, BLOCK)]);
    let hello = handshake(&source);
    let local = facts(&hello);
    let (mut a, b) = UnixStream::pair().unwrap();
    write_message(&mut a, &Message::Hello(hello), &[]).unwrap();
    write_message(
        &mut a,
        &Message::Pages {
            region: RegionId::Device(0),
            pages: vec![PageEntry {
                offset_bytes: 0,
                zero: true,
            }],
        },
        &[],
    )
    .unwrap();
    let mut sink = FakeSink::like(&source);
    let mut incoming = Incoming::accept(b).unwrap();
    incoming.check(&local).unwrap();
    let e = incoming.receive(&mut sink).unwrap_err();
    assert!(e.to_string().contains("unplugged block 0"), "{e}");
    assert_eq!(sink.pages_written, 0);
}

#[test]
fn the_bandwidth_cap_holds_the_stream_back() {
    let mut source = FakeSource::new(BOOT, &[(BLOCK * BLOCKS, BLOCK)]);
    // 64 boot pages of data: ~256 KiB to send.
    for page in 0..64 {
        source.apply(GuestOp::Write {
            region: RegionId::BootRam(0),
            offset_bytes: page * PAGE_BYTES,
            byte: 1,
        });
    }
    let settings = Settings {
        max_bandwidth_bytes_per_s: Some(1 << 20),
        batch_pages: 8,
        ..Settings::default()
    };
    let (report, _, received, sink) = run(source.clone(), settings, None);
    let report = report.unwrap();
    received.unwrap();
    assert_eq!(sink.boot_ram, source.boot_ram);
    let floor = std::time::Duration::from_millis(200);
    assert!(
        report.total >= floor,
        "{} bytes at 1 MiB/s took {:?}",
        report.transferred_bytes,
        report.total
    );
}
