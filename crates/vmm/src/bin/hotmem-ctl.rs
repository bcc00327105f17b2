//! `hotmem-ctl`: talks to a running hotmem over its API socket.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use api::client::{Answer, Client};
use api::model::{ErrorBody, MemoryDeviceList, MemoryDeviceStatus, VmInfo, VmStateAnswer};
use api::size::{format_size_approx, parse_size};
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
        /// Wait until the guest has plugged or unplugged to the new size (progress bar on a
        /// terminal); fails if it has not within --timeout.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 90s, 2m, 500ms; plain numbers are seconds).
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
    /// Print events as JSON lines: the ones kept so far, then (with --follow) new ones.
    Events {
        /// Keep printing new events until interrupted or the VM ends.
        #[arg(long)]
        follow: bool,
        /// Only events with at least this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Print the Prometheus metrics.
    Metrics,
    /// Show the VM.
    Vm,
    /// Stop the vCPUs (the guest stands still; memory stays).
    Pause,
    /// Start the vCPUs again after pause.
    Resume,
    /// Ask the VMM to stop the VM.
    Shutdown,
    /// Pause the VM and write a snapshot to DIR (`hotmem --restore DIR` starts it again).
    Snapshot {
        /// Directory for the snapshot (created if missing).
        dir: PathBuf,
        /// Resume the VM once the snapshot is written (otherwise it stays paused).
        #[arg(long)]
        resume: bool,
    },
    /// Live-migrate the VM to a `hotmem --incoming DEST` (tcp:HOST:PORT or unix:PATH), with a
    /// progress line; the VM keeps running here if it fails.
    Migrate {
        /// Where the destination listens.
        destination: String,
        /// Largest acceptable pause of the guest, in ms (default 300).
        #[arg(long)]
        max_downtime_ms: Option<u64>,
        /// Bandwidth cap in bytes per second (default none).
        #[arg(long)]
        max_bandwidth: Option<u64>,
        /// Throttle the vCPUs step by step while the guest dirties memory faster than it can
        /// be sent.
        #[arg(long)]
        auto_converge: bool,
        /// Highest throttle auto-converge may apply, 1 to 99 % (default 99).
        #[arg(long, requires = "auto_converge")]
        max_throttle_percent: Option<u8>,
    },
    /// Cancel a running migration (the VM keeps running here).
    MigrateCancel,
    /// Print the current or last migration's status as JSON.
    Migration,
}

#[path = "hotmem-ctl/migrate.rs"]
mod migrate;
#[path = "hotmem-ctl/snapshot.rs"]
mod snapshot;

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

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// The error message of a non-200 answer.
fn refusal(answer: &Answer) -> String {
    let message = serde_json::from_str::<ErrorBody>(&answer.body)
        .map(|b| b.error)
        .unwrap_or_else(|_| answer.body.clone());
    format!("{message} ({})", answer.status)
}

fn call(client: &Client, method: &str, path: &str, body: Option<&str>) -> Result<Answer, String> {
    let answer = client.request(method, path, body).map_err(|e| chain(&e))?;
    if answer.status == 200 {
        Ok(answer)
    } else {
        Err(refusal(&answer))
    }
}

fn parse<T: serde::de::DeserializeOwned>(answer: &Answer) -> Result<T, String> {
    serde_json::from_str(&answer.body)
        .map_err(|e| format!("unexpected answer ({e}): {}", answer.body))
}

