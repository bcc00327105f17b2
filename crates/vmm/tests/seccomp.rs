//! The seccomp filter installed in a real process: programs can no longer be run, memory and
//! KVM work go on. (Its own test binary: the filter stays on this process.)

#[test]
fn after_install_exec_is_refused_and_kvm_still_works() {
    // SAFETY: plain prctl with integer arguments, affecting this test process only.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(ret, 0);
    vmm::seccomp::install().expect("install the filter");
    let err = std::process::Command::new("/bin/true")
        .status()
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
    let vm = kvm.create_vm().expect("KVM still works under the filter");
    drop(vm);
    let region = hostmem::HostRegion::new(&hostmem::Backing::anon(4 << 20)).unwrap();
    assert!(region.host_addr() != 0);
}
