//! The whole VMM snapshot path on /dev/kvm with a tiny hand-assembled guest (no Linux): the
//! guest counts in a register and stores the count in boot RAM and in plugged device memory;
//! the paused VM is written with `save_vm` (real machine state), dropped, and restored from the
//! directory into a new machine with another slot policy; resumed, the guest counts on from
//! where it stopped, in both places.

use std::sync::Arc;
use std::time::Duration;

use boot::layout::ZERO_PAGE_ADDR;
use boot::{Gpa, LinuxBootInfo};
use machine::{Machine, MachineConfig, SerialOutput};
use memslots::{SlotBudget, SlotPolicy};
use pci::{MmioAddress, MmioAllocator};
use virtio_mem::{BlockRange, Request, Response};
use vm_memory::{Bytes, GuestAddress};
use vmm::config::{MemDeviceConfig, SerialTarget, VmConfig};
use vmm::devices::{self, BuiltDevices, DeviceSetup};
use vmm::snapshot::machine_part::restore_machine;
use vmm::snapshot::save::SaveInputs;
use vmm::snapshot::{RestorePlan, save_vm};

const CODE_ADDR: u64 = 0x10_0000;
const COUNTER_ADDR: u64 = 0x20_0000;
const RAM_SIZE_BYTES: u64 = 64 << 20;
/// A boot RAM page the guest never touches, and what it holds.
const MARKER_ADDR: u64 = 0x300_0000;
const MARKER: u64 = 0x6d61_726b_6572_2121;

/// Page directory identity-mapping the GiB of device memory the guest writes.
const EXTRA_PD_ADDR: u64 = 0x30_0000;

/// Maps the GiB holding `target` (PDPT entry -> EXTRA_PD_ADDR), then counts forever, storing
/// the count at COUNTER_ADDR and at `target`.
fn count_forever(target: u64) -> Vec<u8> {
    let gib = target >> 30;
    let pdpte_addr = u32::try_from(boot::layout::PDPT_ADDR.0 + gib * 8).unwrap();
    let mut code = vec![0x48, 0xB8]; // mov rax, imm64
    code.extend_from_slice(&(EXTRA_PD_ADDR | 0x3).to_le_bytes());
    code.extend_from_slice(&[0x48, 0x89, 0x04, 0x25]); // mov [disp32], rax
    code.extend_from_slice(&pdpte_addr.to_le_bytes());
    code.extend_from_slice(&[0x0F, 0x20, 0xD8, 0x0F, 0x22, 0xD8]); // mov rax, cr3; mov cr3, rax
    code.extend_from_slice(&[0x48, 0xBB]); // mov rbx, imm64
    code.extend_from_slice(&target.to_le_bytes());
    code.extend_from_slice(&[0x31, 0xC9]); // xor ecx, ecx
    code.extend_from_slice(&[
        0x48, 0xFF, 0xC1, // loop: inc rcx
        0x48, 0x89, 0x0C, 0x25, 0x00, 0x00, 0x20, 0x00, // mov [0x200000], rcx
        0x48, 0x89, 0x0B, // mov [rbx], rcx
        0xEB, 0xF0, // jmp loop
    ]);
    code
}

