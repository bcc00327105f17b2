//! Runs hand-assembled 64-bit guests on the host's /dev/kvm (no Linux): serial output,
//! i8042 reset, ACPI power-off, MMIO dispatch, ioeventfd, reboot on the same machine.

use std::io::Write;
use std::sync::{Arc, Mutex};

use boot::layout::ZERO_PAGE_ADDR;
use boot::{Gpa, LinuxBootInfo};
use machine::{BusDevice, ExitReason, Machine, MachineConfig, MsiMessage, SerialOutput};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const CODE_ADDR: u64 = 0x10_0000;
const MMIO_ADDR: u64 = 0xD000_0000;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Whether /dev/kvm can be used; without it the test fails unless skips are allowed
/// (`HOTMEM_ALLOW_SKIP=1`), and then it is reported as skipped.
fn kvm_available(test: &str) -> bool {
    test_support::require_kvm(test)
}

fn machine(num_cpus: u8) -> (Machine, Captured) {
    let out = Captured::default();
    let m = Machine::new(MachineConfig {
        num_cpus,
        ram_size_bytes: 64 << 20,
        serial: SerialOutput::Writer(Box::new(out.clone())),
    })
    .unwrap();
    boot::write_cpu_tables(m.memory()).unwrap();
    (m, out)
}

fn boot_info() -> LinuxBootInfo {
    LinuxBootInfo {
        entry: Gpa(CODE_ADDR),
        zero_page: ZERO_PAGE_ADDR,
        initramfs: None,
        rsdp: Gpa(0),
    }
}

/// `mov dx, 0x3f8` then `mov al, c; out dx, al` per byte.
fn print(text: &[u8]) -> Vec<u8> {
    let mut code = vec![0x66, 0xBA, 0xF8, 0x03];
    for c in text {
        code.extend_from_slice(&[0xB0, *c, 0xEE]);
    }
    code
}

/// `mov al, 0xfe; out 0x64, al; jmp $`.
const I8042_RESET: [u8; 6] = [0xB0, 0xFE, 0xE6, 0x64, 0xEB, 0xFE];
/// `mov al, SLP_EN|SLP_TYP(5); mov dx, 0x600; out dx, al; jmp $`.
const ACPI_POWEROFF: [u8; 9] = [0xB0, 0x34, 0x66, 0xBA, 0x00, 0x06, 0xEE, 0xEB, 0xFE];

fn load(m: &Machine, code: &[u8]) {
    m.memory()
        .write_slice(code, GuestAddress(CODE_ADDR))
        .unwrap();
}

#[test]
fn serial_output_then_i8042_reset_is_reboot() {
    if !kvm_available("serial_output_then_i8042_reset_is_reboot") {
        return;
    }
    let (mut m, out) = machine(1);
    load(&m, &[print(b"Hi\n"), I8042_RESET.to_vec()].concat());
    assert_eq!(m.run(&boot_info()).unwrap(), ExitReason::Reboot);
    assert_eq!(out.text(), "Hi\n");
}

#[test]
fn acpi_sleep_control_is_poweroff() {
    if !kvm_available("acpi_sleep_control_is_poweroff") {
        return;
    }
    let (mut m, out) = machine(1);
    load(&m, &[print(b"bye"), ACPI_POWEROFF.to_vec()].concat());
    assert_eq!(m.run(&boot_info()).unwrap(), ExitReason::Poweroff);
    assert_eq!(out.text(), "bye");
}

#[test]
fn reboot_then_second_boot_on_same_machine_with_two_vcpus() {
    if !kvm_available("reboot_then_second_boot_on_same_machine_with_two_vcpus") {
        return;
    }
    let (mut m, out) = machine(2);
    load(&m, &[print(b"1"), I8042_RESET.to_vec()].concat());
    assert_eq!(m.run(&boot_info()).unwrap(), ExitReason::Reboot);
    load(&m, &[print(b"2"), ACPI_POWEROFF.to_vec()].concat());
    assert_eq!(m.run(&boot_info()).unwrap(), ExitReason::Poweroff);
    assert_eq!(out.text(), "12");
}

struct MmioProbe {
    writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for MmioProbe {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(b'M');
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

#[test]
fn mmio_exits_reach_bus_device_and_ioeventfd_bypasses_it() {
    if !kvm_available("mmio_exits_reach_bus_device_and_ioeventfd_bypasses_it") {
        return;
    }
    let (mut m, out) = machine(1);
    let probe = Arc::new(Mutex::new(MmioProbe { writes: Vec::new() }));
    m.mmio_bus()
        .insert(probe.clone(), MMIO_ADDR, 0x2000)
        .unwrap();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    m.vm()
        .register_mmio_ioeventfd(&evt, MMIO_ADDR + 0x1000)
        .unwrap();
    let mut code = vec![0x48, 0xB8];
    code.extend_from_slice(&MMIO_ADDR.to_le_bytes()); // mov rax, MMIO_ADDR
    code.extend_from_slice(&[0xC7, 0x40, 0x08, 0x78, 0x56, 0x34, 0x12]); // mov dword [rax+8], 0x12345678
    code.extend_from_slice(&[0xC7, 0x80, 0x00, 0x10, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00]); // mov dword [rax+0x1000], 1
    code.extend_from_slice(&[0x8B, 0x18]); // mov ebx, [rax]
    code.extend_from_slice(&[0x89, 0xD8]); // mov eax, ebx
    code.extend_from_slice(&[0x66, 0xBA, 0xF8, 0x03, 0xEE]); // mov dx, 0x3f8; out dx, al
    code.extend_from_slice(&I8042_RESET);
    load(&m, &code);
    assert_eq!(m.run(&boot_info()).unwrap(), ExitReason::Reboot);
    assert_eq!(out.text(), "M");
    assert_eq!(
        probe.lock().unwrap().writes,
        vec![(8, 0x1234_5678u32.to_le_bytes().to_vec())]
    );
    assert_eq!(evt.read().unwrap(), 1);
}

#[test]
fn msi_routes_and_irqfds_are_accepted_by_kvm() {
    if !kvm_available("msi_routes_and_irqfds_are_accepted_by_kvm") {
        return;
    }
    let (m, _) = machine(1);
    assert!(m.nr_memslots() > m.boot_memslots().len());
    assert_eq!(m.boot_memslots(), &[0]);
    let gsi = m.vm().allocate_gsi().unwrap();
    m.vm()
        .set_msi_route(
            gsi,
            MsiMessage {
                address: 0xFEE0_0000,
                data: 0x30,
            },
        )
        .unwrap();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    m.vm().register_irqfd(&evt, gsi).unwrap();
    evt.write(1).unwrap();
    m.vm().unregister_irqfd(&evt, gsi).unwrap();
    m.vm().clear_msi_route(gsi).unwrap();
    m.vm().free_gsi(gsi).unwrap();
}
