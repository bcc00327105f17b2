//! What hotmem claims about its KVM memslots, checked at every snapshot of a run: the mapped
//! bytes never exceed what the slot layout needs for the plugged blocks, and L1's kernel
//! memory (VmallocUsed: KVM's per-slot metadata) grows no more than the mapped bytes explain.

use super::timeline::{DeviceStatus, Snapshot};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// KVM metadata per mapped GiB on L1 at most (shadow-MMU rmaps and large-page info cost about
/// 0.5 MiB per GiB; the TDP MMU allocates less), plus what creating a VM and its vCPUs costs.
const VMALLOC_PER_MAPPED_GIB_KIB: u64 = 512;
const VMALLOC_SLACK_KIB: u64 = 16 * 1024;

/// The most bytes the layout may map for what `s` reports plugged (or, for a legacy guest
/// without UNPLUGGED_INACCESSIBLE, for its usable region), or why it cannot be judged.
pub fn mapped_bound_bytes(s: &DeviceStatus) -> Result<u64, String> {
    let policy = s.slot_policy.as_deref().ok_or("status lacks slot_policy")?;
    let slots_total = s.slots_total.ok_or("status lacks slots_total")?;
    let legacy = s.legacy_mapping.ok_or("status lacks legacy_mapping")?;
    let usable = s
        .usable_region_bytes
        .ok_or("status lacks usable_region_bytes")?;
    let need = if legacy { usable } else { s.plugged_bytes };
    if need == 0 {
        return Ok(if policy == "single" {
            s.region_bytes
        } else {
            0
        });
    }
    let bound = match policy {
        "single" => s.region_bytes,
        // Slots of 1 GiB up to 8 GiB, then about an eighth of their offset: whatever the
        // plugged blocks touch is covered by at most 1/8 more, plus one partly used slot.
        // With fewer slots than that takes (a tight slot budget), no slot is smaller than
        // region / slots, so one partly used slot may be that large.
        "adaptive" => {
            let partly_used_slot = if slots_total < untight_adaptive_slots(s.region_bytes) {
                s.region_bytes
                    .div_ceil(slots_total.max(1))
                    .next_multiple_of(GIB)
            } else {
                GIB
            };
            need + need / 8 + partly_used_slot
        }
        "fixed" => {
            if slots_total == 0 {
                return Err("fixed layout with 0 slots".into());
            }
            // Equal slots (the last one smaller): the plugged bytes rounded up to slots, plus
            // one slot where the plugged range starts mid-slot.
            let slot = s.region_bytes.div_ceil(slots_total);
            (need.div_ceil(slot) + 1) * slot
        }
        other => return Err(format!("unknown slot policy {other}")),
    };
    Ok(bound.min(s.region_bytes))
}

/// How many slots the adaptive layout has for `region_bytes` when the budget does not limit
/// it: 1 GiB slots up to 8 GiB, then each about an eighth of its offset (whole GiB).
fn untight_adaptive_slots(region_bytes: u64) -> u64 {
    let (mut offset, mut slots) = (0, 0);
    while offset < region_bytes {
        offset += (offset / 8 / GIB * GIB).max(GIB);
        slots += 1;
    }
    slots
}

/// Failures of hotmem's mapping claims at snapshot `label`.
pub fn check_mapped(label: &str, s: &DeviceStatus) -> Vec<String> {
    let Some(mapped) = s.mapped_bytes else {
        return vec![format!("{label}: hotmem status lacks mapped_bytes")];
    };
    let mut failures = Vec::new();
    match mapped_bound_bytes(s) {
        Err(e) => failures.push(format!("{label}: {e}")),
        Ok(bound) if mapped > bound => failures.push(format!(
            "{label}: {} MiB mapped, the {} layout needs at most {} MiB for {} MiB plugged{}",
            mapped / MIB,
            s.slot_policy.as_deref().unwrap_or("?"),
            bound / MIB,
            s.plugged_bytes / MIB,
            if s.legacy_mapping == Some(true) {
                " (legacy: usable region mapped)"
            } else {
                ""
            }
        )),
        Ok(_) => {}
    }
    if mapped < s.plugged_bytes {
        failures.push(format!(
            "{label}: {} bytes mapped < {} plugged",
            mapped, s.plugged_bytes
        ));
    }
    failures
}

