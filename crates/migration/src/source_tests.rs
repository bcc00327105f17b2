//! The switchover estimate: the driver against the receiver over a socket pair.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::*;
use crate::destination::Incoming;
use crate::fake::{FakeSink, FakeSource, GuestOp};
use crate::protocol::{DeviceShape, LocalFacts, RamShape};
use crate::{PROTOCOL_VERSION, Step};

const BOOT: u64 = 64 * PAGE_BYTES;
const BLOCK: u64 = 4 * PAGE_BYTES;

fn handshake(source: &FakeSource) -> Handshake {
    Handshake {
        protocol_version: PROTOCOL_VERSION,
        hotmem_version: "t".into(),
        format_version: 2,
        cpu_features: vec![],
        boot_ram: vec![RamShape {
            guest_addr: 0,
            size_bytes: source.boot_ram[0].len() as u64,
        }],
        devices: vec![DeviceShape {
            id: "mem0".into(),
            region_size_bytes: source.devices[0].memory.len() as u64,
            block_size_bytes: BLOCK,
            guest_addr: 1 << 32,
            node: 0,
        }],
        vm_config: vec![],
    }
}

/// Runs a migration of `source`; answers the driver's result and every progress report.
fn run(source: FakeSource, settings: Settings) -> (Result<Report>, Vec<Progress>) {
    let (result, (progress, _)) = run_keeping(source, settings);
    (result, progress)
}

/// [`run`], also answering the source as the driver left it.
fn run_keeping(
    mut source: FakeSource,
    settings: Settings,
) -> (Result<Report>, (Vec<Progress>, FakeSource)) {
    let (mut a, b) = UnixStream::pair().unwrap();
    let hello = handshake(&source);
    let local = LocalFacts {
        protocol_version: PROTOCOL_VERSION,
        hotmem_version: "t".into(),
        format_versions: 1..=2,
        cpu_features: vec![],
        boot_ram: hello.boot_ram.clone(),
        devices: hello.devices.clone(),
    };
    let mut sink = FakeSink::like(&source);
    let destination = std::thread::spawn(move || {
        let mut incoming = Incoming::accept(b)?;
        incoming.check(&local)?;
        incoming.receive(&mut sink)?;
        incoming.running(vec![Step {
            name: "restore".into(),
            micros: 7,
        }])
    });
    let mut reports = Vec::new();
    let result = migrate(&mut a, hello, &mut source, &settings, &mut |p| {
        reports.push(*p)
    });
    let _ = destination.join().unwrap();
    (result, (reports, source))
}

/// A guest that dirties one boot RAM page per driver call, `calls` times.
fn dirtying(calls: u64) -> FakeSource {
    let mut source = FakeSource::new(BOOT, &[(32 * BLOCK, BLOCK)]);
    source.script = (0..calls)
        .map(|i| GuestOp::Write {
            region: RegionId::BootRam(0),
            offset_bytes: (i * PAGE_BYTES) % BOOT,
            byte: 1 + i as u8,
        })
        .collect();
    source
}

#[test]
fn rounds_go_on_while_the_dirty_pages_fit_but_not_with_the_switchover() {
    // 10 ms allowed, 10 ms of it taken by the switchover: only a round with nothing left to
    // send fits. Without the switchover, the first few dirty pages (microseconds at any
    // bandwidth) would have fitted at once.
    let settings = Settings {
        max_downtime_ms: 10,
        assumed_switchover: Some(Duration::from_millis(10)),
        max_rounds: 1000,
        ..Settings::default()
    };
    let (report, progress) = run(dirtying(40), settings);
    let report = report.unwrap();
    let checks: Vec<&Progress> = progress
        .iter()
        .filter(|p| p.phase == Phase::PreCopy && p.end_of_round)
        .collect();
    assert!(
        checks[0].remaining_bytes > 0,
        "the first check had dirty pages"
    );
    assert!(
        checks.len() > 2,
        "{} checks: the driver paused while pages were dirty",
        checks.len()
    );
    assert_eq!(checks.last().unwrap().remaining_bytes, 0);
    for p in &checks {
        assert!(p.expected_downtime_ms >= 10, "{p:?}");
        assert_eq!(p.switchover_ms, 10, "{p:?}");
    }
    assert_eq!(report.expected_downtime_ms, 10);
    assert_eq!(report.switchover_ms, 10);
}

#[test]
fn a_switchover_longer_than_the_limit_fails_after_max_rounds_naming_it() {
    let mut source = FakeSource::new(BOOT, &[(32 * BLOCK, BLOCK)]);
    source.state_delay = Duration::from_millis(40);
    let settings = Settings {
        max_downtime_ms: 25,
        max_rounds: 3,
        ..Settings::default()
    };
    let (report, progress) = run(source, settings);
    let e = report.unwrap_err();
    let Error::NotConverging {
        rounds,
        remaining_bytes,
        switchover_ms,
        ..
    } = e
    else {
        panic!("{e}");
    };
    assert_eq!(rounds, 3);
    assert_eq!(
        remaining_bytes, 0,
        "nothing was dirty: the switchover alone is too long"
    );
    assert!(switchover_ms >= 40, "{switchover_ms}");
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "switchover alone (pausing, device state, round trip, restore on the destination) \
             takes ~{switchover_ms} ms, more than max_downtime_ms=25"
        )),
        "{text}"
    );
    let last = progress.iter().rfind(|p| p.end_of_round).unwrap();
    assert!(last.switchover.state_build >= Duration::from_millis(40));
    assert!(
        last.switchover.round_trip > Duration::ZERO,
        "the ping was timed"
    );
}

