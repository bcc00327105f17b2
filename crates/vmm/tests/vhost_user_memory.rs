//! vhost-user backends follow a virtio-mem device's memslots on real KVM: two in-process
//! backends (a disk with 32 slots, a shared folder with 509) behind `--disk`/`--fs` sockets, the
//! VM's slot budget capped by the smaller one, each plug in both tables before it is acked,
//! each unplug removed, and a backend that fails a plug broken while the VM goes on.
//! Needs /dev/kvm.

mod common;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use hostmem::BackingKind;
use memslots::SlotBudget;
use pci::{MmioAddress, MmioAllocator};
use vhost_frontend::fake_backend::{FakeBackend, FakeBackendConfig, FakeFailure};
use virtio_mem::{BlockRange, Request, Response};
use vm_memory::GuestAddress;
use vmm::config::MemDeviceConfig;
use vmm::devices::{self, DeviceSetup};
use vmm::vhost_user::{self, VhostUserSpec};

const GIB: u64 = 1 << 30;

/// Listens at `path`; the backend serving the first connection comes back through the handle.
fn fake_listener(
    path: &PathBuf,
    config: FakeBackendConfig,
) -> std::thread::JoinHandle<FakeBackend> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        FakeBackend::serve(stream, config)
    })
}

#[test]
fn backend_tables_follow_plugs_and_a_failing_backend_is_broken_alone() {
    let test = "backend_tables_follow_plugs_and_a_failing_backend_is_broken_alone";
    if !test_support::require_kvm(test) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hotmem-vhost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (disk_sock, fs_sock) = (dir.join("disk.sock"), dir.join("fs.sock"));
    // The disk's memory requests: 0 = boot RAM at attach, 1 = first plug, 2 = second plug.
    let disk = fake_listener(
        &disk_sock,
        FakeBackendConfig {
            max_mem_slots: 32,
            config_capacity: 2048,
            // REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS.
            protocol_features: (1 << 3) | (1 << 9) | (1 << 15),
            failure: Some(FakeFailure::Nack { nth: 2 }),
            ..FakeBackendConfig::default()
        },
    );
    let fs = fake_listener(&fs_sock, FakeBackendConfig::default());

    let m = common::shared_machine();
    let specs = [
        VhostUserSpec::parse_disk(&format!("socket={}", disk_sock.display()), 0).unwrap(),
        VhostUserSpec::parse_fs(&format!("tag=share,socket={}", fs_sock.display()), 0).unwrap(),
    ];
    let queue_memory = Arc::new(m.memory().clone());
    let setup = vhost_user::connect(&specs, &m, &queue_memory)
        .unwrap()
        .unwrap();
    let (disk, fs) = (disk.join().unwrap(), fs.join().unwrap());
    let table = setup.table.clone();

    let used = m.boot_memslots().iter().max().map_or(0, |s| s + 1);
    let mut budget = SlotBudget::new(m.nr_memslots() as u32, used);
    for limit in setup.slot_limits() {
        budget.add_limit(limit).unwrap();
    }
    // 32 regions, one of them boot RAM.
    assert_eq!(budget.available(), 31);
    assert_eq!(
        budget.limited_by().unwrap().owner,
        "vhost-user backend 'disk0'"
    );

    let info = vhost_user::budget_info(&budget);
    assert_eq!(
        (
            info.available_slots,
            info.limited_by.as_str(),
            info.limit_slots
        ),
        (31, "vhost-user backend 'disk0'", 32)
    );
    let view = setup.view();
    let (events_tx, events) = std::sync::mpsc::channel();
    let events_tx = std::sync::Mutex::new(events_tx);
    view.spawn_event_relay(
        move |kind| {
            let _ = events_tx.lock().unwrap().send(kind);
        },
        || true,
    )
    .unwrap();
    let window = m.layout().pci_mmio32_window();
    let mut config = MemDeviceConfig::parse("id=mem0,size=1024G,requested=1024G").unwrap();
    config.backing = BackingKind::Memfd;
    let built = devices::build_with_vhost(
        DeviceSetup {
            vm: m.vm(),
            budget,
            area: boot::DeviceAreaAllocator::new(m.layout()),
            bars: MmioAllocator::new(MmioAddress(window.start), MmioAddress(window.end)).unwrap(),
            memory: queue_memory,
            restore: None,
        },
        &[config],
        Some(setup),
    )
    .unwrap();
    let device = built.memory_devices[0].transport.clone();
    let (base, slots) = {
        let d = device.lock().unwrap();
        let core = d.device().core();
        (core.status().guest_addr, core.memslots().layout().len())
    };
    assert!(
        slots <= 31,
        "a 1 TiB device fits the 31 slots left: {slots}"
    );

    let handle = |request| {
        device
            .lock()
            .unwrap()
            .device_mut()
            .core_mut()
            .handle_request(request)
    };
    let plug = |addr: u64| {
        Request::Plug(BlockRange {
            guest_addr: GuestAddress(addr),
            nb_blocks: 64,
        })
    };
    let mapped = || {
        let mut t: Vec<_> = table
            .lock()
            .unwrap()
            .mapped()
            .map(|r| (r.guest_addr, r.size_bytes, r.host_addr))
            .collect();
        t.sort();
        t
    };
    // First plug: both backends hold boot RAM plus the slot before the ACK.
    assert_eq!(handle(plug(base)), Response::Ack);
    assert_eq!(mapped().len(), 2);
    assert_eq!(disk.table(), mapped());
    assert_eq!(fs.table(), mapped());
    // Second plug in another slot: the disk refuses its ADD_MEM_REG → BUSY, nothing changes
    // for the guest, and the shared folder got the region removed again.
    let far = base + 512 * GIB;
    assert_eq!(handle(plug(far)), Response::Busy);
    assert_eq!(mapped().len(), 2);
    assert_eq!(fs.table(), mapped());
    let status = table.lock().unwrap().status();
    assert!(matches!(
        status[0].health,
        vhost_frontend::BackendHealth::Broken { .. }
    ));
    assert_eq!(status[1].health, vhost_frontend::BackendHealth::Ready);
    let api = view.statuses();
    assert_eq!(
        (api[0].id.as_str(), api[0].kind.as_str()),
        ("disk0", "disk")
    );
    assert_eq!(api[0].state, "broken");
    assert!(
        api[0]
            .broken_reason
            .as_deref()
            .is_some_and(|r| r.contains("ADD_MEM_REG")),
        "{api:?}"
    );
    assert_eq!((api[1].state.as_str(), api[1].regions_held), ("ready", 2));
    match events
        .recv_timeout(std::time::Duration::from_secs(5))
        .unwrap()
    {
        api::model::EventKind::VhostUserBackendBroken { device, reason } => {
            assert_eq!(device, "disk0");
            assert!(reason.contains("ADD_MEM_REG"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The VM goes on: the retry plugs, for the remaining backend.
    assert_eq!(handle(plug(far)), Response::Ack);
    assert_eq!(mapped().len(), 3);
    assert_eq!(fs.table(), mapped());
    // Unplug everything: only boot RAM stays in the table.
    assert_eq!(handle(Request::UnplugAll), Response::Ack);
    assert_eq!(mapped().len(), 1);
    assert_eq!(fs.table(), mapped());
    assert!(fs.violations().is_empty(), "{:?}", fs.violations());
    assert!(disk.violations().is_empty(), "{:?}", disk.violations());
    let _ = std::fs::remove_dir_all(&dir);
}
