//! `cargo xtask bench <what>`: benchmarks that print numbers (never pass/fail on timing).

mod dirty_log;
mod measure;
mod memslots;
mod migrate;
mod nested;
mod restore;
mod snapshot;
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
    /// KVM dirty-log cost per migration round: one big slot vs only the slots holding plugged
    /// memory, on this machine's KVM (no guest).
    DirtyLog(dirty_log::DirtyLogArgs),
    /// Time from `hotmem --restore` to vCPUs running against the plugged size (lazy and eager
    /// restore), on this machine's KVM (no guest).
    Restore(restore::RestoreArgs),
    /// Snapshot file size, snapshot time and restore time, hotmem vs QEMU (`migrate file:` with
    /// mapped-ram), on the same VM shape in the nested L1 (64 GiB device, 2 GiB plugged).
    Snapshot(snapshot::SnapshotArgs),
    /// Live migration over TCP loopback (bytes sent, rounds, downtime, total), hotmem vs QEMU,
    /// on the same VM shape in the nested L1 (64 GiB device, 2 GiB plugged), with goal verdicts.
    Migrate(migrate::MigrateArgs),
}

pub fn run(args: &BenchArgs) -> Result<(), String> {
    match &args.what {
        BenchKind::Memslots(a) => memslots::run(a),
        BenchKind::Start(a) => start::run(a),
        BenchKind::DirtyLog(a) => dirty_log::run(a),
        BenchKind::Restore(a) => restore::run(a),
        BenchKind::Snapshot(a) => snapshot::run(a),
        BenchKind::Migrate(a) => migrate::run(a),
    }
}
