//! The server and client over a real Unix socket, with a fake handler (no KVM).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::client::{Client, request};
use api::server::MAX_CONNECTIONS;
use api::{ApiError, ApiServer, Command, Handler, LineStream, Reply, StreamItem};

/// Records commands; streams lines from a channel for `/v1/events`.
#[derive(Default)]
struct Recorder {
    commands: Mutex<Vec<Command>>,
    streams: Mutex<Vec<Sender<String>>>,
}

struct ChannelStream(Receiver<String>);

impl LineStream for ChannelStream {
    fn next_line(&mut self, timeout: Duration) -> StreamItem {
        match self.0.recv_timeout(timeout) {
            Ok(line) => StreamItem::Line(line),
            Err(RecvTimeoutError::Timeout) => StreamItem::Idle,
            Err(RecvTimeoutError::Disconnected) => StreamItem::End,
        }
    }
}

impl Handler for Recorder {
    fn handle(&self, command: Command) -> Result<Reply, ApiError> {
        self.commands.lock().unwrap().push(command.clone());
        match command {
            Command::ResizeMemoryDevice { id, .. } if id != "mem0" => {
                Err(ApiError::not_found(format!("no memory device '{id}'")))
            }
            Command::ResizeMemoryDevice {
                wait_timeout_ms: Some(_),
                ..
            } => Reply::with_status(504, &serde_json::json!({"error": "guest too slow"})),
            Command::Events { .. } => {
                let (tx, rx) = std::sync::mpsc::channel();
                self.streams.lock().unwrap().push(tx);
                Ok(Reply::Stream(Box::new(ChannelStream(rx))))
            }
            Command::Metrics => Ok(Reply::Text {
                content_type: api::PROMETHEUS_TEXT,
                body: "up 1\n".into(),
            }),
            _ => Reply::ok(&serde_json::json!({"ok": true})),
        }
    }
}

fn start() -> (tempdir::Dir, Arc<Recorder>) {
    let dir = tempdir::Dir::new();
    let server = ApiServer::bind(&dir.socket()).unwrap();
    let recorder = Arc::new(Recorder::default());
    let handler: Arc<dyn Handler> = recorder.clone();
    std::thread::spawn(move || server.serve(handler));
    (dir, recorder)
}

