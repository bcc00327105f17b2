//! The router: one `match` from (method, path, body) to a [`Command`].

use crate::ApiError;
use crate::model::ResizeBody;

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
    },
    /// `GET /v1/vm`.
    GetVm,
    /// `PUT /v1/vm/shutdown`.
    Shutdown,
}

/// Every route the API serves: (method, path pattern). Kept beside [`route`] for documentation
/// checks.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/memory-devices"),
    ("GET", "/v1/memory-devices/{id}"),
    ("PATCH", "/v1/memory-devices/{id}"),
    ("GET", "/v1/vm"),
    ("PUT", "/v1/vm/shutdown"),
];

/// Turns a request into a command, or says what is wrong with it.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<Command, ApiError> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (method, segments.as_slice()) {
        ("GET", ["v1", "memory-devices"]) => Ok(Command::ListMemoryDevices),
        ("GET", ["v1", "memory-devices", id]) => {
            Ok(Command::GetMemoryDevice { id: id.to_string() })
        }
        ("PATCH", ["v1", "memory-devices", id]) => {
            let body: ResizeBody = parse_json(body)?;
            let requested_bytes = body.requested_size.bytes().map_err(ApiError::bad_request)?;
            Ok(Command::ResizeMemoryDevice {
                id: id.to_string(),
                requested_bytes,
            })
        }
        ("GET", ["v1", "vm"]) => Ok(Command::GetVm),
        ("PUT", ["v1", "vm", "shutdown"]) => Ok(Command::Shutdown),
        (
            _,
            ["v1", "memory-devices"]
            | ["v1", "memory-devices", _]
            | ["v1", "vm"]
            | ["v1", "vm", "shutdown"],
        ) => Err(ApiError::method_not_allowed(format!(
            "{method} is not allowed on {path}"
        ))),
        _ => Err(ApiError::not_found(format!(
            "no route {path}; known routes: {}",
            ROUTES
                .iter()
                .map(|(m, p)| format!("{m} {p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "missing JSON body, e.g. {\"requested_size\": \"4G\"}",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_accepts_bytes_and_human_sizes() {
        let c = route(
            "PATCH",
            "/v1/memory-devices/mem0",
            br#"{"requested_size": 1073741824}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            Command::ResizeMemoryDevice {
                id: "mem0".into(),
                requested_bytes: 1 << 30
            }
        );
        let c = route(
            "PATCH",
            "/v1/memory-devices/mem0",
            br#"{"requested_size": "4G"}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            Command::ResizeMemoryDevice {
                id: "mem0".into(),
                requested_bytes: 4 << 30
            }
        );
    }

    #[test]
    fn resize_with_unknown_fields_or_bad_json_is_a_bad_request() {
        for body in [
            &br#"{"requested_size": "4G", "extra": 1}"#[..],
            br#"{"requested_size": "4Q"}"#,
            br#"{"requested_size": -1}"#,
            br#"not json"#,
            b"",
        ] {
            let e = route("PATCH", "/v1/memory-devices/mem0", body).unwrap_err();
            assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn wrong_methods_and_unknown_paths_are_refused() {
        assert_eq!(
            route("DELETE", "/v1/memory-devices/mem0", b"")
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(route("POST", "/v1/vm", b"").unwrap_err().status, 405);
        assert_eq!(route("GET", "/v2/vm", b"").unwrap_err().status, 404);
        assert_eq!(route("GET", "/", b"").unwrap_err().status, 404);
    }

    #[test]
    fn every_documented_route_is_served() {
        for (method, pattern) in ROUTES {
            let path = pattern.replace("{id}", "mem0");
            let body: &[u8] = if *method == "PATCH" {
                br#"{"requested_size": 0}"#
            } else {
                b""
            };
            assert!(route(method, &path, body).is_ok(), "{method} {path}");
        }
    }
}
