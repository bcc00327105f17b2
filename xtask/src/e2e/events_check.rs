//! The `events` scenario's own checks: hotmem's event stream (captured with
//! `hotmem-ctl events --follow`, relayed as `hotmem_event <json>`) and a metrics sample
//! (`hotmem_metric <line>`).

use serde_json::Value;

use super::serial::Source;
use super::timeline::Timeline;

const GIB: u64 = 1 << 30;

/// Adds a failure for everything the event stream and metrics should show but do not.
pub fn check_events(failures: &mut Vec<String>, t: &Timeline) {
    let events: Vec<Value> = t
        .all(Source::L1, "hotmem_event")
        .filter_map(|e| serde_json::from_str(&e.rest).ok())
        .collect();
    if events.is_empty() {
        failures.push("no hotmem events captured".into());
        return;
    }
    let name = |e: &Value| e["event"].as_str().unwrap_or("").to_string();
    let position = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred);
    let not_following = position(&|e| {
        name(e) == "guest-not-following"
            && e["reason"] == "driver-not-probed"
            && e["device"] == "mem0"
            && e["plugged_bytes"] == 0
    });
    if not_following.is_none() {
        failures.push("no guest-not-following event with reason driver-not-probed".into());
    }
    let completed: Vec<u64> = events
        .iter()
        .filter(|e| name(e) == "resize-completed")
        .filter_map(|e| e["plugged_bytes"].as_u64())
        .collect();
    if completed != [GIB, 2 * GIB, 4 * GIB, GIB] {
        failures.push(format!(
            "resize-completed at {completed:?} bytes, wanted 1, 2, 4 and 1 GiB"
        ));
    }
    let paused = position(&|e| name(e) == "vm-state-changed" && e["state"] == "paused");
    let resumed_after = paused.and_then(|p| {
        events[p..]
            .iter()
            .position(|e| name(e) == "vm-state-changed" && e["state"] == "running")
    });
    if resumed_after.is_none() {
        failures.push("no vm-state-changed paused then running".into());
    }
    let refused = t.first(Source::L1, "paused_resize_timed_out");
    if !refused.is_some_and(|e| e.rest.contains("(504)")) {
        failures.push(format!(
            "a waiting resize while paused should time out with 504: {:?}",
            refused.map(|e| &e.rest)
        ));
    }
    let first_plug = position(&|e| name(e) == "plugged-size-changed");
    if let (Some(nf), Some(plug)) = (not_following, first_plug)
        && plug < nf
    {
        failures.push("the guest plugged memory before the not-following event".into());
    }
    for (to, what) in [(4 * GIB, "grow"), (GIB, "shrink")] {
        if position(&|e| name(e) == "requested-size-changed" && e["to_bytes"] == to).is_none() {
            failures.push(format!("no requested-size-changed event for the {what}"));
        }
    }
    for kind in ["slot-mapped", "slot-unmapped", "plugged-size-changed"] {
        if position(&|e| name(e) == kind).is_none() {
            failures.push(format!("no {kind} event"));
        }
    }
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    if seqs.windows(2).any(|w| w[1] != w[0] + 1) {
        failures.push(format!("event sequence numbers skip or repeat: {seqs:?}"));
    }
    check_metrics(failures, t);
}

