//! `cargo xtask bench <what>`: benchmarks that print numbers (never pass/fail on timing).

mod measure;
mod memslots;

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
}

pub fn run(args: &BenchArgs) -> Result<(), String> {
    match &args.what {
        BenchKind::Memslots(a) => memslots::run(a),
    }
}
