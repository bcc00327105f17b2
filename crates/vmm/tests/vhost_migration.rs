//! vhost-user devices and live migration on real KVM with in-process fake backends: which VMs
//! may migrate (a backend that cannot log, or a virtio-fs device, is named), and the source's
//! backend dirty log reaching the pages to send. Needs /dev/kvm.

mod common;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use machine::Machine;
use memslots::SlotBudget;
use migration::{DirtyPages, RegionId};
use pci::{MmioAddress, MmioAllocator};
use vhost_frontend::fake_backend::{FakeBackend, FakeBackendConfig};
use vmm::devices::{self, DeviceSetup};
use vmm::migration::vhost::{VhostSource, blocker};
use vmm::vhost_user::{self, PlacedVhostDevice, VhostUserSpec};

/// VHOST_F_LOG_ALL and VHOST_USER_F_PROTOCOL_FEATURES.
const LOGGING_FEATURES: u64 = (1 << 26) | (1 << 30);
/// REPLY_ACK, LOG_SHMFD, CONFIG, CONFIGURE_MEM_SLOTS.
const LOGGING_PROTOCOL: u64 = (1 << 3) | (1 << 1) | (1 << 9) | (1 << 15);

fn fake_listener(path: &Path, config: FakeBackendConfig) -> std::thread::JoinHandle<FakeBackend> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        FakeBackend::serve(stream, config)
    })
}

struct Vm {
    _machine: Machine,
    devices: Vec<PlacedVhostDevice>,
    table: Option<vhost_frontend::SharedMemoryTable>,
    _backends: Vec<FakeBackend>,
}

/// A machine with boot RAM in a memfd and one vhost-user device per `(spec, backend)`.
fn vm(dir: &Path, devices: &[(&str, FakeBackendConfig)]) -> Vm {
    std::fs::create_dir_all(dir).unwrap();
    let mut specs = Vec::new();
    let mut listeners = Vec::new();
    for (i, (spec, config)) in devices.iter().enumerate() {
        let sock: PathBuf = dir.join(format!("{i}.sock"));
        listeners.push(fake_listener(&sock, *config));
        let spec = spec.replace("SOCK", &sock.display().to_string());
        specs.push(match spec.strip_prefix("fs:") {
            Some(fs) => VhostUserSpec::parse_fs(fs, i).unwrap(),
            None => VhostUserSpec::parse_disk(&spec, i).unwrap(),
        });
    }
    let m = common::shared_machine();
    let queue_memory = Arc::new(m.memory().clone());
    let setup = vhost_user::connect(&specs, &m, &queue_memory)
        .unwrap()
        .unwrap();
    let table = Some(setup.table.clone());
    let used = m.boot_memslots().iter().max().map_or(0, |s| s + 1);
    let window = m.layout().pci_mmio32_window();
    let built = devices::build_with_vhost(
        DeviceSetup {
            vm: m.vm(),
            budget: SlotBudget::new(m.nr_memslots() as u32, used),
            area: boot::DeviceAreaAllocator::new(m.layout()),
            bars: MmioAllocator::new(MmioAddress(window.start), MmioAddress(window.end)).unwrap(),
            memory: queue_memory,
            restore: None,
        },
        &[],
        Some(setup),
    )
    .unwrap();
    Vm {
        _machine: m,
        devices: built.vhost_devices,
        table,
        _backends: listeners.into_iter().map(|l| l.join().unwrap()).collect(),
    }
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hotmem-vmig-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn disk(features: u64, protocol_features: u64) -> FakeBackendConfig {
    FakeBackendConfig {
        features,
        protocol_features,
        config_capacity: 2048,
        ..FakeBackendConfig::default()
    }
}

#[test]
fn only_vms_whose_backends_can_log_and_that_have_no_virtio_fs_may_migrate() {
    let test = "only_vms_whose_backends_can_log_and_that_have_no_virtio_fs_may_migrate";
    if !test_support::require_kvm(test) {
        return;
    }
    let dir = scratch(test);
    let logging = disk(LOGGING_FEATURES, LOGGING_PROTOCOL);
    let no_log = disk(1 << 30, (1 << 3) | (1 << 9) | (1 << 15));
    let ok = vm(&dir.join("ok"), &[("socket=SOCK,id=disk0", logging)]);
    assert_eq!(blocker(&ok.devices), None);
    let refused = vm(&dir.join("nolog"), &[("socket=SOCK,id=disk0", no_log)]);
    let why = blocker(&refused.devices).unwrap();
    assert!(
        why.contains("'disk0'") && why.contains("VHOST_F_LOG_ALL"),
        "{why}"
    );
    let fs = vm(
        &dir.join("fs"),
        &[
            ("socket=SOCK,id=disk0", logging),
            ("fs:tag=share,socket=SOCK,id=fs0", logging),
        ],
    );
    let why = blocker(&fs.devices).unwrap();
    assert!(why.contains("virtio-fs device 'fs0'"), "{why}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_page_the_backend_logs_is_collected_for_its_region_once() {
    let test = "a_page_the_backend_logs_is_collected_for_its_region_once";
    if !test_support::require_kvm(test) {
        return;
    }
    let dir = scratch(test);
    let config = FakeBackendConfig {
        dirty_gpa_on_log_base: Some(0x12_3456),
        ..disk(LOGGING_FEATURES, LOGGING_PROTOCOL)
    };
    let vm = vm(&dir.join("a"), &[("socket=SOCK,id=disk0", config)]);
    let mut source = VhostSource::new(vm.devices.clone(), vm.table.clone());
    source
        .start_log(vec![(RegionId::BootRam(0), 0, 64 << 20)])
        .unwrap();
    let mut dirty = DirtyPages::default();
    dirty.add_region(RegionId::BootRam(0), 64 << 20);
    source.collect(&mut dirty).unwrap();
    assert_eq!(dirty.dirty_offsets(RegionId::BootRam(0)), vec![0x12_3000]);
    assert_eq!(source.pages_written(), 1);
    let mut again = DirtyPages::default();
    again.add_region(RegionId::BootRam(0), 64 << 20);
    source.collect(&mut again).unwrap();
    assert_eq!(again.count(), 0, "taken bits are cleared");
    source.stop_log();
    let _ = std::fs::remove_dir_all(&dir);
}