/// L1's VmallocUsed growth since before the VMM started, against the mapped bytes.
pub fn check_vmalloc(
    label: &str,
    idle_vmalloc_kib: u64,
    snap: &Snapshot,
    mapped: u64,
) -> Option<String> {
    let growth = snap.l1_vmalloc_kib.saturating_sub(idle_vmalloc_kib);
    let allowed = mapped.div_ceil(GIB) * VMALLOC_PER_MAPPED_GIB_KIB + VMALLOC_SLACK_KIB;
    (growth > allowed).then(|| {
        format!(
            "{label}: L1 VmallocUsed grew {growth} KiB with {} MiB mapped (at most {allowed} KiB)",
            mapped / MIB
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(policy: &str, plugged: u64, mapped: u64) -> DeviceStatus {
        DeviceStatus {
            requested_bytes: plugged,
            plugged_bytes: plugged,
            block_size_bytes: 2 * MIB,
            region_bytes: 64 * GIB,
            slots_mapped: Some(mapped.div_ceil(GIB)),
            mapped_bytes: Some(mapped),
            legacy_mapping: Some(false),
            slot_policy: Some(policy.into()),
            // 29: the adaptive layout of 64 GiB when the budget does not limit it.
            slots_total: Some(if policy == "fixed" { 32 } else { 29 }),
            usable_region_bytes: Some(plugged + 256 * MIB),
        }
    }

    #[test]
    fn slots_left_mapped_after_a_shrink_fail_the_adaptive_bound() {
        assert!(check_mapped("shrunk", &status("adaptive", GIB, GIB)).is_empty());
        assert!(check_mapped("shrunk", &status("adaptive", GIB, 2 * GIB)).is_empty());
        let kept = check_mapped("shrunk", &status("adaptive", GIB, 4 * GIB));
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert!(kept[0].contains("4096 MiB mapped"), "{kept:?}");
    }

    #[test]
    fn a_tight_budget_allows_one_slot_of_region_over_slots() {
        // 1020 GiB in 31 slots (a 32-slot backend): slots of 33 GiB.
        let mut s = status("adaptive", GIB, 33 * GIB);
        s.region_bytes = 1020 * GIB;
        s.slots_total = Some(31);
        assert!(check_mapped("boot", &s).is_empty());
        s.mapped_bytes = Some(66 * GIB);
        assert!(!check_mapped("boot", &s).is_empty());
        // The same 33 GiB mapped with the untight layout (53 slots) is too much.
        s.slots_total = Some(53);
        s.mapped_bytes = Some(33 * GIB);
        assert!(!check_mapped("boot", &s).is_empty());
        assert_eq!(untight_adaptive_slots(64 * GIB), 29);
    }

    #[test]
    fn anything_mapped_with_nothing_plugged_fails() {
        assert!(!check_mapped("zero", &status("adaptive", 0, GIB)).is_empty());
        assert!(!check_mapped("zero", &status("fixed", 0, 2 * GIB)).is_empty());
        assert!(check_mapped("zero", &status("adaptive", 0, 0)).is_empty());
    }

    #[test]
    fn fixed_slots_round_up_plus_one() {
        // 64 GiB / 32 slots = 2 GiB slots: 1 GiB plugged may map 2 slots, not 3.
        assert!(check_mapped("s", &status("fixed", GIB, 4 * GIB)).is_empty());
        assert!(!check_mapped("s", &status("fixed", GIB, 6 * GIB)).is_empty());
    }

    #[test]
    fn legacy_guests_are_bounded_by_their_usable_region() {
        let mut s = status("adaptive", GIB, 2 * GIB);
        s.legacy_mapping = Some(true);
        s.usable_region_bytes = Some(4 * GIB + 256 * MIB);
        // 1 GiB slots: 4.25 GiB usable needs 5 slots.
        s.mapped_bytes = Some(5 * GIB);
        assert!(check_mapped("grown", &s).is_empty());
        s.mapped_bytes = Some(8 * GIB);
        assert!(!check_mapped("grown", &s).is_empty());
    }

    #[test]
    fn mapped_below_plugged_fails() {
        assert!(!check_mapped("s", &status("adaptive", 2 * GIB, GIB)).is_empty());
    }

    #[test]
    fn missing_fields_are_failures_not_passes() {
        let mut s = status("adaptive", GIB, GIB);
        s.slot_policy = None;
        assert!(!check_mapped("s", &s).is_empty());
        s = status("adaptive", GIB, GIB);
        s.mapped_bytes = None;
        assert!(!check_mapped("s", &s).is_empty());
    }

    #[test]
    fn vmalloc_growth_must_match_the_mapped_slots() {
        let snap = |vmalloc| Snapshot {
            l1_vmalloc_kib: vmalloc,
            ..Snapshot::default()
        };
        assert_eq!(check_vmalloc("s", 9000, &snap(9500), GIB), None);
        // 64 GiB kept mapped costs ~32 MiB on L1: caught even when 1 GiB is what is claimed.
        assert!(check_vmalloc("s", 9000, &snap(9000 + 32 * 1024), GIB).is_some());
    }
}
