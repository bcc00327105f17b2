//! MSRs in a snapshot: every MSR in KVM's save list (`KVM_GET_MSR_INDEX_LIST`) that this vCPU
//! can actually read, written back in the same order except that the TSC deadline comes last
//! (KVM drops a deadline written before the TSC and the LAPIC timer mode are in place).
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

/// MSR indices to save: KVM's list minus the ones we never save, TSC deadline last.
pub fn msrs_to_save(kvm: &Kvm) -> Result<Vec<u32>, Error> {
    let list = kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let mut indices: Vec<u32> = list
        .as_slice()
        .iter()
        .copied()
        .filter(|i| *i != MSR_IA32_MCG_CTL)
        .collect();
    order_for_restore(&mut indices);
    Ok(indices)
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
    fn tsc_deadline_goes_last_and_the_rest_keeps_its_order() {
        let mut v = vec![0x10, MSR_IA32_TSC_DEADLINE, 0x1B, 0xC000_0080];
        order_for_restore(&mut v);
        assert_eq!(v, vec![0x10, 0x1B, 0xC000_0080, MSR_IA32_TSC_DEADLINE]);
    }
}
