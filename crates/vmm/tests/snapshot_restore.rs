//! Snapshot and restore of memory devices on real KVM slots (no guest code runs): a device
//! with plugged blocks and data is saved with the `fixed` policy and restored into a new
//! machine with `adaptive` (and the reverse); the restored device maps exactly the slots
//! holding plugged blocks, reads the saved data (lazily, from the memory file), and an
//! unplugged-then-replugged block reads zeroes. Needs /dev/kvm.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use machine::{Machine, MachineConfig, SerialOutput};
use memslots::{SlotBudget, SlotPolicy};
use pci::{MmioAddress, MmioAllocator};
use snapshot::Component;
use virtio_mem::{BlockRange, Request, Response};
use vm_memory::{Bytes, GuestAddress};
use vmm::config::{MemDeviceConfig, SerialTarget, VmConfig};
use vmm::devices::{self, BuiltDevices, DeviceSetup, SharedMemoryDevice};
use vmm::snapshot::machine_part::load_boot_ram;
use vmm::snapshot::restore::RestoreMemory;
use vmm::snapshot::save::SaveInputs;
use vmm::snapshot::{MachinePart, RamRange, RestorePlan, save_vm};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn machine() -> Machine {
    Machine::new(MachineConfig {
        num_cpus: 1,
        ram_size_bytes: 64 * MIB,
        serial: SerialOutput::Writer(Box::new(std::io::sink())),
    })
    .expect("these tests need /dev/kvm")
}

fn build(m: &Machine, configs: &[MemDeviceConfig], restore: Option<&RestorePlan>) -> BuiltDevices {
    let window = m.layout().pci_mmio32_window();
    devices::build(
        DeviceSetup {
            vm: m.vm(),
            budget: SlotBudget::new(m.nr_memslots() as u32, 1),
            area: boot::DeviceAreaAllocator::new(m.layout()),
            bars: MmioAllocator::new(MmioAddress(window.start), MmioAddress(window.end)).unwrap(),
            memory: Arc::new(m.memory().clone()),
            restore,
        },
        configs,
    )
    .unwrap()
}

/// The machine's boot RAM with a stand-in machine component (the real one is the machine
/// crate's).
struct TestMachine<'a>(&'a Machine);

impl MachinePart for TestMachine<'_> {
    fn save_component(&self) -> Result<Component, String> {
        Component::encode("machine", 1, &"test machine").map_err(|e| e.to_string())
    }
    fn boot_ram(&self) -> Vec<RamRange> {
        self.0.boot_ram()
    }
}

fn request(device: &SharedMemoryDevice, r: Request) -> Response {
    device
        .transport
        .lock()
        .unwrap()
        .device_mut()
        .core_mut()
        .handle_request(r)
}

fn host(device: &SharedMemoryDevice) -> (usize, u64) {
    let t = device.transport.lock().unwrap();
    let region = t.device().region();
    (region.host_addr(), t.device().core().status().guest_addr)
}

fn write(device: &SharedMemoryDevice, offset: u64, byte: u8, len: u64) {
    let (addr, _) = host(device);
    // SAFETY: inside the device's host mapping, in a plugged (hence mapped, writable) block.
    unsafe { std::ptr::write_bytes((addr + offset as usize) as *mut u8, byte, len as usize) };
}

fn read(device: &SharedMemoryDevice, offset: u64) -> u8 {
    let (addr, _) = host(device);
    // SAFETY: inside the device's host mapping, in a plugged block.
    unsafe { *((addr + offset as usize) as *const u8) }
}

fn plug(device: &SharedMemoryDevice, offset: u64, blocks: u16) -> Response {
    let (_, base) = host(device);
    request(
        device,
        Request::Plug(BlockRange {
            guest_addr: GuestAddress(base + offset),
            nb_blocks: blocks,
        }),
    )
}

fn vm_config(devices: &[MemDeviceConfig]) -> VmConfig {
    VmConfig {
        kernel: "/boot/vmlinuz".into(),
        initramfs: None,
        cmdline: "console=ttyS0".into(),
        boot_memory_bytes: 64 * MIB,
        vcpus: 1,
        mem_devices: devices.to_vec(),
        serial: SerialTarget::Stdio,
        api_socket: None,
        not_following_after: std::time::Duration::from_secs(10),
        restore: None,
        resume_after_restore: false,
        incoming: None,
        numa: None,
        shared_memory: false,
        vhost_user: Vec::new(),
    }
}

