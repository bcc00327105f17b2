//! A scenario run as a timeline: the events of both levels in console order, the logs, and
//! the VMM reports normalised across VMMs.

use serde::Serialize;

use super::serial::{Event, SerialLine, Source, parse_line};

/// The memory device as one VMM reported it at a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceStatus {
    pub requested_bytes: u64,
    pub plugged_bytes: u64,
    pub block_size_bytes: u64,
    pub region_bytes: u64,
    pub slots_mapped: Option<u64>,
    pub mapped_bytes: Option<u64>,
    pub legacy_mapping: Option<bool>,
    pub slot_policy: Option<String>,
    pub slots_total: Option<u64>,
    pub usable_region_bytes: Option<u64>,
}

impl DeviceStatus {
    /// From `hotmem-ctl status --json`.
    pub fn from_hotmem(json: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| format!("hotmem status is not JSON ({e}): {json}"))?;
        let device = value["memory_devices"]
            .as_array()
            .and_then(|devices| devices.iter().find(|d| d["id"] == "mem0"))
            .ok_or_else(|| format!("hotmem status has no mem0: {json}"))?;
        Self::from_hotmem_device(device)
    }

    /// Every device of a `hotmem-ctl status --json` report, with its id.
    pub fn all_from_hotmem(json: &str) -> Result<Vec<(String, Self)>, String> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| format!("hotmem status is not JSON ({e}): {json}"))?;
        value["memory_devices"]
            .as_array()
            .ok_or_else(|| format!("hotmem status has no memory_devices: {json}"))?
            .iter()
            .map(|d| {
                let id = d["id"].as_str().unwrap_or("?").to_string();
                Ok((id, Self::from_hotmem_device(d)?))
            })
            .collect()
    }

    fn from_hotmem_device(device: &serde_json::Value) -> Result<Self, String> {
        let json = device.to_string();
        let number = |name: &str| {
            device[name]
                .as_u64()
                .ok_or_else(|| format!("hotmem status lacks {name}: {json}"))
        };
        Ok(DeviceStatus {
            requested_bytes: number("requested_bytes")?,
            plugged_bytes: number("plugged_bytes")?,
            block_size_bytes: number("block_size_bytes")?,
            region_bytes: number("region_bytes")?,
            slots_mapped: Some(number("slots_mapped")?),
            mapped_bytes: Some(number("mapped_bytes")?),
            legacy_mapping: device["legacy_mapping"].as_bool(),
            slot_policy: device["slot_policy"].as_str().map(str::to_string),
            slots_total: device["slots_total"].as_u64(),
            usable_region_bytes: device["usable_region_bytes"].as_u64(),
        })
    }

    /// From QEMU's `query-memory-devices` reply and the count of mapped memslot aliases.
    pub fn from_qemu(reply: &str, memslots: Option<u64>) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(reply)
            .map_err(|e| format!("QMP reply is not JSON ({e}): {reply}"))?;
        let data = value["return"]
            .as_array()
            .and_then(|devices| devices.iter().find(|d| d["data"]["id"] == "mem0"))
            .map(|d| &d["data"])
            .ok_or_else(|| format!("query-memory-devices has no mem0: {reply}"))?;
        let number = |name: &str| {
            data[name]
                .as_u64()
                .ok_or_else(|| format!("query-memory-devices lacks {name}: {reply}"))
        };
        Ok(DeviceStatus {
            requested_bytes: number("requested-size")?,
            plugged_bytes: number("size")?,
            block_size_bytes: number("block-size")?,
            region_bytes: number("max-size")?,
            slots_mapped: memslots,
            mapped_bytes: None,
            legacy_mapping: None,
            slot_policy: None,
            slots_total: None,
            usable_region_bytes: None,
        })
    }
}

/// L1-side measurements taken together at one labelled point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub at_ms: u64,
    pub l1_memfree_kib: u64,
    pub l1_vmalloc_kib: u64,
    pub vmm_rss_kib: u64,
    /// VMM resident memory outside guest RAM mappings (≥ 256 MiB).
    pub vmm_own_kib: u64,
    pub guest_memtotal_kib: u64,
}

/// A parsed scenario run.
#[derive(Debug, Default)]
pub struct Timeline {
    pub events: Vec<Event>,
    pub guest_log: Vec<String>,
    pub vmm_log: Vec<String>,
    pub host_log: Vec<String>,
}

impl Timeline {
    pub fn parse(console: &str) -> Self {
        let mut timeline = Timeline::default();
        for line in console.lines() {
            match parse_line(line) {
                SerialLine::Event(e) => timeline.events.push(e),
                SerialLine::GuestLog(l) => timeline.guest_log.push(l),
                SerialLine::VmmLog(l) => timeline.vmm_log.push(l),
                SerialLine::HostLog(l) => timeline.host_log.push(l),
            }
        }
        timeline
    }

