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
