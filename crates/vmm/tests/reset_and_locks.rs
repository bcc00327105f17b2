//! On real KVM (no vCPU runs): a guest reboot resets the whole virtio-pci function as a fresh
//! machine would and is not fatal when discarding fails; a poisoned device lock breaks only that
//! device. Needs /dev/kvm.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::model::{DriverState, EventKind};
use common::{Driver, ack, build, machine};
use pci::PciDevice;
use virtio::layout::{
    COMMON_CONFIG_LEN_BYTES, COMMON_OFFSET, DEVICE_CONFIG_OFFSET, ISR_OFFSET, MSIX_PBA_OFFSET,
    MSIX_TABLE_OFFSET, virtio_bar,
};
use virtio_mem::{BlockRange, Request};
use vm_memory::GuestAddress;
use vmm::api_handler::VmFacts;
use vmm::devices::{MemTransport, SharedMemoryDevice};
use vmm::monitor::{Monitor, MonitorSettings};
use vmm::notify::{QueueNotifiers, serve_notification};
use vmm::pci_glue::PciHost;
use vmm::vm::system_reset;

const SPEC: &str = "id=mem0,size=1G,requested=256M";
const QUEUE_BASE: u64 = 0x100_0000;

/// Everything the driver and firmware can read of the function (ISR last: reading clears it).
fn image(t: &mut MemTransport) -> Vec<u8> {
    let mut out = Vec::new();
    let mut word = [0u8; 4];
    for offset in (0..256).step_by(4) {
        t.config_read(offset, &mut word);
        out.extend(word);
    }
    let mut read = |t: &mut MemTransport, at: u64, len: usize| {
        let mut data = [0u8; 4];
        t.bar_read(virtio_bar(), at, &mut data[..len]);
        out.extend(&data[..len]);
    };
    t.bar_write(virtio_bar(), COMMON_OFFSET + 0x16, &0u16.to_le_bytes());
    for at in (0..COMMON_CONFIG_LEN_BYTES).step_by(2) {
        read(t, COMMON_OFFSET + at, 2);
    }
    for region in [DEVICE_CONFIG_OFFSET, MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET] {
        for at in (0..0x40).step_by(4) {
            read(t, region + at, 4);
        }
    }
    read(t, ISR_OFFSET, 1);
    out
}

fn host_of(built: vmm::devices::BuiltDevices) -> (PciHost, Vec<SharedMemoryDevice>) {
    let devices = built.memory_devices;
    let host = PciHost {
        bus: Arc::new(built.bus),
        notifiers: Arc::new(Mutex::new(built.notifiers)),
        devices: devices.clone(),
    };
    (host, devices)
}

fn plug_first_block(driver: &mut Driver<'_>, device: &SharedMemoryDevice) {
    let base = device.status().guest_addr;
    driver.send(Request::Plug(BlockRange {
        guest_addr: GuestAddress(base),
        nb_blocks: 1,
    }));
    serve_notification(device, 0);
    assert_eq!(driver.answered(), 1);
    assert_eq!(driver.response(0), ack());
}

#[test]
fn a_reboot_resets_the_whole_transport_and_the_driver_is_not_seen_after_it() {
    let m = machine();
    let (host, devices) = host_of(build(&m, &[SPEC]));
    let fresh_vm = machine();
    let (_, fresh) = host_of(build(&fresh_vm, &[SPEC]));
    let expected = image(&mut fresh[0].lock());

    let device = &devices[0];
    let mut driver = Driver::start(&mut device.lock(), m.memory(), QUEUE_BASE);
    host.refresh(device.bdf);
    plug_first_block(&mut driver, device);
    device.lock().config_changed();
    let bar = device.lock().bar_regions()[0].address;
    let mut probe = [0u8; 1];
    assert!(host.bus.mmio_read(bar, &mut probe), "the BAR is routed");
    assert_eq!(device.status().driver_state, DriverState::Active);
    assert_ne!(image(&mut device.lock()), expected);

    let mut events = Vec::new();
    system_reset(&devices, &host, |e| events.push(e));

    assert!(events.is_empty(), "{events:?}");
    let status = device.status();
    assert_eq!(status.driver_state, DriverState::NotSeen);
    assert_eq!((status.plugged_bytes, status.slots_mapped), (0, 0));
    assert_eq!(image(&mut device.lock()), expected);
    assert!(
        !host.bus.mmio_read(bar, &mut probe),
        "the bus still routes the old BAR"
    );
    assert!(
        device
            .lock()
            .notify_addresses()
            .iter()
            .all(|n| n.address.is_none()),
        "notify addresses (and their ioeventfds) must follow the reset BAR"
    );
    // A new driver brings the device up again from scratch.
    let mut again = Driver::start(&mut device.lock(), m.memory(), QUEUE_BASE + 0x10_0000);
    host.refresh(device.bdf);
    plug_first_block(&mut again, device);
    assert_eq!(device.status().driver_state, DriverState::Active);
}