fn check_metrics(failures: &mut Vec<String>, t: &Timeline) {
    let lines: Vec<&str> = t
        .all(Source::L1, "hotmem_metric")
        .map(|e| e.rest.as_str())
        .collect();
    let value = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    let plugged = value("hotmem_memory_device_plugged_bytes{device=\"mem0\"}");
    if plugged != Some(GIB as f64) {
        failures.push(format!("metrics: plugged bytes {plugged:?}, wanted 1 GiB"));
    }
    let acks = value(
        "hotmem_memory_device_requests_total{device=\"mem0\",type=\"plug\",response=\"ack\"}",
    );
    if !acks.is_some_and(|n| n > 0.0) {
        failures.push(format!("metrics: plug ACKs {acks:?}, wanted some"));
    }
    let latency = value("hotmem_memory_device_request_duration_seconds_count{device=\"mem0\"}");
    if !latency.is_some_and(|n| n > 0.0) {
        failures.push(format!(
            "metrics: request latency count {latency:?}, wanted some"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(events: &[&str], metrics: &[&str]) -> Timeline {
        let mut text = String::new();
        for (i, e) in events.iter().enumerate() {
            text.push_str(&format!("@@HM {} hotmem_event {e}\n", 1000 + i));
        }
        for m in metrics {
            text.push_str(&format!("@@HM 5000 hotmem_metric {m}\n"));
        }
        text.push_str("@@HM 6000 paused_resize_timed_out hotmem-ctl: memory device 'mem0': the guest has plugged 1G of 2G after 3000 ms (driver active); the request stays in force (504)\n");
        Timeline::parse(&text)
    }

    const GOOD_METRICS: [&str; 3] = [
        "hotmem_memory_device_plugged_bytes{device=\"mem0\"} 1073741824",
        "hotmem_memory_device_requests_total{device=\"mem0\",type=\"plug\",response=\"ack\"} 2560",
        "hotmem_memory_device_request_duration_seconds_count{device=\"mem0\"} 2600",
    ];

    fn good_events() -> Vec<String> {
        [
            r#""event":"guest-not-following","device":"mem0","requested_bytes":1073741824,"plugged_bytes":0,"stalled_ms":10000,"reason":"driver-not-probed""#,
            r#""event":"slot-mapped","device":"mem0","count":1,"slots_mapped":1,"mapped_bytes":1073741824"#,
            r#""event":"plugged-size-changed","device":"mem0","from_bytes":0,"to_bytes":1073741824,"requested_bytes":1073741824"#,
            r#""event":"resize-completed","device":"mem0","plugged_bytes":1073741824"#,
            r#""event":"vm-state-changed","state":"paused""#,
            r#""event":"requested-size-changed","device":"mem0","from_bytes":1073741824,"to_bytes":2147483648"#,
            r#""event":"vm-state-changed","state":"running""#,
            r#""event":"resize-completed","device":"mem0","plugged_bytes":2147483648"#,
            r#""event":"requested-size-changed","device":"mem0","from_bytes":2147483648,"to_bytes":4294967296"#,
            r#""event":"resize-completed","device":"mem0","plugged_bytes":4294967296"#,
            r#""event":"requested-size-changed","device":"mem0","from_bytes":4294967296,"to_bytes":1073741824"#,
            r#""event":"slot-unmapped","device":"mem0","count":2,"slots_mapped":1,"mapped_bytes":1073741824"#,
            r#""event":"resize-completed","device":"mem0","plugged_bytes":1073741824"#,
        ]
        .iter()
        .enumerate()
        .map(|(i, body)| format!(r#"{{"seq":{},"uptime_ms":{},{body}}}"#, i + 1, i * 100))
        .collect()
    }

    fn failures(events: &[String], metrics: &[&str]) -> Vec<String> {
        let refs: Vec<&str> = events.iter().map(String::as_str).collect();
        let mut f = Vec::new();
        check_events(&mut f, &console(&refs, metrics));
        f
    }

    #[test]
    fn a_complete_stream_and_metrics_pass() {
        assert_eq!(
            failures(&good_events(), &GOOD_METRICS),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_missing_not_following_event_or_a_gap_fails() {
        let mut events = good_events();
        events.remove(0);
        let f = failures(&events, &GOOD_METRICS);
        assert_eq!(
            f,
            ["no guest-not-following event with reason driver-not-probed"]
        );
        let mut events = good_events();
        events.remove(4);
        let f = failures(&events, &GOOD_METRICS);
        assert!(f.iter().any(|f| f.contains("skip or repeat")), "{f:?}");
    }

    #[test]
    fn a_shrink_that_never_completes_and_empty_metrics_fail() {
        let events = good_events()[..12].to_vec();
        let f = failures(&events, &[]);
        assert!(f.iter().any(|f| f.contains("resize-completed at")), "{f:?}");
        assert!(f.iter().any(|f| f.contains("metrics: plugged")), "{f:?}");
        assert!(failures(&[], &GOOD_METRICS) == ["no hotmem events captured"]);
    }
}
