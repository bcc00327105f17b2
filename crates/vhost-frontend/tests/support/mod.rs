//! Shared by the real-backend tests (and, through `#[path]`, the unit tests): shared guest
//! memory in a memfd, regions of it, and a backend daemon started on a Unix socket.

#![allow(dead_code)]

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_frontend::SharedRegion;

/// Where the test pretends its guest memory is mapped.
pub const HOST_BASE: u64 = 0x7f00_0000_0000;

/// A memfd of `size_bytes`.
pub fn memfd(size_bytes: u64) -> Arc<OwnedFd> {
    // SAFETY: memfd_create with a valid C string; the fd is owned right below.
    let raw = unsafe { libc::memfd_create(c"vhost-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(raw >= 0);
    // SAFETY: `raw` is a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ftruncate on the fd just created.
    let ret = unsafe { libc::ftruncate(raw, size_bytes as libc::off_t) };
    assert_eq!(ret, 0);
    Arc::new(fd)
}

/// The region of `fd` at `guest_addr` (its fd offset is the guest address).
pub fn region(fd: &Arc<OwnedFd>, guest_addr: u64, size_bytes: u64) -> SharedRegion {
    SharedRegion {
        guest_addr,
        size_bytes,
        host_addr: HOST_BASE + guest_addr,
        fd: fd.clone(),
        fd_offset_bytes: guest_addr,
    }
}

/// A backend process and its scratch folder, both gone when dropped.
pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh scratch folder for `test`'s daemon `name`.
pub fn scratch_dir(name: &str, test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hotmem-{name}-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `command` (which listens on `sock` inside `dir`) and connects to it. A program that
/// cannot run makes the test fail, or be listed as skipped when skips are allowed.
pub fn start_daemon(
    test: &str,
    mut command: Command,
    dir: PathBuf,
    sock: &Path,
) -> Option<(Daemon, UnixStream)> {
    let program = command.get_program().to_string_lossy().into_owned();
    let child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            test_support::skip(test, &format!("{program} cannot run: {e}"));
            return None;
        }
    };
    let mut daemon = Daemon { child, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            panic!("{program} exited at start: {status}");
        }
        match UnixStream::connect(sock) {
            Ok(s) => return Some((daemon, s)),
            Err(e) if Instant::now() > deadline => panic!("connecting to {}: {e}", sock.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// `size_bytes` of "guest" memory at guest address 0 in a memfd, mapped here, and a memory
/// table holding it (no backend attached yet).
pub fn shared_ram(
    size_bytes: u64,
) -> (
    vhost_frontend::VhostUserMemory,
    Arc<vm_memory::GuestMemoryMmap>,
) {
    use vm_memory::mmap::MmapRegion;
    use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};
    let fd = memfd(size_bytes);
    let file = std::fs::File::from(fd.try_clone().unwrap());
    let mapping = MmapRegion::from_file(FileOffset::new(file, 0), size_bytes as usize).unwrap();
    let host_addr = mapping.as_ptr() as u64;
    let ram = Arc::new(
        GuestMemoryMmap::from_regions(vec![
            GuestRegionMmap::new(mapping, GuestAddress(0)).unwrap(),
        ])
        .unwrap(),
    );
    let mut mem = vhost_frontend::VhostUserMemory::new();
    mem.map(SharedRegion {
        guest_addr: 0,
        size_bytes,
        host_addr,
        fd,
        fd_offset_bytes: 0,
    })
    .unwrap();
    (mem, ram)
}
