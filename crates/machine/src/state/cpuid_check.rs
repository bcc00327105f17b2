//! Whether a saved vCPU's CPUID can be offered here: same vendor, and no feature bit that
//! the CPUID this host would give the same vCPU lacks. Bits the CPU flips at run time
//! (OSXSAVE, OSPKE, APIC enabled) are not features and are ignored.

use kvm_bindings::kvm_cpuid_entry2;

use crate::Error;

/// A feature register: leaf, subleaf, register name, bits that are not features.
struct FeatureReg {
    leaf: u32,
    subleaf: u32,
    register: Register,
    dynamic_bits: u32,
}

#[derive(Clone, Copy)]
enum Register {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Register {
    fn name(self) -> &'static str {
        match self {
            Self::Eax => "eax",
            Self::Ebx => "ebx",
            Self::Ecx => "ecx",
            Self::Edx => "edx",
        }
    }

    fn of(self, e: &kvm_cpuid_entry2) -> u32 {
        match self {
            Self::Eax => e.eax,
            Self::Ebx => e.ebx,
            Self::Ecx => e.ecx,
            Self::Edx => e.edx,
        }
    }
}

const OSXSAVE: u32 = 1 << 27;
const APIC_ENABLED: u32 = 1 << 9;
const OSPKE: u32 = 1 << 4;

const fn reg(leaf: u32, subleaf: u32, register: Register, dynamic_bits: u32) -> FeatureReg {
    FeatureReg {
        leaf,
        subleaf,
        register,
        dynamic_bits,
    }
}

const FEATURE_REGS: &[FeatureReg] = &[
    reg(0x1, 0, Register::Ecx, OSXSAVE),
    reg(0x1, 0, Register::Edx, APIC_ENABLED),
    reg(0x7, 0, Register::Ebx, 0),
    reg(0x7, 0, Register::Ecx, OSPKE),
    reg(0x7, 0, Register::Edx, 0),
    reg(0x7, 1, Register::Eax, 0),
    reg(0xD, 0, Register::Eax, 0),
    reg(0xD, 1, Register::Eax, 0),
    reg(0x8000_0001, 0, Register::Ecx, 0),
    reg(0x8000_0001, 0, Register::Edx, 0),
    reg(0x8000_0008, 0, Register::Ebx, 0),
];

fn find(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == leaf && e.index == subleaf)
}

/// Checks `saved` (vCPU `vcpu`'s CPUID as it was set) against `here`, the CPUID this host
/// gives the same vCPU.
pub fn check_cpuid(
    vcpu: u8,
    saved: &[kvm_cpuid_entry2],
    here: &[kvm_cpuid_entry2],
) -> Result<(), Error> {
    let vendor = |c: &[kvm_cpuid_entry2]| find(c, 0, 0).map(|e| (e.ebx, e.edx, e.ecx));
    if vendor(saved) != vendor(here) {
        return Err(Error::CpuidUnsupported {
            vcpu,
            leaf: 0,
            subleaf: 0,
            register: "vendor",
            missing_bits: 0,
        });
    }
    for f in FEATURE_REGS {
        let Some(s) = find(saved, f.leaf, f.subleaf) else {
            continue;
        };
        let wanted = f.register.of(s) & !f.dynamic_bits;
        let offered = find(here, f.leaf, f.subleaf).map_or(0, |h| f.register.of(h));
        let missing = wanted & !offered;
        if missing != 0 {
            return Err(Error::CpuidUnsupported {
                vcpu,
                leaf: f.leaf,
                subleaf: f.subleaf,
                register: f.register.name(),
                missing_bits: missing,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, ebx: u32, ecx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ecx,
            ..Default::default()
        }
    }

    fn host() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, 0x756E_6547, 0x6C65_746E),
            entry(7, 0, 0b1011, 0),
        ]
    }

    #[test]
    fn same_or_fewer_features_fit() {
        check_cpuid(0, &host(), &host()).unwrap();
        let fewer = vec![host()[0], entry(7, 0, 0b0001, 0)];
        check_cpuid(0, &fewer, &host()).unwrap();
    }

    #[test]
    fn a_feature_the_host_lacks_is_named() {
        let more = vec![host()[0], entry(7, 0, 0b1111, 0)];
        let e = check_cpuid(1, &more, &host()).unwrap_err();
        match e {
            Error::CpuidUnsupported {
                vcpu: 1,
                leaf: 7,
                subleaf: 0,
                register: "ebx",
                missing_bits: 0b0100,
            } => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("0x7"), "{e}");
    }

    #[test]
    fn run_time_bits_and_other_vendors() {
        let with_ospke = vec![host()[0], entry(7, 0, 0b1011, OSPKE)];
        check_cpuid(0, &with_ospke, &host()).unwrap();
        let amd = vec![entry(0, 0, 0x6874_7541, 0x444D_4163), host()[1]];
        assert!(matches!(
            check_cpuid(0, &amd, &host()),
            Err(Error::CpuidUnsupported {
                register: "vendor",
                ..
            })
        ));
    }
}
