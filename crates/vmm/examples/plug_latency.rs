//! API latency during a long preallocating plug, on real KVM (no vCPU runs).
//!
//! Builds one `prealloc=on` memory device as `hotmem` does, brings its transport up with a
//! minimal driver, queues one PLUG of the whole size and serves it as the notification thread
//! does, while the monitor samples (every 50 ms, as in `hotmem`) and another thread times
//! `GET /v1/vm` and `GET /v1/memory-devices` through the API handler every 2 ms.
//!
//! ```text
//! cargo run --release -p vmm --example plug_latency -- 16G
//! ```
//! Needs /dev/kvm and the given size of free host memory (anonymous, freed at exit).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use api::{Command, Handler};
use machine::ExitSignal;
use virtio_mem::{BlockRange, Request};
use vm_memory::GuestAddress;
use vmm::api_handler::{VmApi, VmFacts, VmHandles};
use vmm::control::VmControl;
use vmm::devices::SharedMemoryDevice;
use vmm::monitor::{Monitor, MonitorSettings};

/// Serves the request queue as the notification thread does.
fn serve(device: &SharedMemoryDevice) {
    vmm::notify::serve_notification(device, 0);
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<24} {:>6} reads  p50 {:>9.3?}  p99 {:>9.3?}  max {:>9.3?}",
        samples.len(),
        at(0.5),
        at(0.99),
        samples.last().copied().unwrap_or_default()
    );
}

fn main() {
    let size = std::env::args().nth(1).unwrap_or_else(|| "16G".into());
    let size_bytes = api::size::parse_size(&size).expect("a size such as 16G");
    let m = common::machine();
    let spec = format!("id=mem0,size={size},requested={size},prealloc=on");
    let built = common::build(&m, &[spec.as_str()]);
    let device = built.memory_devices[0].clone();
    let mut driver = common::Driver::start(
        &mut device.transport.lock().unwrap(),
        m.memory(),
        0x100_0000,
    );
    let (base, block) = {
        let t = device.transport.lock().unwrap();
        let s = t.device().core().status();
        (s.guest_addr, s.block_size_bytes)
    };
    driver.send(Request::Plug(BlockRange {
        guest_addr: GuestAddress(base),
        nb_blocks: u16::try_from(size_bytes / block).expect("at most 65535 blocks"),
    }));
    let monitor = Monitor::new(
        vec![device.clone()],
        Instant::now(),
        MonitorSettings::default(),
    );
    monitor.spawn().unwrap();
    let api = Arc::new(VmApi::new(VmHandles {
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
    }));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (api, done) = (api.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut vm, mut list) = (Vec::new(), Vec::new());
            while !done.load(Ordering::Acquire) {
                let t = Instant::now();
                assert!(api.handle(Command::GetVm).is_ok());
                vm.push(t.elapsed());
                let t = Instant::now();
                assert!(api.handle(Command::ListMemoryDevices).is_ok());
                list.push(t.elapsed());
                std::thread::sleep(Duration::from_millis(2));
            }
            (vm, list)
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    serve(&device);
    let plug_time = started.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    done.store(true, Ordering::Release);
    let (vm, list) = reader.join().unwrap();
    assert_eq!(
        driver.response(0),
        common::ack(),
        "the plug was not acknowledged"
    );
    println!("plugged {size} with prealloc in {plug_time:.2?}");
    summary("GET /v1/vm", vm);
    summary("GET /v1/memory-devices", list);
}
