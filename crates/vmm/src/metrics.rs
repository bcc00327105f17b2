//! `GET /metrics`: the VM and its memory devices in Prometheus text format.

use std::sync::atomic::Ordering;

use api::metrics::{Histogram, MetricKind, MetricsText};
use api::model::{MemoryDeviceStatus, VmState};
use virtio_mem::{ResponseCounters, Stats};

use crate::api_handler::VmFacts;
use crate::monitor::Monitor;

/// Bytes of KVM metadata per mapped 4 KiB page on a shadow-MMU host: the reverse map entry
/// (8 bytes) and the write-tracking counter (2 bytes) kept per slot page.
pub const KVM_METADATA_BYTES_PER_PAGE: u64 = 10;

/// One device's numbers.
struct DeviceNumbers {
    status: MemoryDeviceStatus,
    stats: Stats,
    latency: Histogram,
    unplugged_accesses: u64,
    broken: bool,
    system_reset_failures: u64,
    /// The device's NUMA node as a label value, on a NUMA VM.
    node: Option<String>,
}

impl DeviceNumbers {
    /// `device`, plus `node` on a NUMA VM.
    fn labels(&self) -> Vec<(&str, &str)> {
        let mut labels = vec![("device", self.status.id.as_str())];
        if let Some(node) = &self.node {
            labels.push(("node", node.as_str()));
        }
        labels
    }
}

/// Renders every metric.
pub fn render(monitor: &Monitor, facts: &VmFacts) -> String {
    let devices: Vec<DeviceNumbers> = monitor
        .devices()
        .iter()
        .map(|d| DeviceNumbers {
            status: d.status(),
            stats: d.stats(),
            latency: d.latency(),
            unplugged_accesses: d.unplugged_accesses(),
            broken: d.is_broken(),
            system_reset_failures: d.health().system_reset_failures(),
            node: d.status().node.map(|n| n.to_string()),
        })
        .collect();
    let mut m = MetricsText::new();
    render_vm(&mut m, monitor, facts);
    render_requests(&mut m, &devices);
    render_sizes(&mut m, &devices);
    render_failures(&mut m, &devices);
    render_vhost_user(&mut m, facts);
    m.finish()
}