#[test]
fn a_reboot_whose_discard_fails_keeps_the_memory_plugged_and_the_vm_going() {
    let m = machine();
    let (host, devices) = host_of(build(&m, &[SPEC]));
    let device = &devices[0];
    let mut driver = Driver::start(&mut device.lock(), m.memory(), QUEUE_BASE);
    plug_first_block(&mut driver, device);
    let (host_addr, block) = {
        let t = device.lock();
        (
            t.device().region().host_addr(),
            t.device().core().status().block_size_bytes,
        )
    };
    // SAFETY: the first block is plugged, so its host range is mapped read-write; locking it
    // only makes MADV_DONTNEED fail (EINVAL) until the munlock below.
    let locked = unsafe { libc::mlock(host_addr as *const libc::c_void, block as usize) };
    assert_eq!(locked, 0);

    let mut events = Vec::new();
    system_reset(&devices, &host, |e| events.push(e));

    assert_eq!(
        events,
        [EventKind::SystemResetIncomplete {
            device: "mem0".into(),
            plugged_bytes: block
        }]
    );
    assert_eq!(device.health().system_reset_failures(), 1);
    let status = device.status();
    assert_eq!(status.plugged_bytes, block, "the memory stays plugged");
    assert_eq!(status.driver_state, DriverState::NotSeen);
    device.lock().device().core().check_invariants().unwrap();
    assert_eq!(
        device.lock().device_status(),
        0,
        "the transport was reset all the same"
    );

    // SAFETY: undoes the mlock above on the same (still mapped) range.
    let unlocked = unsafe { libc::munlock(host_addr as *const libc::c_void, block as usize) };
    assert_eq!(unlocked, 0);
    // The next driver unplugs what is left, as Linux does at probe.
    let mut next = Driver::start(&mut device.lock(), m.memory(), QUEUE_BASE + 0x10_0000);
    next.send(Request::UnplugAll);
    serve_notification(device, 0);
    assert_eq!(next.response(0), ack());
    assert_eq!(device.status().plugged_bytes, 0);
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_poisoned_device_lock_breaks_that_device_only_and_the_queues_keep_being_served() {
    let m = machine();
    let built = build(
        &m,
        &["id=a,size=1G,requested=256M", "id=b,size=1G,requested=256M"],
    );
    let (host, devices) = host_of(built);
    let (a, b) = (&devices[0], &devices[1]);
    let mut driver_a = Driver::start(&mut a.lock(), m.memory(), QUEUE_BASE);
    let mut driver_b = Driver::start(&mut b.lock(), m.memory(), QUEUE_BASE + 0x10_0000);
    QueueNotifiers::spawn(host.notifiers.clone()).unwrap();
    let monitor = Monitor::new(devices.clone(), Instant::now(), MonitorSettings::default());
    monitor.sample_now();

    let poisoner = a.transport.clone();
    let panicked = std::thread::spawn(move || {
        let _held = poisoner.lock().unwrap();
        panic!("injected panic while holding device a");
    })
    .join();
    assert!(panicked.is_err());

    let plug = |d: &SharedMemoryDevice| {
        Request::Plug(BlockRange {
            guest_addr: GuestAddress(d.status().guest_addr),
            nb_blocks: 1,
        })
    };
    driver_a.send(plug(a));
    assert!(host.notifiers.lock().unwrap().kick(a.bdf, 0));
    wait_until("device a is marked broken", || a.is_broken());
    std::thread::sleep(Duration::from_millis(100));
    driver_b.send(plug(b));
    assert!(host.notifiers.lock().unwrap().kick(b.bdf, 0));
    wait_until("device b's plug is answered", || driver_b.answered() == 1);
    assert_eq!(driver_b.response(0), ack());
    assert_eq!(driver_a.answered(), 0, "a broken device is not served");

    let status = a.status();
    assert_eq!(status.driver_state, DriverState::Broken);
    assert_eq!(status.plugged_bytes, 0, "device a keeps its data as it was");
    // The status is published right after the batch that answered the plug.
    wait_until("device b's status is published", || {
        b.status().driver_state == DriverState::Active
    });
    monitor.sample_now();
    let mut events = monitor.subscribe(0, false).unwrap();
    let mut lines = Vec::new();
    while let api::StreamItem::Line(l) = api::LineStream::next_line(&mut events, Duration::ZERO) {
        lines.push(l);
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("device-broken") && l.contains("\"a\"")),
        "{lines:?}"
    );
    let facts = VmFacts {
        vcpus: 1,
        boot_memory_bytes: 64 << 20,
        started: Instant::now(),
        boots: Default::default(),
        numa_nodes: None,
        slot_budget: None,
        vhost_user: None,
    };
    let metrics = vmm::metrics::render(&monitor, &facts);
    assert!(
        metrics.contains("hotmem_memory_device_broken{device=\"a\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hotmem_memory_device_broken{device=\"b\"} 0"),
        "{metrics}"
    );

    // The thread still serves b afterwards.
    driver_b.send(Request::State(BlockRange {
        guest_addr: GuestAddress(b.status().guest_addr),
        nb_blocks: 1,
    }));
    assert!(host.notifiers.lock().unwrap().kick(b.bdf, 0));
    wait_until("device b's second request is answered", || {
        driver_b.answered() == 2
    });
}