/// Saves with `from`, restores with `to` (device memory as `mode` says); checks slots, data,
/// state and a replug.
fn round_trip(from: SlotPolicy, to: SlotPolicy, mode: RestoreMemory) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = MemDeviceConfig::parse("id=mem0,size=16G,requested=8G").unwrap();
    config.slots = from;
    let a = machine();
    a.memory()
        .write_slice(b"boot ram survives", GuestAddress(0x10_0000))
        .unwrap();
    let built = build(&a, std::slice::from_ref(&config), None);
    let dev = &built.memory_devices[0];
    assert_eq!(plug(dev, 0, 64), Response::Ack); // 128 MiB at 0
    assert_eq!(plug(dev, 5 * GIB, 16), Response::Ack); // 32 MiB at 5 GiB
    write(dev, 0, 0x5a, 64 * MIB);
    write(dev, 5 * GIB + 4096, 0xa5, 4096);
    let saved_transport = dev.transport.lock().unwrap().save_state();
    let saved_device = dev.transport.lock().unwrap().device().core().state();

    let mut calls = 0;
    let report = save_vm(SaveInputs {
        machine: &TestMachine(&a),
        devices: &built.memory_devices,
        vm_config: &(&vm_config(std::slice::from_ref(&config))).into(),
        destination: dir.path(),
        progress: &mut |_, _| calls += 1,
    })
    .unwrap();
    assert!(calls > 0);
    assert_eq!(report.memory_scanned_bytes, 64 * MIB + 160 * MIB);
    let file = dir.path().join("memory-mem0");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.len(), 16 * GIB);
    assert!(
        meta.blocks() * 512 <= 64 * MIB + 4096 + 64 * 1024,
        "only written data is allocated: {}",
        meta.blocks() * 512
    );

    let mut plan = RestorePlan::load(dir.path()).unwrap();
    plan.memory = mode;
    let configs = plan.mem_devices(&[format!("id=mem0,slots={to}")]).unwrap();
    assert_eq!(configs[0].slots, to);
    let b = machine();
    assert!(load_boot_ram(&TestMachine(&b), &plan).unwrap() > 0);
    let mut text = [0u8; 17];
    b.memory()
        .read_slice(&mut text, GuestAddress(0x10_0000))
        .unwrap();
    assert_eq!(&text, b"boot ram survives");
    let restored = build(&b, &configs, Some(&plan));
    let dev = &restored.memory_devices[0];
    {
        let t = dev.transport.lock().unwrap();
        assert_eq!(t.save_state(), saved_transport);
        assert_eq!(t.device().core().state(), saved_device);
        assert_eq!(
            t.device().region().is_snapshot_backed(),
            mode == RestoreMemory::Lazy
        );
        let slots = t.device().core().memslots();
        assert_eq!(slots.layout().policy(), to);
        let mut wanted: Vec<usize> = [(0, 128 * MIB), (5 * GIB, 32 * MIB)]
            .iter()
            .flat_map(|&(o, s)| slots.layout().overlapping(o, s).unwrap())
            .collect();
        wanted.dedup();
        let mapped: Vec<usize> = slots.mapped_slots().map(|s| s.0).collect();
        assert_eq!(mapped, wanted, "{from} -> {to}");
    }
    assert_eq!(read(dev, 0), 0x5a);
    assert_eq!(read(dev, 64 * MIB), 0);
    assert_eq!(read(dev, 5 * GIB + 4096), 0xa5);
    // Unplug the block holding the 0xa5 page and plug it again: zeroes, not the file.
    let (_, base) = host(dev);
    let block = BlockRange {
        guest_addr: GuestAddress(base + 5 * GIB),
        nb_blocks: 1,
    };
    assert_eq!(request(dev, Request::Unplug(block)), Response::Ack);
    assert_eq!(request(dev, Request::Plug(block)), Response::Ack);
    assert_eq!(read(dev, 5 * GIB + 4096), 0);
    assert_eq!(read(dev, 5 * GIB + 2 * MIB + 4096), 0);
}

#[test]
fn fixed_snapshot_restores_with_adaptive_slots() {
    round_trip(SlotPolicy::Fixed, SlotPolicy::Adaptive, RestoreMemory::Lazy);
}

#[test]
fn eager_restore_reads_device_memory_into_fresh_memory() {
    round_trip(
        SlotPolicy::Adaptive,
        SlotPolicy::Adaptive,
        RestoreMemory::Eager,
    );
}

#[test]
fn adaptive_snapshot_restores_with_fixed_slots() {
    round_trip(SlotPolicy::Adaptive, SlotPolicy::Fixed, RestoreMemory::Lazy);
}

#[test]
fn a_corrupted_or_incomplete_snapshot_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = MemDeviceConfig::parse("id=mem0,size=8G").unwrap();
    let a = machine();
    let built = build(&a, std::slice::from_ref(&config), None);
    save_vm(SaveInputs {
        machine: &TestMachine(&a),
        devices: &built.memory_devices,
        vm_config: &(&vm_config(std::slice::from_ref(&config))).into(),
        destination: dir.path(),
        progress: &mut |_, _| {},
    })
    .unwrap();
    assert!(RestorePlan::load(dir.path()).is_ok());

    let state = dir.path().join("state.bin");
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&state, &bytes).unwrap();
    let e = format!("{:?}", RestorePlan::load(dir.path()).unwrap_err());
    assert!(e.contains("ChecksumMismatch"), "{e}");
    bytes[last] ^= 0xff;
    std::fs::write(&state, &bytes).unwrap();

    std::fs::File::options()
        .write(true)
        .open(dir.path().join("memory-mem0"))
        .unwrap()
        .set_len(GIB)
        .unwrap();
    let e = format!("{:?}", RestorePlan::load(dir.path()).unwrap_err());
    assert!(e.contains("memory-mem0") && e.contains("region has"), "{e}");

    let e = RestorePlan::load(&dir.path().join("nowhere")).unwrap_err();
    assert!(format!("{e:?}").contains("state.bin"), "{e:?}");
}

