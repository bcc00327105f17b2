//! Boot RAM on a shared memfd: what the guest sees is in the file a vhost-user backend maps.

use std::os::unix::fs::FileExt;

use hostmem::BackingKind;
use machine::{Machine, MachineConfig, SerialOutput};
use vm_memory::{Bytes, GuestAddress};

fn machine(ram: BackingKind) -> Machine {
    Machine::with_ram_backing(
        MachineConfig {
            num_cpus: 1,
            ram_size_bytes: 64 << 20,
            serial: SerialOutput::Writer(Box::new(std::io::sink())),
        },
        ram,
    )
    .unwrap()
}

#[test]
fn memfd_boot_ram_is_visible_through_its_fd() {
    if !test_support::require_kvm("memfd_boot_ram_is_visible_through_its_fd") {
        return;
    }
    let m = machine(BackingKind::Memfd);
    let (guest_addr, region) = m.boot_ram_regions().next().unwrap();
    assert_eq!(guest_addr, 0);
    let file = std::fs::File::from(region.fd().unwrap().try_clone_to_owned().unwrap());
    m.memory()
        .write_slice(b"shared boot ram", GuestAddress(0x20_0000))
        .unwrap();
    let mut buf = [0u8; 15];
    file.read_exact_at(&mut buf, 0x20_0000).unwrap();
    assert_eq!(&buf, b"shared boot ram");
}

#[test]
fn anonymous_boot_ram_has_no_fd_to_share() {
    if !test_support::require_kvm("anonymous_boot_ram_has_no_fd_to_share") {
        return;
    }
    let m = machine(BackingKind::Anon);
    assert!(m.boot_ram_regions().all(|(_, r)| r.fd().is_none()));
}