/// Sends raw bytes and returns the raw answer.
fn raw(dir: &tempdir::Dir, bytes: &[u8], shutdown_write: bool) -> String {
    let mut s = UnixStream::connect(dir.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    if shutdown_write {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn resize_reaches_the_handler_and_errors_come_back_as_json() {
    let (dir, recorder) = start();
    let ok = request(
        &dir.socket(),
        "PATCH",
        "/v1/memory-devices/mem0",
        Some(r#"{"requested_size":"4G"}"#),
    )
    .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    let missing = request(
        &dir.socket(),
        "PATCH",
        "/v1/memory-devices/nope",
        Some(r#"{"requested_size":"4G"}"#),
    )
    .unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body, r#"{"error":"no memory device 'nope'"}"#);
    let bad = request(&dir.socket(), "PATCH", "/v1/memory-devices/mem0", Some("{")).unwrap();
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("invalid JSON body"), "{}", bad.body);
    assert_eq!(
        recorder.commands.lock().unwrap().len(),
        2,
        "bad JSON never reaches the VMM"
    );
}

#[test]
fn handler_statuses_and_text_bodies_pass_through() {
    let (dir, _recorder) = start();
    let timeout = request(
        &dir.socket(),
        "PATCH",
        "/v1/memory-devices/mem0",
        Some(r#"{"requested_size":"4G","wait":{"timeout_ms":10}}"#),
    )
    .unwrap();
    assert_eq!(timeout.status, 504);
    let out = raw(&dir, b"GET /metrics HTTP/1.1\r\n\r\n", false);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(
        out.contains("Content-Type: text/plain; version=0.0.4"),
        "{out}"
    );
    assert!(out.ends_with("\r\n\r\nup 1\n"), "{out}");
}

#[test]
fn bad_requests_over_the_wire_get_4xx_and_never_reach_the_handler() {
    let (dir, recorder) = start();
    let big = raw(
        &dir,
        b"PATCH /v1/memory-devices/mem0 HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        false,
    );
    assert!(big.starts_with("HTTP/1.1 413 "), "{big}");
    let half = raw(
        &dir,
        b"PATCH /v1/memory-devices/mem0 HTTP/1.1\r\nContent-Length: 30\r\n\r\n{\"requ",
        true,
    );
    assert!(half.starts_with("HTTP/1.1 400 "), "{half}");
    assert!(half.contains("before the whole body arrived"), "{half}");
    let garbage = raw(&dir, b"\x16\x03\x01 hello\r\n\r\n", false);
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
    let wrong = raw(&dir, b"DELETE /v1/vm HTTP/1.1\r\n\r\n", false);
    assert!(wrong.starts_with("HTTP/1.1 405 "), "{wrong}");
    assert!(recorder.commands.lock().unwrap().is_empty());
}

#[test]
fn a_silent_client_does_not_block_others() {
    let (dir, _recorder) = start();
    let _silent = UnixStream::connect(dir.socket()).unwrap();
    let mut partial = UnixStream::connect(dir.socket()).unwrap();
    partial.write_all(b"GET /v1/vm HTTP/1.1\r\nHost").unwrap();
    let answer = request(&dir.socket(), "GET", "/v1/vm", None).unwrap();
    assert_eq!(answer.status, 200);
}

#[test]
fn event_streams_deliver_lines_as_they_come_while_other_requests_are_served() {
    let (dir, recorder) = start();
    let client = Client::new(&dir.socket());
    let (status, mut lines) = client.stream("/v1/events").unwrap();
    assert_eq!(status, 200);
    // A second subscriber that never reads must not hold anything up.
    let _lazy = raw_stream(&dir);
    while recorder.streams.lock().unwrap().len() < 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let senders = recorder.streams.lock().unwrap().clone();
    for i in 0..3 {
        for tx in &senders {
            let _ = tx.send(format!("{{\"n\":{i}}}"));
        }
    }
    for i in 0..3 {
        assert_eq!(lines.next().unwrap().unwrap(), format!("{{\"n\":{i}}}"));
    }
    assert_eq!(client.request("GET", "/v1/vm", None).unwrap().status, 200);
    // Ending the stream ends the chunked body cleanly.
    recorder.streams.lock().unwrap().clear();
    drop(senders);
    assert!(lines.next().is_none());
}

fn raw_stream(dir: &tempdir::Dir) -> UnixStream {
    let mut s = UnixStream::connect(dir.socket()).unwrap();
    s.write_all(b"GET /v1/events HTTP/1.1\r\n\r\n").unwrap();
    s
}

#[test]
fn too_many_connections_get_503_and_the_slots_come_back() {
    let (dir, _recorder) = start();
    let held: Vec<UnixStream> = (0..MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(dir.socket()).unwrap())
        .collect();
    // The listener accepts in order: once it answered the extra one, all were counted.
    let over = raw(&dir, b"GET /v1/vm HTTP/1.1\r\n\r\n", false);
    assert!(over.starts_with("HTTP/1.1 503 "), "{over}");
    drop(held);
    let mut status = 0;
    for _ in 0..200 {
        status = request(&dir.socket(), "GET", "/v1/vm", None)
            .unwrap()
            .status;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(status, 200);
}

#[test]
fn socket_is_private_and_a_live_socket_is_not_stolen() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, _recorder) = start();
    let mode = std::fs::metadata(dir.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(ApiServer::bind(&dir.socket()).is_err());
    let file = dir.path.join("plain");
    std::fs::write(&file, b"x").unwrap();
    assert!(ApiServer::bind(&file).is_err());
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = tempdir::Dir::new();
    drop(std::os::unix::net::UnixListener::bind(dir.socket()).unwrap());
    assert!(dir.socket().exists());
    let server = ApiServer::bind(&dir.socket()).unwrap();
    assert_eq!(server.path(), dir.socket());
}

mod tempdir {
    use std::path::PathBuf;

    pub struct Dir {
        pub path: PathBuf,
    }

    impl Dir {
        pub fn new() -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "hotmem-api-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }

        pub fn socket(&self) -> PathBuf {
            self.path.join("api.sock")
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