/// Saves a device mid-resize (requested ≠ plugged) and restores it lazily: the restored device
/// still asks for the requested size, so the guest goes on converging.
fn save_and_restore_mid_resize(
    requested_at_save: u64,
    set_up: impl Fn(&SharedMemoryDevice),
) -> (tempfile::TempDir, BuiltDevices) {
    let dir = tempfile::tempdir().unwrap();
    let config = MemDeviceConfig::parse("id=mem0,size=8G,requested=1G").unwrap();
    let a = machine();
    let built = build(&a, std::slice::from_ref(&config), None);
    let dev = &built.memory_devices[0];
    set_up(dev);
    {
        let mut t = dev.transport.lock().unwrap();
        let _config_changed = t
            .device_mut()
            .core_mut()
            .set_requested_size(requested_at_save)
            .unwrap();
    }
    save_vm(SaveInputs {
        machine: &TestMachine(&a),
        devices: &built.memory_devices,
        vm_config: &(&vm_config(std::slice::from_ref(&config))).into(),
        destination: dir.path(),
        progress: &mut |_, _| {},
    })
    .unwrap();
    drop(built);
    let plan = RestorePlan::load(dir.path()).unwrap();
    assert_eq!(
        plan.memory,
        RestoreMemory::Lazy,
        "lazy restore is the default"
    );
    let b = machine();
    load_boot_ram(&TestMachine(&b), &plan).unwrap();
    let restored = build(&b, &plan.mem_devices(&[]).unwrap(), Some(&plan));
    (dir, restored)
}

fn sizes(device: &SharedMemoryDevice) -> (u64, u64) {
    let t = device.transport.lock().unwrap();
    let config = t.device().core().config_space();
    (config.requested_size_bytes, config.plugged_size_bytes)
}

#[test]
fn a_vm_snapshotted_mid_grow_keeps_plugging_after_restore() {
    // 1 GiB plugged, 2 GiB requested when saved.
    let (_dir, restored) = save_and_restore_mid_resize(2 * GIB, |dev| {
        assert_eq!(plug(dev, 0, 512), Response::Ack);
        write(dev, 0, 0x77, 4096);
    });
    let dev = &restored.memory_devices[0];
    assert_eq!(sizes(dev), (2 * GIB, GIB));
    assert_eq!(read(dev, 0), 0x77);
    // The guest goes on plugging up to the requested size, and no further.
    assert_eq!(plug(dev, GIB, 512), Response::Ack);
    assert_eq!(sizes(dev), (2 * GIB, 2 * GIB));
    assert_eq!(plug(dev, 2 * GIB, 1), Response::Nack);
    write(dev, GIB + 4096, 1, 4096);
    assert_eq!(read(dev, GIB + 4096), 1);
    let t = dev.transport.lock().unwrap();
    t.device().core().check_invariants().unwrap();
}

#[test]
fn a_vm_snapshotted_mid_shrink_keeps_unplugging_after_restore() {
    // 1 GiB plugged, 256 MiB requested when saved.
    let (_dir, restored) = save_and_restore_mid_resize(256 * MIB, |dev| {
        assert_eq!(plug(dev, 0, 512), Response::Ack);
        write(dev, 512 * MIB, 0x33, 4096);
    });
    let dev = &restored.memory_devices[0];
    assert_eq!(sizes(dev), (256 * MIB, GIB));
    assert_eq!(read(dev, 512 * MIB), 0x33);
    let (_, base) = host(dev);
    let rest = BlockRange {
        guest_addr: GuestAddress(base + 256 * MIB),
        nb_blocks: 384,
    };
    assert_eq!(request(dev, Request::Unplug(rest)), Response::Ack);
    assert_eq!(sizes(dev), (256 * MIB, 256 * MIB));
    // Replugging is refused past the requested size; what was unplugged reads zero when the
    // requested size grows again and it is plugged.
    assert_eq!(plug(dev, 256 * MIB, 1), Response::Nack);
    let _config_changed = dev
        .transport
        .lock()
        .unwrap()
        .device_mut()
        .core_mut()
        .set_requested_size(GIB)
        .unwrap();
    assert_eq!(request(dev, Request::Plug(rest)), Response::Ack);
    assert_eq!(
        read(dev, 512 * MIB),
        0,
        "the snapshot's data came back after unplug"
    );
    let t = dev.transport.lock().unwrap();
    t.device().core().check_invariants().unwrap();
}
