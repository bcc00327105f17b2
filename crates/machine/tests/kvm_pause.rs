//! Pause and resume on the host's /dev/kvm with a hand-assembled guest: a paused guest does
//! not run, a resumed one continues where it was (its registers were not reset).

use std::time::Duration;

use boot::layout::ZERO_PAGE_ADDR;
use boot::{Gpa, LinuxBootInfo};
use machine::{Machine, MachineConfig, SerialOutput};
use vm_memory::{Bytes, GuestAddress};

const CODE_ADDR: u64 = 0x10_0000;
const COUNTER_ADDR: u64 = 0x20_0000;
const ENTRIES_ADDR: u64 = 0x20_0008;

/// `inc qword [ENTRIES]` once, then forever `inc rcx; mov [COUNTER], rcx`.
const COUNT_FOREVER: [u8; 21] = [
    0x48, 0xFF, 0x04, 0x25, 0x08, 0x00, 0x20, 0x00, // inc qword [0x200008]
    0x48, 0xFF, 0xC1, // loop: inc rcx
    0x48, 0x89, 0x0C, 0x25, 0x00, 0x00, 0x20, 0x00, // mov [0x200000], rcx
    0xEB, 0xF3, // jmp loop
];

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
    panic!("the guest did not run");
}

/// A one-vCPU machine with [`COUNT_FOREVER`] loaded, not started.
fn counting_machine() -> Machine {
    let m = Machine::new(MachineConfig {
        num_cpus: 1,
        ram_size_bytes: 64 << 20,
        serial: SerialOutput::Writer(Box::new(std::io::sink())),
    })
    .unwrap();
    boot::write_cpu_tables(m.memory()).unwrap();
    m.memory()
        .write_slice(&COUNT_FOREVER, GuestAddress(CODE_ADDR))
        .unwrap();
    m
}

fn start_counting(m: &mut Machine) {
    m.start(&LinuxBootInfo {
        entry: Gpa(CODE_ADDR),
        zero_page: ZERO_PAGE_ADDR,
        initramfs: None,
        rsdp: Gpa(0),
    })
    .unwrap();
}

#[test]
fn a_paused_guest_stands_still_and_resumes_without_a_reset() {
    if !test_support::require_kvm("a_paused_guest_stands_still_and_resumes_without_a_reset") {
        return;
    }
    let mut m = counting_machine();
    assert!(m.resume().is_err(), "nothing to resume before start");
    start_counting(&mut m);
    assert!(m.is_running());
    let before = wait_past(&m, 100);
    m.pause().unwrap();
    assert!(!m.is_running());
    assert!(m.pause().is_err(), "pausing twice is refused");
    let paused = read_u64(&m, COUNTER_ADDR);
    assert!(paused >= before);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(read_u64(&m, COUNTER_ADDR), paused, "a paused guest runs");
    m.resume().unwrap();
    wait_past(&m, paused + 100);
    m.stop().unwrap();
    assert_eq!(
        read_u64(&m, ENTRIES_ADDR),
        1,
        "resume went back to the entry point"
    );
}

/// How far the counter moves in `window`.
fn progress_over(m: &Machine, window: Duration) -> u64 {
    let start = read_u64(m, COUNTER_ADDR);
    std::thread::sleep(window);
    read_u64(m, COUNTER_ADDR) - start
}

/// The guest never leaves KVM_RUN by itself (no I/O, no halts): only the throttle's own
/// timer makes it stop and sleep.
#[test]
fn a_throttled_guest_runs_a_fraction_of_the_time_and_recovers() {
    if !test_support::require_kvm("a_throttled_guest_runs_a_fraction_of_the_time_and_recovers") {
        return;
    }
    let mut m = counting_machine();
    start_counting(&mut m);
    wait_past(&m, 100);
    let window = Duration::from_millis(600);
    let free = progress_over(&m, window);
    let throttle = m.throttle();
    throttle.set_percent(80).unwrap();
    let throttled = progress_over(&m, window);
    throttle.set_percent(0).unwrap();
    let recovered = progress_over(&m, window);
    m.pause().unwrap();
    m.stop().unwrap();
    eprintln!("counter per {window:?}: free {free}, at 80 % {throttled}, after {recovered}");
    // 80 % leaves the guest ~20 % of the time; the bounds are wide for a noisy host.
    assert!(
        throttled * 2 < free,
        "an 80 % throttle barely slowed the guest: {throttled} vs {free}"
    );
    assert!(
        recovered * 2 > free,
        "the guest stayed slow after the throttle was lifted: {recovered} vs {free}"
    );
}
