//! The router: one `match` from (method, path, body) to a [`Command`].

use crate::ApiError;
use crate::model::{MigrateBody, ResizeBody, SnapshotBody};

/// The longest a resize may wait for the guest (`wait.timeout_ms`).
pub const MAX_WAIT_MS: u64 = 10 * 60 * 1000;

/// What an API request asks the VMM to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `GET /v1/memory-devices`.
    ListMemoryDevices,
    /// `GET /v1/memory-devices/{id}`.
    GetMemoryDevice {
        /// Device id.
        id: String,
    },
    /// `PATCH /v1/memory-devices/{id}`.
    ResizeMemoryDevice {
        /// Device id.
        id: String,
        /// The new requested size in bytes (validated by the device).
        requested_bytes: u64,
        /// Wait up to this long for the guest to reach the size.
        wait_timeout_ms: Option<u64>,
    },
    /// `GET /v1/vm`.
    GetVm,
    /// `PUT /v1/vm/pause`.
    Pause,
    /// `PUT /v1/vm/resume`.
    Resume,
    /// `PUT /v1/vm/shutdown`.
    Shutdown,
    /// `PUT /v1/vm/snapshot` (the VM must be paused).
    Snapshot {
        /// Directory to write the snapshot to.
        destination: String,
    },
    /// `PUT /v1/vm/migrate`.
    Migrate(MigrateBody),
    /// `GET /v1/vm/migration`.
    MigrationStatus,
    /// `PUT /v1/vm/migration/cancel`.
    CancelMigration,
    /// `GET /v1/events[?follow=true|false][&since=SEQ]`.
    Events {
        /// Keep the stream open for new events (default) or end after the retained ones.
        follow: bool,
        /// Only events with a sequence number of at least this.
        since_seq: u64,
    },
    /// `GET /metrics`.
    Metrics,
}

/// Every route the API serves: (method, path pattern). `openapi.yaml` documents exactly these
/// (checked by a test).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/memory-devices"),
    ("GET", "/v1/memory-devices/{id}"),
    ("PATCH", "/v1/memory-devices/{id}"),
    ("GET", "/v1/vm"),
    ("PUT", "/v1/vm/pause"),
    ("PUT", "/v1/vm/resume"),
    ("PUT", "/v1/vm/shutdown"),
    ("PUT", "/v1/vm/snapshot"),
    ("PUT", "/v1/vm/migrate"),
    ("GET", "/v1/vm/migration"),
    ("PUT", "/v1/vm/migration/cancel"),
    ("GET", "/v1/events"),
    ("GET", "/metrics"),
];

/// Turns a request into a command, or says what is wrong with it.
pub fn route(method: &str, target: &str, body: &[u8]) -> Result<Command, ApiError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let params = Query::parse(query)?;
    let no_query = |params: &Query| params.only(&[]);
    let command = match (method, segments.as_slice()) {
        ("GET", ["v1", "memory-devices"]) => Command::ListMemoryDevices,
        ("GET", ["v1", "memory-devices", id]) => Command::GetMemoryDevice { id: device_id(id)? },
        ("PATCH", ["v1", "memory-devices", id]) => {
            let id = device_id(id)?;
            let body: ResizeBody = parse_json(body)?;
            let requested_bytes = body
                .requested_size
                .bytes()
                .map_err(|e| ApiError::bad_request(format!("requested_size: {e}")))?;
            let wait_timeout_ms = match body.wait {
                Some(w) if w.timeout_ms > MAX_WAIT_MS => {
                    return Err(ApiError::bad_request(format!(
                        "wait.timeout_ms {}: at most {MAX_WAIT_MS} (10 minutes)",
                        w.timeout_ms
                    )));
                }
                w => w.map(|w| w.timeout_ms),
            };
            Command::ResizeMemoryDevice {
                id,
                requested_bytes,
                wait_timeout_ms,
            }
        }
        ("GET", ["v1", "vm"]) => Command::GetVm,
        ("PUT", ["v1", "vm", action @ ("pause" | "resume" | "shutdown")]) => {
            expect_empty_body(body)?;
            match *action {
                "pause" => Command::Pause,
                "resume" => Command::Resume,
                _ => Command::Shutdown,
            }
        }
        ("PUT", ["v1", "vm", "snapshot"]) => {
            let body: SnapshotBody = parse_body(body, "{\"destination\": \"/path/to/dir\"}")?;
            if body.destination.trim().is_empty() {
                return Err(ApiError::bad_request(
                    "destination: give the directory to write the snapshot to",
                ));
            }
            Command::Snapshot {
                destination: body.destination,
            }
        }
        ("PUT", ["v1", "vm", "migrate"]) => {
            let body: MigrateBody = parse_body(
                body,
                "{\"destination\": \"tcp:HOST:PORT\", \"max_downtime_ms\": 300}",
            )?;
            check_destination(&body.destination)?;
            Command::Migrate(body)
        }
        ("GET", ["v1", "vm", "migration"]) => Command::MigrationStatus,
        ("PUT", ["v1", "vm", "migration", "cancel"]) => {
            expect_empty_body(body)?;
            Command::CancelMigration
        }
        ("GET", ["v1", "events"]) => {
            params.only(&["follow", "since"])?;
            Command::Events {
                follow: params.bool("follow", true)?,
                since_seq: params.u64("since", 0)?,
            }
        }
        ("GET", ["metrics"]) => Command::Metrics,
        (_, segments) => {
            let known: Vec<(&str, &str)> = ROUTES
                .iter()
                .copied()
                .filter(|(_, pattern)| matches_pattern(pattern, segments))
                .collect();
            if known.is_empty() {
                return Err(ApiError::not_found(format!(
                    "no route {path}; known routes: {}",
                    ROUTES
                        .iter()
                        .map(|(m, p)| format!("{m} {p}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let allowed: Vec<&str> = known.iter().map(|(m, _)| *m).collect();
            return Err(ApiError::method_not_allowed(format!(
                "{method} is not allowed on {path}; use {}",
                allowed.join(" or ")
            )));
        }
    };
    if !matches!(command, Command::Events { .. }) {
        no_query(&params)?;
    }
    Ok(command)
}

fn matches_pattern(pattern: &str, segments: &[&str]) -> bool {
    let parts: Vec<&str> = pattern.split('/').skip(1).collect();
    parts.len() == segments.len()
        && parts
            .iter()
            .zip(segments)
            .all(|(p, s)| p.starts_with('{') || p == s)
}

fn device_id(segment: &str) -> Result<String, ApiError> {
    if segment.is_empty()
        || segment.len() > 64
        || !segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::bad_request(format!(
            "device id '{segment}': use letters, digits, '-' or '_' (at most 64)"
        )));
    }
    Ok(segment.to_string())
}

fn expect_empty_body(body: &[u8]) -> Result<(), ApiError> {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed == "{}" {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "this request takes no body; send none or {}",
        ))
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "missing JSON body, e.g. {\"requested_size\": \"4G\"}",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid JSON body: {e}; expected {{\"requested_size\": SIZE, \"wait\": {{\"timeout_ms\": N}}}} (wait optional)"
        ))
    })
}

