//! What the stacked filters cost a vCPU per system call: times `ioctl(-1, KVM_RUN)` (fails with
//! EBADF at once) before and after installing the VM thread's and the vCPU's filters, as a vCPU
//! thread carries them (`cargo run --release -p sandbox --example overhead`).
use std::time::Instant;

use sandbox::{Mode, ThreadKind};

fn per_call_ns(calls: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..calls {
        // SAFETY: an ioctl on fd -1 touches no memory and fails with EBADF.
        unsafe { libc::ioctl(-1, 0xae80, 0) };
    }
    start.elapsed().as_nanos() as f64 / f64::from(calls)
}

fn main() {
    let calls = 2_000_000;
    per_call_ns(calls / 10);
    let before = per_call_ns(calls);
    sandbox::install(ThreadKind::Vmm, Mode::Kill).unwrap();
    for program in sandbox::compile(ThreadKind::Vcpu, Mode::Kill).unwrap() {
        seccompiler::apply_filter(&program).unwrap();
    }
    let after = per_call_ns(calls);
    println!(
        "ioctl(KVM_RUN) on a bad fd: {before:.0} ns without filters, {after:.0} ns under the \
         vCPU's stacked filters (+{:.0} ns per call)",
        after - before
    );
}