fn config() -> MachineConfig {
    MachineConfig {
        num_cpus: 1,
        ram_size_bytes: RAM_SIZE_BYTES,
        serial: SerialOutput::Writer(Box::new(std::io::sink())),
    }
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

fn counter(m: &Machine) -> u64 {
    m.memory().read_obj(GuestAddress(COUNTER_ADDR)).unwrap()
}

fn wait_past(m: &Machine, above: u64) -> u64 {
    for _ in 0..1000 {
        let now = counter(m);
        if now > above {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "the guest did not count past {above}: {:?}",
        m.exit_signal().pending()
    );
}

fn device_u64(built: &BuiltDevices, offset: u64) -> u64 {
    let t = built.memory_devices[0].transport.lock().unwrap();
    let addr = t.device().region().host_addr() + offset as usize;
    // SAFETY: inside the device's host mapping, in a plugged block; the guest is paused.
    unsafe { std::ptr::read_volatile(addr as *const u64) }
}

#[test]
fn a_paused_vm_is_restored_from_its_snapshot_directory_and_counts_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = MemDeviceConfig::parse("id=mem0,size=8G,requested=2G").unwrap();
    dev.slots = SlotPolicy::Fixed;
    let mut m = Machine::new(config()).expect("this test needs /dev/kvm");
    boot::write_cpu_tables(m.memory()).unwrap();
    let built = build(&m, std::slice::from_ref(&dev), None);
    let base = built.memory_devices[0]
        .transport
        .lock()
        .unwrap()
        .device()
        .core()
        .status()
        .guest_addr;
    let plugged_offset = (1 << 30) + (4 << 20);
    let answer = built.memory_devices[0]
        .transport
        .lock()
        .unwrap()
        .device_mut()
        .core_mut()
        .handle_request(Request::Plug(BlockRange {
            guest_addr: GuestAddress(base + (1 << 30)),
            nb_blocks: 8,
        }));
    assert_eq!(answer, Response::Ack);

    let target = base + plugged_offset;
    m.memory()
        .write_slice(&count_forever(target), GuestAddress(CODE_ADDR))
        .unwrap();
    let gib_base = target & !((1 << 30) - 1);
    for i in 0..512u64 {
        let pde = (gib_base + (i << 21)) | 0x83; // present, writable, 2 MiB page
        m.memory()
            .write_obj(pde, GuestAddress(EXTRA_PD_ADDR + i * 8))
            .unwrap();
    }
    // Data the guest never touches: after a lazy restore its page stays mapped from the file.
    m.memory()
        .write_obj(MARKER, GuestAddress(MARKER_ADDR))
        .unwrap();
    m.start(&LinuxBootInfo {
        entry: Gpa(CODE_ADDR),
        zero_page: ZERO_PAGE_ADDR,
        initramfs: None,
        rsdp: Gpa(0),
    })
    .unwrap();
    wait_past(&m, 1000);
    m.pause().unwrap();
    let count = counter(&m);
    let in_device = device_u64(&built, plugged_offset);
    // Paused between the two stores or after both.
    assert!(
        in_device == count || in_device + 1 == count,
        "{in_device} vs {count}"
    );

    let vm_config = VmConfig {
        kernel: "/boot/vmlinuz".into(),
        initramfs: None,
        cmdline: String::new(),
        boot_memory_bytes: RAM_SIZE_BYTES,
        vcpus: 1,
        mem_devices: vec![dev.clone()],
        serial: SerialTarget::Stdio,
        api_socket: None,
        not_following_after: Duration::from_secs(10),
        restore: None,
        resume_after_restore: false,
        incoming: None,
        numa: None,
        shared_memory: false,
        vhost_user: Vec::new(),
    };
    let report = save_vm(SaveInputs {
        machine: &m,
        devices: &built.memory_devices,
        vm_config: &(&vm_config).into(),
        destination: dir.path(),
        progress: &mut |_, _| {},
    })
    .unwrap();
    println!("snapshot: {report:?}");
    m.stop().unwrap();
    drop(built);
    drop(m);

    let plan = RestorePlan::load(dir.path()).unwrap();
    let configs = plan
        .mem_devices(&["id=mem0,slots=adaptive".into()])
        .unwrap();
    let mut m = restore_machine(config(), &plan).unwrap();
    assert_eq!(counter(&m), count, "boot RAM restored");
    let built = build(&m, &configs, Some(&plan));
    assert_eq!(
        device_u64(&built, plugged_offset),
        in_device,
        "device memory restored"
    );
    {
        let t = built.memory_devices[0].transport.lock().unwrap();
        let slots = t.device().core().memslots();
        assert_eq!(slots.layout().policy(), SlotPolicy::Adaptive);
        assert_eq!(slots.mapped_count(), 1);
    }
    m.resume().unwrap();
    let later = wait_past(&m, count + 1000);
    m.pause().unwrap();
    let regs = m.vcpu_regs(0).unwrap();
    assert!(regs.rcx >= later, "rcx {} continues from {count}", regs.rcx);
    let (now, in_device_now) = (counter(&m), device_u64(&built, plugged_offset));
    assert!(
        in_device_now == now || in_device_now + 1 == now,
        "{in_device_now} vs {now}"
    );
    assert!(
        in_device_now > in_device + 1000,
        "the guest went on writing device memory"
    );

    // Boot RAM was restored lazily: most of its pages were never touched here and still hold
    // the first snapshot's data through the file mapping. A second snapshot must save them
    // too (the guest's code and page tables), and the VM restored from it counts on.
    let second = tempfile::tempdir().unwrap();
    save_vm(SaveInputs {
        machine: &m,
        devices: &built.memory_devices,
        vm_config: &(&vm_config).into(),
        destination: second.path(),
        progress: &mut |_, _| {},
    })
    .unwrap();
    m.stop().unwrap();
    drop(built);
    drop(m);
    drop(dir);
    let plan = RestorePlan::load(second.path()).unwrap();
    let configs = plan.mem_devices(&[]).unwrap();
    let mut m = restore_machine(config(), &plan).unwrap();
    assert_eq!(
        counter(&m),
        now,
        "boot RAM restored from the second snapshot"
    );
    let marker: u64 = m.memory().read_obj(GuestAddress(MARKER_ADDR)).unwrap();
    assert_eq!(
        marker, MARKER,
        "boot RAM the guest never touched survives a snapshot of a lazily restored VM"
    );
    let built = build(&m, &configs, Some(&plan));
    m.resume().unwrap();
    let again = wait_past(&m, now + 1000);
    m.pause().unwrap();
    assert!(
        device_u64(&built, plugged_offset) + 1 >= again,
        "the guest counts on in device memory"
    );
    m.stop().unwrap();
}
