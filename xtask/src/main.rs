//! `cargo xtask <command>`: the one entry point for project tasks.

mod bench;
mod demo;
mod e2e;
mod fuzz;
mod guest;
mod test;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "hotmem project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every check CI runs: format, lints, unit, property and KVM tests.
    Test(test::TestArgs),
    /// Fetch the Debian kernels and build the nested harness's initramfs images.
    GuestImage(guest::GuestImageArgs),
    /// Run the end-to-end scenarios in nested QEMU (L0) → Linux+VMM (L1) → Linux (L2).
    E2e(e2e::E2eArgs),
    /// Benchmarks on this machine's KVM (they print numbers, they do not pass or fail).
    Bench(bench::BenchArgs),
    /// Boot a Debian guest under hotmem and resize its memory live (1G → 4G → 1G).
    Demo(demo::DemoArgs),
    /// Build the libFuzzer targets in fuzz/ and run each for a while (fails on a crash).
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Test(args) => test::run(&args),
        Command::GuestImage(args) => guest::run(&args),
        Command::E2e(args) => e2e::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}
