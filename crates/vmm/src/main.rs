//! `hotmem`: boots a Linux guest with elastic memory.

use std::process::ExitCode;

use clap::Parser;
use vmm::config::Cli;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let seccomp = cli.seccomp;
    let config = match cli.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hotmem: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = drop_privileges(seccomp) {
        eprintln!("hotmem: {e}");
        return ExitCode::FAILURE;
    }
    match vmm::vm::run(config) {
        Ok(end) => {
            log::info!("VM ended: {end:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("hotmem: {message}");
            ExitCode::FAILURE
        }
    }
}

/// hotmem never needs to gain privileges (no setuid helpers, no exec): forbid it for this
/// process and its threads, and set up the per-thread seccomp allow lists (`sandbox`): compiled
/// now, before any thread starts, and installed by each thread as it starts (the VM thread once
/// the VM is set up).
fn drop_privileges(seccomp: sandbox::Mode) -> Result<(), sandbox::Error> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers and changes only this process's flags.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if ret != 0 {
        log::warn!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error());
    }
    if seccomp != sandbox::Mode::Kill {
        log::warn!("--seccomp {seccomp}: calls outside the allow lists are not stopped");
    }
    sandbox::init(seccomp)
}