    /// Events with `key` from `source`, in order.
    pub fn all<'a>(&'a self, source: Source, key: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
        self.events
            .iter()
            .filter(move |e| e.source == source && e.key == key)
    }

    pub fn first<'a>(&'a self, source: Source, key: &'a str) -> Option<&'a Event> {
        self.all(source, key).next()
    }

    /// The snapshot labelled `label`.
    pub fn snapshot(&self, label: &str) -> Option<Snapshot> {
        let e = self
            .all(Source::L1, "snap")
            .find(|e| e.word(0) == Some(label))?;
        Some(Snapshot {
            at_ms: e.at_ms,
            l1_memfree_kib: e.field_u64("memfree_kib")?,
            l1_vmalloc_kib: e.field_u64("vmalloc_kib")?,
            // A missing number makes the snapshot missing: checks on it fail, never pass.
            vmm_rss_kib: e.field_u64("rss_kib")?,
            vmm_own_kib: e.field_u64("own_kib").unwrap_or(0),
            guest_memtotal_kib: e.field_u64("guest_memtotal_kib")?,
        })
    }

    /// The VMM's device report at snapshot `label`.
    pub fn status(&self, label: &str) -> Result<DeviceStatus, String> {
        let tagged = |key: &'static str| {
            self.all(Source::L1, key)
                .find(|e| e.word(0) == Some(label))
                .map(|e| e.rest[label.len()..].trim().to_string())
        };
        if let Some(json) = tagged("hotmem_status") {
            return DeviceStatus::from_hotmem(&json);
        }
        if let Some(reply) = tagged("qemu_memdev") {
            let memslots = tagged("qemu_memslots").and_then(|n| n.parse().ok());
            return DeviceStatus::from_qemu(&reply, memslots);
        }
        Err(format!("no VMM status at {label}"))
    }

    /// The guest's MemTotal samples (L1 time, KiB).
    pub fn memtotal_kib(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.all(Source::L2, "memtotal_kib")
            .filter_map(|e| Some((e.at_ms, e.word(0)?.parse().ok()?)))
    }

    /// The last `count` events, one per line, shortened to stay readable.
    pub fn event_tail(&self, count: usize) -> String {
        self.events[self.events.len().saturating_sub(count)..]
            .iter()
            .map(|e| {
                let rest: String = e.rest.chars().take(160).collect();
                format!("{:>8} ms {:?} {} {rest}", e.at_ms, e.source, e.key)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The last `lines` lines of a log, joined.
    pub fn tail(log: &[String], lines: usize) -> String {
        log[log.len().saturating_sub(lines)..].join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOTMEM_STATUS: &str = r#"{"memory_devices":[{"id":"mem0","block_size_bytes":2097152,"region_bytes":68719476736,"usable_region_bytes":68719476736,"requested_bytes":1073741824,"plugged_bytes":1073741824,"slots_total":64,"slots_mapped":1,"mapped_bytes":1073741824,"legacy_mapping":false}]}"#;
    const QEMU_MEMDEV: &str = r#"{"return": [{"type": "virtio-mem", "data": {"memdev": "/objects/vmem0", "memaddr": 4294967296, "block-size": 2097152, "size": 0, "node": 0, "max-size": 68719476736, "requested-size": 1073741824, "id": "mem0"}}]}"#;

    #[test]
    fn hotmem_and_qemu_reports_normalise_alike() {
        let hotmem = DeviceStatus::from_hotmem(HOTMEM_STATUS).unwrap();
        assert_eq!(
            (hotmem.plugged_bytes, hotmem.slots_mapped),
            (1 << 30, Some(1))
        );
        assert_eq!(hotmem.legacy_mapping, Some(false));
        let qemu = DeviceStatus::from_qemu(QEMU_MEMDEV, Some(0)).unwrap();
        assert_eq!((qemu.requested_bytes, qemu.plugged_bytes), (1 << 30, 0));
        assert_eq!(
            (qemu.region_bytes, qemu.block_size_bytes),
            (64 << 30, 2 << 20)
        );
        assert!(DeviceStatus::from_hotmem(r#"{"memory_devices":[]}"#).is_err());
        assert!(DeviceStatus::from_qemu(r#"{"error": {"desc": "x"}}"#, None).is_err());
    }

    #[test]
    fn snapshots_and_statuses_are_found_by_label() {
        let console = format!(
            "@@HM 100 snap boot1-plugged memfree_kib=900 vmalloc_kib=30 rss_kib=400 guest_memtotal_kib=1500\n\
             @@HM 101 hotmem_status boot1-plugged {HOTMEM_STATUS}\n\
             @@HM 200 qemu_memdev other {QEMU_MEMDEV}\n@@HM 201 qemu_memslots other 3\n"
        );
        let t = Timeline::parse(&console);
        let snap = t.snapshot("boot1-plugged").unwrap();
        assert_eq!(
            (snap.at_ms, snap.l1_memfree_kib, snap.vmm_rss_kib),
            (100, 900, 400)
        );
        assert_eq!(t.status("boot1-plugged").unwrap().plugged_bytes, 1 << 30);
        assert_eq!(t.status("other").unwrap().slots_mapped, Some(3));
        assert!(t.snapshot("missing").is_none());
        assert!(t.status("missing").is_err());
    }

    #[test]
    fn memtotal_samples_come_from_the_guest_only() {
        let t = Timeline::parse(
            "@@L2 10 @@HM 1 memtotal_kib 500\n@@HM 11 memtotal_kib 7\n@@L2 20 @@HM 2 memtotal_kib 600\n",
        );
        assert_eq!(t.memtotal_kib().collect::<Vec<_>>(), [(10, 500), (20, 600)]);
    }
}
