//! The memory table against the Rust virtiofsd (rust-vmm vhost-user-backend: answers a failed
//! request with a non-zero ack). It needs a `virtiofsd` binary, which no Debian package ships:
//! `cargo xtask test` builds one (`cargo install virtiofsd --version '~1.14'` into
//! `target/tools`, with libcap-ng-dev and libseccomp-dev) and names it in `HOTMEM_VIRTIOFSD`.
//! By hand: `HOTMEM_VIRTIOFSD=target/tools/bin/virtiofsd cargo test -p vhost-frontend --test
//! virtiofsd`. Without `HOTMEM_VIRTIOFSD` the tests fail, or are reported skipped with
//! `HOTMEM_ALLOW_SKIP=1` (crate `test-support`).

mod support;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use support::{Daemon, memfd, region, scratch_dir, shared_ram, start_daemon};

use vhost_frontend::{
    AttachConfig, BackendDirtyLog, BackendHealth, LOG_PAGE_BYTES, SharedRegion, TableMode,
    VhostUserDevice, VhostUserMemory, negotiate,
};
use virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress as G, GuestMemoryMmap};

const MIB: u64 = 1 << 20;

/// The environment variable naming the virtiofsd binary.
const VIRTIOFSD_ENV: &str = "HOTMEM_VIRTIOFSD";