/// A JSON body of type `T`; errors show `example`.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], example: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!(
            "missing JSON body, e.g. {example}"
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}; expected {example}")))
}

/// `key=value&…` of a request target.
struct Query<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Query<'a> {
    fn parse(query: &'a str) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(ApiError::bad_request(format!(
                    "query parameter '{key}' given twice"
                )));
            }
            pairs.push((key, value));
        }
        Ok(Query(pairs))
    }

    fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !known.contains(k)) {
            None => Ok(()),
            Some((key, _)) if known.is_empty() => Err(ApiError::bad_request(format!(
                "unknown query parameter '{key}': this route takes none"
            ))),
            Some((key, _)) => Err(ApiError::bad_request(format!(
                "unknown query parameter '{key}': expected {}",
                known.join(" or ")
            ))),
        }
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some("true" | "1" | "") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(ApiError::bad_request(format!(
                "{key}={v}: expected true or false"
            ))),
        }
    }

    fn u64(&self, key: &str, default: u64) -> Result<u64, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                ApiError::bad_request(format!("{key}={v}: expected a non-negative integer"))
            }),
        }
    }
}

/// `tcp:HOST:PORT` or `unix:PATH`.
fn check_destination(destination: &str) -> Result<(), ApiError> {
    let ok = match destination.split_once(':') {
        Some(("tcp", rest)) => rest
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
        Some(("unix", path)) => !path.is_empty(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "destination {destination:?}: expected tcp:HOST:PORT or unix:PATH"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resize(body: &str) -> Result<Command, ApiError> {
        route("PATCH", "/v1/memory-devices/mem0", body.as_bytes())
    }

    #[test]
    fn resize_accepts_bytes_and_human_sizes() {
        assert_eq!(
            resize(r#"{"requested_size": 1073741824}"#).unwrap(),
            Command::ResizeMemoryDevice {
                id: "mem0".into(),
                requested_bytes: 1 << 30,
                wait_timeout_ms: None,
            }
        );
        assert_eq!(
            resize(r#"{"requested_size": "4G", "wait": {"timeout_ms": 30000}}"#).unwrap(),
            Command::ResizeMemoryDevice {
                id: "mem0".into(),
                requested_bytes: 4 << 30,
                wait_timeout_ms: Some(30000),
            }
        );
    }

    #[test]
    fn resize_with_unknown_fields_or_bad_json_is_a_bad_request_saying_what_to_send() {
        for (body, says) in [
            (
                r#"{"requested_size": "4G", "extra": 1}"#,
                "unknown field `extra`",
            ),
            (
                r#"{"requested_size": "4Q"}"#,
                "requested_size: invalid size '4Q'",
            ),
            (r#"{"requested_size": -1}"#, "invalid JSON body"),
            (
                r#"{"requested_size": 1, "wait": {}}"#,
                "missing field `timeout_ms`",
            ),
            (
                r#"{"requested_size": 1, "wait": {"timeout_ms": 600001}}"#,
                "at most 600000",
            ),
            ("not json", "expected {\"requested_size\""),
            ("", "missing JSON body"),
        ] {
            let e = resize(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains(says), "{body}: {}", e.message);
        }
    }

    #[test]
    fn wrong_methods_name_the_allowed_ones_and_unknown_paths_list_the_routes() {
        let e = route("DELETE", "/v1/memory-devices/mem0", b"").unwrap_err();
        assert_eq!(e.status, 405);
        assert!(e.message.contains("use GET or PATCH"), "{}", e.message);
        assert_eq!(route("POST", "/v1/vm", b"").unwrap_err().status, 405);
        assert_eq!(route("GET", "/v1/vm/pause", b"").unwrap_err().status, 405);
        assert_eq!(route("POST", "/metrics", b"").unwrap_err().status, 405);
        let e = route("GET", "/v2/vm", b"").unwrap_err();
        assert_eq!(e.status, 404);
        assert!(e.message.contains("GET /v1/events"), "{}", e.message);
        assert_eq!(route("GET", "/", b"").unwrap_err().status, 404);
        assert_eq!(route("PUT", "/v1/vm/explode", b"").unwrap_err().status, 404);
    }

    #[test]
    fn bad_device_ids_and_bodies_on_bodiless_routes_are_refused() {
        assert_eq!(
            route("GET", "/v1/memory-devices/a%20b", b"")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(route("PUT", "/v1/vm/pause", b"{}").unwrap(), Command::Pause);
        let e = route("PUT", "/v1/vm/pause", br#"{"now": true}"#).unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn events_take_follow_and_since_and_nothing_else() {
        assert_eq!(
            route("GET", "/v1/events", b"").unwrap(),
            Command::Events {
                follow: true,
                since_seq: 0
            }
        );
        assert_eq!(
            route("GET", "/v1/events?follow=false&since=7", b"").unwrap(),
            Command::Events {
                follow: false,
                since_seq: 7
            }
        );
        for target in [
            "/v1/events?follow=maybe",
            "/v1/events?since=-1",
            "/v1/events?colour=red",
            "/v1/events?since=1&since=2",
            "/v1/vm?follow=true",
        ] {
            assert_eq!(
                route("GET", target, b"").unwrap_err().status,
                400,
                "{target}"
            );
        }
    }

    #[test]
    fn every_listed_route_is_served() {
        for (method, pattern) in ROUTES {
            let path = pattern.replace("{id}", "mem0");
            let body: &[u8] = match (*method, *pattern) {
                ("PATCH", _) => br#"{"requested_size": 0}"#,
                (_, "/v1/vm/snapshot") => br#"{"destination": "/tmp/snap"}"#,
                (_, "/v1/vm/migrate") => br#"{"destination": "tcp:127.0.0.1:4444"}"#,
                _ => b"",
            };
            assert!(route(method, &path, body).is_ok(), "{method} {path}");
        }
    }

    #[test]
    fn migrate_takes_a_tcp_or_unix_destination_and_optional_limits() {
        let migrate = |body: &str| route("PUT", "/v1/vm/migrate", body.as_bytes());
        assert_eq!(
            migrate(r#"{"destination": "tcp:10.0.0.2:4444", "max_downtime_ms": 50}"#).unwrap(),
            Command::Migrate(MigrateBody {
                destination: "tcp:10.0.0.2:4444".into(),
                max_downtime_ms: Some(50),
                max_bandwidth_bytes_per_s: None,
                auto_converge: None,
                max_throttle_percent: None,
            })
        );
        assert!(migrate(r#"{"destination": "unix:/run/m.sock"}"#).is_ok());
        for bad in [
            r#"{"destination": "10.0.0.2:4444"}"#,
            r#"{"destination": "tcp:10.0.0.2"}"#,
            r#"{"destination": "tcp::4444"}"#,
            r#"{"destination": "unix:"}"#,
            r#"{"destination": "tcp:h:1", "downtime": 5}"#,
            r#"{}"#,
        ] {
            let e = migrate(bad).unwrap_err();
            assert_eq!(e.status, 400, "{bad}: {}", e.message);
        }
        assert_eq!(
            route("PUT", "/v1/vm/migration/cancel", b"").unwrap(),
            Command::CancelMigration
        );
        assert_eq!(
            route("GET", "/v1/vm/migration", b"").unwrap(),
            Command::MigrationStatus
        );
    }

    #[test]
    fn snapshot_takes_a_destination_and_nothing_else() {
        let snap = |body: &str| route("PUT", "/v1/vm/snapshot", body.as_bytes());
        assert_eq!(
            snap(r#"{"destination": "/var/snap/1"}"#).unwrap(),
            Command::Snapshot {
                destination: "/var/snap/1".into()
            }
        );
        for (body, says) in [
            ("", "missing JSON body, e.g. {\"destination\""),
            (r#"{"destination": ""}"#, "destination: give the directory"),
            (
                r#"{"destination": "/x", "resume": true}"#,
                "unknown field `resume`",
            ),
            (r#"{"dest": "/x"}"#, "unknown field `dest`"),
        ] {
            let e = snap(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains(says), "{body}: {}", e.message);
        }
        assert_eq!(
            route("GET", "/v1/vm/snapshot", b"").unwrap_err().status,
            405
        );
    }
}
