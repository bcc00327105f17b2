//! MSRs in a snapshot: every MSR in KVM's save list (`KVM_GET_MSR_INDEX_LIST`) plus the MTRRs
//! (KVM emulates them but does not list them) that this vCPU can actually read, written back
//! in the same order except that the TSC deadline comes last (KVM drops a deadline written
//! before the TSC and the LAPIC timer mode are in place). EFER and the APIC base travel in
//! SREGS, the x2APIC registers in the LAPIC state.
//!
//! `KVM_GET_MSRS`/`KVM_SET_MSRS` stop at the first MSR they cannot handle and return how many
//! they did, so a short count names the offending MSR.

use kvm_bindings::{KVM_MAX_MSR_ENTRIES, Msrs, kvm_msr_entry};
use kvm_ioctls::{Kvm, VcpuFd};

use super::kvm_err;
use crate::Error;

/// IA32_TSC_DEADLINE.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6E0;
/// IA32_MCG_CTL: listed by some kernels although KVM only has it with MCG_CTL_P; never saved.
pub const MSR_IA32_MCG_CTL: u32 = 0x17B;

/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2FF;
/// Fixed-range MTRRs (64K, 16K ×2, 4K ×8).
const MTRR_FIXED: [u32; 11] = [
    0x250, 0x258, 0x259, 0x268, 0x269, 0x26A, 0x26B, 0x26C, 0x26D, 0x26E, 0x26F,
];
/// Variable-range MTRR base/mask pairs KVM emulates (8).
const MTRR_VARIABLE: std::ops::Range<u32> = 0x200..0x210;

/// The MTRRs (default type, fixed and variable ranges).
fn mtrrs() -> impl Iterator<Item = u32> {
    std::iter::once(MSR_MTRR_DEF_TYPE)
        .chain(MTRR_FIXED)
        .chain(MTRR_VARIABLE)
}

/// MSR indices to save: KVM's list plus the MTRRs, minus the ones we never save, without
/// duplicates, TSC deadline last.
pub fn msrs_to_save(kvm: &Kvm) -> Result<Vec<u32>, Error> {
    let list = kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    Ok(save_list(list.as_slice()))
}

/// [`msrs_to_save`] for a given KVM list.
pub fn save_list(kvm_list: &[u32]) -> Vec<u32> {
    let mut indices: Vec<u32> = Vec::with_capacity(kvm_list.len() + 28);
    for i in kvm_list.iter().copied().chain(mtrrs()) {
        if i != MSR_IA32_MCG_CTL && !indices.contains(&i) {
            indices.push(i);
        }
    }
    order_for_restore(&mut indices);
    indices
}

/// Moves the TSC deadline behind every other MSR, keeping the rest in place.
pub fn order_for_restore(indices: &mut [u32]) {
    indices.sort_by_key(|i| *i == MSR_IA32_TSC_DEADLINE);
}

fn entries(indices: &[u32]) -> Vec<kvm_msr_entry> {
    indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect()
}

/// Reads every MSR in `indices` this vCPU has; the ones KVM refuses (feature not in the
/// guest CPUID, e.g. PMU or MPX MSRs) are left out and returned second.
pub(crate) fn read_msrs(
    fd: &VcpuFd,
    indices: &[u32],
) -> Result<(Vec<kvm_msr_entry>, Vec<u32>), Error> {
    let mut values = Vec::with_capacity(indices.len());
    let mut skipped = Vec::new();
    let mut start = 0;
    while start < indices.len() {
        let end = indices.len().min(start + KVM_MAX_MSR_ENTRIES);
        let mut msrs = Msrs::from_entries(&entries(&indices[start..end]))
            .map_err(|_| Error::MsrSetup { written: 0 })?;
        let read = fd.get_msrs(&mut msrs).map_err(kvm_err("KVM_GET_MSRS"))?;
        values.extend_from_slice(&msrs.as_slice()[..read]);
        if start + read < end {
            skipped.push(indices[start + read]);
            start += read + 1;
        } else {
            start = end;
        }
    }
    Ok((values, skipped))
}

/// Writes `values` in order; a value KVM refuses is an error naming the MSR.
pub(crate) fn write_msrs(fd: &VcpuFd, vcpu: u8, values: &[kvm_msr_entry]) -> Result<(), Error> {
    for chunk in values.chunks(KVM_MAX_MSR_ENTRIES) {
        let msrs = Msrs::from_entries(chunk).map_err(|_| Error::MsrSetup { written: 0 })?;
        let written = fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if written < chunk.len() {
            return Err(Error::MsrRestore {
                vcpu,
                msr_index: chunk[written].index,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_list_adds_mtrrs_once_and_drops_mcg_ctl() {
        let l = save_list(&[0x10, MSR_IA32_TSC_DEADLINE, MSR_IA32_MCG_CTL, 0x200]);
        assert_eq!(l[0], 0x10);
        assert_eq!(*l.last().unwrap(), MSR_IA32_TSC_DEADLINE);
        assert!(!l.contains(&MSR_IA32_MCG_CTL));
        assert_eq!(l.iter().filter(|i| **i == 0x200).count(), 1);
        assert!(l.contains(&MSR_MTRR_DEF_TYPE));
        assert_eq!(l.len(), 2 + 1 + 11 + 16);
    }

    #[test]
    fn tsc_deadline_goes_last_and_the_rest_keeps_its_order() {
        let mut v = vec![0x10, MSR_IA32_TSC_DEADLINE, 0x1B, 0xC000_0080];
        order_for_restore(&mut v);
        assert_eq!(v, vec![0x10, 0x1B, 0xC000_0080, MSR_IA32_TSC_DEADLINE]);
    }
}
