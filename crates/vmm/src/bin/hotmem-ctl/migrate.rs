//! `hotmem-ctl migrate DEST`: starts a live migration and follows it with a progress line
//! until the destination runs the VM (or it fails; the VM then keeps running here).

use std::io::IsTerminal;
use std::time::Duration;

use api::client::Client;
use api::model::{MigrationState, MigrationStatus};
use api::size::format_size_approx;

use super::{call, parse, refusal};

/// What `migrate` was asked.
pub struct MigrateArgs<'a> {
    /// `tcp:HOST:PORT` or `unix:PATH`.
    pub destination: &'a str,
    /// Largest acceptable pause.
    pub max_downtime_ms: Option<u64>,
    /// Bandwidth cap.
    pub max_bandwidth_bytes_per_s: Option<u64>,
    /// Throttle the vCPUs when the guest dirties too fast.
    pub auto_converge: bool,
    /// Highest throttle.
    pub max_throttle_percent: Option<u8>,
}

/// Starts the migration and polls `GET /v1/vm/migration` until it ends.
pub fn run(client: &Client, args: &MigrateArgs<'_>) -> Result<(), String> {
    let mut body = serde_json::json!({ "destination": args.destination });
    if let Some(ms) = args.max_downtime_ms {
        body["max_downtime_ms"] = ms.into();
    }
    if let Some(bps) = args.max_bandwidth_bytes_per_s {
        body["max_bandwidth_bytes_per_s"] = bps.into();
    }
    if args.auto_converge {
        body["auto_converge"] = true.into();
    }
    if let Some(percent) = args.max_throttle_percent {
        body["max_throttle_percent"] = percent.into();
    }
    let answer = client
        .request("PUT", "/v1/vm/migrate", Some(&body.to_string()))
        .map_err(|e| format!("migrate: {e}"))?;
    if answer.status != 200 {
        return Err(format!("migrate: {}", refusal(&answer)));
    }
    let bar = std::io::stderr().is_terminal();
    let mut last_round = u32::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let status: MigrationStatus = match call(client, "GET", "/v1/vm/migration", None) {
            Ok(a) => parse(&a)?,
            // The source exits once the destination runs the VM.
            Err(_) => {
                if bar {
                    eprintln!();
                }
                println!("migration completed (the source has exited)");
                return Ok(());
            }
        };
        let line = progress_line(&status);
        if bar {
            eprint!("\r{line}\x1b[K");
        } else if status.round != last_round {
            eprintln!("{line}");
            last_round = status.round;
        }
        match status.state {
            MigrationState::Completed => {
                if bar {
                    eprintln!();
                }
                println!(
                    "migration completed: {} sent in {} rounds, downtime {} ms (expected {} ms, \
                     switchover {} ms of it), total {} ms{}",
                    format_size_approx(status.transferred_bytes),
                    status.round,
                    status.downtime_ms.unwrap_or(0),
                    status.expected_downtime_ms,
                    status.switchover_ms,
                    status.total_ms,
                    throttled(status.throttle_percent, "highest vCPU throttle")
                );
                return Ok(());
            }
            MigrationState::Failed | MigrationState::Cancelled => {
                if bar {
                    eprintln!();
                }
                return Err(format!(
                    "migration {}: {}; the VM keeps running here",
                    if status.state == MigrationState::Failed {
                        "failed"
                    } else {
                        "cancelled"
                    },
                    status.error.unwrap_or_default()
                ));
            }
            _ => {}
        }
    }
}

fn progress_line(s: &MigrationStatus) -> String {
    let state = serde_json::to_value(s.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    format!(
        "migration {state}: round {}, {} sent, {} dirty, expected downtime {} ms (switchover {} \
         ms), {:.1} s{}",
        s.round,
        format_size_approx(s.transferred_bytes),
        format_size_approx(s.remaining_bytes),
        s.expected_downtime_ms,
        s.switchover_ms,
        s.total_ms as f64 / 1000.0,
        throttled(s.throttle_percent, "vCPUs throttled")
    )
}

/// `", {what} N %"` when auto-converge throttled the vCPUs, else nothing.
fn throttled(percent: u8, what: &str) -> String {
    if percent == 0 {
        String::new()
    } else {
        format!(", {what} {percent} %")
    }
}
