//! What each kind of hotmem thread may call: the allow lists, built from small groups.
//!
//! Filters stack: a thread runs under every filter its ancestors installed plus its own, and a
//! call goes through only if every one of them allows it. So the list of a thread that starts
//! other threads must hold theirs: [`ThreadKind::children`] names them and [`allow_list`] adds
//! their lists (and what starting a thread takes) to the parent's.

use std::collections::BTreeMap;

use crate::ThreadKind;
use crate::ioctls::{self, Request};

/// What a call's arguments must be for it to be allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// Any arguments.
    Any,
    /// `mmap`/`mprotect`: the protection (argument 2) without `PROT_EXEC`.
    NoExec,
    /// `ioctl`: the request (argument 1) is one of these.
    Ioctl(Vec<Request>),
    /// `socket`: the domain (argument 0) is one of these.
    Domains(Vec<i32>),
    /// `clone`: the flags (argument 0) hold `CLONE_THREAD`, so only threads, no processes.
    ThreadOnly,
    /// `prctl`: the option (argument 0) is one of these.
    PrctlOps(Vec<i32>),
    /// `seccomp`: only `SECCOMP_SET_MODE_FILTER` (a thread narrowing itself further).
    SetFilter,
}

impl Arg {
    /// Both allowed: the union (`Any` wins, request and value lists merge).
    fn merge(self, other: Arg) -> Arg {
        match (self, other) {
            (Arg::Ioctl(mut a), Arg::Ioctl(b)) => {
                for r in b {
                    if !a.contains(&r) {
                        a.push(r);
                    }
                }
                Arg::Ioctl(a)
            }
            (Arg::Domains(a), Arg::Domains(b)) => Arg::Domains(union(a, b)),
            (Arg::PrctlOps(a), Arg::PrctlOps(b)) => Arg::PrctlOps(union(a, b)),
            (a, b) if a == b => a,
            _ => Arg::Any,
        }
    }

    /// How the documentation shows it.
    pub fn describe(&self) -> String {
        match self {
            Arg::Any => String::new(),
            Arg::NoExec => "without PROT_EXEC".into(),
            Arg::Ioctl(requests) => {
                let names: Vec<&str> = requests.iter().map(|r| r.name).collect();
                names.join(", ")
            }
            Arg::Domains(d) => {
                let names: Vec<&str> = d
                    .iter()
                    .map(|d| match *d {
                        libc::AF_UNIX => "AF_UNIX",
                        libc::AF_INET => "AF_INET",
                        libc::AF_INET6 => "AF_INET6",
                        _ => "?",
                    })
                    .collect();
                names.join(", ")
            }
            Arg::ThreadOnly => "CLONE_THREAD set".into(),
            Arg::PrctlOps(_) => "PR_SET_NAME, PR_SET_NO_NEW_PRIVS".into(),
            Arg::SetFilter => "SECCOMP_SET_MODE_FILTER".into(),
        }
    }
}

fn union(mut a: Vec<i32>, b: Vec<i32>) -> Vec<i32> {
    for v in b {
        if !a.contains(&v) {
            a.push(v);
        }
    }
    a
}

/// One allowed call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// Its name, as in `man 2`.
    pub name: &'static str,
    /// What its arguments must be.
    pub arg: Arg,
}

/// An allow list: syscall number → what is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(pub BTreeMap<i64, Allowed>);

impl AllowList {
    fn add(&mut self, nr: i64, name: &'static str, arg: Arg) -> &mut Self {
        match self.0.remove(&nr) {
            Some(old) => {
                self.0.insert(
                    nr,
                    Allowed {
                        name,
                        arg: old.arg.merge(arg),
                    },
                );
            }
            None => {
                self.0.insert(nr, Allowed { name, arg });
            }
        }
        self
    }

