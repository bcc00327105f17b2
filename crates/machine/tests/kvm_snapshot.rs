//! Snapshot and restore on the host's /dev/kvm with a hand-assembled guest that counts in a
//! register and stores the count into RAM: save a paused machine, serialise the state, drop
//! the machine, restore into a new one, copy RAM back, resume, and see the count continue.
//!
//! Without /dev/kvm these tests fail, unless HOTMEM_ALLOW_SKIP=1 (then they print
//! `SKIPPED: <reason>` and pass).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boot::layout::ZERO_PAGE_ADDR;
use boot::{Gpa, LinuxBootInfo};
use machine::state::MachineState;
use machine::{BusDevice, Error, Gsi, Machine, MachineConfig, MsiMessage, SerialOutput};
use vm_memory::{Bytes, GuestAddress};

const CODE_ADDR: u64 = 0x10_0000;
const COUNTER_ADDR: u64 = 0x20_0000;
const ENTRIES_ADDR: u64 = 0x20_0008;
const RAM_SIZE_BYTES: u64 = 64 << 20;
const NUM_CPUS: u8 = 2;
const MSR_IA32_TSC: u32 = 0x10;
/// xmm0 starts at byte 160 of the FXSAVE/XSAVE legacy area.
const XMM0_WORD: usize = 160 / 4;

/// `inc qword [ENTRIES]`; set CR4.OSFXSR (so SREGS differ from the boot state); then
/// forever `inc rcx; mov [COUNTER], rcx`.
const COUNT_FOREVER: [u8; 37] = [
    0x48, 0xFF, 0x04, 0x25, 0x08, 0x00, 0x20, 0x00, // inc qword [0x200008]
    0x0F, 0x20, 0xE0, // mov rax, cr4
    0x0D, 0x00, 0x02, 0x00, 0x00, // or eax, 0x200 (OSFXSR)
    0x0F, 0x22, 0xE0, // mov cr4, rax
    0x48, 0xFF, 0xC1, // loop: inc rcx
    0x90, 0x90, 0x90, 0x90, 0x90, // nop (SSE faults on emulated test hosts)
    0x48, 0x89, 0x0C, 0x25, 0x00, 0x00, 0x20, 0x00, // mov [0x200000], rcx
    0xEB, 0xEE, // jmp loop
];

/// Whether the test can run; panics without /dev/kvm unless HOTMEM_ALLOW_SKIP=1.
fn kvm_or_skip() -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    if std::env::var("HOTMEM_ALLOW_SKIP").as_deref() == Ok("1") {
        println!("SKIPPED: /dev/kvm missing");
        return false;
    }
    panic!("/dev/kvm missing (set HOTMEM_ALLOW_SKIP=1 to skip)");
}

fn config(num_cpus: u8, ram_size_bytes: u64) -> MachineConfig {
    MachineConfig {
        num_cpus,
        ram_size_bytes,
        serial: SerialOutput::Writer(Box::new(std::io::sink())),
    }
}

fn boot_info() -> LinuxBootInfo {
    LinuxBootInfo {
        entry: Gpa(CODE_ADDR),
        zero_page: ZERO_PAGE_ADDR,
        initramfs: None,
        rsdp: Gpa(0),
    }
}

fn counting_machine() -> Machine {
    let m = Machine::new(config(NUM_CPUS, RAM_SIZE_BYTES)).unwrap();
    boot::write_cpu_tables(m.memory()).unwrap();
    m.memory()
        .write_slice(&COUNT_FOREVER, GuestAddress(CODE_ADDR))
        .unwrap();
    m
}

fn read_u64(m: &Machine, addr: u64) -> u64 {
    m.memory().read_obj(GuestAddress(addr)).unwrap()
}

