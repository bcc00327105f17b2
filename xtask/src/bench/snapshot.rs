//! `cargo xtask bench snapshot`: snapshot size and time, and restore time, for hotmem and QEMU
//! on the same VM shape, nested (L0 QEMU/TCG → L1 Linux + KVM + the VMM → L2 Linux guest).
//!
//! Each VMM runs the L1 scenario `snapshot-bench` (xtask/src/guest/scripts/scenarios.sh): 512 MiB
//! boot memory, a 64 GiB virtio-mem device with 2 GiB plugged (QEMU: `dynamic-memslots=on`),
//! 256 MiB of checksummed files in the guest; the VM is paused and saved to a file in L1's
//! RAM-backed /tmp (hotmem: `hotmem-ctl snapshot`; QEMU: `migrate file:` with the `mapped-ram`
//! capability), the VMM is killed, a new one restores it (hotmem: `hotmem --restore --resume`,
//! lazy by default; QEMU: `-incoming defer` + `migrate-incoming file:`) and is timed until its
//! control interface reports the VM running; the guest's checksums must then hold.
//! L1 gets 8 GiB here (the e2e runs give it 4): the snapshot lives in its RAM-backed /tmp
//! next to the restored VM. Times are L1 times under TCG (tens of times slower than hardware), polled at ~20–50 ms.

use clap::Args;

use super::nested::{print_rows, rows_from_l1};
use crate::guest::Vmm;

/// L1's RAM: the snapshot lives in L1's RAM-backed /tmp next to the VM being restored.
const L1_MEMORY: &str = "8G";

#[derive(Args)]
pub struct SnapshotArgs {
    /// Print one JSON object per row instead of `key=value` lines.
    #[arg(long)]
    json: bool,
    /// Only this VMM (default: hotmem, then QEMU).
    #[arg(long, value_enum)]
    vmm: Option<Vmm>,
}

pub fn run(args: &SnapshotArgs) -> Result<(), String> {
    let vmms = match args.vmm {
        Some(v) => vec![v],
        None => vec![Vmm::Hotmem, Vmm::Qemu],
    };
    let mut rows = Vec::new();
    for vmm in vmms {
        let cmdline = format!("hm.scenario=snapshot-bench hm.vmm={}", vmm.name());
        rows.extend(rows_from_l1(vmm, &cmdline, "snapshot", Some(L1_MEMORY))?);
    }
    print_rows(&rows, args.json);
    Ok(())
}
