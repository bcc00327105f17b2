//! `cargo xtask bench <what>`: benchmarks that print numbers (never pass/fail on timing).

mod measure;
mod memslots;
mod start;
mod vhost;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchKind,
}

#[derive(Subcommand)]
enum BenchKind {
    /// Memslot cost of a virtio-mem device per slot policy, region size and plugged size, on this
    /// machine's KVM.
    Memslots(memslots::MemslotsArgs),
    /// Cost of starting a VM with 512 MiB boot memory and an empty 1 TiB device, hotmem vs QEMU.
    Start(start::StartArgs),
}

pub fn run(args: &BenchArgs) -> Result<(), String> {
    match &args.what {
        BenchKind::Memslots(a) => memslots::run(a),
        BenchKind::Start(a) => start::run(a),
    }
}
