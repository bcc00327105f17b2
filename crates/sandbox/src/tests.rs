use super::*;

/// Calls no hotmem thread may make: running programs, new processes, debugging, mounting,
/// kernel code, identity changes.
const NEVER: &[&str] = &[
    "execve",
    "execveat",
    "fork",
    "vfork",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "init_module",
    "finit_module",
    "kexec_load",
    "reboot",
    "setuid",
    "setresuid",
    "setgid",
    "bpf",
    "perf_event_open",
    "keyctl",
    "open_by_handle_at",
];

/// Whether `parent` allows everything `child` does (for the same call, the parent's argument
/// rule is `Any` or contains the child's).
fn covers(parent: &Arg, child: &Arg) -> bool {
    match (parent, child) {
        (Arg::Any, _) => true,
        (Arg::Ioctl(p), Arg::Ioctl(c)) => c.iter().all(|r| p.contains(r)),
        (Arg::Domains(p), Arg::Domains(c)) | (Arg::PrctlOps(p), Arg::PrctlOps(c)) => {
            c.iter().all(|v| p.contains(v))
        }
        (p, c) => p == c,
    }
}

#[test]
fn a_parent_allows_everything_its_children_do_since_filters_stack() {
    for parent in ThreadKind::ALL {
        let p = allow_list(parent);
        for child in parent.children() {
            for (nr, a) in &allow_list(*child).0 {
                let mine =
                    p.0.get(nr)
                        .unwrap_or_else(|| panic!("{parent} lacks {}", a.name));
                assert!(
                    covers(&mine.arg, &a.arg),
                    "{parent} narrows {} of {child}",
                    a.name
                );
            }
        }
    }
}

#[test]
fn the_vm_thread_can_start_vcpus_and_the_listener_connections() {
    assert!(ThreadKind::Vmm.children().contains(&ThreadKind::Vcpu));
    assert!(
        ThreadKind::ApiListener
            .children()
            .contains(&ThreadKind::ApiConnection)
    );
    for kind in [ThreadKind::Vmm, ThreadKind::ApiListener] {
        let l = allow_list(kind);
        assert_eq!(l.0[&libc::SYS_clone].arg, Arg::ThreadOnly, "{kind}");
        assert_eq!(l.0[&libc::SYS_seccomp].arg, Arg::SetFilter, "{kind}");
    }
}

#[test]
fn no_thread_may_run_programs_debug_mount_or_change_identity() {
    for kind in ThreadKind::ALL {
        let l = allow_list(kind);
        for name in NEVER {
            assert!(!l.allows(name), "{kind} allows {name}");
        }
        assert!(!l.0.contains_key(&libc::SYS_execve), "{kind}");
    }
}

#[test]
fn no_thread_may_map_executable_memory() {
    for kind in ThreadKind::ALL {
        let l = allow_list(kind);
        assert_eq!(l.0[&libc::SYS_mmap].arg, Arg::NoExec, "{kind}");
        assert_eq!(l.0[&libc::SYS_mprotect].arg, Arg::NoExec, "{kind}");
        assert!(!l.0.contains_key(&libc::SYS_pkey_mprotect), "{kind}");
    }
}

#[test]
fn only_migration_and_the_vm_thread_may_open_sockets_and_not_netlink() {
    for kind in ThreadKind::ALL {
        let l = allow_list(kind);
        match l.0.get(&libc::SYS_socket) {
            None => assert!(
                !matches!(kind, ThreadKind::Migration | ThreadKind::Vmm),
                "{kind}"
            ),
            Some(a) => {
                assert!(
                    matches!(kind, ThreadKind::Migration | ThreadKind::Vmm),
                    "{kind}"
                );
                let Arg::Domains(d) = &a.arg else {
                    panic!("{kind}: socket with any domain")
                };
                assert!(!d.contains(&libc::AF_NETLINK) && !d.contains(&libc::AF_PACKET));
            }
        }
    }
}

#[test]
fn every_ioctl_is_limited_to_named_requests() {
    for kind in ThreadKind::ALL {
        if let Some(a) = allow_list(kind).0.get(&libc::SYS_ioctl) {
            assert!(
                matches!(a.arg, Arg::Ioctl(_)),
                "{kind}: ioctl with any request"
            );
        }
    }
    let Arg::Ioctl(vcpu) = &allow_list(ThreadKind::Vcpu).0[&libc::SYS_ioctl].arg else {
        unreachable!()
    };
    let names: Vec<&str> = vcpu.iter().map(|r| r.name).collect();
    assert!(names.contains(&"KVM_RUN"));
    assert!(names.contains(&"KVM_SET_USER_MEMORY_REGION"));
    for not in [
        "KVM_SET_REGS",
        "KVM_SET_IRQCHIP",
        "KVM_GET_DIRTY_LOG",
        "TCGETS",
    ] {
        assert!(!names.contains(&not), "vcpu allows {not}");
    }
}

#[test]
fn leaf_threads_have_short_lists() {
    for kind in [
        ThreadKind::Monitor,
        ThreadKind::ExitWatch,
        ThreadKind::VhostEvents,
    ] {
        let l = allow_list(kind);
        for name in ["read", "openat", "ioctl", "sendmsg", "clone", "accept4"] {
            assert!(!l.allows(name), "{kind} allows {name}");
        }
    }
}

#[test]
fn every_list_compiles_in_every_mode() {
    for kind in ThreadKind::ALL {
        let filters = if refused(kind).is_empty() { 1 } else { 2 };
        assert_eq!(compile(kind, Mode::Kill).unwrap().len(), filters, "{kind}");
        assert_eq!(compile(kind, Mode::Log).unwrap().len(), filters, "{kind}");
        assert!(compile(kind, Mode::Off).unwrap().is_empty());
        assert!(
            compile(kind, Mode::Kill)
                .unwrap()
                .iter()
                .all(|p| p.len() < 4096)
        );
    }
}

#[test]
fn only_the_vm_thread_opens_files_the_others_are_refused_quietly() {
    for kind in ThreadKind::ALL {
        let r = refused(kind);
        if kind == ThreadKind::Vmm {
            assert!(!r.iter().any(|(_, n)| *n == "openat"), "{r:?}");
        } else {
            assert!(r.iter().any(|(_, n)| *n == "openat"), "{kind}");
        }
    }
}

#[test]
fn modes_parse_and_print_back() {
    for m in [Mode::Kill, Mode::Log, Mode::Off] {
        assert_eq!(m.to_string().parse::<Mode>().unwrap(), m);
    }
    assert!("trap".parse::<Mode>().is_err());
    assert_eq!(Mode::default(), Mode::Kill);
}

#[test]
fn enter_without_init_changes_nothing() {
    // This test binary never calls init.
    enter(ThreadKind::Vcpu).unwrap();
    let fd = unsafe_socket();
    assert!(fd >= 0);
}

fn unsafe_socket() -> i32 {
    // SAFETY: plain syscall with integer arguments; the fd is closed at once.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        // SAFETY: closing the fd just opened.
        unsafe { libc::close(fd) };
    }
    fd
}