fn run(cli: &Cli) -> Result<(), String> {
    let client = Client::new(&cli.api_socket);
    match &cli.command {
        Command::Status { json } => {
            let answer = call(&client, "GET", "/v1/memory-devices", None)?;
            if *json {
                println!("{}", answer.body);
            } else {
                print_table(&parse::<MemoryDeviceList>(&answer)?.memory_devices);
                let vm = call(&client, "GET", "/v1/vm", None)?;
                print_topology(&parse::<VmInfo>(&vm)?);
            }
        }
        Command::Resize {
            id,
            size,
            wait,
            timeout,
        } => {
            let bytes = parse_size(size)?;
            if *wait {
                resize_and_wait(&client, id, bytes, parse_duration(timeout)?)?;
            } else {
                let body = serde_json::json!({ "requested_size": bytes }).to_string();
                let answer = call(
                    &client,
                    "PATCH",
                    &format!("/v1/memory-devices/{id}"),
                    Some(&body),
                )?;
                let status: MemoryDeviceStatus = parse(&answer)?;
                println!(
                    "{}: requested {} (plugged {})",
                    status.id,
                    format_size_approx(status.requested_bytes),
                    format_size_approx(status.plugged_bytes)
                );
            }
        }
        Command::Events { follow, since } => {
            let path = format!("/v1/events?follow={follow}&since={since}");
            let (status, lines) = client.stream(&path).map_err(|e| chain(&e))?;
            if status != 200 {
                let body: Vec<String> = lines.map_while(Result::ok).collect();
                return Err(refusal(&Answer {
                    status,
                    body: body.join("\n"),
                }));
            }
            let mut out = std::io::stdout().lock();
            for line in lines {
                let line = line.map_err(|e| format!("event stream broke: {e}"))?;
                if line.is_empty() {
                    continue;
                }
                // Flush per line so pipes and files see events as they come.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
        }
        Command::Snapshot { dir, resume } => snapshot::run(&client, dir, *resume)?,
        Command::Migrate {
            destination,
            max_downtime_ms,
            max_bandwidth,
            auto_converge,
            max_throttle_percent,
        } => migrate::run(
            &client,
            &migrate::MigrateArgs {
                destination,
                max_downtime_ms: *max_downtime_ms,
                max_bandwidth_bytes_per_s: *max_bandwidth,
                auto_converge: *auto_converge,
                max_throttle_percent: *max_throttle_percent,
            },
        )?,
        Command::Migration => {
            println!("{}", call(&client, "GET", "/v1/vm/migration", None)?.body);
        }
        Command::MigrateCancel => {
            println!(
                "{}",
                call(&client, "PUT", "/v1/vm/migration/cancel", None)?.body
            );
        }
        Command::Metrics => print!("{}", call(&client, "GET", "/metrics", None)?.body),
        Command::Vm => println!("{}", call(&client, "GET", "/v1/vm", None)?.body),
        Command::Pause | Command::Resume | Command::Shutdown => {
            let action = match cli.command {
                Command::Pause => "pause",
                Command::Resume => "resume",
                _ => "shutdown",
            };
            let answer = call(&client, "PUT", &format!("/v1/vm/{action}"), None)?;
            let state: VmStateAnswer = parse(&answer)?;
            println!(
                "{}",
                serde_json::to_value(state.state)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("")
            );
            if let Some(note) = state.note {
                eprintln!("note: {note}");
            }
        }
    }
    Ok(())
}

/// `90s`, `2m`, `500ms`, or seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else {
        (t, 1000)
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale_ms))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("--timeout {text}: expected e.g. 90s, 2m, 500ms or seconds"))
}

