//! The scenarios and how each runs: their order, which VMMs and tier run them, their L0
//! timeout and L1 memory, the guest kernel they boot.

use crate::guest::Vmm;

/// Every scenario, in the order they run.
pub const SCENARIOS: [&str; 24] = [
    "boot-plugged",
    "grow-shrink",
    "to-zero",
    "reboot",
    "bad-resize",
    "data-intact",
    "legacy-guest",
    "events",
    "smp-two-devices",
    "storm",
    "jailed",
    "numa",
    "numa-memory-only-node",
    "vhost-user",
    "vhost-user-small-budget",
    "virtiofs-root",
    "snapshot-restore",
    "snapshot-restore-legacy",
    "migrate",
    "migrate-resizing",
    "migrate-converge",
    "migrate-vhost-user",
    "migrate-faults",
    "migrate-policy-differ",
];

/// Whether `scenario` exercises hotmem's own interface (QEMU has no counterpart).
pub fn hotmem_only(scenario: &str) -> bool {
    matches!(
        scenario,
        "events"
            | "smp-two-devices"
            | "storm"
            | "numa-memory-only-node"
            | "jailed"
            | "vhost-user-small-budget"
            | "snapshot-restore"
            | "snapshot-restore-legacy"
            | "migrate-resizing"
            | "migrate-converge"
            | "migrate-vhost-user"
            | "migrate-faults"
            | "migrate-policy-differ"
    )
}

/// Slow runs that CI leaves to the full tier (`cargo xtask e2e --full`): the second
/// migration-policy scenario (`migrate-faults` already changes policies) and the 32-slot
/// backend, and QEMU's side of the vhost-user scenarios and of `migrate` (reference runs).
pub fn full_tier_only(scenario: &str, vmm: Vmm) -> bool {
    match scenario {
        "migrate-policy-differ" | "vhost-user-small-budget" => true,
        "vhost-user" | "virtiofs-root" | "migrate" => vmm == Vmm::Qemu,
        _ => false,
    }
}

/// A longer L0 timeout than the default for scenarios that need it: snapshot-restore fills
/// 768 MiB and checksums it twice under TCG; vhost-user writes up to 1.5 GiB through two
/// backends and checksums it three times; both vhost-user scenarios and virtiofs-root wait up to
/// 10 minutes for their shrink.
pub fn timeout(scenario: &str) -> Option<std::time::Duration> {
    (matches!(
        scenario,
        "snapshot-restore" | "vhost-user" | "vhost-user-small-budget" | "virtiofs-root"
    ) || scenario.starts_with("migrate"))
    .then(|| std::time::Duration::from_secs(900))
}

/// L1's memory (L0 QEMU `-m`): the migration scenarios run two VMMs, each holding the guest's
/// data; vhost-user keeps the guest's files twice in L1 (the guest's page cache in shared guest
/// memory, the shared folder and disk image in L1's tmpfs).
pub fn l1_memory(scenario: &str) -> &'static str {
    if scenario.starts_with("migrate") || scenario.starts_with("vhost-user") {
        "6G"
    } else {
        "4G"
    }
}

/// Whether `scenario` boots the old (5.10) guest kernel.
pub fn uses_legacy_kernel(scenario: &str) -> bool {
    matches!(scenario, "legacy-guest" | "snapshot-restore-legacy")
}
