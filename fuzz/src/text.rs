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

fn check_route(method: &str, path: &str, body: &[u8]) {
    match route(method, path, body) {
        Ok(Command::GetMemoryDevice { id } | Command::ResizeMemoryDevice { id, .. }) => {
            assert!(!id.is_empty() && !id.contains('/'), "routed to id {id:?}");
        }
        Ok(_) => {}
        Err(e) => check_error(&e, "route"),
    }
}

/// The `api_request` target. First byte: bit 7 picks the router alone (method, path and body
/// separated by NUL bytes), otherwise the low bits give the read chunk size for the HTTP
/// reader, whose request then goes to the router.
pub fn run_api(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 0x80 != 0 {
        let mut parts = rest.splitn(3, |&b| b == 0);
        let method = String::from_utf8_lossy(parts.next().unwrap_or_default());
        let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
        check_route(&method, &path, parts.next().unwrap_or_default());
        return;
    }
    let mut reader = Trickle {
        data: rest,
        chunk: usize::from(mode % 64) + 1,
    };
    match read_request(&mut reader) {
        Ok(Some(request)) => {
            assert!(request.body.len() <= MAX_BODY_BYTES);
            check_route(&request.method, &request.path, &request.body);
        }
        Ok(None) => assert!(rest.is_empty(), "non-empty input read as no request"),
        Err(e) => check_error(&e, "read_request"),
    }
}

/// The `mem_device_option` target: any UTF-8 string through `MemDeviceConfig::parse`; what
/// it accepts must be a device the VMM can build.
pub fn run_mem_device(data: &[u8]) {
    let Ok(spec) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = MemDeviceConfig::parse(spec) else {
        return;
    };
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resize_request_read_in_pieces_routes() {
        let raw = b"\x02PATCH /v1/memory-devices/mem0 HTTP/1.1\r\nContent-Length: 24\r\n\r\n{\"requested_size\": \"1G\"}";
        run_api(raw);
        run_api(b"\x81GET\0/v1/vm\0");
    }

    #[test]
    fn valid_and_invalid_specs_pass_the_checks() {
        run_mem_device(b"id=mem0,size=64G,requested=1G,block=4M,slots=fixed");
        run_mem_device(b"id=m,size=1T");
        run_mem_device(b"id=m,size=64G,requested=65G");
        run_mem_device(b"\xff");
    }
}
