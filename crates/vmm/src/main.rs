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
    eprintln!("hotmem: configuration accepted: {config:?}");
    eprintln!("hotmem: booting is not wired up yet");
    ExitCode::FAILURE
}
