//! A minimal client for the API socket (used by `hotmem-ctl` and tests).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ClientError;

/// How long [`request`] waits for an answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// An answer: HTTP status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The body (chunked bodies are joined).
    pub body: String,
}

/// A client for one API socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of `socket` that waits up to [`DEFAULT_TIMEOUT`] for answers.
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client waiting up to `timeout` for each answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one request and reads the whole answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Answer, ClientError> {
        let (status, mut reader) = self.send(method, path, body)?;
        let mut raw = Vec::new();
        reader.read_to_end(&mut raw)?;
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&raw).into_owned(),
        })
    }

    /// Opens a streaming `GET` (e.g. `/v1/events`): the status and the body's lines as they
    /// arrive. Reads block without a timeout.
    pub fn stream(&self, path: &str) -> Result<(u16, Lines), ClientError> {
        let (status, reader) = self.send("GET", path, None)?;
        reader.stream.set_read_timeout(None)?;
        Ok((status, Lines(BufReader::new(reader))))
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, BodyReader), ClientError> {
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
                path: self.socket.display().to_string(),
                source,
            })?;
        stream.set_read_timeout(Some(self.timeout))?;
        let body = body.unwrap_or("");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: hotmem\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                return Err(ClientError::Malformed("answer head too long".into()));
            }
            if stream.read(&mut byte)? == 0 {
                return Err(ClientError::Malformed("truncated answer".into()));
            }
            head.push(byte[0]);
        }
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(ClientError::Malformed("truncated answer".into()));
            }
            Err(e) => return Err(ClientError::Malformed(e.to_string())),
        }
        let chunked = response.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("transfer-encoding")
                && String::from_utf8_lossy(h.value)
                    .to_ascii_lowercase()
                    .contains("chunked")
        });
        let status = response.code.unwrap_or(0);
        Ok((
            status,
            BodyReader {
                stream,
                chunked,
                chunk_left: 0,
                done: false,
            },
        ))
    }
}

/// Sends one request to `socket` and reads the whole answer.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<Answer, ClientError> {
    Client::new(socket).request(method, path, body)
}

/// Reads an answer body, undoing chunked transfer encoding.
#[derive(Debug)]
pub struct BodyReader {
    stream: UnixStream,
    chunked: bool,
    chunk_left: usize,
    done: bool,
}

impl BodyReader {
    fn read_line_raw(&mut self) -> std::io::Result<String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if line.len() > 64 {
                return Err(bad_chunk("chunk size line too long"));
            }
            if self.stream.read(&mut byte)? == 0 {
                return Err(bad_chunk("stream ended inside a chunk header"));
            }
            line.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&line[..line.len() - 2]).into_owned())
    }
}

fn bad_chunk(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.chunked {
            return self.stream.read(buf);
        }
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.chunk_left == 0 {
            let line = self.read_line_raw()?;
            let size = line.split(';').next().unwrap_or("").trim();
            self.chunk_left =
                usize::from_str_radix(size, 16).map_err(|_| bad_chunk("invalid chunk size"))?;
            if self.chunk_left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = self.chunk_left.min(buf.len());
        let n = self.stream.read(&mut buf[..want])?;
        if n == 0 {
            return Err(bad_chunk("stream ended inside a chunk"));
        }
        self.chunk_left -= n;
        if self.chunk_left == 0 {
            let mut crlf = [0u8; 2];
            self.stream.read_exact(&mut crlf)?;
        }
        Ok(n)
    }
}

/// The lines of a streamed body.
#[derive(Debug)]
pub struct Lines(BufReader<BodyReader>);

impl Iterator for Lines {
    type Item = std::io::Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = String::new();
        match self.0.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => {
                let trimmed = line.trim_end_matches(['\n', '\r']).to_string();
                Some(Ok(trimmed))
            }
            Err(e) => Some(Err(e)),
        }
    }
}
