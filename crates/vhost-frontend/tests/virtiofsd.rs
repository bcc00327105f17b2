//! The memory table against the Rust virtiofsd (rust-vmm vhost-user-backend: answers a failed
//! request with a non-zero ack). Ignored by default: it needs a `virtiofsd` binary, which no
//! Debian package ships (`cargo install virtiofsd --version 1.14.0`, with libcap-ng-dev and
//! libseccomp-dev). Run with `HOTMEM_VIRTIOFSD=/path/to/virtiofsd cargo test -p vhost-frontend
//! --test virtiofsd -- --ignored`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_frontend::{
    AttachConfig, BackendHealth, SharedRegion, TableMode, VhostUserMemory, negotiate,
};

const MIB: u64 = 1 << 20;
const HOST_BASE: u64 = 0x7f00_0000_0000;

struct Daemon {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_virtiofsd(test: &str) -> (Daemon, UnixStream) {
    let binary = std::env::var("HOTMEM_VIRTIOFSD").unwrap_or_else(|_| "virtiofsd".into());
    let dir = std::env::temp_dir().join(format!("hotmem-vfsd-{}-{test}", std::process::id()));
    std::fs::create_dir_all(dir.join("share")).unwrap();
    let sock = dir.join("fs.sock");
    let child = Command::new(&binary)
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(dir.join("share"))
        .args(["--sandbox", "none", "--seccomp", "none"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{binary}: {e}"));
    let mut daemon = Daemon { child, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            panic!("virtiofsd exited at start: {status}");
        }
        match UnixStream::connect(&sock) {
            Ok(s) => return (daemon, s),
            Err(e) if Instant::now() > deadline => panic!("{}: {e}", sock.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn memfd(size_bytes: u64) -> Arc<OwnedFd> {
    // SAFETY: memfd_create with a valid C string; the fd is owned right below.
    let raw = unsafe { libc::memfd_create(c"vfsd-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(raw >= 0);
    // SAFETY: `raw` is a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ftruncate on the fd just created.
    let ret = unsafe { libc::ftruncate(raw, size_bytes as libc::off_t) };
    assert_eq!(ret, 0);
    Arc::new(fd)
}

fn region(fd: &Arc<OwnedFd>, guest_addr: u64, size_bytes: u64) -> SharedRegion {
    SharedRegion {
        guest_addr,
        size_bytes,
        host_addr: HOST_BASE + guest_addr,
        fd: fd.clone(),
        fd_offset_bytes: guest_addr,
    }
}

#[test]
#[ignore = "needs a virtiofsd binary (cargo install virtiofsd); see the file's doc"]
fn virtiofsd_table_follows_map_unmap_cycles_and_a_nack_breaks_it() {
    let (mut daemon, stream) = start_virtiofsd("cycles");
    let negotiated = negotiate(stream, &AttachConfig::named("fs0")).unwrap();
    assert_eq!(negotiated.mode, TableMode::MemSlots { max_slots: 509 });
    let fd = memfd(512 * MIB);
    let mut mem = VhostUserMemory::new();
    mem.map(region(&fd, 0, 32 * MIB)).unwrap();
    let id = mem.attach("fs0", negotiated).unwrap();
    for round in 0..3u64 {
        for i in 0..100 {
            mem.map(region(&fd, 32 * MIB + i * 2 * MIB, 2 * MIB))
                .unwrap();
        }
        for i in (0..100).filter(|i| round == 2 || i % 3 != 0) {
            mem.unmap(&region(&fd, 32 * MIB + i * 2 * MIB, 2 * MIB).key())
                .unwrap();
        }
        if round < 2 {
            for i in (0..100).filter(|i| i % 3 == 0) {
                mem.unmap(&region(&fd, 32 * MIB + i * 2 * MIB, 2 * MIB).key())
                    .unwrap();
            }
        }
        let mapped: Vec<_> = mem.mapped().map(SharedRegion::key).collect();
        assert_eq!(mem.backend_regions(id).unwrap(), mapped);
    }
    assert_eq!(mem.status()[0].health, BackendHealth::Ready);
    assert!(daemon.child.try_wait().unwrap().is_none());

    // A region the backend cannot map (a pipe is no mappable file): rust-vmm nacks it, the
    // plug fails and the backend is broken; the table goes on.
    let (read_end, _write_end) = std::io::pipe().unwrap();
    let pipe = Arc::new(OwnedFd::from(read_end));
    let err = mem.map(region(&pipe, 64 * MIB, 2 * MIB)).unwrap_err();
    assert!(err.to_string().contains("ADD_MEM_REG"), "{err}");
    assert!(matches!(
        mem.status()[0].health,
        BackendHealth::Broken { .. }
    ));
    mem.map(region(&fd, 64 * MIB, 2 * MIB)).unwrap();
}
