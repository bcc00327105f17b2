//! A restored machine (snapshot restore, live migration destination) never went through
//! `start`; pausing it after its first resume must not kill the process with the vCPU kick
//! signal. The restore runs in a child process (this test binary again) that never started a
//! machine, so only the restore path can have installed the kick handler there.

use std::time::Duration;

use boot::layout::ZERO_PAGE_ADDR;
use boot::{Gpa, LinuxBootInfo};
use machine::{Machine, MachineConfig, MachineState, SerialOutput};
use vm_memory::{Bytes, GuestAddress};

const CODE_ADDR: u64 = 0x10_0000;
const COUNTER_ADDR: u64 = 0x20_0000;
const CHILD_ENV: &str = "HOTMEM_RESTORED_PAUSE_CHILD";
const STATE_ENV: &str = "HOTMEM_RESTORED_PAUSE_STATE";

/// Forever `inc rcx; mov [COUNTER], rcx`.
const COUNT_FOREVER: [u8; 13] = [
    0x48, 0xFF, 0xC1, // loop: inc rcx
    0x48, 0x89, 0x0C, 0x25, 0x00, 0x00, 0x20, 0x00, // mov [0x200000], rcx
    0xEB, 0xF3, // jmp loop
];

fn config() -> MachineConfig {
    MachineConfig {
        num_cpus: 1,
        ram_size_bytes: 64 << 20,
        serial: SerialOutput::Writer(Box::new(std::io::sink())),
    }
}

fn counter(m: &Machine) -> u64 {
    m.memory().read_obj(GuestAddress(COUNTER_ADDR)).unwrap()
}

fn wait_running(m: &Machine) {
    for _ in 0..500 {
        if counter(m) > 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the guest did not run");
}

/// Restores `state` (with the guest code in memory), resumes, pauses.
fn restore_resume_pause(state: &MachineState) {
    let mut m = Machine::restore(config(), state).unwrap();
    boot::write_cpu_tables(m.memory()).unwrap();
    m.memory()
        .write_slice(&COUNT_FOREVER, GuestAddress(CODE_ADDR))
        .unwrap();
    m.resume().unwrap();
    wait_running(&m);
    m.pause().unwrap();
    assert!(!m.is_running());
}

#[test]
fn a_restored_machine_can_be_paused_after_it_was_resumed() {
    if std::env::var(CHILD_ENV).is_ok() {
        let bytes = std::fs::read(std::env::var(STATE_ENV).unwrap()).unwrap();
        let state: MachineState = serde_json::from_slice(&bytes).unwrap();
        restore_resume_pause(&state);
        return;
    }
    if !test_support::require_kvm("a_restored_machine_can_be_paused_after_it_was_resumed") {
        return;
    }
    let mut m = Machine::new(config()).unwrap();
    boot::write_cpu_tables(m.memory()).unwrap();
    m.memory()
        .write_slice(&COUNT_FOREVER, GuestAddress(CODE_ADDR))
        .unwrap();
    m.start(&LinuxBootInfo {
        entry: Gpa(CODE_ADDR),
        zero_page: ZERO_PAGE_ADDR,
        initramfs: None,
        rsdp: Gpa(0),
    })
    .unwrap();
    wait_running(&m);
    m.pause().unwrap();
    let state = m.save_state().unwrap();
    let path = std::env::temp_dir().join(format!("restored-pause-{}", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    // A child process that never started a machine: only the restore path can install the
    // kick handler there.
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_restored_machine_can_be_paused_after_it_was_resumed",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .env(STATE_ENV, &path)
        .status()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        status.success(),
        "the restored machine's process ended with {status} when paused"
    );
}
