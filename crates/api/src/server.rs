//! The API server: a Unix socket (mode 0600), one short-lived thread per connection.
//!
//! A client gets [`REQUEST_DEADLINE`] to send its whole request and [`CLIENT_TIMEOUT`] per
//! write of the answer; at most [`MAX_CONNECTIONS`] are served at once (the rest get 503), so
//! a slow, silent or half-closed client only ever holds its own thread.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::ApiError;
use crate::http::{
    JSON, NDJSON, end_chunks, read_request, start_chunked, write_chunk, write_response,
};
use crate::model::ErrorBody;
use crate::routes::{Command, route};

/// How long one write of the answer may block (a client that stops reading is dropped).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send its whole request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once (event streams included).
pub const MAX_CONNECTIONS: usize = 64;
/// How often an idle event stream checks whether its client hung up.
const STREAM_POLL: Duration = Duration::from_millis(500);

/// What a handler answers.
pub enum Reply {
    /// A JSON body with a status (200 for success; e.g. 504 for a resize that timed out).
    Json {
        /// HTTP status.
        status: u16,
        /// The body.
        body: serde_json::Value,
    },
    /// A text body (e.g. Prometheus metrics).
    Text {
        /// `Content-Type`.
        content_type: &'static str,
        /// The body.
        body: String,
    },
    /// Newline-delimited JSON sent as it comes, until the stream ends or the client leaves.
    Stream(Box<dyn LineStream>),
}

impl Reply {
    /// 200 with `value` serialised.
    pub fn ok<T: serde::Serialize>(value: &T) -> Result<Reply, ApiError> {
        Self::with_status(200, value)
    }

    /// `status` with `value` serialised.
    pub fn with_status<T: serde::Serialize>(status: u16, value: &T) -> Result<Reply, ApiError> {
        Ok(Reply::Json {
            status,
            body: serde_json::to_value(value).map_err(|e| ApiError::internal(e.to_string()))?,
        })
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Json { status, body } => write!(f, "Json({status}, {body})"),
            Reply::Text { body, .. } => write!(f, "Text({} bytes)", body.len()),
            Reply::Stream(_) => write!(f, "Stream"),
        }
    }
}

/// What a stream has next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// One line (without its newline).
    Line(String),
    /// Nothing arrived within the timeout.
    Idle,
    /// The stream is over.
    End,
}

/// A source of lines for a streaming answer.
pub trait LineStream: Send {
    /// The next line, waiting at most `timeout`.
    fn next_line(&mut self, timeout: Duration) -> StreamItem;
}

/// Carries out commands; implemented by the VMM (and by fakes in tests).
pub trait Handler: Send + Sync + 'static {
    /// Carries out `command`.
    fn handle(&self, command: Command) -> Result<Reply, ApiError>;
}

/// A bound API socket.
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ApiServer {
    /// Binds `path` with mode 0600. A stale socket (nobody listening) is replaced; anything else
    /// at that path is refused.
    pub fn bind(path: &Path) -> io::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; choose another --api-socket",
                        path.display()
                    ),
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running VMM", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        // SAFETY: umask only changes this process's file-creation mask; restored right after.
        let old = unsafe { libc::umask(0o077) };
        let listener = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = listener?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ApiServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections forever on the calling thread (run it on its own thread).
    pub fn serve(self, handler: Arc<dyn Handler>) {
        let active = Arc::new(AtomicUsize::new(0));
        for stream in self.listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::AcqRel);
                // Take in what the client sent (closing on unread data would reset the
                // connection before it reads the answer), waiting briefly at most.
                let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                let _ = stream.read(&mut [0u8; 4096]);
                let _ = write_error(
                    &mut stream,
                    &ApiError {
                        status: 503,
                        message: format!(
                            "{MAX_CONNECTIONS} connections are open already; close one and retry"
                        ),
                    },
                );
                continue;
            }
            let handler = handler.clone();
            let slot = ConnectionSlot(active.clone());
            // One thread per connection: a slow client never blocks the others.
            let spawned = std::thread::Builder::new()
                .name("api-conn".into())
                .spawn(move || {
                    sandbox::enter_or_abort(sandbox::ThreadKind::ApiConnection);
                    let _slot = slot;
                    serve_connection(stream, handler.as_ref());
                });
            if let Err(e) = spawned {
                log::warn!("API: cannot start a connection thread: {e}");
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Frees a connection slot when the connection's thread ends.
struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads with a deadline for the whole request, not just per read.
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the request took over {} s", REQUEST_DEADLINE.as_secs()),
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

fn serve_connection(mut stream: UnixStream, handler: &dyn Handler) {
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let reader = DeadlineReader {
        stream: &stream,
        deadline: Instant::now() + REQUEST_DEADLINE,
    };
    let result = answer(reader, handler);
    let written = match result {
        Ok(None) => return,
        Ok(Some(Reply::Json { status, body })) => {
            write_response(&mut stream, status, JSON, &body.to_string())
        }
        Ok(Some(Reply::Text { content_type, body })) => {
            write_response(&mut stream, 200, content_type, &body)
        }
        Ok(Some(Reply::Stream(lines))) => stream_lines(&mut stream, lines),
        Err(e) => write_error(&mut stream, &e),
    };
    if let Err(e) = written {
        log::debug!("API: client went away before the answer: {e}");
    }
}

fn write_error(stream: &mut UnixStream, e: &ApiError) -> io::Result<()> {
    let body = serde_json::to_string(&ErrorBody {
        error: e.message.clone(),
        device: None,
    })
    .unwrap_or_default();
    write_response(stream, e.status, JSON, &body)
}

fn answer(
    mut reader: DeadlineReader<'_>,
    handler: &dyn Handler,
) -> Result<Option<Reply>, ApiError> {
    let Some(request) = read_request(&mut reader)? else {
        return Ok(None);
    };
    let command = route(&request.method, &request.path, &request.body)?;
    handler.handle(command).map(Some)
}

/// Sends lines as chunks until the stream ends, the client hangs up or stops reading.
fn stream_lines(stream: &mut UnixStream, mut lines: Box<dyn LineStream>) -> io::Result<()> {
    start_chunked(stream, NDJSON)?;
    loop {
        match lines.next_line(STREAM_POLL) {
            StreamItem::Line(mut line) => {
                line.push('\n');
                write_chunk(stream, line.as_bytes())?;
            }
            StreamItem::Idle => {
                if peer_hung_up(stream) {
                    return Ok(());
                }
            }
            StreamItem::End => return end_chunks(stream),
        }
    }
}

/// Whether the client closed its end completely (a half-closed client still reads).
fn peer_hung_up(stream: &UnixStream) -> bool {
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: `fd` is a valid pollfd for an open socket owned by `stream`; poll with a zero
    // timeout only writes `revents`.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}