/// PATCH with `wait` on one thread; a progress bar from polling the device on this one.
fn resize_and_wait(client: &Client, id: &str, bytes: u64, timeout: Duration) -> Result<(), String> {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let body = serde_json::json!({ "requested_size": bytes, "wait": { "timeout_ms": timeout_ms } })
        .to_string();
    let path = format!("/v1/memory-devices/{id}");
    let patcher = client
        .clone()
        .with_timeout(timeout + Duration::from_secs(30));
    let waiter = std::thread::spawn(move || patcher.request("PATCH", &path, Some(&body)));
    let bar = std::io::stderr().is_terminal();
    while !waiter.is_finished() {
        if bar
            && let Ok(answer) = client.request("GET", &format!("/v1/memory-devices/{id}"), None)
            && let Ok(s) = serde_json::from_str::<MemoryDeviceStatus>(&answer.body)
        {
            eprint!("\r{}", progress_line(&s, bytes));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let answer = waiter
        .join()
        .map_err(|_| "the waiting thread panicked".to_string())?
        .map_err(|e| chain(&e))?;
    if bar {
        if let Ok(s) = serde_json::from_str::<MemoryDeviceStatus>(&answer.body).or_else(|_| {
            serde_json::from_str::<ErrorBody>(&answer.body)
                .ok()
                .and_then(|b| b.device)
                .ok_or(())
        }) {
            eprint!("\r{}", progress_line(&s, bytes));
        }
        eprintln!();
    }
    if answer.status != 200 {
        return Err(refusal(&answer));
    }
    let status: MemoryDeviceStatus = parse(&answer)?;
    println!(
        "{}: plugged {} = requested {}",
        status.id,
        format_size_approx(status.plugged_bytes),
        format_size_approx(status.requested_bytes)
    );
    Ok(())
}

/// `[#########-----------]  1.50G / 4G  mem0`: plugged against the target.
fn progress_line(s: &MemoryDeviceStatus, target: u64) -> String {
    const WIDTH: u64 = 30;
    // Shrinking to zero: full once nothing is plugged.
    let filled = (s.plugged_bytes.min(target) * WIDTH)
        .checked_div(target)
        .unwrap_or(if s.plugged_bytes == 0 { WIDTH } else { 0 });
    let filled = usize::try_from(filled).unwrap_or(0);
    format!(
        "[{}{}] {:>8} / {:<8} {} (driver {})",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled),
        format_size_approx(s.plugged_bytes),
        format_size_approx(target),
        s.id,
        s.driver_state.as_str()
    )
}

/// The VM's NUMA nodes, one line each (nothing without NUMA).
fn print_topology(vm: &VmInfo) {
    for n in vm.numa_nodes.iter().flatten() {
        println!("{}", topology_line(n));
    }
}

fn topology_line(n: &api::model::NumaNodeInfo) -> String {
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    format!(
        "node {}: cpus {}, boot memory {}, distances {}, devices {}",
        n.node,
        list(n.cpus.iter().map(u32::to_string).collect()),
        format_size_approx(n.boot_memory_bytes),
        list(n.distances.iter().map(u8::to_string).collect()),
        list(n.memory_devices.clone()),
    )
}

fn print_table(devices: &[MemoryDeviceStatus]) {
    println!(
        "{:<8} {:>4} {:>6} {:>8} {:>10} {:>10} {:>7} {:>10} {:>8} {:>11}  last request",
        "id",
        "node",
        "block",
        "region",
        "requested",
        "plugged",
        "slots",
        "mapped",
        "policy",
        "driver"
    );
    for d in devices {
        println!(
            "{:<8} {:>4} {:>6} {:>8} {:>10} {:>10} {:>7} {:>10} {:>8} {:>11}  {}{}",
            d.id,
            d.node.map_or_else(|| "-".to_string(), |n| n.to_string()),
            format_size_approx(d.block_size_bytes),
            format_size_approx(d.region_bytes),
            format_size_approx(d.requested_bytes),
            format_size_approx(d.plugged_bytes),
            format!("{}/{}", d.slots_mapped, d.slots_total),
            format_size_approx(d.mapped_bytes),
            d.slot_policy,
            d.driver_state.as_str(),
            d.last_request_age_ms.map_or_else(
                || "never".to_string(),
                |ms| format!("{:.1}s ago", ms as f64 / 1000.0)
            ),
            if d.legacy_mapping {
                " (legacy mapping)"
            } else {
                ""
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_take_units_and_refuse_garbage() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        for bad in ["", "1h", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_progress_bar_fills_with_plugged_against_the_target() {
        let mut s: MemoryDeviceStatus = serde_json::from_str(
            r#"{"id":"mem0","guest_addr":0,"block_size_bytes":2097152,"region_bytes":68719476736,
                "usable_region_bytes":0,"requested_bytes":4294967296,"plugged_bytes":1073741824,
                "slots_total":29,"slots_mapped":1,"mapped_bytes":1073741824,"slot_policy":"adaptive",
                "legacy_mapping":false,"driver_state":"active","last_request_age_ms":null}"#,
        )
        .unwrap();
        let line = progress_line(&s, 4 << 30);
        assert!(
            line.starts_with(&format!("[{}{}]", "#".repeat(7), "-".repeat(23))),
            "{line}"
        );
        assert!(line.contains("1G / 4G"), "{line}");
        s.plugged_bytes = 0;
        assert!(progress_line(&s, 0).starts_with(&format!("[{}]", "#".repeat(30))));
    }

    #[test]
    fn topology_lines_name_cpus_memory_distances_and_devices() {
        let n = api::model::NumaNodeInfo {
            node: 2,
            cpus: vec![],
            boot_memory_bytes: 0,
            distances: vec![20, 31, 10],
            memory_devices: vec!["mem2".into()],
        };
        assert_eq!(
            topology_line(&n),
            format!(
                "node 2: cpus -, boot memory {}, distances 20,31,10, devices mem2",
                format_size_approx(0)
            )
        );
    }
}