#[test]
fn the_estimate_includes_the_measured_switchover_and_the_steps_are_reported() {
    let mut source = dirtying(0);
    source.state_delay = Duration::from_millis(15);
    source.pause_cost = Duration::from_millis(5);
    source.state = vec![1; 100_000];
    let settings = Settings {
        max_downtime_ms: 5_000,
        ..Settings::default()
    };
    let (report, progress) = run(source, settings);
    let report = report.unwrap();
    assert!(report.switchover_ms >= 20, "{report:?}");
    assert!(report.expected_downtime_ms >= report.switchover_ms);
    let check = progress
        .iter()
        .find(|p| p.phase == Phase::PreCopy && p.end_of_round)
        .unwrap();
    assert_eq!(check.switchover.state_bytes, 100_000);
    assert_eq!(check.switchover.pause, Duration::from_millis(5));
    assert!(check.expected_downtime_ms >= check.switchover_ms);
    let names: Vec<&str> = report
        .source_steps
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "pause",
            "final_collect",
            "final_pass",
            "state_build",
            "state_send",
            "wait_running"
        ]
    );
    let build = &report.source_steps[3];
    assert!(build.micros >= 15_000, "{build:?}");
    assert_eq!(
        report.destination_steps,
        [Step {
            name: "restore".into(),
            micros: 7
        }]
    );
    let sum: u64 = report.source_steps.iter().map(|s| s.micros).sum();
    assert!(sum <= report.downtime.as_micros() as u64);
}

#[test]
fn the_switchover_total_sends_the_state_at_the_bandwidth() {
    let e = SwitchoverEstimate {
        pause: Duration::from_millis(1),
        state_build: Duration::from_millis(2),
        state_bytes: 1_000_000,
        round_trip: Duration::from_millis(3),
        destination: Duration::from_millis(4),
    };
    assert_eq!(e.total(100_000_000), Duration::from_millis(20));
    assert_eq!(e.total(0), Duration::MAX);
    assert_eq!(millis(Duration::from_micros(200)), 1);
    assert_eq!(transfer_time(0, 0), Duration::ZERO);
}

/// A guest that rewrites all of boot RAM (64 pages) every driver call, faster than 4 MB/s can
/// send it (one page per millisecond), unless throttled.
fn rewriting_everything() -> FakeSource {
    let mut source = FakeSource::new(BOOT, &[(32 * BLOCK, BLOCK)]);
    let pages = BOOT / PAGE_BYTES;
    source.script = (0..200_000u64)
        .map(|i| GuestOp::Write {
            region: RegionId::BootRam(0),
            offset_bytes: (i % pages) * PAGE_BYTES,
            byte: 1 + ((i / pages) % 250) as u8,
        })
        .collect();
    source.ops_per_call = pages as usize;
    source
}

fn slow_link(auto_converge: Option<AutoConverge>) -> Settings {
    Settings {
        max_downtime_ms: 5,
        max_bandwidth_bytes_per_s: Some(4_096_000),
        max_rounds: 12,
        assumed_switchover: Some(Duration::ZERO),
        auto_converge,
        ..Settings::default()
    }
}

const STEEP: AutoConverge = AutoConverge {
    initial_percent: 50,
    increment_percent: 25,
    max_percent: 99,
    trigger_percent: 50,
    trigger_rounds: 2,
};

#[test]
fn a_guest_dirtying_faster_than_the_link_does_not_converge_without_auto_converge() {
    let (result, _) = run(rewriting_everything(), slow_link(None));
    assert!(
        matches!(result, Err(Error::NotConverging { .. })),
        "{result:?}"
    );
}

#[test]
fn auto_converge_throttles_step_by_step_until_the_guest_fits_then_lifts_the_throttle() {
    let (report, (progress, source)) = run_keeping(rewriting_everything(), slow_link(Some(STEEP)));
    let report = report.unwrap();
    assert_eq!(
        source.throttles,
        vec![50, 75, 99, 0],
        "stepwise up, then lifted when done"
    );
    assert_eq!(report.max_throttle_percent, 99);
    let reported: Vec<u8> = progress
        .iter()
        .filter(|p| p.end_of_round)
        .map(|p| p.throttle_percent)
        .collect();
    assert!(reported.contains(&75), "{reported:?}");
}

#[test]
fn a_failed_migration_lifts_the_throttle_it_set() {
    let mut settings = slow_link(Some(STEEP));
    settings.max_rounds = 5;
    let (result, (_, source)) = run_keeping(rewriting_everything(), settings);
    assert!(
        matches!(result, Err(Error::NotConverging { .. })),
        "{result:?}"
    );
    assert!(
        source.throttles.first().is_some_and(|&p| p > 0),
        "{:?}",
        source.throttles
    );
    assert_eq!(source.throttles.last(), Some(&0), "{:?}", source.throttles);
    assert_eq!(source.throttle_percent, 0);
}

#[test]
fn auto_converge_settings_that_cannot_work_are_refused_naming_the_field() {
    let bad = |f: fn(&mut AutoConverge)| {
        let mut ac = AutoConverge::default();
        f(&mut ac);
        ac.check().unwrap_err()
    };
    assert!(AutoConverge::default().check().is_ok());
    assert!(bad(|a| a.max_percent = 100).contains("max_percent"));
    assert!(bad(|a| a.initial_percent = 0).contains("initial_percent"));
    assert!(bad(|a| a.initial_percent = 120).contains("initial_percent"));
    assert!(bad(|a| a.trigger_rounds = 0).contains("trigger_rounds"));
}