fn start_virtiofsd(test: &str) -> Option<(Daemon, UnixStream)> {
    let Ok(binary) = std::env::var(VIRTIOFSD_ENV) else {
        test_support::skip(test, &format!("{VIRTIOFSD_ENV} names no virtiofsd binary"));
        return None;
    };
    let dir = scratch_dir("vfsd", test);
    std::fs::create_dir_all(dir.join("share")).unwrap();
    let sock = dir.join("fs.sock");
    let mut command = Command::new(&binary);
    command
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(dir.join("share"))
        .args(["--sandbox", "none", "--seccomp", "none"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    start_daemon(test, command, dir, &sock)
}

#[test]
fn virtiofsd_table_follows_map_unmap_cycles_and_a_nack_breaks_it() {
    let Some((mut daemon, stream)) =
        start_virtiofsd("virtiofsd_table_follows_map_unmap_cycles_and_a_nack_breaks_it")
    else {
        return;
    };
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

/// A virtio-fs device (hiprio queue 0, request queue 1) on virtiofsd, over 16 MiB of shared
/// "guest" memory the test drives the rings in.
struct FsOnVirtiofsd {
    _daemon: Daemon,
    device: VhostUserDevice,
    ram: Arc<GuestMemoryMmap>,
    _mem: VhostUserMemory,
}

const RAM: u64 = 16 * MIB;
/// Request queue rings.
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
/// FUSE_INIT request and reply buffers.
const REQUEST: u64 = 0x10000;
const REPLY: u64 = 0x11000;

fn fs_on_virtiofsd(test: &str) -> Option<FsOnVirtiofsd> {
    let (daemon, stream) = start_virtiofsd(test)?;
    let mut config = AttachConfig::named("fs0");
    config.max_queue_count = 2;
    let negotiated = negotiate(stream, &config).unwrap();
    let (mut mem, ram) = shared_ram(RAM);
    let device = VhostUserDevice::new(
        &vhost_frontend::VhostUserDeviceConfig {
            name: "fs0".into(),
            kind: vhost_frontend::VhostUserKind::Fs {
                tag: "share".into(),
                request_queues: 1,
            },
            queue_size: 16,
        },
        &negotiated,
        ram.clone(),
    )
    .unwrap();
    mem.attach("fs0", negotiated).unwrap();
    Some(FsOnVirtiofsd {
        _daemon: daemon,
        device,
        ram,
        _mem: mem,
    })
}

/// Request queue (1): FUSE_INIT in (40-byte header + 64-byte init_in), out 16 + 64 bytes.
fn post_fuse_init(ram: &GuestMemoryMmap) {
    let words: [u32; 10] = [104, 26, 7, 0, 1, 0, 0, 0, 0, 0]; // len, FUSE_INIT, unique 7, …
    for (i, w) in words.iter().enumerate() {
        ram.write_obj(*w, G(REQUEST + 4 * i as u64)).unwrap();
    }
    for (i, w) in [7u32, 31, 0x20000, 0].iter().enumerate() {
        ram.write_obj(*w, G(REQUEST + 40 + 4 * i as u64)).unwrap(); // major, minor, readahead, flags
    }
    for (i, (addr, len, flags, next)) in [(REQUEST, 104u32, 1u16, 1u16), (REPLY, 80, 2, 0)]
        .into_iter()
        .enumerate()
    {
        let at = DESC + 16 * i as u64;
        ram.write_obj(addr, G(at)).unwrap();
        ram.write_obj(len, G(at + 8)).unwrap();
        ram.write_obj(flags, G(at + 12)).unwrap();
        ram.write_obj(next, G(at + 14)).unwrap();
    }
    ram.write_obj(0u16, G(AVAIL + 4)).unwrap();
    ram.write_obj(1u16, G(AVAIL + 2)).unwrap();
}

fn activate(device: &mut VhostUserDevice) -> std::sync::mpsc::Receiver<u16> {
    let hiprio = virtio::QueueSetup {
        index: 0,
        size: 16,
        enabled: true,
        desc_table_addr: 0x4000,
        avail_ring_addr: 0x5000,
        used_ring_addr: 0x6000,
    };
    device.ack_features(1 << 32).unwrap();
    device
        .activate_with_queues(&[
            hiprio,
            virtio::QueueSetup {
                index: 1,
                desc_table_addr: DESC,
                avail_ring_addr: AVAIL,
                used_ring_addr: USED,
                ..hiprio
            },
        ])
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    vhost_frontend::spawn_call_relay("fs0", device.call_fds().unwrap(), move |q| {
        let _ = tx.send(q);
    })
    .unwrap();
    rx
}

/// Kicks the request queue and checks virtiofsd's FUSE_INIT reply.
fn serve_fuse_init(fs: &mut FsOnVirtiofsd, calls: &std::sync::mpsc::Receiver<u16>) {
    let ram = &fs.ram;
    let mut queue = <virtio::Queue as virtio::QueueT>::new(16).unwrap();
    fs.device.process_queue(1, &mut queue, &**ram);
    assert_eq!(calls.recv_timeout(Duration::from_secs(10)).unwrap(), 1);
    assert_eq!(ram.read_obj::<u16>(G(USED + 2)).unwrap(), 1, "used idx");
    let out_len = ram.read_obj::<u32>(G(REPLY)).unwrap();
    let error = ram.read_obj::<i32>(G(REPLY + 4)).unwrap();
    let unique = ram.read_obj::<u64>(G(REPLY + 8)).unwrap();
    let major = ram.read_obj::<u32>(G(REPLY + 16)).unwrap();
    assert_eq!(
        (error, unique, major),
        (0, 7, 7),
        "FUSE_INIT reply of {out_len} bytes"
    );
}

/// FUSE_INIT through the virtio-fs device's request queue, served by virtiofsd: the test plays
/// the driver (rings in shared "guest" memory) and the transport (kick, call).
#[test]
fn virtio_fs_device_serves_fuse_init_through_its_rings() {
    let Some(mut fs) = fs_on_virtiofsd("virtio_fs_device_serves_fuse_init_through_its_rings")
    else {
        return;
    };
    let mut tag = [0u8; 40];
    fs.device.read_config(0, &mut tag);
    assert_eq!(&tag[..6], b"share\0");
    assert_eq!(u32::from_le_bytes(tag[36..40].try_into().unwrap()), 1);
    post_fuse_init(&fs.ram);
    let calls = activate(&mut fs.device);
    serve_fuse_init(&mut fs, &calls);
    fs.device.reset();
}

/// virtiofsd 1.14 offers VHOST_F_LOG_ALL and LOG_SHMFD: while logging, its FUSE_INIT reply and
/// used-ring update show up in the dirty log; the request it only read does not.
#[test]
fn virtiofsd_logs_its_fuse_init_reply_in_the_dirty_log() {
    let Some(mut fs) = fs_on_virtiofsd("virtiofsd_logs_its_fuse_init_reply_in_the_dirty_log")
    else {
        return;
    };
    assert_eq!(fs.device.migration_blocker(), None);
    let calls = activate(&mut fs.device);
    let log = BackendDirtyLog::new(RAM).unwrap();
    fs.device.start_logging(&log).unwrap();
    let page = |addr: u64| addr / LOG_PAGE_BYTES;
    let is_set =
        |bits: &[u64], addr: u64| bits[(page(addr) / 64) as usize] & (1 << (page(addr) % 64)) != 0;
    let before = log.take_range(0, RAM).unwrap();
    assert!(
        !is_set(&before, REPLY),
        "reply page dirty before the request"
    );
    post_fuse_init(&fs.ram);
    serve_fuse_init(&mut fs, &calls);
    let dirty = log.take_range(0, RAM).unwrap();
    assert!(is_set(&dirty, REPLY), "reply page logged");
    assert!(is_set(&dirty, USED), "used ring page logged");
    assert!(!is_set(&dirty, REQUEST), "the request was only read");
    fs.device.stop_logging().unwrap();
    assert_eq!(fs.device.stop_rings().unwrap().next_avail_idx, [0, 1]);
}
