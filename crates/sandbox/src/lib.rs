//! hotmem's seccomp sandbox: one **allow list** per kind of thread, compiled with rust-vmm's
//! `seccompiler` when the VMM starts and installed by each thread before it does its work.
//!
//! How it is used:
//! 1. `main` calls [`init`] with the `--seccomp` mode before it starts any thread. That
//!    compiles every list (a bad list fails here, not in a running VM) and, unless the mode is
//!    `off`, installs a small process-wide pre-filter that answers `clone3` with `ENOSYS`: glibc
//!    then falls back to `clone`, whose flags a filter can read, and the lists allow `clone` only
//!    with `CLONE_THREAD` (threads, never new processes).
//! 2. Every thread calls [`enter`] (or [`enter_or_abort`]) with its [`ThreadKind`] first
//!    thing; the VM (main) thread does so once the VM is set up, before the first vCPU starts.
//!    Without [`init`] (library tests, tools) [`enter`] does nothing.
//!
//! **Filters stack.** A thread keeps the filters of the thread that started it and adds its
//! own; a call must pass all of them. So a thread's list holds the lists of the threads it
//! starts after installing its own ([`ThreadKind::children`]): the VM thread's holds the vCPUs'
//! (they are started again from it at every resume and reboot), the exit watcher's and the
//! migration thread's; the API listener's holds the connections'. Each child then narrows to its
//! own list. Threads started during setup (monitor, API listener, queue notifications, console,
//! vhost-user relays) start before the VM thread's filter and carry only their own.
//!
//! Adding a kind of thread: one [`ThreadKind`] variant, one arm in `lists::own`, and the
//! parent's [`ThreadKind::children`] if it is started after its parent's filter.

mod doc;
mod ioctls;
mod lists;

use std::collections::HashMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub use doc::thread_table;
pub use ioctls::Request;
pub use lists::{AllowList, Allowed, Arg, REFUSED, allow_list, refused};

/// Everything that can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A list could not be compiled (a bug in the lists).
    #[error("compiling the {kind} filter: {source}")]
    Compile {
        /// Whose list.
        kind: ThreadKind,
        /// Why.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("installing the {what} filter: {source}")]
    Install {
        /// Which filter.
        what: String,
        /// Why.
        source: seccompiler::Error,
    },
    /// [`init`] was called twice.
    #[error("the sandbox is already set up")]
    AlreadyInitialised,
    /// Not a mode.
    #[error("--seccomp {0}: expected kill, log or off")]
    BadMode(String),
    /// This architecture has no lists.
    #[error("seccomp lists exist for x86_64 only, not {0}")]
    Arch(&'static str),
}

/// What happens to a call outside a thread's list (`--seccomp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The process is killed (`SECCOMP_RET_KILL_PROCESS`, SIGSYS): the default.
    #[default]
    Kill,
    /// The call goes through and the kernel logs it (audit type 1326, in `dmesg`), to find a
    /// missing entry.
    Log,
    /// No filters.
    Off,
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "kill" => Ok(Mode::Kill),
            "log" => Ok(Mode::Log),
            "off" => Ok(Mode::Off),
            other => Err(Error::BadMode(other.into())),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Kill => "kill",
            Mode::Log => "log",
            Mode::Off => "off",
        })
    }
}

/// The kinds of hotmem threads, each with its own allow list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThreadKind {
    /// The VM (main) thread once the VM is set up: starts and stops the vCPUs, resets at a
    /// reboot, writes snapshots, serves pause/resume orders.
    Vmm,
    /// A vCPU (`vcpu{N}`, machine.rs): `KVM_RUN` and the device work of MMIO/PIO exits.
    Vcpu,
    /// The API socket's accept loop (`api`, operator.rs / api server.rs).
    ApiListener,
    /// One API connection (`api-conn`): a request and its answer.
    ApiConnection,
    /// The event and metrics sampler (`monitor`, monitor.rs).
    Monitor,
    /// The serial console's input (`console-in`, console.rs).
    Console,
    /// Wakes the VM thread when a stop is requested (`exit-watch`, control.rs).
    ExitWatch,
    /// Serves virtio queue notifications from their ioeventfds (`queue-notify`, notify.rs).
    QueueNotify,
    /// Turns vhost-user backend failures into events (`vhost-events`, vhost_user.rs).
    VhostEvents,
    /// Turns a vhost-user backend's call eventfds into interrupts (`vhost-call-ID`,
    /// vhost-frontend).
    VhostCallRelay,
    /// Sends the VM to another host over an already connected socket (live migration):
    /// socket I/O, `connect` for unix and TCP, `KVM_GET_DIRTY_LOG`/`KVM_CLEAR_DIRTY_LOG`, and
    /// `KVM_SET_USER_MEMORY_REGION` to turn dirty logging on and off per slot; a memfd for the
    /// vhost-user backends' dirty log, and MSI delivery when their rings restart.
    /// Started from the VM thread.
    Migration,
}

impl ThreadKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [ThreadKind; 11] = [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::ApiListener,
        ThreadKind::ApiConnection,
        ThreadKind::Monitor,
        ThreadKind::Console,
        ThreadKind::ExitWatch,
        ThreadKind::QueueNotify,
        ThreadKind::VhostEvents,
        ThreadKind::VhostCallRelay,
        ThreadKind::Migration,
    ];

    /// Its name in docs and logs.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::ApiListener => "api-listener",
            ThreadKind::ApiConnection => "api-connection",
            ThreadKind::Monitor => "monitor",
            ThreadKind::Console => "console",
            ThreadKind::ExitWatch => "exit-watch",
            ThreadKind::QueueNotify => "queue-notify",
            ThreadKind::VhostEvents => "vhost-events",
            ThreadKind::VhostCallRelay => "vhost-call-relay",
            ThreadKind::Migration => "migration",
        }
    }

    /// The kinds of thread this one starts after installing its filter (they inherit it).
    pub fn children(self) -> &'static [ThreadKind] {
        match self {
            ThreadKind::Vmm => &[
                ThreadKind::Vcpu,
                ThreadKind::ExitWatch,
                ThreadKind::Migration,
            ],
            ThreadKind::ApiListener => &[ThreadKind::ApiConnection],
            _ => &[],
        }
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn arch() -> Result<TargetArch, Error> {
    if std::env::consts::ARCH != "x86_64" {
        return Err(Error::Arch(std::env::consts::ARCH));
    }
    Ok(TargetArch::x86_64)
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a rule with one condition")
}

