//! A seccomp filter that takes away what a VMM never needs: running programs, debugging other
//! processes, loading kernel code, mounting, changing identity, rebooting the host.
//!
//! It is a deny list installed before any thread starts, so every hotmem thread (vCPUs, device
//! and API threads) inherits it; denied calls fail with `EPERM` rather than killing the process,
//! so a bug shows up as an error message, not a lost guest. An allow list per thread would be
//! tighter; this is the part that cannot get in the way of KVM, memory or socket work.

use std::io;

/// Calls hotmem never makes (x86_64 numbers).
const DENIED: &[(u32, &str)] = &[
    (59, "execve"),
    (322, "execveat"),
    (57, "fork"),
    (58, "vfork"),
    (101, "ptrace"),
    (310, "process_vm_readv"),
    (311, "process_vm_writev"),
    (165, "mount"),
    (166, "umount2"),
    (155, "pivot_root"),
    (161, "chroot"),
    (175, "init_module"),
    (313, "finit_module"),
    (176, "delete_module"),
    (246, "kexec_load"),
    (320, "kexec_file_load"),
    (169, "reboot"),
    (167, "swapon"),
    (168, "swapoff"),
    (105, "setuid"),
    (106, "setgid"),
    (113, "setreuid"),
    (114, "setregid"),
    (117, "setresuid"),
    (119, "setresgid"),
    (321, "bpf"),
    (298, "perf_event_open"),
    (250, "keyctl"),
    (248, "add_key"),
    (249, "request_key"),
    (304, "open_by_handle_at"),
];

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const SECCOMP_RET_ALLOW: u32 = 0x7FFF_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The BPF program: wrong architecture → kill; a denied call → EPERM; anything else → allow.
fn program() -> Vec<libc::sock_filter> {
    let mut p = vec![
        stmt(BPF_LD_W_ABS, ARCH_OFFSET),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, NR_OFFSET),
    ];
    for &(nr, _) in DENIED {
        p.push(jump(BPF_JEQ_K, nr, 0, 1));
        p.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::EPERM as u32));
    }
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    p
}

/// Installs the filter for the calling thread and the threads it starts afterwards. Needs
/// `PR_SET_NO_NEW_PRIVS` (or CAP_SYS_ADMIN), which hotmem sets first.
pub fn install() -> io::Result<()> {
    let filter = program();
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies the program.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
            0,
            0,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Names of the denied calls, for documentation and logs.
pub fn denied_names() -> impl Iterator<Item = &'static str> {
    DENIED.iter().map(|&(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_checks_the_architecture_first_and_ends_in_allow() {
        let p = program();
        assert_eq!((p[0].code, p[0].k), (BPF_LD_W_ABS, ARCH_OFFSET));
        assert_eq!(p[1].k, AUDIT_ARCH_X86_64);
        assert_eq!(p.last().map(|s| s.k), Some(SECCOMP_RET_ALLOW));
        assert_eq!(p.len(), 4 + 2 * DENIED.len() + 1);
    }

    #[test]
    fn denied_numbers_match_the_libc_constants() {
        for (nr, name) in [
            (libc::SYS_execve, "execve"),
            (libc::SYS_ptrace, "ptrace"),
            (libc::SYS_mount, "mount"),
            (libc::SYS_finit_module, "finit_module"),
            (libc::SYS_kexec_file_load, "kexec_file_load"),
            (libc::SYS_bpf, "bpf"),
            (libc::SYS_setuid, "setuid"),
            (libc::SYS_open_by_handle_at, "open_by_handle_at"),
        ] {
            assert!(DENIED.contains(&(nr as u32, name)), "{name}");
        }
    }
}
