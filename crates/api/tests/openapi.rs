//! `openapi.yaml` against the real router and wire types: every route documented, every
//! documented route served, and the documented schemas have exactly the fields the types
//! serialise.

use std::collections::{BTreeMap, BTreeSet};

use api::model::{
    DriverState, ErrorBody, Event, EventKind, MemoryDeviceList, MemoryDeviceStatus,
    NotFollowingReason, NumaNodeInfo, SlotBudgetInfo, VhostUserDeviceStatus, VmInfo, VmState,
    VmStateAnswer,
};
use api::routes::{ROUTES, route};

const DOC: &str = include_str!("../openapi.yaml");

/// The block-style YAML subset the document uses: `key:` / `key: value` lines by indentation
/// (list items `- ` are skipped, flow lists `[a, b]` are values). Answers "a/b/c" → value.
fn flatten(doc: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut in_list_item_at: Option<usize> = None;
    for line in doc.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if let Some(at) = in_list_item_at {
            if indent > at {
                continue;
            }
            in_list_item_at = None;
        }
        if trimmed.starts_with("- ") {
            in_list_item_at = Some(indent);
            continue;
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            continue; // continuation of a folded scalar
        };
        let key = key.trim().trim_matches('"').to_string();
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key));
        let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
        out.insert(path.join("|"), value.trim().trim_matches('"').to_string());
    }
    out
}

fn children(doc: &BTreeMap<String, String>, parent: &str) -> BTreeSet<String> {
    let prefix = format!("{parent}|");
    doc.keys()
        .filter_map(|k| k.strip_prefix(&prefix))
        .filter(|rest| !rest.contains('|'))
        .map(str::to_string)
        .collect()
}

fn flow_list(doc: &BTreeMap<String, String>, key: &str) -> BTreeSet<String> {
    let value = doc.get(key).unwrap_or_else(|| panic!("{key} missing"));
    value
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().to_string())
        .collect()
}

fn vhost_user_device() -> VhostUserDeviceStatus {
    VhostUserDeviceStatus {
        id: "disk0".into(),
        kind: "disk".into(),
        socket: "/run/qsd.sock".into(),
        state: "broken".into(),
        broken_reason: Some("vhost-user backend 'disk0' failed ADD_MEM_REG".into()),
        regions_held: 0,
        max_regions: 32,
    }
}

