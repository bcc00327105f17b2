//! On real KVM (no vCPU runs): while a preallocating plug populates, the API, the monitor and
//! the metrics keep answering — they complete while the plug is still in progress. Needs
//! /dev/kvm and 1 GiB of free host memory for a moment.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use api::{Command, Handler, Reply};
use common::{Driver, ack, build, machine};
use machine::ExitSignal;
use virtio_mem::{BlockRange, Request};
use vm_memory::GuestAddress;
use vmm::api_handler::{VmApi, VmFacts, VmHandles};
use vmm::control::VmControl;
use vmm::monitor::{Monitor, MonitorSettings};
use vmm::notify::serve_notification;

const SIZE_BYTES: u64 = 1 << 30;

fn ok(reply: Result<Reply, api::ApiError>) {
    match reply {
        Ok(Reply::Json { status: 200, .. } | Reply::Text { .. }) => {}
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn the_api_answers_while_a_preallocating_plug_populates() {
    let m = machine();
    let built = build(&m, &["id=mem0,size=1G,requested=1G,prealloc=on"]);
    let device = built.memory_devices[0].clone();
    let _bus = (Arc::new(built.bus), Arc::new(Mutex::new(built.notifiers)));
    let mut driver = Driver::start(&mut device.lock(), m.memory(), 0x100_0000);
    let block = device.status().block_size_bytes;
    driver.send(Request::Plug(BlockRange {
        guest_addr: GuestAddress(device.status().guest_addr),
        nb_blocks: u16::try_from(SIZE_BYTES / block).unwrap(),
    }));
    let monitor = Monitor::new(
        vec![device.clone()],
        Instant::now(),
        MonitorSettings::default(),
    );
    monitor.sample_now();
    let api = VmApi::new(VmHandles {
        facts: Arc::new(VmFacts {
            vcpus: 1,
            boot_memory_bytes: 64 << 20,
            started: Instant::now(),
            boots: Default::default(),
            numa_nodes: None,
            slot_budget: None,
            vhost_user: None,
        }),
        exit: ExitSignal::new().unwrap(),
        monitor: monitor.clone(),
        control: VmControl::default(),
    });

    let serving = {
        let device = device.clone();
        std::thread::spawn(move || serve_notification(&device, 0))
    };
    let in_progress = || device.lock().device().core().plug_in_progress();
    while !in_progress() {
        assert!(
            !serving.is_finished(),
            "the plug was never seen in progress: the transport lock was held throughout"
        );
        std::thread::yield_now();
    }
    ok(api.handle(Command::GetVm));
    ok(api.handle(Command::ListMemoryDevices));
    ok(api.handle(Command::Metrics));
    monitor.sample_now();
    let during = device.status();
    assert!(
        in_progress(),
        "the reads must complete while the plug still populates"
    );
    assert_eq!(
        during.plugged_bytes, 0,
        "nothing is plugged before the commit"
    );

    serving.join().unwrap();
    assert_eq!(driver.answered(), 1);
    assert_eq!(driver.response(0), ack());
    assert_eq!(device.status().plugged_bytes, SIZE_BYTES);
}

#[test]
fn a_plug_notified_through_an_mmio_write_is_populated_after_the_write() {
    let m = machine();
    let built = build(&m, &["id=mem0,size=1G,requested=256M,prealloc=on"]);
    let device = built.memory_devices[0].clone();
    let host = vmm::pci_glue::PciHost {
        bus: Arc::new(built.bus),
        notifiers: Arc::new(Mutex::new(built.notifiers)),
        devices: vec![device.clone()],
    };
    let mut driver = Driver::start(&mut device.lock(), m.memory(), 0x100_0000);
    host.refresh(device.bdf);
    driver.send(Request::Plug(BlockRange {
        guest_addr: GuestAddress(device.status().guest_addr),
        nb_blocks: 4,
    }));
    // The notify address as the guest writes it while its ioeventfd is not registered.
    let notify = device.lock().notify_addresses()[0].address.unwrap();
    let mut pci_window = vmm::pci_glue::PciMmio(host.clone());
    machine::BusDevice::write(&mut pci_window, notify.raw(), 0, &0u16.to_le_bytes());
    assert_eq!(
        driver.answered(),
        1,
        "the write's plug was populated and answered"
    );
    assert_eq!(driver.response(0), ack());
    assert_eq!(
        device.status().plugged_bytes,
        4 * device.status().block_size_bytes
    );
}
