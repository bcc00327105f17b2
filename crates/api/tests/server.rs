//! The server over a real Unix socket, with a fake handler.

use std::sync::{Arc, Mutex};

use api::client::request;
use api::{ApiError, ApiServer, Command, Handler};

#[derive(Default)]
struct Recorder(Mutex<Vec<Command>>);

impl Handler for Recorder {
    fn handle(&self, command: Command) -> Result<serde_json::Value, ApiError> {
        self.0.lock().unwrap().push(command.clone());
        match command {
            Command::ResizeMemoryDevice { id, .. } if id != "mem0" => {
                Err(ApiError::not_found(format!("no memory device '{id}'")))
            }
            _ => Ok(serde_json::json!({"ok": true})),
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
    assert!(
        missing.body.contains("no memory device 'nope'"),
        "{}",
        missing.body
    );
    let bad = request(&dir.socket(), "PATCH", "/v1/memory-devices/mem0", Some("{")).unwrap();
    assert_eq!(bad.status, 400);
    assert_eq!(
        recorder.0.lock().unwrap().len(),
        2,
        "bad JSON never reaches the VMM"
    );
}

#[test]
fn a_silent_client_does_not_block_others() {
    let (dir, _recorder) = start();
    let _silent = std::os::unix::net::UnixStream::connect(dir.socket()).unwrap();
    let answer = request(&dir.socket(), "GET", "/v1/vm", None).unwrap();
    assert_eq!(answer.status, 200);
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
