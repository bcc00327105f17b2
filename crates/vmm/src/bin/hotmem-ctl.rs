//! `hotmem-ctl`: talks to a running hotmem over its API socket.

use std::path::PathBuf;
use std::process::ExitCode;

use api::client::{Answer, request};
use api::model::{MemoryDeviceList, MemoryDeviceStatus};
use api::size::{format_size, parse_size};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hotmem-ctl", version, about = "Control a running hotmem VMM")]
struct Cli {
    /// The VMM's API socket.
    #[arg(long)]
    api_socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the memory devices.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set a memory device's requested size (e.g. `resize mem0 4G`).
    Resize {
        /// Device id.
        id: String,
        /// New requested size (512M, 4G, 1.5T, or bytes).
        size: String,
    },
    /// Show the VM.
    Vm,
    /// Ask the VMM to stop the VM.
    Shutdown,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hotmem-ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let call = |method: &str, path: &str, body: Option<&str>| -> Result<Answer, String> {
        let answer = request(&cli.api_socket, method, path, body).map_err(|e| {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            msg
        })?;
        if answer.status == 200 {
            Ok(answer)
        } else {
            let message = serde_json::from_str::<api::model::ErrorBody>(&answer.body)
                .map(|b| b.error)
                .unwrap_or(answer.body);
            Err(format!("{} ({})", message, answer.status))
        }
    };
    match &cli.command {
        Command::Status { json } => {
            let answer = call("GET", "/v1/memory-devices", None)?;
            if *json {
                println!("{}", answer.body);
            } else {
                let list: MemoryDeviceList =
                    serde_json::from_str(&answer.body).map_err(|e| e.to_string())?;
                print_table(&list.memory_devices);
            }
        }
        Command::Resize { id, size } => {
            let bytes = parse_size(size)?;
            let body = serde_json::json!({ "requested_size": bytes }).to_string();
            let answer = call("PATCH", &format!("/v1/memory-devices/{id}"), Some(&body))?;
            let status: MemoryDeviceStatus =
                serde_json::from_str(&answer.body).map_err(|e| e.to_string())?;
            println!(
                "{}: requested {} (plugged {})",
                status.id,
                format_size(status.requested_bytes),
                format_size(status.plugged_bytes)
            );
        }
        Command::Vm => println!("{}", call("GET", "/v1/vm", None)?.body),
        Command::Shutdown => {
            call("PUT", "/v1/vm/shutdown", None)?;
        }
    }
    Ok(())
}

fn print_table(devices: &[MemoryDeviceStatus]) {
    println!(
        "{:<8} {:>8} {:>10} {:>10} {:>10} {:>7} {:>12} {:>8}  driver",
        "id", "block", "region", "requested", "plugged", "slots", "mapped", "policy"
    );
    for d in devices {
        println!(
            "{:<8} {:>8} {:>10} {:>10} {:>10} {:>7} {:>12} {:>8}  {}{}",
            d.id,
            format_size(d.block_size_bytes),
            format_size(d.region_bytes),
            format_size(d.requested_bytes),
            format_size(d.plugged_bytes),
            format!("{}/{}", d.slots_mapped, d.slots_total),
            format_size(d.mapped_bytes),
            d.slot_policy,
            d.driver_state,
            if d.legacy_mapping {
                " (legacy mapping)"
            } else {
                ""
            }
        );
    }
}
