//! `hotmem-jail --jail DIR --uid U --gid G [--cgroup K=V]... [--bind PATH[:rw]]... -- HOTMEM_ARGS`

use std::process::ExitCode;

use clap::Parser;
use jail::config::{Cli, JailConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let self_exe = std::env::current_exe().unwrap_or_default();
    let result = JailConfig::from_cli(cli, &self_exe).and_then(|config| jail::run::run(&config));
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
        Err(e) => {
            eprintln!("hotmem-jail: {e}");
            ExitCode::from(jail::run::SETUP_FAILED as u8)
        }
    }
}
