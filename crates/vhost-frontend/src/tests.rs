//! Tests against the in-process fake backend over a socket pair.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use memslots::{FakeBackend as FakeKvm, LayoutRequest, Memslots, SlotIds, SlotLayout, SlotPolicy};
use proptest::prelude::*;

use crate::fake_backend::{FakeBackend, FakeBackendConfig, FakeFailure};
use crate::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const HOST_BASE: u64 = 0x7f00_0000_0000;
const PROTOCOL_ACK_ONLY: u64 = 1 << 3;

fn memfd(size_bytes: u64) -> Arc<OwnedFd> {
    // SAFETY: memfd_create with a valid C string; the fd is owned right below.
    let raw = unsafe { libc::memfd_create(c"vhost-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(raw >= 0);
    // SAFETY: `raw` is a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ftruncate on the fd just created.
    let ret = unsafe { libc::ftruncate(raw, size_bytes as libc::off_t) };
    assert_eq!(ret, 0);
    Arc::new(fd)
}

fn region(fd: &Arc<OwnedFd>, guest_addr: u64, size_bytes: u64) -> SharedRegion {
    SharedRegion {
        guest_addr,
        size_bytes,
        host_addr: HOST_BASE + guest_addr,
        fd: fd.clone(),
        fd_offset_bytes: guest_addr,
    }
}

fn attach(
    mem: &mut VhostUserMemory,
    name: &str,
    config: FakeBackendConfig,
) -> (BackendId, FakeBackend) {
    let (fake, stream) = FakeBackend::spawn(config);
    let negotiated = negotiate(stream, &AttachConfig::named(name)).unwrap();
    (mem.attach(name, negotiated).unwrap(), fake)
}

fn slots(max_mem_slots: u64) -> FakeBackendConfig {
    FakeBackendConfig {
        max_mem_slots,
        ..FakeBackendConfig::default()
    }
}

fn whole_table() -> FakeBackendConfig {
    FakeBackendConfig {
        protocol_features: PROTOCOL_ACK_ONLY,
        ..FakeBackendConfig::default()
    }
}

fn keys(mem: &VhostUserMemory) -> Vec<(u64, u64, u64)> {
    mem.mapped()
        .map(|r| (r.guest_addr, r.size_bytes, r.host_addr))
        .collect()
}

#[test]
fn negotiation_reads_the_slot_limit_and_whole_table_fallback() {
    let mut mem = VhostUserMemory::new();
    let (a, _fa) = attach(&mut mem, "disk0", slots(32));
    let (b, _fb) = attach(&mut mem, "fs0", whole_table());
    let status = mem.status();
    assert_eq!(
        status[a.0 as usize].mode,
        TableMode::MemSlots { max_slots: 32 }
    );
    assert_eq!(status[b.0 as usize].mode, TableMode::WholeTable);
    assert_eq!(
        mem.region_limit(),
        Some(RegionLimit {
            backend: "fs0".into(),
            max_regions: 8
        })
    );
}

#[test]
fn backend_limits_cap_the_vm_slot_budget() {
    let mut mem = VhostUserMemory::new();
    let (_a, _fa) = attach(&mut mem, "qsd-7.2", slots(32));
    let (_b, _fb) = attach(&mut mem, "fs", slots(509));
    let mut budget = memslots::SlotBudget::new(32764, 2);
    for limit in mem.slot_limits(2) {
        budget.add_limit(limit).unwrap();
    }
    assert_eq!(budget.available(), 30);
    assert_eq!(
        budget.limited_by().unwrap().owner,
        "vhost-user backend 'qsd-7.2'"
    );
    // A 1 TiB device with the adaptive policy fits by using fewer, larger slots.
    let layout = SlotLayout::plan(LayoutRequest {
        policy: SlotPolicy::Adaptive,
        region_size_bytes: 1 << 40,
        block_size_bytes: 2 * MIB,
        slot_limit: SlotPolicy::Adaptive.slot_limit(budget.available()),
    })
    .unwrap();
    assert!(layout.len() <= 30);
    budget
        .reserve("memory device 'mem0'", layout.len() as u32)
        .unwrap();
}

#[test]
fn backends_without_protocol_features_or_reply_ack_are_refused() {
    let (_f, stream) = FakeBackend::spawn(FakeBackendConfig {
        features: 0,
        ..FakeBackendConfig::default()
    });
    let err = negotiate(stream, &AttachConfig::named("old")).unwrap_err();
    assert!(err.to_string().contains("PROTOCOL_FEATURES"), "{err}");
    let (_f, stream) = FakeBackend::spawn(FakeBackendConfig {
        protocol_features: 1 << 15,
        ..FakeBackendConfig::default()
    });
    let err = negotiate(stream, &AttachConfig::named("noack")).unwrap_err();
    assert!(err.to_string().contains("REPLY_ACK"), "{err}");
}

#[test]
fn mapped_region_reaches_every_backend_with_a_usable_fd_and_offset() {
    let fd = memfd(4 * MIB);
    // Write through the fd at the offset where guest address 1 MiB + 4 KiB lives.
    let pattern = b"hotmem vhost-user";
    let file = std::fs::File::from(fd.try_clone().unwrap());
    std::os::unix::fs::FileExt::write_all_at(&file, pattern, MIB + 4096).unwrap();
    let mut mem = VhostUserMemory::new();
    let (_, fa) = attach(&mut mem, "a", slots(509));
    let (_, fb) = attach(&mut mem, "b", whole_table());
    mem.map(region(&fd, MIB, 2 * MIB)).unwrap();
    for fake in [&fa, &fb] {
        assert_eq!(fake.table(), [(MIB, 2 * MIB, HOST_BASE + MIB)]);
        assert_eq!(fake.read_guest(MIB + 4096, pattern.len()).unwrap(), pattern);
    }
    assert!(fa.requests().contains(&37) && !fa.requests().contains(&5));
    assert!(fb.requests().contains(&5) && !fb.requests().contains(&37));
}

#[test]
fn unmap_removes_exactly_the_added_region_and_unknown_ones_are_refused() {
    let fd = memfd(GIB);
    let mut mem = VhostUserMemory::new();
    let (_, fa) = attach(&mut mem, "a", slots(509));
    mem.map(region(&fd, 0, 128 * MIB)).unwrap();
    mem.map(region(&fd, 128 * MIB, 128 * MIB)).unwrap();
    let wrong = RegionKey {
        guest_addr: 0,
        size_bytes: 256 * MIB,
        host_addr: HOST_BASE,
    };
    assert!(matches!(
        mem.unmap(&wrong),
        Err(Error::InvalidRegion { .. })
    ));
    assert_eq!(fa.table().len(), 2);
    mem.unmap(&region(&fd, 0, 128 * MIB).key()).unwrap();
    assert_eq!(fa.table(), [(128 * MIB, 128 * MIB, HOST_BASE + 128 * MIB)]);
    assert!(fa.violations().is_empty(), "{:?}", fa.violations());
}

#[test]
fn a_full_backend_refuses_without_a_request_and_stays_ready() {
    let fd = memfd(GIB);
    let mut mem = VhostUserMemory::new();
    let (_, fa) = attach(&mut mem, "big", slots(509));
    let (_, fb) = attach(&mut mem, "small", slots(2));
    mem.map(region(&fd, 0, MIB)).unwrap();
    mem.map(region(&fd, MIB, MIB)).unwrap();
    let sent = fb.requests().len();
    let err = mem.map(region(&fd, 2 * MIB, MIB)).unwrap_err();
    assert!(
        err.to_string()
            .contains("'small' holds 2 memory regions and accepts at most 2"),
        "{err}"
    );
    assert_eq!(fb.requests().len(), sent);
    // The backend that took it gave it back: tables equal the mapped set.
    assert_eq!(fa.table().len(), 2);
    assert_eq!(keys(&mem).len(), 2);
    assert!(
        mem.status()
            .iter()
            .all(|s| s.health == BackendHealth::Ready)
    );
    assert!(fa.violations().is_empty() && fb.violations().is_empty());
}

#[test]
fn whole_table_backend_gets_at_most_eight_regions() {
    let fd = memfd(GIB);
    let mut mem = VhostUserMemory::new();
    let (_, fake) = attach(&mut mem, "fs", whole_table());
    for i in 0..8 {
        mem.map(region(&fd, i * MIB, MIB)).unwrap();
    }
    assert!(matches!(
        mem.map(region(&fd, 8 * MIB, MIB)),
        Err(Error::BackendFull { limit: 8, .. })
    ));
    mem.unmap(&region(&fd, 3 * MIB, MIB).key()).unwrap();
    assert_eq!(fake.table().len(), 7);
    assert_eq!(fake.max_regions_seen(), 8);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn a_nack_breaks_that_backend_rolls_back_the_others_and_the_vm_goes_on() {
    let fd = memfd(GIB);
    let mut mem = VhostUserMemory::new();
    let (_, good) = attach(&mut mem, "good", slots(509));
    let (bad_id, bad) = attach(
        &mut mem,
        "bad",
        FakeBackendConfig {
            failure: Some(FakeFailure::Nack { nth: 1 }),
            ..FakeBackendConfig::default()
        },
    );
    mem.map(region(&fd, 0, MIB)).unwrap();
    let err = mem.map(region(&fd, MIB, MIB)).unwrap_err();
    assert!(
        err.to_string().contains("'bad' failed ADD_MEM_REG"),
        "{err}"
    );
    assert_eq!(keys(&mem).len(), 1);
    assert_eq!(good.table(), [(0, MIB, HOST_BASE)]);
    let status = &mem.status()[bad_id.0 as usize];
    assert!(matches!(status.health, BackendHealth::Broken { .. }));
    assert!(matches!(&mem.take_events()[..], [BackendEvent::Broken { name, .. }] if name == "bad"));
    // Later plugs go on without the broken backend, which gets no more requests.
    let sent = bad.requests().len();
    mem.map(region(&fd, MIB, MIB)).unwrap();
    assert_eq!(good.table().len(), 2);
    assert_eq!(bad.requests().len(), sent);
    assert_eq!(mem.region_limit().unwrap().backend, "good");
    assert!(good.violations().is_empty());
}

#[test]
fn ack_then_disconnect_is_caught_by_the_probe() {
    let fd = memfd(GIB);
    let mut mem = VhostUserMemory::new();
    let (id, fake) = attach(
        &mut mem,
        "libvhost-user",
        FakeBackendConfig {
            failure: Some(FakeFailure::AckThenDisconnect { nth: 0 }),
            ..FakeBackendConfig::default()
        },
    );
    let err = mem.map(region(&fd, 0, MIB)).unwrap_err();
    assert!(err.to_string().contains("liveness probe"), "{err}");
    assert!(keys(&mem).is_empty());
    assert!(fake.is_disconnected());
    assert!(matches!(
        mem.status()[id.0 as usize].health,
        BackendHealth::Broken { .. }
    ));
    assert_eq!(mem.backend_regions(id).unwrap(), []);
    mem.map(region(&fd, 0, MIB)).unwrap();
}

#[test]
fn attach_replays_the_mapped_set_and_refuses_a_backend_too_small_for_it() {
    let fd = memfd(GIB);
    let mut mem = VhostUserMemory::new();
    for i in 0..3 {
        mem.map(region(&fd, i * 64 * MIB, 64 * MIB)).unwrap();
    }
    let (_, fake) = attach(&mut mem, "late", slots(509));
    assert_eq!(fake.table().len(), 3);
    let (_, table) = attach(&mut mem, "late-table", whole_table());
    assert_eq!(table.table().len(), 3);
    let (small, stream) = FakeBackend::spawn(slots(2));
    let negotiated = negotiate(stream, &AttachConfig::named("tiny")).unwrap();
    let err = mem.attach("tiny", negotiated).unwrap_err();
    assert!(
        err.to_string()
            .contains("'tiny' holds 3 memory regions and accepts at most 2"),
        "{err}"
    );
    small.join();
    assert_eq!(mem.status().len(), 2);
}

#[test]
fn plug_through_the_decorator_reaches_backends_before_it_returns_and_busy_rolls_back_kvm() {
    let fd = memfd(8 * GIB);
    let table: SharedMemoryTable = Arc::new(Mutex::new(VhostUserMemory::new()));
    let (_, fake) = attach(
        &mut table.lock().unwrap(),
        "disk",
        FakeBackendConfig {
            failure: Some(FakeFailure::Nack { nth: 2 }),
            ..FakeBackendConfig::default()
        },
    );
    let config = VhostSlotBackendConfig {
        table: table.clone(),
        host_base_addr: HOST_BASE,
        fd,
        fd_base_offset_bytes: 0,
    };
    let mut slots = manager(8 * GIB, VhostSlotBackend::new(FakeKvm::new(), config));
    slots.map_range(0, 2 * GIB).unwrap();
    assert_eq!(fake.table().len(), 2);
    // The third slot's ADD is refused: the plug fails and KVM does not keep the slot either.
    assert!(slots.map_range(2 * GIB, GIB).is_err());
    assert_eq!(slots.mapped_count(), 2);
    assert_eq!(slots.backend().inner().mapped().count(), 2);
    slots.unmap_all().unwrap();
    assert_eq!(slots.backend().inner().mapped().count(), 0);
    assert!(table.lock().unwrap().mapped().next().is_none());
}

fn manager<B: memslots::SlotBackend>(region_bytes: u64, backend: B) -> Memslots<B> {
    let layout = SlotLayout::plan(LayoutRequest {
        policy: SlotPolicy::Fixed,
        region_size_bytes: region_bytes,
        block_size_bytes: 2 * MIB,
        slot_limit: 256,
    })
    .unwrap();
    let ids = SlotIds::new(1, layout.len() as u32);
    Memslots::new(layout, ids, 4 * GIB, backend).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Plug { first_gib: u64, count_gib: u64 },
    Unplug { first_gib: u64, count_gib: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..16u64, 1..5u64).prop_map(|(first_gib, count_gib)| Op::Plug {
            first_gib,
            count_gib
        }),
        (0..16u64, 1..8u64).prop_map(|(first_gib, count_gib)| Op::Unplug {
            first_gib,
            count_gib
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// After any plug/unplug sequence, each backend's table is exactly the mapped slots (plus
    /// boot memory), no backend saw a request it had to reject, and a whole-table backend never
    /// held more than 8 regions.
    #[test]
    fn backend_tables_always_equal_the_mapped_slots(ops in prop::collection::vec(op(), 1..40)) {
        const REGION: u64 = 16 * GIB;
        let fd = memfd(REGION + GIB);
        let table: SharedMemoryTable = Arc::new(Mutex::new(VhostUserMemory::new()));
        let fakes = {
            let mut t = table.lock().unwrap();
            // Boot memory, mapped for the VM's life.
            t.map(SharedRegion {
                guest_addr: 0,
                size_bytes: GIB,
                host_addr: HOST_BASE,
                fd: fd.clone(),
                fd_offset_bytes: REGION,
            }).unwrap();
            [attach(&mut t, "slots", slots(12)).1, attach(&mut t, "table", whole_table()).1]
        };
        let config = VhostSlotBackendConfig {
            table: table.clone(),
            host_base_addr: HOST_BASE + GIB,
            fd,
            fd_base_offset_bytes: 0,
        };
        let mut slots = manager(REGION, VhostSlotBackend::new(FakeKvm::new(), config.clone()));
        for op in ops {
            match op {
                // A refusal (the whole-table backend is full) is fine; the tables must still match.
                Op::Plug { first_gib, count_gib } => {
                    let _ = slots.map_range(first_gib * GIB, count_gib.min(16 - first_gib) * GIB);
                }
                Op::Unplug { first_gib, count_gib } => slots
                    .unmap_unneeded(first_gib * GIB, count_gib.min(16 - first_gib) * GIB, |_| false)
                    .unwrap(),
            }
            let mut expected: Vec<_> = slots
                .mapped_slots()
                .map(|i| {
                    let k = slot_key(&config, &slots.mapping(i));
                    (k.guest_addr, k.size_bytes, k.host_addr)
                })
                .collect();
            expected.insert(0, (0, GIB, HOST_BASE));
            prop_assert_eq!(slots.backend().inner().mapped().count(), expected.len() - 1);
            prop_assert_eq!(keys(&table.lock().unwrap()), expected.clone());
            for fake in &fakes {
                prop_assert_eq!(fake.table(), expected.clone());
                prop_assert!(fake.violations().is_empty(), "{:?}", fake.violations());
            }
        }
        prop_assert!(fakes[1].max_regions_seen() <= 8);
        prop_assert!(table.lock().unwrap().status().iter().all(|s| s.health == BackendHealth::Ready));
    }
}
