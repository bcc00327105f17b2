//! The API server: a Unix socket (mode 0600), one short-lived thread per connection.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::ApiError;
use crate::http::{read_request, write_response};
use crate::model::ErrorBody;
use crate::routes::{Command, route};

/// How long a client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Carries out commands; implemented by the VMM (and by fakes in tests).
pub trait Handler: Send + Sync + 'static {
    /// Carries out `command`, answering a JSON value or an error.
    fn handle(&self, command: Command) -> Result<serde_json::Value, ApiError>;
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
        for stream in self.listener.incoming() {
            let Ok(stream) = stream else { continue };
            let handler = handler.clone();
            // One thread per connection: a slow client never blocks the others.
            let spawned = std::thread::Builder::new()
                .name("api-conn".into())
                .spawn(move || serve_connection(stream, handler.as_ref()));
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

fn serve_connection(mut stream: UnixStream, handler: &dyn Handler) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let (status, body) = match answer(&mut stream, handler) {
        Ok(None) => return,
        Ok(Some(value)) => (200, value.to_string()),
        Err(e) => (
            e.status,
            serde_json::to_string(&ErrorBody { error: e.message }).unwrap_or_default(),
        ),
    };
    if let Err(e) = write_response(&mut stream, status, &body) {
        log::debug!("API: client went away before the answer: {e}");
    }
}

fn answer(
    stream: &mut UnixStream,
    handler: &dyn Handler,
) -> Result<Option<serde_json::Value>, ApiError> {
    let Some(request) = read_request(stream)? else {
        return Ok(None);
    };
    let command = route(&request.method, &request.path, &request.body)?;
    handler.handle(command).map(Some)
}
