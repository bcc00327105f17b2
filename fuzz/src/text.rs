//! Text inputs: HTTP requests through the API's reader and router, and `--mem-device` values.

use std::io::Read;

use api::routes::route;
use api::{ApiError, Command, read_request};
use hostmem::BackingKind;
use vmm::config::MemDeviceConfig;

const MIB: u64 = 1 << 20;
/// Largest body the reader may return (the API's limit).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Statuses the reader and router may answer with.
const CLIENT_ERRORS: [u16; 6] = [400, 404, 405, 408, 413, 431];

/// Hands out the input a few bytes at a time, like a slow client.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.len().min(self.chunk).min(buf.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn check_error(e: &ApiError, what: &str) {
    assert!(
        CLIENT_ERRORS.contains(&e.status),
        "{what} answered {} ({})",
        e.status,
        e.message
    );
}

/// What an `api_request` input came to: `None` when there was no request at all, otherwise the
/// routed command or the status of the error answer.
pub type ApiOutcome = Option<Result<Command, u16>>;

fn check_route(method: &str, path: &str, body: &[u8]) -> Result<Command, u16> {
    match route(method, path, body) {
        Ok(command) => {
            if let Command::GetMemoryDevice { id } | Command::ResizeMemoryDevice { id, .. } =
                &command
            {
                assert!(!id.is_empty() && !id.contains('/'), "routed to id {id:?}");
            }
            Ok(command)
        }
        Err(e) => {
            check_error(&e, "route");
            Err(e.status)
        }
    }
}

/// The `api_request` target. First byte: bit 7 picks the router alone (method, path and body
/// separated by NUL bytes), otherwise the low bits give the read chunk size for the HTTP
/// reader, whose request then goes to the router.
pub fn run_api(data: &[u8]) {
    api_outcome(data);
}

/// [`run_api`], returning what the input came to.
pub fn api_outcome(data: &[u8]) -> ApiOutcome {
    let (&mode, rest) = data.split_first()?;
    if mode & 0x80 != 0 {
        let mut parts = rest.splitn(3, |&b| b == 0);
        let method = String::from_utf8_lossy(parts.next().unwrap_or_default());
        let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
        return Some(check_route(
            &method,
            &path,
            parts.next().unwrap_or_default(),
        ));
    }
    let mut reader = Trickle {
        data: rest,
        chunk: usize::from(mode % 64) + 1,
    };
    match read_request(&mut reader) {
        Ok(Some(request)) => {
            assert!(request.body.len() <= MAX_BODY_BYTES);
            Some(check_route(&request.method, &request.path, &request.body))
        }
        Ok(None) => {
            assert!(rest.is_empty(), "non-empty input read as no request");
            None
        }
        Err(e) => {
            check_error(&e, "read_request");
            Some(Err(e.status))
        }
    }
}

/// The `mem_device_option` target: any UTF-8 string through `MemDeviceConfig::parse`; what
/// it accepts must be a device the VMM can build.
pub fn run_mem_device(data: &[u8]) {
    mem_device_outcome(data);
}

/// [`run_mem_device`], returning the accepted configuration.
pub fn mem_device_outcome(data: &[u8]) -> Option<MemDeviceConfig> {
    let spec = std::str::from_utf8(data).ok()?;
    let config = MemDeviceConfig::parse(spec).ok()?;
    let granule = config.block_size_bytes.unwrap_or(2 * MIB);
    assert!(
        granule.is_power_of_two() && granule >= MIB,
        "{spec}: {config:?}"
    );
    assert!(config.size_bytes > 0, "{spec}: {config:?}");
    assert!(
        config.size_bytes.is_multiple_of(granule.max(128 * MIB)),
        "{spec}: {config:?}"
    );
    assert!(
        config.requested_bytes <= config.size_bytes
            && config.requested_bytes.is_multiple_of(granule),
        "{spec}: {config:?}"
    );
    assert!(
        !config.id.is_empty()
            && config
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{spec}: {config:?}"
    );
    assert_eq!(
        config.backing == BackingKind::Hugetlbfs,
        config.hugetlbfs_dir.is_some(),
        "{spec}: {config:?}"
    );
    Some(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(chunk_mode: u8, head: &str, body: &str) -> Vec<u8> {
        let mut raw = vec![chunk_mode];
        raw.extend_from_slice(
            format!("{head}\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
        );
        raw
    }

    #[test]
    fn a_resize_request_read_in_pieces_routes() {
        let raw = http(
            0x02,
            "PATCH /v1/memory-devices/mem0 HTTP/1.1",
            r#"{"requested_size": "1G"}"#,
        );
        assert_eq!(
            api_outcome(&raw),
            Some(Ok(Command::ResizeMemoryDevice {
                id: "mem0".into(),
                requested_bytes: 1 << 30,
                wait_timeout_ms: None,
            }))
        );
        assert_eq!(api_outcome(b"\x81GET\0/v1/vm\0"), Some(Ok(Command::GetVm)));
    }

    #[test]
    fn bad_requests_get_their_own_status() {
        let patch = "PATCH /v1/memory-devices/mem0 HTTP/1.1";
        assert_eq!(
            api_outcome(&http(0, patch, r#"{"requested_size": "1Q"}"#)),
            Some(Err(400))
        );
        assert_eq!(api_outcome(&http(5, patch, "")), Some(Err(400)));
        assert_eq!(api_outcome(b"\x81GET\0/v1/nothing\0"), Some(Err(404)));
        assert_eq!(api_outcome(b"\x81DELETE\0/v1/vm\0"), Some(Err(405)));
        assert_eq!(api_outcome(b"\x03"), None);
    }

    #[test]
    fn valid_and_invalid_specs_pass_the_checks() {
        let full = mem_device_outcome(b"id=mem0,size=64G,requested=1G,block=4M,slots=fixed")
            .expect("a valid spec is accepted");
        assert_eq!((full.size_bytes, full.requested_bytes), (64 << 30, 1 << 30));
        assert_eq!(
            mem_device_outcome(b"id=m,size=1T").unwrap().size_bytes,
            1 << 40
        );
        assert_eq!(mem_device_outcome(b"id=m,size=64G,requested=65G"), None);
        assert_eq!(mem_device_outcome(b"\xff"), None);
    }
}