    fn any(&mut self, calls: &[(i64, &'static str)]) -> &mut Self {
        for &(nr, name) in calls {
            self.add(nr, name, Arg::Any);
        }
        self
    }

    fn ioctl(&mut self, requests: &[Request]) -> &mut Self {
        self.add(libc::SYS_ioctl, "ioctl", Arg::Ioctl(requests.to_vec()))
    }

    fn merge(&mut self, other: &AllowList) -> &mut Self {
        for (nr, a) in &other.0 {
            self.add(*nr, a.name, a.arg.clone());
        }
        self
    }

    /// Whether `name` is allowed (with any arguments or some).
    pub fn allows(&self, name: &str) -> bool {
        self.0.values().any(|a| a.name == name)
    }
}

macro_rules! calls {
    ($($name:ident),* $(,)?) => {
        &[$((sys::$name, stringify!($name))),*]
    };
}

/// Syscall numbers by name (x86_64), so the lists read like `man 2`.
#[allow(non_upper_case_globals)]
mod sys {
    pub use libc::{
        SYS_accept4 as accept4, SYS_brk as brk, SYS_clock_gettime as clock_gettime,
        SYS_clock_nanosleep as clock_nanosleep, SYS_clone3 as clone3, SYS_close as close,
        SYS_connect as connect, SYS_dup as dup, SYS_epoll_ctl as epoll_ctl,
        SYS_epoll_pwait as epoll_pwait, SYS_epoll_wait as epoll_wait, SYS_eventfd2 as eventfd2,
        SYS_exit as exit, SYS_exit_group as exit_group, SYS_fallocate as fallocate,
        SYS_fcntl as fcntl, SYS_fdatasync as fdatasync, SYS_fstat as fstat, SYS_fsync as fsync,
        SYS_ftruncate as ftruncate, SYS_futex as futex, SYS_getdents64 as getdents64,
        SYS_getpeername as getpeername, SYS_getpid as getpid, SYS_getrandom as getrandom,
        SYS_getsockname as getsockname, SYS_getsockopt as getsockopt, SYS_gettid as gettid,
        SYS_gettimeofday as gettimeofday, SYS_lseek as lseek, SYS_madvise as madvise,
        SYS_memfd_create as memfd_create, SYS_mincore as mincore, SYS_mkdir as mkdir,
        SYS_mkdirat as mkdirat, SYS_mremap as mremap, SYS_munmap as munmap,
        SYS_nanosleep as nanosleep, SYS_newfstatat as newfstatat, SYS_openat as openat,
        SYS_poll as poll, SYS_ppoll as ppoll, SYS_pread64 as pread64, SYS_pwrite64 as pwrite64,
        SYS_read as read, SYS_readv as readv, SYS_recvfrom as recvfrom, SYS_recvmsg as recvmsg,
        SYS_rename as rename, SYS_renameat as renameat, SYS_renameat2 as renameat2,
        SYS_restart_syscall as restart_syscall, SYS_rseq as rseq, SYS_rt_sigaction as rt_sigaction,
        SYS_rt_sigprocmask as rt_sigprocmask, SYS_rt_sigreturn as rt_sigreturn,
        SYS_sched_getaffinity as sched_getaffinity, SYS_sched_yield as sched_yield,
        SYS_sendmsg as sendmsg, SYS_sendto as sendto, SYS_set_robust_list as set_robust_list,
        SYS_setsockopt as setsockopt, SYS_shutdown as shutdown, SYS_sigaltstack as sigaltstack,
        SYS_statx as statx, SYS_tgkill as tgkill, SYS_timer_create as timer_create,
        SYS_timer_delete as timer_delete, SYS_timer_settime as timer_settime, SYS_unlink as unlink,
        SYS_unlinkat as unlinkat, SYS_write as write, SYS_writev as writev,
    };
}

/// What every thread needs to live and end: locks, sleeping, heap and stack memory, signal
/// masks (glibc and Rust's stack-overflow guard), logging to stderr, exit.
fn life(l: &mut AllowList) {
    l.any(calls![
        futex,
        sched_yield,
        nanosleep,
        clock_nanosleep,
        clock_gettime,
        gettimeofday,
        munmap,
        madvise,
        brk,
        mremap,
        exit,
        exit_group,
        rt_sigprocmask,
        rt_sigreturn,
        sigaltstack,
        getrandom,
        gettid,
        getpid,
        tgkill,
        sched_getaffinity,
        restart_syscall,
        write,
        writev,
        close,
    ]);
    l.add(libc::SYS_mmap, "mmap", Arg::NoExec);
    l.add(libc::SYS_mprotect, "mprotect", Arg::NoExec);
}

/// Starting a thread and letting it install its own filter: `clone` for threads only
/// (glibc's `clone3` is answered ENOSYS by the process-wide pre-filter, see `lib.rs`, so it
/// falls back to `clone`, whose flags a filter can check), and what the new thread does before
/// its own code runs.
fn spawning(l: &mut AllowList) {
    l.add(libc::SYS_clone, "clone", Arg::ThreadOnly);
    l.any(calls![clone3, set_robust_list, rseq]);
    l.add(
        libc::SYS_prctl,
        "prctl",
        Arg::PrctlOps(vec![libc::PR_SET_NAME, libc::PR_SET_NO_NEW_PRIVS]),
    );
    l.add(libc::SYS_seccomp, "seccomp", Arg::SetFilter);
}

/// Talking over an already connected socket (API clients, vhost-user backends).
fn stream_io(l: &mut AllowList) {
    l.any(calls![
        read,
        readv,
        recvfrom,
        recvmsg,
        sendto,
        sendmsg,
        setsockopt,
        getsockopt,
        getsockname,
        getpeername,
        poll,
        ppoll,
        shutdown,
        fcntl,
    ]);
    l.ioctl(&[ioctls::TERMINAL[1]]);
}

/// Eventfds (irqfds, ioeventfds, vhost-user kick and call fds) and waiting on them.
fn eventfds(l: &mut AllowList) {
    l.any(calls![
        read,
        write,
        epoll_wait,
        epoll_pwait,
        epoll_ctl,
        eventfd2,
        fcntl,
        dup
    ]);
}

/// Serving the memory device's queue or a resize: memory slots in KVM, the interrupts that
/// answer, host memory given back or populated (hugetlbfs by `fallocate`, shared memory by
/// memfds), and vhost-user memory-table updates for the backends.
fn device_work(l: &mut AllowList) {
    l.ioctl(ioctls::VM_DEVICES);
    eventfds(l);
    stream_io(l);
    l.any(calls![fallocate, memfd_create, ftruncate, mincore, lseek]);
}

/// Files: reloading the kernel at a reboot, writing a snapshot, reading /proc/self/pagemap.
fn files(l: &mut AllowList) {
    l.any(calls![
        openat, read, pread64, pwrite64, lseek, fsync, fdatasync, ftruncate, fallocate, rename,
        renameat, renameat2, mkdir, mkdirat, unlink, unlinkat, statx, newfstatat, fstat,
        getdents64,
    ]);
}

/// The calls a thread of `kind` makes itself (without its children's).
fn own(kind: ThreadKind) -> AllowList {
    let mut l = AllowList::default();
    life(&mut l);
    match kind {
        ThreadKind::Vmm => {
            // Between runs: vCPU reset and snapshot state, irqchip reset, files; the kick
            // signal's handler is installed at each start.
            l.ioctl(ioctls::VCPU_STATE);
            l.ioctl(ioctls::VM_STATE);
            l.ioctl(ioctls::SYSTEM);
            l.ioctl(ioctls::TERMINAL);
            device_work(&mut l);
            files(&mut l);
            l.any(calls![rt_sigaction]);
        }
        ThreadKind::Vcpu => {
            // KVM_RUN, and MMIO/PIO exits: PCI config and BAR writes, doorbells served inline.
            l.ioctl(&[ioctls::KVM_RUN]);
            device_work(&mut l);
            // A throttled vCPU (migration auto-converge) kicks itself with a timer of its own.
            l.any(calls![timer_create, timer_settime, timer_delete]);
        }
        ThreadKind::ApiListener => {
            // Accepts, and turns away clients over the connection limit.
            l.any(calls![accept4]);
            stream_io(&mut l);
        }
        ThreadKind::ApiConnection => {
            // A resize may map slots and raise a configuration interrupt.
            device_work(&mut l);
        }
        ThreadKind::Monitor | ThreadKind::ExitWatch | ThreadKind::VhostEvents => {}
        ThreadKind::Console => {
            // stdin into the UART; its interrupt is an irqfd.
            l.any(calls![read, poll]);
            l.ioctl(&[ioctls::TERMINAL[0], ioctls::KVM_IRQ_LINE]);
        }
        ThreadKind::QueueNotify => device_work(&mut l),
        ThreadKind::VhostCallRelay => {
            eventfds(&mut l);
            // The queue's MSI-X vector: an irqfd write, a route update if the guest moved it.
            l.ioctl(ioctls::MSI_DELIVERY);
        }
        ThreadKind::Migration => {
            stream_io(&mut l);
            l.add(
                libc::SYS_socket,
                "socket",
                Arg::Domains(vec![libc::AF_UNIX, libc::AF_INET, libc::AF_INET6]),
            );
            l.any(calls![connect, pread64, read, lseek]);
            l.ioctl(ioctls::DIRTY_LOG);
            // Dirty logging on and off: the slots are flagged again (KVM_MEM_LOG_DIRTY_PAGES).
            l.ioctl(&[ioctls::KVM_SET_USER_MEMORY_REGION]);
            // vhost-user backends log into a shared memfd; their rings stop at the pause and,
            // if the migration fails, start again with a kick and an interrupt per queue.
            l.any(calls![memfd_create, ftruncate]);
            l.ioctl(ioctls::MSI_DELIVERY);
        }
    }
    l
}

/// Calls answered `EACCES` instead of killing, in threads whose list lacks them: opening
/// files. glibc's malloc opens `/proc/sys/vm/overcommit_memory` the first time a thread's heap
/// shrinks (whichever thread that is); refused, it assumes the usual overcommit and goes on. A
/// compromised thread still opens nothing.
pub const REFUSED: &[(i64, &str)] = &[(libc::SYS_open, "open"), (libc::SYS_openat, "openat")];

/// The calls of [`REFUSED`] that `kind`'s list does not allow.
pub fn refused(kind: ThreadKind) -> Vec<(i64, &'static str)> {
    let list = allow_list(kind);
    REFUSED
        .iter()
        .filter(|(nr, _)| !list.0.contains_key(nr))
        .copied()
        .collect()
}

/// The full list of `kind`: its own calls plus, when it starts threads, what starting them
/// takes and everything their lists allow (filters stack).
pub fn allow_list(kind: ThreadKind) -> AllowList {
    let mut l = own(kind);
    let children = kind.children();
    if !children.is_empty() {
        spawning(&mut l);
    }
    for child in children {
        l.merge(&allow_list(*child));
    }
    l
}