fn keys_of<T: serde::Serialize>(value: &T) -> BTreeSet<String> {
    serde_json::to_value(value)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

fn wire_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn device() -> MemoryDeviceStatus {
    MemoryDeviceStatus {
        id: "mem0".into(),
        guest_addr: 1 << 32,
        block_size_bytes: 2 << 20,
        region_bytes: 64 << 30,
        usable_region_bytes: 2 << 30,
        requested_bytes: 1 << 30,
        plugged_bytes: 1 << 30,
        slots_total: 29,
        slots_mapped: 1,
        mapped_bytes: 1 << 30,
        slot_policy: "adaptive".into(),
        legacy_mapping: false,
        driver_state: DriverState::Active,
        last_request_age_ms: Some(5),
        node: Some(1),
    }
}

#[test]
fn every_route_is_documented_and_every_documented_route_is_served() {
    let doc = flatten(DOC);
    let mut documented = BTreeSet::new();
    for path in children(&doc, "paths") {
        for method in children(&doc, &format!("paths|{path}")) {
            if ["get", "put", "patch", "post", "delete"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
    for (method, path) in &documented {
        let body: &[u8] = match (method.as_str(), path.as_str()) {
            ("PATCH", _) => br#"{"requested_size": "1G"}"#,
            (_, "/v1/vm/snapshot") => br#"{"destination": "/tmp/snap"}"#,
            (_, "/v1/vm/migrate") => br#"{"destination": "tcp:127.0.0.1:4444"}"#,
            _ => b"",
        };
        let target = path.replace("{id}", "mem0");
        assert!(route(method, &target, body).is_ok(), "{method} {target}");
    }
}

#[test]
fn documented_schemas_have_the_fields_the_types_serialise() {
    let doc = flatten(DOC);
    let props = |schema: &str| children(&doc, &format!("components|schemas|{schema}|properties"));
    let info = VmInfo {
        state: VmState::Running,
        vcpus: 1,
        boot_memory_bytes: 1,
        uptime_ms: 1,
        boots: 1,
        numa_nodes: Some(vec![NumaNodeInfo {
            node: 0,
            cpus: vec![0],
            boot_memory_bytes: 1,
            distances: vec![10],
            memory_devices: vec!["mem0".into()],
        }]),
        slot_budget: Some(SlotBudgetInfo {
            available_slots: 31,
            limited_by: "vhost-user backend 'disk0'".into(),
            limit_slots: 32,
        }),
        vhost_user_devices: vec![vhost_user_device()],
    };
    assert_eq!(
        props("SlotBudgetInfo"),
        keys_of(info.slot_budget.as_ref().unwrap())
    );
    assert_eq!(
        props("VhostUserDeviceStatus"),
        keys_of(&vhost_user_device())
    );
    assert_eq!(
        flow_list(&doc, "components|schemas|VhostUserDeviceStatus|required"),
        keys_of(&vhost_user_device())
    );
    assert_eq!(props("MemoryDeviceStatus"), keys_of(&device()));
    assert_eq!(
        flow_list(&doc, "components|schemas|MemoryDeviceStatus|required"),
        keys_of(&device())
    );
    assert_eq!(props("VmInfo"), keys_of(&info));
    let node = &info.numa_nodes.as_ref().unwrap()[0];
    assert_eq!(props("NumaNodeInfo"), keys_of(node));
    assert_eq!(
        flow_list(&doc, "components|schemas|NumaNodeInfo|required"),
        keys_of(node)
    );
    assert_eq!(
        props("VmStateAnswer"),
        keys_of(&VmStateAnswer {
            state: VmState::Paused,
            note: Some("late".into()),
        })
    );
    assert_eq!(
        props("MemoryDeviceList"),
        keys_of(&MemoryDeviceList {
            memory_devices: vec![]
        })
    );
    assert_eq!(
        props("ErrorBody"),
        keys_of(&ErrorBody {
            error: "x".into(),
            device: Some(device())
        })
    );
    let snapshot: api::model::SnapshotBody =
        serde_json::from_str(r#"{"destination": "/tmp/snap"}"#).unwrap();
    assert_eq!(props("SnapshotBody"), keys_of(&snapshot));
    assert_eq!(
        props("SnapshotAnswer"),
        keys_of(&api::model::SnapshotAnswer {
            destination: "/tmp/snap".into(),
            memory_data_bytes: 1,
            memory_scanned_bytes: 1,
            duration_ms: 1,
        })
    );
    let migrate: api::model::MigrateBody = serde_json::from_str(
        r#"{"destination": "tcp:h:1", "max_downtime_ms": 1, "max_bandwidth_bytes_per_s": 1,
            "auto_converge": true, "max_throttle_percent": 50}"#,
    )
    .unwrap();
    assert_eq!(props("MigrateBody"), keys_of(&migrate));
    assert_eq!(
        props("MigrationStatus"),
        keys_of(&api::model::MigrationStatus {
            state: api::model::MigrationState::Completed,
            destination: Some("tcp:h:1".into()),
            round: 1,
            transferred_bytes: 1,
            remaining_bytes: 0,
            dirty_rate_pages_per_s: 0,
            expected_downtime_ms: 0,
            switchover_ms: 1,
            throttle_percent: 20,
            downtime_ms: Some(1),
            downtime_breakdown: Some(api::model::DowntimeBreakdown {
                source: vec![],
                destination: vec![],
            }),
            total_ms: 1,
            error: Some("x".into()),
        })
    );
    let resize: api::model::ResizeBody =
        serde_json::from_str(r#"{"requested_size": "1G", "wait": {"timeout_ms": 1}}"#).unwrap();
    assert_eq!(props("ResizeBody"), keys_of(&resize));
}

#[test]
fn documented_enums_match_the_wire_names() {
    let doc = flatten(DOC);
    let names = |values: &[String]| values.iter().cloned().collect::<BTreeSet<_>>();
    let vm_states = [
        VmState::Booting,
        VmState::Running,
        VmState::Paused,
        VmState::Rebooting,
        VmState::ShuttingDown,
    ]
    .map(|s| wire_name(&s));
    assert_eq!(
        flow_list(&doc, "components|schemas|VmState|enum"),
        names(&vm_states)
    );
    let drivers = [
        DriverState::NotSeen,
        DriverState::Active,
        DriverState::Broken,
        DriverState::NeedsReset,
    ]
    .map(|s| wire_name(&s));
    assert_eq!(
        flow_list(&doc, "components|schemas|DriverState|enum"),
        names(&drivers)
    );
    let reasons = [
        NotFollowingReason::DriverNotProbed,
        NotFollowingReason::BusyNackLoop,
        NotFollowingReason::DeviceBroken,
        NotFollowingReason::NoRequests,
        NotFollowingReason::VmPaused,
    ]
    .map(|s| wire_name(&s));
    assert_eq!(
        flow_list(
            &doc,
            "components|schemas|EventKinds|properties|guest-not-following|properties|reason|enum"
        ),
        names(&reasons)
    );
}

/// One event of every kind; the exhaustive match makes a new kind fail to compile here.
fn every_event_kind() -> Vec<EventKind> {
    let d = || "mem0".to_string();
    let all = vec![
        EventKind::RequestedSizeChanged {
            device: d(),
            from_bytes: 0,
            to_bytes: 1,
        },
        EventKind::PluggedSizeChanged {
            device: d(),
            from_bytes: 0,
            to_bytes: 1,
            requested_bytes: 1,
        },
        EventKind::SlotMapped {
            device: d(),
            count: 1,
            slots_mapped: 1,
            mapped_bytes: 1,
        },
        EventKind::SlotUnmapped {
            device: d(),
            count: 1,
            slots_mapped: 0,
            mapped_bytes: 0,
        },
        EventKind::ResizeCompleted {
            device: d(),
            plugged_bytes: 1,
        },
        EventKind::GuestNotFollowing {
            device: d(),
            requested_bytes: 1,
            plugged_bytes: 0,
            stalled_ms: 1,
            reason: NotFollowingReason::DriverNotProbed,
        },
        EventKind::DeviceBroken {
            device: d(),
            driver_state: DriverState::NeedsReset,
        },
        EventKind::VhostUserBackendBroken {
            device: d(),
            reason: "REM_MEM_REG failed".into(),
        },
        EventKind::SystemResetIncomplete {
            device: d(),
            plugged_bytes: 1,
        },
        EventKind::MigrationStarted {
            destination: "tcp:127.0.0.1:4444".into(),
        },
        EventKind::MigrationRound {
            round: 1,
            transferred_bytes: 1,
            remaining_bytes: 1,
            expected_downtime_ms: 1,
            throttle_percent: 20,
        },
        EventKind::MigrationCompleted {
            transferred_bytes: 1,
            rounds: 2,
            downtime_ms: 1,
            total_ms: 1,
        },
        EventKind::MigrationFailed {
            reason: "destination gone".into(),
        },
        EventKind::VmStateChanged {
            state: VmState::Paused,
        },
        EventKind::EventsDropped { count: 1 },
    ];
    for kind in &all {
        match kind {
            EventKind::RequestedSizeChanged { .. }
            | EventKind::PluggedSizeChanged { .. }
            | EventKind::SlotMapped { .. }
            | EventKind::SlotUnmapped { .. }
            | EventKind::ResizeCompleted { .. }
            | EventKind::GuestNotFollowing { .. }
            | EventKind::DeviceBroken { .. }
            | EventKind::VhostUserBackendBroken { .. }
            | EventKind::SystemResetIncomplete { .. }
            | EventKind::MigrationStarted { .. }
            | EventKind::MigrationRound { .. }
            | EventKind::MigrationCompleted { .. }
            | EventKind::MigrationFailed { .. }
            | EventKind::VmStateChanged { .. }
            | EventKind::EventsDropped { .. } => {}
        }
    }
    all
}

#[test]
fn every_event_kind_is_documented_with_its_fields() {
    let doc = flatten(DOC);
    let mut names = BTreeSet::new();
    for kind in every_event_kind() {
        let value = serde_json::to_value(Event {
            seq: 1,
            uptime_ms: 1,
            kind,
        })
        .unwrap();
        let name = value["event"].as_str().unwrap().to_string();
        let mut fields = keys_of(&value);
        for common in ["seq", "uptime_ms", "event"] {
            assert!(fields.remove(common), "{name} lacks {common}");
        }
        let documented = children(
            &doc,
            &format!("components|schemas|EventKinds|properties|{name}|properties"),
        );
        assert_eq!(documented, fields, "fields of {name}");
        names.insert(name);
    }
    assert_eq!(
        flow_list(&doc, "components|schemas|Event|properties|event|enum"),
        names
    );
}

#[test]
fn every_reference_resolves() {
    let doc = flatten(DOC);
    for (key, value) in &doc {
        if key.ends_with("$ref") {
            let target = value
                .strip_prefix("#/")
                .unwrap_or_else(|| panic!("{key}: {value}"))
                .replace('/', "|");
            assert!(
                doc.contains_key(&target),
                "{key} -> {value} resolves to nothing"
            );
        }
    }
}