fn cond(index: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value).expect("argument index ≤ 5")
}

fn rules(arg: &Arg) -> Vec<SeccompRule> {
    let one_of = |index: u8, values: Vec<u64>| -> Vec<SeccompRule> {
        values
            .into_iter()
            .map(|v| rule(vec![cond(index, SeccompCmpOp::Eq, v)]))
            .collect()
    };
    match arg {
        Arg::Any => Vec::new(),
        Arg::NoExec => vec![rule(vec![cond(
            2,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )])],
        Arg::Ioctl(requests) => one_of(1, requests.iter().map(|r| r.number).collect()),
        Arg::Domains(d) => one_of(0, d.iter().map(|v| *v as u64).collect()),
        Arg::PrctlOps(ops) => one_of(0, ops.iter().map(|v| *v as u64).collect()),
        Arg::ThreadOnly => vec![rule(vec![cond(
            0,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            libc::CLONE_THREAD as u64,
        )])],
        Arg::SetFilter => one_of(0, vec![u64::from(libc::SECCOMP_SET_MODE_FILTER)]),
    }
}

/// The compiled filters of `kind` under `mode`, in the order to install them (none for `off`):
/// first the one answering the [`refused`] calls with `EACCES`, if any, then the allow list
/// (which lets those calls through to that first filter: the stricter answer wins).
pub fn compile(kind: ThreadKind, mode: Mode) -> Result<Vec<BpfProgram>, Error> {
    let mismatch = match mode {
        Mode::Kill => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
        Mode::Off => return Ok(Vec::new()),
    };
    let compile_err = |source| Error::Compile { kind, source };
    let mut programs = Vec::new();
    let refused = refused(kind);
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> = allow_list(kind)
        .0
        .iter()
        .map(|(nr, a)| (*nr, rules(&a.arg)))
        .collect();
    if !refused.is_empty() {
        let filter = SeccompFilter::new(
            refused.iter().map(|(nr, _)| (*nr, Vec::new())).collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
            arch()?,
        )
        .map_err(compile_err)?;
        programs.push(BpfProgram::try_from(filter).map_err(compile_err)?);
        for (nr, _) in &refused {
            rules.insert(*nr, Vec::new());
        }
    }
    let filter =
        SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch()?).map_err(compile_err)?;
    programs.push(BpfProgram::try_from(filter).map_err(compile_err)?);
    Ok(programs)
}

/// `clone3` → ENOSYS, everything else allowed (see the crate documentation).
fn pre_filter() -> Result<BpfProgram, Error> {
    let filter = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(|source| Error::Compile {
        kind: ThreadKind::Vmm,
        source,
    })?;
    BpfProgram::try_from(filter).map_err(|source| Error::Compile {
        kind: ThreadKind::Vmm,
        source,
    })
}

fn apply(what: &str, program: &BpfProgram) -> Result<(), Error> {
    seccompiler::apply_filter(program).map_err(|source| Error::Install {
        what: what.into(),
        source,
    })
}

/// Installs `kind`'s filter under `mode` in the calling thread, whatever [`init`] said (for
/// tests and tools; hotmem's threads use [`enter`]).
pub fn install(kind: ThreadKind, mode: Mode) -> Result<(), Error> {
    if mode == Mode::Off {
        return Ok(());
    }
    apply("clone3", &pre_filter()?)?;
    for program in compile(kind, mode)? {
        apply(kind.name(), &program)?;
    }
    Ok(())
}

struct Sandbox {
    mode: Mode,
    programs: HashMap<ThreadKind, Vec<BpfProgram>>,
}

static SANDBOX: OnceLock<Sandbox> = OnceLock::new();

/// Sets the mode for the process, compiles every list and installs the pre-filter in the
/// calling thread. Call it once, before any thread starts.
pub fn init(mode: Mode) -> Result<(), Error> {
    let mut programs = HashMap::new();
    for kind in ThreadKind::ALL {
        programs.insert(kind, compile(kind, mode)?);
    }
    if mode != Mode::Off {
        apply("clone3", &pre_filter()?)?;
    }
    SANDBOX
        .set(Sandbox { mode, programs })
        .map_err(|_| Error::AlreadyInitialised)
}

/// The mode [`init`] set, if it was called.
pub fn mode() -> Option<Mode> {
    SANDBOX.get().map(|s| s.mode)
}

/// Installs the filter of `kind` in the calling thread, in the mode [`init`] set; nothing if
/// [`init`] was not called or the mode is `off`.
pub fn enter(kind: ThreadKind) -> Result<(), Error> {
    let Some(sandbox) = SANDBOX.get() else {
        return Ok(());
    };
    for program in sandbox.programs.get(&kind).into_iter().flatten() {
        apply(kind.name(), program)?;
    }
    Ok(())
}

/// [`enter`], and a thread that cannot narrow itself does not run unconfined: the process
/// ends.
pub fn enter_or_abort(kind: ThreadKind) {
    if let Err(e) = enter(kind) {
        log::error!("{e}; stopping");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests;
