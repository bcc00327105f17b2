//! The jail from start to `execve`: plan, empty root, cgroup, namespaces, then a PID 1 inside
//! that builds the root, drops every privilege and starts the VMM, forwarding the signals an
//! operator sends and returning the VMM's exit status.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use crate::cgroup::JailCgroup;
use crate::config::JailConfig;
use crate::plan::{self, Access, Mount};
use crate::{Error, error::Result, identity, root};

/// Signals PID 1 passes on to the VMM (PID 1 of a namespace ignores what it does not handle).
const FORWARDED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];
/// Exit status when the jail itself could not be set up.
pub const SETUP_FAILED: i32 = 2;

/// Runs the VMM jailed; returns its exit status (128 + signal when killed).
pub fn run(config: &JailConfig) -> Result<i32> {
    let mounts = plan::plan(&config.vmm_args, &config.exec, &config.binds)?;
    root::prepare_dir(&config.root_dir)?;
    hand_over_writable(&mounts, config)?;
    let cgroup = if config.cgroups.is_empty() {
        None
    } else {
        Some(JailCgroup::create(&config.cgroups)?)
    };
    identity::unshare_namespaces()?;
    // SAFETY: this process is single-threaded here (no thread was started), so the child may
    // go on with ordinary Rust code until it execs.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::last_os("fork"));
    }
    if pid == 0 {
        let code = match pid1(config, &mounts) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("hotmem-jail: {e}");
                SETUP_FAILED
            }
        };
        // SAFETY: ends the child without running the parent's exit handlers twice.
        unsafe { libc::_exit(code) };
    }
    let status = wait_for(pid)?;
    if let Some(c) = cgroup {
        c.remove();
    }
    Ok(status)
}

/// Writable paths belong to the VMM's user (e.g. the API socket's folder), so it can create
/// files there once it is no longer root.
fn hand_over_writable(mounts: &[Mount], config: &JailConfig) -> Result<()> {
    for m in mounts.iter().filter(|m| m.access == Access::Writable) {
        if m.kind == plan::Kind::File && !m.path.exists() {
            std::fs::File::create(&m.path).map_err(|source| Error::Sys {
                what: format!("creating {}", m.path.display()),
                source,
            })?;
        }
        let c = CString::new(m.path.as_os_str().as_bytes()).map_err(|_| Error::Path {
            path: m.path.clone(),
            what: "contains a NUL byte".into(),
        })?;
        // SAFETY: a NUL-terminated path living across the call.
        if unsafe { libc::chown(c.as_ptr(), config.uid.0, config.gid.0) } != 0 {
            return Err(Error::last_os(format!("chown {}", m.path.display())));
        }
    }
    Ok(())
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given; sigaddset adds valid signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// PID 1 of the new PID namespace.
fn pid1(config: &JailConfig, mounts: &[Mount]) -> Result<i32> {
    root::build(&config.root_dir, mounts, (config.uid, config.gid))?;
    identity::set_hostname("hotmem-jail")?;
    identity::drop_to(config.uid, config.gid)?;
    let set = signal_set();
    // SAFETY: blocks the forwarded signals for this single thread; `set` is initialised.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let argv = exec_args(&config.exec, &config.vmm_args)?;
    // SAFETY: single-threaded process; the child only unblocks signals and execs.
    let vmm = unsafe { libc::fork() };
    if vmm < 0 {
        return Err(Error::last_os("fork of the VMM"));
    }
    if vmm == 0 {
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        // SAFETY: `set` is initialised; `ptrs` is a NULL-terminated array of NUL-terminated
        // strings that live until execv replaces the process (or fails).
        unsafe {
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            let path = CString::new(config.exec.as_os_str().as_bytes()).unwrap_or_default();
            libc::execv(path.as_ptr(), ptrs.as_ptr());
            eprintln!(
                "hotmem-jail: cannot start {}: {}",
                config.exec.display(),
                std::io::Error::last_os_error()
            );
            libc::_exit(127);
        }
    }
    forward_until_exit(vmm, &set)
}

/// argv for the VMM: its name as `argv[0]` (so `pidof hotmem` finds it), then its arguments.
fn exec_args(exec: &Path, args: &[String]) -> Result<Vec<CString>> {
    let name = exec
        .file_name()
        .map_or(b"hotmem".as_slice(), |n| n.as_bytes());
    std::iter::once(name)
        .chain(args.iter().map(|a| a.as_bytes()))
        .map(|a| {
            CString::new(a).map_err(|_| Error::Config("an argument contains a NUL byte".into()))
        })
        .collect()
}

fn forward_until_exit(vmm: libc::pid_t, set: &libc::sigset_t) -> Result<i32> {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: Duration::from_millis(100).as_nanos() as libc::c_long,
    };
    loop {
        // SAFETY: `set` and `timeout` are initialised and live across the call; no info wanted.
        let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
        if sig > 0 {
            // SAFETY: signals the VMM child this process started.
            unsafe { libc::kill(vmm, sig) };
        }
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let done = unsafe { libc::waitpid(vmm, &mut status, libc::WNOHANG) };
        if done == vmm {
            return Ok(exit_code(status));
        }
        if done < 0 {
            return Err(Error::last_os("waiting for the VMM"));
        }
    }
}

fn wait_for(pid: libc::pid_t) -> Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == pid {
            return Ok(exit_code(status));
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(Error::last_os("waiting for the jail"));
        }
    }
}

fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        SETUP_FAILED
    }
}
