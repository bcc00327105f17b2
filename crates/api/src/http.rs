//! Just enough HTTP/1.1: one request per connection, bounded sizes, JSON answers.

use std::io::{Read, Write};

use crate::ApiError;

/// Largest accepted request head (request line + headers).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Largest accepted body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, …
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// The body (at most [`MAX_BODY_BYTES`]).
    pub body: Vec<u8>,
}

/// Reads one request; `Ok(None)` when the client closed the connection without sending one.
pub fn read_request(stream: &mut impl Read) -> Result<Option<Request>, ApiError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (head_len, method, path, content_length) = loop {
        let n = stream.read(&mut chunk).map_err(|e| ApiError {
            status: 408,
            message: format!("reading the request failed: {e}"),
        })?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(ApiError::bad_request(
                "connection closed in the middle of the request",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let content_length = content_length(req.headers)?;
                break (
                    len,
                    req.method.unwrap_or_default().to_string(),
                    req.path.unwrap_or_default().to_string(),
                    content_length,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(ApiError {
                    status: 431,
                    message: format!("request head over {MAX_HEAD_BYTES} bytes"),
                });
            }
            Ok(httparse::Status::Partial) => continue,
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "malformed HTTP request: {e}"
                )));
            }
        }
    };
    if content_length > MAX_BODY_BYTES {
        return Err(ApiError {
            status: 413,
            message: format!("body over {MAX_BODY_BYTES} bytes"),
        });
    }
    let mut body = buf.split_off(head_len);
    if body.len() > content_length {
        body.truncate(content_length);
    }
    while body.len() < content_length {
        let n = stream.read(&mut chunk).map_err(|e| ApiError {
            status: 408,
            message: format!("reading the body failed: {e}"),
        })?;
        if n == 0 {
            return Err(ApiError::bad_request(
                "connection closed before the whole body arrived",
            ));
        }
        let want = (content_length - body.len()).min(n);
        body.extend_from_slice(&chunk[..want]);
    }
    Ok(Some(Request { method, path, body }))
}

fn content_length(headers: &[httparse::Header<'_>]) -> Result<usize, ApiError> {
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ApiError::bad_request(
                "chunked bodies are not supported; send Content-Length",
            ));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            return std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| ApiError::bad_request("invalid Content-Length"));
        }
    }
    Ok(0)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Internal Server Error",
    }
}

/// Content type of JSON answers.
pub const JSON: &str = "application/json";
/// Content type of the event stream (one JSON object per line).
pub const NDJSON: &str = "application/x-ndjson";
/// Content type of Prometheus metrics.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes a complete response and closes the exchange.
pub fn write_response(
    stream: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )?;
    stream.flush()
}

/// Starts a chunked 200 response; follow with [`write_chunk`] and [`end_chunks`].
pub fn start_chunked(stream: &mut impl Write, content_type: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
    )?;
    stream.flush()
}

/// Writes one non-empty chunk.
pub fn write_chunk(stream: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    write!(stream, "{:x}\r\n", data.len())?;
    stream.write_all(data)?;
    stream.write_all(b"\r\n")?;
    stream.flush()
}

/// Ends a chunked response.
pub fn end_chunks(stream: &mut impl Write) -> std::io::Result<()> {
    stream.write_all(b"0\r\n\r\n")?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its bytes a few at a time, like a slow client.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(3).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn reads_a_request_sent_in_small_pieces() {
        let raw = b"PATCH /v1/memory-devices/mem0 HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        let req = read_request(&mut Trickle(raw)).unwrap().unwrap();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("PATCH", "/v1/memory-devices/mem0")
        );
        assert_eq!(req.body, b"{\"a\":1}");
    }

    #[test]
    fn oversized_and_truncated_requests_are_refused() {
        let big = format!(
            "GET / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert_eq!(read_request(&mut big.as_bytes()).unwrap_err().status, 413);
        let long_head = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD_BYTES + 10));
        assert_eq!(
            read_request(&mut long_head.as_bytes()).unwrap_err().status,
            431
        );
        let short = b"PUT /v1/vm HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}";
        assert_eq!(read_request(&mut &short[..]).unwrap_err().status, 400);
        assert_eq!(
            read_request(&mut &b"\x00\x01garbage\r\n\r\n"[..])
                .unwrap_err()
                .status,
            400
        );
        assert!(read_request(&mut &b""[..]).unwrap().is_none());
    }
}