/// Waits until the counter moves past `above` (the guest runs slowly on emulated hosts).
fn wait_past(m: &Machine, above: u64) -> u64 {
    for _ in 0..500 {
        let now = read_u64(m, COUNTER_ADDR);
        if now > above {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "the guest did not run past {above}: {:?}, rip {:#x}",
        m.exit_signal().pending(),
        m.vcpu_regs(0).map(|r| r.rip).unwrap_or(0)
    );
}

/// Boot RAM as (guest address, bytes).
fn copy_ram(m: &Machine) -> Vec<(u64, Vec<u8>)> {
    m.boot_ram_ranges()
        .iter()
        .map(|r| {
            let mut bytes = vec![0u8; usize::try_from(r.size_bytes).unwrap()];
            m.memory()
                .read_slice(&mut bytes, GuestAddress(r.guest_addr))
                .unwrap();
            (r.guest_addr, bytes)
        })
        .collect()
}

/// Puts `value` into xmm0 (low half) of `vcpu` in a saved state.
fn set_xmm0_low(state: &mut MachineState, vcpu: usize, value: u64) {
    let w = &mut state.vcpus[vcpu].xsave.words;
    w[XMM0_WORD] = value as u32;
    w[XMM0_WORD + 1] = (value >> 32) as u32;
}

#[test]
fn a_restored_guest_continues_counting_where_it_stopped() {
    if !kvm_or_skip() {
        return;
    }
    let mut m = counting_machine();
    m.start(&boot_info()).unwrap();
    wait_past(&m, 1000);
    m.pause().unwrap();

    // Device-side state the guest did not touch, set from the host.
    let com1 = m.serial().clone();
    com1.lock().unwrap().write(0x3F8, 7, &[0x5A]); // scratch
    com1.lock().unwrap().write(0x3F8, 3, &[0x03]); // LCR: 8N1
    assert!(m.pio_bus().write(0x70, &[0x8D]));
    let gsi = m.vm().allocate_gsi().unwrap();
    let msi = MsiMessage {
        address: 0xFEE0_0000,
        data: 0x31,
    };
    m.vm().set_msi_route(gsi, msi).unwrap();

    let counter = read_u64(&m, COUNTER_ADDR);
    let rcx = m.vcpu_regs(0).unwrap().rcx;
    assert!(
        rcx == counter || rcx == counter + 1,
        "rcx {rcx} counter {counter}"
    );
    let t = Instant::now();
    let state = m.save_state().unwrap();
    let save_time = t.elapsed();
    assert_ne!(
        state.vcpus[0].sregs.cr4 & 0x200,
        0,
        "CR4.OSFXSR the guest set"
    );
    assert_eq!(state.vcpus.len(), usize::from(NUM_CPUS));
    let mtrr_def_type = state.vcpus[0].msrs.iter().find(|e| e.index == 0x2FF);
    assert_eq!(
        mtrr_def_type.map(|e| e.data),
        Some(0x806),
        "boot MTRR default type"
    );
    let bytes = serde_json::to_vec(&state).unwrap();
    let ram = copy_ram(&m);
    drop(m);

    let mut restored: MachineState = serde_json::from_slice(&bytes).unwrap();
    // The guest cannot use SSE here (emulated hosts); mark xmm0 to see XSAVE restored.
    set_xmm0_low(&mut restored, 0, 0x0123_4567_89AB_CDEF);
    let t = Instant::now();
    let mut m = Machine::restore(config(NUM_CPUS, RAM_SIZE_BYTES), &restored).unwrap();
    let restore_time = t.elapsed();
    println!(
        "state: {} JSON bytes, {} MSRs/vCPU, {} XSAVE bytes; save {save_time:?}, restore {restore_time:?}",
        bytes.len(),
        state.vcpus[0].msrs.len(),
        state.vcpus[0].xsave.words.len() * 4
    );
    assert!(!m.is_running(), "restore leaves the machine paused");
    for (addr, data) in &ram {
        m.memory().write_slice(data, GuestAddress(*addr)).unwrap();
    }

    // Before resuming, the vCPUs hold exactly the saved state.
    assert_eq!(m.vcpu_regs(0).unwrap(), state.vcpus[0].regs);
    let again = m.save_state().unwrap();
    for (a, b) in again.vcpus.iter().zip(&restored.vcpus) {
        assert_eq!(a.regs, b.regs);
        assert_eq!(a.sregs, b.sregs);
        assert_eq!(a.xsave, b.xsave);
        assert_eq!(a.xcrs, b.xcrs);
        assert_eq!(a.debug_regs, b.debug_regs);
        assert_eq!(a.mp_state, b.mp_state);
        assert_eq!(a.vcpu_events, b.vcpu_events);
        assert_eq!(a.cpuid, b.cpuid);
        let no_tsc = |v: &[kvm_bindings::kvm_msr_entry]| {
            v.iter()
                .filter(|e| e.index != MSR_IA32_TSC)
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(no_tsc(&a.msrs), no_tsc(&b.msrs));
    }
    assert_eq!(again.legacy, state.legacy);
    assert_eq!(again.legacy.serial.scratch, 0x5A);
    assert_eq!(again.legacy.cmos_index, 0x8D);
    assert_eq!(again.gsi, state.gsi);
    assert_eq!(again.gsi.msi_routes[0].gsi, gsi);
    assert_eq!(m.vm().allocate_gsi().unwrap(), Gsi(gsi.0 + 1));

    m.resume().unwrap();
    let later = wait_past(&m, counter + 1000);
    m.pause().unwrap();
    assert!(later > counter + 1000);
    assert_eq!(
        read_u64(&m, ENTRIES_ADDR),
        1,
        "the restored guest went back to its entry point"
    );
    assert!(m.vcpu_regs(0).unwrap().rcx > rcx);
}

#[test]
fn save_state_while_running_is_refused() {
    if !kvm_or_skip() {
        return;
    }
    let mut m = counting_machine();
    m.start(&boot_info()).unwrap();
    wait_past(&m, 10);
    let e = m.save_state().unwrap_err();
    assert!(matches!(e, Error::VcpuState(_)), "{e}");
    assert!(e.to_string().contains("paused"), "{e}");
    m.pause().unwrap();
    m.save_state().unwrap();
}

fn saved_idle_state() -> MachineState {
    Machine::new(config(NUM_CPUS, RAM_SIZE_BYTES))
        .unwrap()
        .save_state()
        .unwrap()
}

#[test]
fn a_state_for_another_machine_shape_is_refused() {
    if !kvm_or_skip() {
        return;
    }
    let state = saved_idle_state();
    let field = |r: Result<Machine, Error>| match r {
        Err(Error::StateMismatch { field, .. }) => field,
        other => panic!("expected a mismatch, got {other:?}"),
    };
    assert_eq!(
        field(Machine::restore(config(1, RAM_SIZE_BYTES), &state)),
        "num_cpus"
    );
    assert_eq!(
        field(Machine::restore(
            config(NUM_CPUS, 2 * RAM_SIZE_BYTES),
            &state
        )),
        "ram_size_bytes"
    );
    Machine::restore(config(NUM_CPUS, RAM_SIZE_BYTES), &state).unwrap();
}

#[test]
fn a_cpuid_feature_this_host_lacks_is_refused() {
    if !kvm_or_skip() {
        return;
    }
    let mut state = saved_idle_state();
    let leaf7 = state.vcpus[1]
        .cpuid
        .iter_mut()
        .find(|e| e.function == 7 && e.index == 0)
        .expect("leaf 7");
    let missing = (0..32).map(|b| 1u32 << b).find(|b| leaf7.ebx & b == 0);
    let Some(bit) = missing else {
        println!("host offers every leaf 7 EBX feature; nothing to add");
        return;
    };
    leaf7.ebx |= bit;
    let e = Machine::restore(config(NUM_CPUS, RAM_SIZE_BYTES), &state).unwrap_err();
    match &e {
        Error::CpuidUnsupported {
            vcpu: 1,
            leaf: 7,
            subleaf: 0,
            register: "ebx",
            missing_bits,
        } => assert_eq!(*missing_bits, bit),
        other => panic!("unexpected {other:?}"),
    }
    println!("{e}");
}

const BAD_ADDR: u64 = 0x20_0010;
const SEQUENCE_PORT: u16 = 0x510;

/// `inc qword [ENTRIES]; mov dx, 0x510; xor ecx, ecx`, then forever
/// `in eax, dx; inc rcx; cmp rax, rcx; jne bad; mov [COUNTER], rcx`;
/// bad: `mov [BAD], rcx; jmp $`. The guest checks it sees 1, 2, 3, … from the port.
const CHECK_PORT_READS: [u8; 43] = [
    0x48, 0xFF, 0x04, 0x25, 0x08, 0x00, 0x20, 0x00, // inc qword [0x200008]
    0x66, 0xBA, 0x10, 0x05, // mov dx, 0x510
    0x31, 0xC9, // xor ecx, ecx
    0xED, // loop: in eax, dx
    0x48, 0xFF, 0xC1, // inc rcx
    0x48, 0x39, 0xC8, // cmp rax, rcx
    0x75, 0x0A, // jne bad
    0x48, 0x89, 0x0C, 0x25, 0x00, 0x00, 0x20, 0x00, // mov [0x200000], rcx
    0xEB, 0xED, // jmp loop
    0x48, 0x89, 0x0C, 0x25, 0x10, 0x00, 0x20, 0x00, // bad: mov [0x200010], rcx
    0xEB, 0xFE, // jmp $
];

/// Port device answering reads with 1, 2, 3, … (its state is the count served so far).
/// Slow, so that a pause almost always finds the vCPU thread handling an `in` exit.
struct Sequence(Arc<AtomicU64>);

impl BusDevice for Sequence {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        std::thread::sleep(Duration::from_micros(200));
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        let bytes = (n as u32).to_le_bytes();
        let len = data.len().min(4);
        data[..len].copy_from_slice(&bytes[..len]);
    }

    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
}

fn attach_sequence(m: &Machine, served: &Arc<AtomicU64>) {
    let dev = Arc::new(Mutex::new(Sequence(served.clone())));
    m.pio_bus()
        .insert(dev, u64::from(SEQUENCE_PORT), 4)
        .unwrap();
}

/// A vCPU paused right after an `in` exit has its result delivered before the state is
/// read: no value the device served is lost or read twice across save and restore (without
/// that, the restored guest executes the `in` again and sees a gap in the sequence).
#[test]
fn port_reads_in_flight_at_pause_are_completed_before_save() {
    if !kvm_or_skip() {
        return;
    }
    let served = Arc::new(AtomicU64::new(0));
    let mut m = Machine::new(config(1, RAM_SIZE_BYTES)).unwrap();
    boot::write_cpu_tables(m.memory()).unwrap();
    m.memory()
        .write_slice(&CHECK_PORT_READS, GuestAddress(CODE_ADDR))
        .unwrap();
    attach_sequence(&m, &served);
    m.start(&boot_info()).unwrap();
    wait_past(&m, 200);
    m.pause().unwrap();
    let k = served.load(Ordering::SeqCst);
    let regs = m.vcpu_regs(0).unwrap();
    assert_eq!(regs.rax, k, "the last value served is in RAX");
    let state = m.save_state().unwrap();
    let ram = copy_ram(&m);
    drop(m);

    let mut m = Machine::restore(config(1, RAM_SIZE_BYTES), &state).unwrap();
    for (addr, data) in &ram {
        m.memory().write_slice(data, GuestAddress(*addr)).unwrap();
    }
    let served = Arc::new(AtomicU64::new(k));
    attach_sequence(&m, &served);
    m.resume().unwrap();
    wait_past(&m, regs.rcx + 200);
    m.pause().unwrap();
    let k2 = served.load(Ordering::SeqCst);
    assert!(k2 > k + 100);
    assert_eq!(m.vcpu_regs(0).unwrap().rax, k2);
    assert_eq!(
        read_u64(&m, BAD_ADDR),
        0,
        "the guest saw a gap after restore"
    );
    assert_eq!(read_u64(&m, ENTRIES_ADDR), 1);
}
