//! Each thread kind's filter in a real process: a call outside the list ends the process with
//! SIGSYS, calls inside it go through. Every case runs in a child (this test binary run again
//! with `SANDBOX_CHILD=KIND:ACTION`) that installs the filter, acts and exits 0; the parent
//! checks how the child ended. No KVM needed: the KVM ioctls are made on fd -1.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use sandbox::{Mode, ThreadKind, allow_list};

const CHILD: &str = "SANDBOX_CHILD";

/// Calls tried as "outside the list": the first one the kind does not allow is used.
const OUTSIDE: &[(i64, &str)] = &[
    (libc::SYS_socket, "socket"),
    (libc::SYS_accept4, "accept4"),
    (libc::SYS_kill, "kill"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Exit0,
    Sigsys,
}

fn run_child(kind: ThreadKind, mode: Mode, action: &str) -> Ending {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{}:{mode}:{action}", kind.name()))
        .output()
        .unwrap();
    match (out.status.code(), out.status.signal()) {
        (Some(0), _) => Ending::Exit0,
        (_, Some(libc::SIGSYS)) => Ending::Sigsys,
        other => panic!(
            "{kind} {action}: child ended {other:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn outside_call(kind: ThreadKind) -> &'static str {
    let list = allow_list(kind);
    OUTSIDE
        .iter()
        .find(|(nr, _)| !list.0.contains_key(nr))
        .map(|(_, name)| *name)
        .unwrap_or_else(|| panic!("{kind} allows every candidate"))
}

/// In the child: the action, after the filter.
fn act(action: &str) {
    // SAFETY: raw syscalls with harmless arguments (fd -1, read-only "/", signal 0 to
    // ourselves, a fresh anonymous mapping); the child process exits right after.
    unsafe {
        match action {
            "socket" => {
                libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            }
            "openat-refused" => {
                let fd = libc::openat(libc::AT_FDCWD, c"/".as_ptr(), libc::O_RDONLY);
                let errno = *libc::__errno_location();
                if fd >= 0 || errno != libc::EACCES {
                    libc::_exit(3);
                }
            }
            "accept4" => {
                libc::accept4(-1, std::ptr::null_mut(), std::ptr::null_mut(), 0);
            }
            "kill" => {
                libc::kill(libc::getpid(), 0);
            }
            "execve" => {
                let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                libc::execv(c"/bin/true".as_ptr(), argv.as_ptr());
            }
            "fork" => {
                // A new process: `clone` without CLONE_THREAD (what glibc's fork does).
                let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0);
                if pid == 0 {
                    libc::_exit(0);
                }
            }
            "mmap-exec" => {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
            }
            "ioctl-tiocsti" => {
                libc::ioctl(-1, libc::TIOCSTI, 0);
            }
            "allowed" => {
                // Memory, time, locks, logging: every thread does these.
                let v: Vec<u8> = vec![7; 1 << 20];
                std::hint::black_box(&v);
                std::thread::sleep(std::time::Duration::from_millis(1));
                eprintln!("allowed calls done");
            }
            "kvm-run" => {
                assert_eq!(libc::ioctl(-1, 0xae80, 0), -1);
            }
            "thread" => {
                std::thread::spawn(|| eprintln!("in a thread"))
                    .join()
                    .unwrap();
            }
            other => panic!("unknown action {other}"),
        }
    }
}

#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut parts = spec.split(':');
    let (kind, mode, action) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let kind = ThreadKind::ALL
        .into_iter()
        .find(|k| k.name() == kind)
        .unwrap();
    sandbox::install(kind, mode.parse().unwrap()).unwrap();
    act(action);
    std::process::exit(0);
}

#[test]
fn a_call_outside_each_kinds_list_kills_the_process() {
    for kind in ThreadKind::ALL {
        let call = outside_call(kind);
        assert_eq!(
            run_child(kind, Mode::Kill, call),
            Ending::Sigsys,
            "{kind} {call}"
        );
    }
}

#[test]
fn a_vcpu_thread_may_not_open_a_socket() {
    assert_eq!(outside_call(ThreadKind::Vcpu), "socket");
    assert_eq!(
        run_child(ThreadKind::Vcpu, Mode::Kill, "socket"),
        Ending::Sigsys
    );
}

#[test]
fn running_a_program_forking_or_mapping_code_kills_under_every_kind() {
    for kind in ThreadKind::ALL {
        for action in ["execve", "fork", "mmap-exec", "ioctl-tiocsti"] {
            assert_eq!(
                run_child(kind, Mode::Kill, action),
                Ending::Sigsys,
                "{kind} {action}"
            );
        }
    }
}

#[test]
fn calls_inside_the_lists_go_through() {
    for kind in ThreadKind::ALL {
        assert_eq!(
            run_child(kind, Mode::Kill, "allowed"),
            Ending::Exit0,
            "{kind}"
        );
    }
    assert_eq!(
        run_child(ThreadKind::Vcpu, Mode::Kill, "kvm-run"),
        Ending::Exit0
    );
    // Threads start (clone3 answered ENOSYS, glibc falls back to clone with CLONE_THREAD).
    for kind in [ThreadKind::Vmm, ThreadKind::ApiListener] {
        assert_eq!(
            run_child(kind, Mode::Kill, "thread"),
            Ending::Exit0,
            "{kind}"
        );
    }
}

#[test]
fn opening_a_file_is_refused_with_eacces_outside_the_vm_thread() {
    for kind in ThreadKind::ALL {
        if kind == ThreadKind::Vmm {
            continue;
        }
        assert_eq!(
            run_child(kind, Mode::Kill, "openat-refused"),
            Ending::Exit0,
            "{kind}"
        );
    }
}

#[test]
fn log_mode_lets_the_call_through_and_off_installs_nothing() {
    assert_eq!(
        run_child(ThreadKind::Vcpu, Mode::Log, "socket"),
        Ending::Exit0
    );
    assert_eq!(
        run_child(ThreadKind::Monitor, Mode::Log, "accept4"),
        Ending::Exit0
    );
    assert_eq!(
        run_child(ThreadKind::Vcpu, Mode::Off, "execve"),
        Ending::Exit0
    );
}