fn render_vm(m: &mut MetricsText, monitor: &Monitor, facts: &VmFacts) {
    m.single(
        "hotmem_uptime_seconds",
        MetricKind::Gauge,
        "Seconds since the VMM started.",
        monitor.uptime_ms() as f64 / 1000.0,
    );
    m.single(
        "hotmem_boots_total",
        MetricKind::Counter,
        "Guest boots (reboots included).",
        f64::from(facts.boots.load(Ordering::Relaxed)),
    );
    m.family(
        "hotmem_vm_state",
        MetricKind::Gauge,
        "1 for the state the VM is in.",
    );
    let now = monitor.vm_state();
    for state in [
        VmState::Booting,
        VmState::Running,
        VmState::Paused,
        VmState::Rebooting,
        VmState::ShuttingDown,
    ] {
        let name = serde_json::to_value(state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        m.sample(
            "hotmem_vm_state",
            &[("state", &name)],
            f64::from(u8::from(state == now)),
        );
    }
    let (subscribers, dropped) = monitor.subscriber_stats();
    m.single(
        "hotmem_event_subscribers",
        MetricKind::Gauge,
        "Open GET /v1/events streams.",
        subscribers as f64,
    );
    m.single(
        "hotmem_events_dropped_total",
        MetricKind::Counter,
        "Events dropped for subscribers that read too slowly.",
        dropped as f64,
    );
}

fn render_requests(m: &mut MetricsText, devices: &[DeviceNumbers]) {
    let name = "hotmem_memory_device_requests_total";
    m.family(
        name,
        MetricKind::Counter,
        "Guest requests answered, by request type and response.",
    );
    for d in devices {
        let s = &d.stats;
        for (kind, c) in [
            ("plug", &s.plug),
            ("unplug", &s.unplug),
            ("unplug_all", &s.unplug_all),
            ("state", &s.state),
        ] {
            for (response, n) in responses(c) {
                let mut labels = d.labels();
                labels.extend([("type", kind), ("response", response)]);
                m.sample(name, &labels, n as f64);
            }
        }
    }
    let name = "hotmem_memory_device_request_duration_seconds";
    m.family(
        name,
        MetricKind::Histogram,
        "Time the VMM spent serving one guest request (a queue batch's time shared out).",
    );
    for d in devices {
        m.histogram(name, &d.labels(), &d.latency);
    }
}

fn responses(c: &ResponseCounters) -> [(&'static str, u64); 4] {
    [
        ("ack", c.ack),
        ("nack", c.nack),
        ("busy", c.busy),
        ("error", c.error),
    ]
}

fn render_sizes(m: &mut MetricsText, devices: &[DeviceNumbers]) {
    type Pick = fn(&DeviceNumbers) -> u64;
    let gauges: [(&str, &str, Pick); 8] = [
        (
            "hotmem_memory_device_region_bytes",
            "Size of the device region.",
            |d| d.status.region_bytes,
        ),
        (
            "hotmem_memory_device_requested_bytes",
            "Size the operator requested.",
            |d| d.status.requested_bytes,
        ),
        (
            "hotmem_memory_device_plugged_bytes",
            "Size the guest has plugged.",
            |d| d.status.plugged_bytes,
        ),
        (
            "hotmem_memory_device_mapped_bytes",
            "Guest memory covered by mapped KVM slots.",
            |d| d.status.mapped_bytes,
        ),
        (
            "hotmem_memory_device_slots_total",
            "KVM slots in the device layout.",
            |d| d.status.slots_total as u64,
        ),
        (
            "hotmem_memory_device_slots_mapped",
            "KVM slots mapped now.",
            |d| d.status.slots_mapped as u64,
        ),
        (
            "hotmem_memory_device_kvm_metadata_estimated_bytes",
            "Estimated KVM per-page metadata for the mapped slots (shadow MMU: rmap + gfn_track, 10 bytes per 4 KiB page).",
            |d| d.status.mapped_bytes / 4096 * KVM_METADATA_BYTES_PER_PAGE,
        ),
        (
            "hotmem_memory_device_driver_active",
            "1 while a guest driver drives the device, 0 otherwise.",
            |d| u64::from(d.status.driver_state == api::model::DriverState::Active),
        ),
    ];
    for (name, help, pick) in gauges {
        m.family(name, MetricKind::Gauge, help);
        for d in devices {
            m.sample(name, &d.labels(), pick(d) as f64);
        }
    }
}

fn render_failures(m: &mut MetricsText, devices: &[DeviceNumbers]) {
    type Pick = fn(&Stats) -> u64;
    let counters: [(&str, &str, Pick); 7] = [
        (
            "hotmem_memory_device_plugged_bytes_total",
            "Bytes acknowledged as plugged.",
            |s| s.plugged_bytes_total,
        ),
        (
            "hotmem_memory_device_unplugged_bytes_total",
            "Bytes acknowledged as unplugged.",
            |s| s.unplugged_bytes_total,
        ),
        (
            "hotmem_memory_device_discard_failures_total",
            "Failed discards of host memory.",
            |s| s.discard_failures,
        ),
        (
            "hotmem_memory_device_prealloc_failures_total",
            "Failed preallocations on plug.",
            |s| s.prealloc_failures,
        ),
        (
            "hotmem_memory_device_map_failures_total",
            "Failed KVM slot maps.",
            |s| s.map_failures,
        ),
        (
            "hotmem_memory_device_unmap_failures_total",
            "Failed KVM slot unmaps (retried).",
            |s| s.unmap_failures,
        ),
        (
            "hotmem_memory_device_malformed_requests_total",
            "Malformed descriptor chains (each makes the device need a reset).",
            |s| s.malformed_chains,
        ),
    ];
    for (name, help, pick) in counters {
        m.family(name, MetricKind::Counter, help);
        for d in devices {
            m.sample(name, &d.labels(), pick(&d.stats) as f64);
        }
    }
    let name = "hotmem_memory_device_system_reset_failures_total";
    m.family(
        name,
        MetricKind::Counter,
        "Guest reboots whose discard failed (the memory stayed plugged for the next driver).",
    );
    for d in devices {
        m.sample(name, &d.labels(), d.system_reset_failures as f64);
    }
    let name = "hotmem_memory_device_broken";
    m.family(
        name,
        MetricKind::Gauge,
        "1 once a VMM thread panicked while holding the device: its requests are not served.",
    );
    for d in devices {
        m.sample(name, &d.labels(), f64::from(u8::from(d.broken)));
    }
    let name = "hotmem_memory_device_unplugged_accesses_total";
    m.family(
        name,
        MetricKind::Counter,
        "Guest reads and writes of unmapped device memory (answered with all ones / dropped).",
    );
    for d in devices {
        m.sample(name, &d.labels(), d.unplugged_accesses as f64);
    }
}

fn render_vhost_user(m: &mut MetricsText, facts: &VmFacts) {
    let Some(view) = &facts.vhost_user else {
        return;
    };
    let statuses = view.statuses();
    let up = "hotmem_vhost_user_backend_up";
    m.family(
        up,
        MetricKind::Gauge,
        "1 while the vhost-user device's backend works, 0 once it failed (broken).",
    );
    for s in &statuses {
        m.sample(
            up,
            &[("device", &s.id)],
            f64::from(u8::from(s.state == "ready")),
        );
    }
    let regions = "hotmem_vhost_user_backend_regions";
    m.family(
        regions,
        MetricKind::Gauge,
        "Memory regions the vhost-user backend holds (boot RAM + mapped slots).",
    );
    for s in &statuses {
        m.sample(regions, &[("device", &s.id)], s.regions_held as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(node: Option<&str>) -> DeviceNumbers {
        DeviceNumbers {
            status: MemoryDeviceStatus {
                id: "mem1".into(),
                guest_addr: 1 << 36,
                block_size_bytes: 2 << 20,
                region_bytes: 64 << 30,
                usable_region_bytes: 1 << 30,
                requested_bytes: 1 << 30,
                plugged_bytes: 1 << 30,
                slots_total: 29,
                slots_mapped: 1,
                mapped_bytes: 1 << 30,
                slot_policy: "adaptive".into(),
                legacy_mapping: false,
                driver_state: api::model::DriverState::Active,
                last_request_age_ms: None,
                node: None,
            },
            stats: Stats::default(),
            latency: Histogram::default(),
            unplugged_accesses: 0,
            broken: false,
            system_reset_failures: 0,
            node: node.map(str::to_string),
        }
    }

    fn render_devices(devices: &[DeviceNumbers]) -> String {
        let mut m = MetricsText::new();
        render_requests(&mut m, devices);
        render_sizes(&mut m, devices);
        render_failures(&mut m, devices);
        m.finish()
    }

    #[test]
    fn a_numa_device_carries_a_node_label_and_others_do_not() {
        let text = render_devices(&[numbers(Some("1"))]);
        assert!(
            text.contains(
                "hotmem_memory_device_plugged_bytes{device=\"mem1\",node=\"1\"} 1073741824"
            ),
            "{text}"
        );
        assert!(text.contains(
            "hotmem_memory_device_requests_total{device=\"mem1\",node=\"1\",type=\"plug\",response=\"ack\"} 0"
        ));
        let plain = render_devices(&[numbers(None)]);
        assert!(plain.contains("hotmem_memory_device_plugged_bytes{device=\"mem1\"} 1073741824"));
        assert!(!plain.contains("node="));
    }
}
