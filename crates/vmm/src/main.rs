//! `hotmem`: boots a Linux guest with elastic memory.

use std::process::ExitCode;

use clap::Parser;
use vmm::config::Cli;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Cli::parse().validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hotmem: {e}");
            return ExitCode::from(2);
        }
    };
    drop_privileges();
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
/// process and its threads, and install the seccomp deny list (`vmm::seccomp`).
fn drop_privileges() {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers and changes only this process's flags.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if ret != 0 {
        log::warn!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error());
        return;
    }
    // Before any thread starts, so vCPU, device and API threads all inherit it.
    if let Err(e) = vmm::seccomp::install() {
        log::warn!("seccomp filter not installed: {e}");
    }
}
