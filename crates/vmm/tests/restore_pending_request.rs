//! A request the guest put on the queue (and notified) just before the snapshot, but which the
//! VMM had not served yet, is answered by the restored VMM: nothing would notify it again, and
//! the guest's driver would wait for the answer forever. Needs /dev/kvm.

mod common;

use common::{Driver, ack, machine};
use machine::Machine;
use snapshot::Component;
use virtio_mem::{BlockRange, Request};
use vm_memory::{Bytes, GuestAddress};
use vmm::config::{MemDeviceConfig, SerialTarget, VmConfig};
use vmm::devices::BuiltDevices;
use vmm::snapshot::machine_part::load_boot_ram;
use vmm::snapshot::save::SaveInputs;
use vmm::snapshot::{MachinePart, RamRange, RestorePlan, save_vm};

const QUEUE_BASE: u64 = 0x20_0000;

fn build(m: &Machine, config: &MemDeviceConfig, restore: Option<&RestorePlan>) -> BuiltDevices {
    common::build_devices(m, std::slice::from_ref(config), restore)
}

struct TestMachine<'a>(&'a Machine);

impl MachinePart for TestMachine<'_> {
    fn save_component(&self) -> Result<Component, String> {
        Component::encode("machine", 1, &"test machine").map_err(|e| e.to_string())
    }
    fn boot_ram(&self) -> Vec<RamRange> {
        self.0.boot_ram()
    }
}

fn vm_config(config: &MemDeviceConfig) -> VmConfig {
    VmConfig {
        kernel: "/boot/vmlinuz".into(),
        initramfs: None,
        cmdline: String::new(),
        boot_memory_bytes: 64 << 20,
        vcpus: 1,
        mem_devices: vec![config.clone()],
        serial: SerialTarget::Stdio,
        api_socket: None,
        not_following_after: std::time::Duration::from_secs(10),
        restore: None,
        incoming: None,
        resume_after_restore: false,
        numa: None,
        shared_memory: false,
        vhost_user: Vec::new(),
    }
}

#[test]
fn a_request_pending_at_the_snapshot_is_answered_after_the_restore() {
    let dir = tempfile::tempdir().unwrap();
    let config = MemDeviceConfig::parse("id=mem0,size=8G,requested=1G").unwrap();
    let a = machine();
    let built = build(&a, &config, None);
    let dev = &built.memory_devices[0];
    let (used_idx_addr, region_base) = {
        let mut t = dev.transport.lock().unwrap();
        let region_base = t.device().core().status().guest_addr;
        let mut driver = Driver::start(&mut t, a.memory(), QUEUE_BASE);
        driver.send(Request::Plug(BlockRange {
            guest_addr: GuestAddress(region_base),
            nb_blocks: 1,
        }));
        // Notified (the eventfd fired) but not served before the VM was paused.
        assert_eq!(driver.answered(), 0);
        (driver.vq.used_addr().0 + 2, region_base)
    };
    save_vm(SaveInputs {
        machine: &TestMachine(&a),
        devices: &built.memory_devices,
        vm_config: &(&vm_config(&config)).into(),
        destination: dir.path(),
        progress: &mut |_, _| {},
    })
    .unwrap();
    drop(built);

    let plan = RestorePlan::load(dir.path()).unwrap();
    let b = machine();
    load_boot_ram(&TestMachine(&b), &plan).unwrap();
    let restored = build(&b, &config, Some(&plan));
    let used_idx: u16 = b.memory().read_obj(GuestAddress(used_idx_addr)).unwrap();
    assert_eq!(used_idx, 1, "the pending request was not answered");
    let mut response = [0u8; 10];
    b.memory()
        .read_slice(&mut response, GuestAddress(QUEUE_BASE + 0x8000 + 0x80))
        .unwrap();
    assert_eq!(response, ack());
    let t = restored.memory_devices[0].transport.lock().unwrap();
    let status = t.device().core().status();
    assert_eq!(
        (status.guest_addr, status.plugged_size_bytes),
        (region_base, 2 << 20)
    );
}
