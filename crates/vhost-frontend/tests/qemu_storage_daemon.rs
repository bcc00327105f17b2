//! The memory table against a real backend: qemu-storage-daemon's vhost-user-blk export
//! (libvhost-user). Needs `qemu-storage-daemon` on PATH; without it the test fails unless
//! skips are allowed (`HOTMEM_ALLOW_SKIP=1`).

mod support;

use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Daemon, memfd, region, scratch_dir, shared_ram, start_daemon};

use vhost::vhost_user::VhostUserFrontend;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost_frontend::{
    AttachConfig, BackendHealth, SharedRegion, TableMode, VhostUserMemory,
    VhostUserProtocolFeatures, negotiate,
};

const MIB: u64 = 1 << 20;

fn start_qsd(test: &str) -> Option<(Daemon, UnixStream)> {
    let dir = scratch_dir("qsd", test);
    let sock = dir.join("blk.sock");
    let mut command = Command::new("qemu-storage-daemon");
    command
        .args([
            "--blockdev",
            "driver=null-co,node-name=n0,size=67108864,read-zeroes=on",
            "--export",
            &format!(
                "type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path={}",
                sock.display()
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    start_daemon(test, command, dir, &sock)
}

fn median_us(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

#[test]
fn qemu_storage_daemon_table_follows_many_map_unmap_cycles() {
    let test = "qemu_storage_daemon_table_follows_many_map_unmap_cycles";
    let Some((mut daemon, stream)) = start_qsd(test) else {
        return;
    };
    let mut config = AttachConfig::named("disk0");
    config.extra_protocol_features = VhostUserProtocolFeatures::CONFIG;
    let negotiated = negotiate(stream, &config).unwrap();
    assert!(
        matches!(negotiated.mode, TableMode::MemSlots { max_slots } if max_slots >= 32),
        "{:?}",
        negotiated.mode
    );
    // The virtio-blk config space comes from the backend: capacity in 512-byte sectors.
    let mut frontend = negotiated.frontend.clone();
    let (_, payload) = frontend
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0; 8])
        .unwrap();
    assert_eq!(
        u64::from_ne_bytes(payload[..8].try_into().unwrap()),
        64 * MIB / 512
    );

    let fd = memfd(256 * MIB);
    let mut mem = VhostUserMemory::new();
    // "Boot memory" before the backend attaches: replayed by attach.
    mem.map(region(&fd, 0, 32 * MIB)).unwrap();
    let id = mem.attach("disk0", negotiated).unwrap();
    let limit = mem.region_limit().unwrap().max_regions as u64;
    let slots = (limit - 1).min(100);
    let (mut add, mut rem) = (Vec::new(), Vec::new());
    for round in 0..3 {
        for i in 0..slots {
            let t = Instant::now();
            mem.map(region(&fd, 32 * MIB + i * 2 * MIB, 2 * MIB))
                .unwrap();
            add.push(t.elapsed());
        }
        // Unmap every other slot (all of them in the last round).
        for i in (0..slots).filter(|i| round == 2 || i % 2 == 0) {
            let t = Instant::now();
            mem.unmap(&region(&fd, 32 * MIB + i * 2 * MIB, 2 * MIB).key())
                .unwrap();
            rem.push(t.elapsed());
        }
        if round < 2 {
            for i in (0..slots).filter(|i| i % 2 == 1) {
                mem.unmap(&region(&fd, 32 * MIB + i * 2 * MIB, 2 * MIB).key())
                    .unwrap();
            }
        }
        let mapped: Vec<_> = mem.mapped().map(SharedRegion::key).collect();
        assert_eq!(mem.backend_regions(id).unwrap(), mapped);
    }
    assert_eq!(mem.status()[0].health, BackendHealth::Ready);
    assert!(daemon.child.try_wait().unwrap().is_none(), "daemon exited");
    eprintln!(
        "qemu-storage-daemon (limit {limit}): ADD_MEM_REG+probe median {:.0} us, REM_MEM_REG median {:.0} us over {} / {} requests",
        median_us(add.clone()),
        median_us(rem.clone()),
        add.len(),
        rem.len()
    );
}

#[test]
fn a_killed_daemon_breaks_its_device_and_the_table_goes_on() {
    let test = "a_killed_daemon_breaks_its_device_and_the_table_goes_on";
    let Some((mut daemon, stream)) = start_qsd(test) else {
        return;
    };
    let negotiated = negotiate(stream, &AttachConfig::named("disk0")).unwrap();
    let fd = memfd(64 * MIB);
    let mut mem = VhostUserMemory::new();
    let id = mem.attach("disk0", negotiated).unwrap();
    mem.map(region(&fd, 0, 2 * MIB)).unwrap();
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    // The plug during which the backend is found gone is refused (BUSY) and changes nothing.
    let err = mem.map(region(&fd, 2 * MIB, 2 * MIB)).unwrap_err();
    assert!(err.to_string().contains("disk0"), "{err}");
    assert_eq!(mem.mapped().count(), 1);
    assert!(matches!(
        mem.status()[id.0 as usize].health,
        BackendHealth::Broken { .. }
    ));
    assert_eq!(mem.take_events().len(), 1);
    // Later plugs and unplugs go on without it.
    mem.map(region(&fd, 2 * MIB, 2 * MIB)).unwrap();
    mem.unmap(&region(&fd, 0, 2 * MIB).key()).unwrap();
    assert_eq!(mem.region_limit(), None);
}

/// A virtio-blk read through the device's rings, served by qemu-storage-daemon: no guest, the
/// test plays the driver (rings and request in shared "guest" memory) and the transport (kick,
/// call).
#[test]
fn vhost_user_blk_device_serves_a_read_through_its_rings() {
    use vm_memory::Bytes;

    let test = "vhost_user_blk_device_serves_a_read_through_its_rings";
    let Some((_daemon, stream)) = start_qsd(test) else {
        return;
    };
    let mut config = AttachConfig::named("disk0");
    config.extra_protocol_features = VhostUserProtocolFeatures::CONFIG;
    let negotiated = negotiate(stream, &config).unwrap();

    const RAM: u64 = 16 * MIB;
    let (mut mem, ram) = shared_ram(RAM);
    let mut device = vhost_frontend::VhostUserDevice::new(
        &vhost_frontend::VhostUserDeviceConfig {
            name: "disk0".into(),
            kind: vhost_frontend::VhostUserKind::Block { read_only: false },
            queue_size: 16,
        },
        &negotiated,
        ram.clone(),
    )
    .unwrap();
    let mut capacity = [0u8; 8];
    virtio::VirtioDevice::read_config(&device, 0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 64 * MIB / 512);

    mem.attach("disk0", negotiated).unwrap();

    // Driver side: a 3-descriptor read of sector 0 into a buffer full of 0xaa.
    let g = vm_memory::GuestAddress;
    let (desc, avail, used) = (DESC, AVAIL, USED);
    let (header, data, status) = (0x10000u64, 0x11000u64, 0x12000u64);
    ram.write_obj(0u32, g(header)).unwrap(); // VIRTIO_BLK_T_IN
    ram.write_obj(0u64, g(header + 8)).unwrap(); // sector 0
    ram.write_slice(&[0xaa; 512], g(data)).unwrap();
    ram.write_obj(0xffu8, g(status)).unwrap();
    for (i, (addr, len, flags, next)) in [
        (header, 16u32, 1u16, 1u16),
        (data, 512, 1 | 2, 2),
        (status, 1, 2, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let at = desc + 16 * i as u64;
        ram.write_obj(addr, g(at)).unwrap();
        ram.write_obj(len, g(at + 8)).unwrap();
        ram.write_obj(flags, g(at + 12)).unwrap();
        ram.write_obj(next, g(at + 14)).unwrap();
    }
    ram.write_obj(0u16, g(avail + 4)).unwrap(); // ring[0] = head 0
    ram.write_obj(1u16, g(avail + 2)).unwrap(); // idx = 1

    use virtio::VirtioDevice;
    let rx = activate_and_relay(&mut device);
    let mut queue = <virtio::Queue as virtio::QueueT>::new(16).unwrap();
    let outcome = device.process_queue(0, &mut queue, &*ram);
    assert!(!outcome.used_buffers);
    // A call may come before the request is done (virtio allows spurious interrupts; qemu-
    // storage-daemon signals when the ring is enabled): wait for the call after which the used
    // ring holds the request.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert_eq!(rx.recv_timeout(left).expect("no call from the backend"), 0);
        if ram.read_obj::<u16>(g(used + 2)).unwrap() != 0 {
            break;
        }
    }

    assert_eq!(ram.read_obj::<u16>(g(used + 2)).unwrap(), 1, "used idx");
    assert_eq!(ram.read_obj::<u32>(g(used + 4)).unwrap(), 0, "used head");
    assert_eq!(ram.read_obj::<u8>(g(status)).unwrap(), 0, "VIRTIO_BLK_S_OK");
    let mut sector = [0u8; 512];
    ram.read_slice(&mut sector, g(data)).unwrap();
    assert_eq!(sector, [0u8; 512], "null-co read-zeroes data");
    device.reset();
}

/// qemu-storage-daemon exporting one read-only image twice (`blk0.sock`, `blk1.sock`): sector
/// `s` of the image is filled with byte `s + 1`. Returns connections to both exports.
fn start_qsd_two_exports(test: &str) -> Option<(Daemon, UnixStream, UnixStream)> {
    let dir = scratch_dir("qsd", test);
    let image = dir.join("disk.img");
    let sectors: Vec<u8> = (0..128u8).flat_map(|s| [s + 1; 512]).collect();
    std::fs::write(&image, sectors).unwrap();
    let sock = |i: u32| dir.join(format!("blk{i}.sock"));
    let export = |i: u32| {
        format!(
            "type=vhost-user-blk,id=e{i},node-name=n0,addr.type=unix,addr.path={}",
            sock(i).display()
        )
    };
    let mut command = Command::new("qemu-storage-daemon");
    command
        .args([
            "--blockdev",
            &format!(
                "driver=file,node-name=n0,filename={},read-only=on",
                image.display()
            ),
            "--export",
            &export(0),
            "--export",
            &export(1),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let (second, first) = (sock(1), sock(0));
    let (daemon, stream0) = start_daemon(test, command, dir, &first)?;
    let stream1 = UnixStream::connect(second).unwrap();
    Some((daemon, stream0, stream1))
}

/// The test as the driver of queue 0 (16 entries) in shared "guest" memory.
struct Driver {
    ram: Arc<vm_memory::GuestMemoryMmap>,
}

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;

impl Driver {
    /// Puts a read of `sector` into the descriptor chain starting at `head` (3 descriptors:
    /// header at `buffers`, 512 data bytes at `buffers + 0x1000`, status at `buffers + 0x2000`)
    /// and publishes it as available-ring entry `slot`.
    fn post_read(&self, head: u16, slot: u16, sector: u64, buffers: u64) {
        use vm_memory::{Bytes, GuestAddress as G};
        let ram = &self.ram;
        let (header, data, status) = (buffers, buffers + 0x1000, buffers + 0x2000);
        ram.write_obj(0u32, G(header)).unwrap(); // VIRTIO_BLK_T_IN
        ram.write_obj(sector, G(header + 8)).unwrap();
        ram.write_slice(&[0xaa; 512], G(data)).unwrap();
        ram.write_obj(0xffu8, G(status)).unwrap();
        for (i, (addr, len, flags)) in [(header, 16u32, 1u16), (data, 512, 1 | 2), (status, 1, 2)]
            .into_iter()
            .enumerate()
        {
            let index = head + i as u16;
            let at = DESC + 16 * u64::from(index);
            ram.write_obj(addr, G(at)).unwrap();
            ram.write_obj(len, G(at + 8)).unwrap();
            ram.write_obj(flags, G(at + 12)).unwrap();
            ram.write_obj(index + 1, G(at + 14)).unwrap();
        }
        ram.write_obj(head, G(AVAIL + 4 + 2 * u64::from(slot)))
            .unwrap();
        ram.write_obj(slot + 1, G(AVAIL + 2)).unwrap();
    }

    fn used_idx(&self) -> u16 {
        vm_memory::Bytes::read_obj(&*self.ram, vm_memory::GuestAddress(USED + 2)).unwrap()
    }

    /// Waits (on the call relay's channel) until the used index reaches at least `idx` (the
    /// test's indices stay far from wrapping).
    fn wait_used(&self, calls: &std::sync::mpsc::Receiver<u16>, idx: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_idx() < idx {
            let left = deadline.saturating_duration_since(Instant::now());
            let call = calls.recv_timeout(left);
            assert!(
                call.is_ok(),
                "no call; used idx {} < {idx}",
                self.used_idx()
            );
        }
    }
}

fn block_device(
    negotiated: &vhost_frontend::Negotiated,
    ram: &Arc<vm_memory::GuestMemoryMmap>,
) -> vhost_frontend::VhostUserDevice {
    vhost_frontend::VhostUserDevice::new(
        &vhost_frontend::VhostUserDeviceConfig {
            name: "disk0".into(),
            kind: vhost_frontend::VhostUserKind::Block { read_only: true },
            queue_size: 16,
        },
        negotiated,
        ram.clone(),
    )
    .unwrap()
}

fn activate_and_relay(
    device: &mut vhost_frontend::VhostUserDevice,
) -> std::sync::mpsc::Receiver<u16> {
    use virtio::VirtioDevice;
    device.ack_features(1 << 32).unwrap();
    device
        .activate_with_queues(&[virtio::QueueSetup {
            index: 0,
            size: 16,
            enabled: true,
            desc_table_addr: DESC,
            avail_ring_addr: AVAIL,
            used_ring_addr: USED,
        }])
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    vhost_frontend::spawn_call_relay("disk0", device.call_fds().unwrap(), move |q| {
        let _ = tx.send(q);
    })
    .unwrap();
    rx
}

fn kick(device: &mut vhost_frontend::VhostUserDevice, ram: &vm_memory::GuestMemoryMmap) {
    let mut queue = <virtio::Queue as virtio::QueueT>::new(16).unwrap();
    virtio::VirtioDevice::process_queue(device, 0, &mut queue, ram);
}

fn page_is_set(bits: &[u64], page: u64) -> bool {
    bits[(page / 64) as usize] & (1 << (page % 64)) != 0
}

/// Live migration of a vhost-user-blk device against qemu-storage-daemon: while logging, the
/// backend's writes (data, status, used ring) show up in the dirty log; then the ring stops at
/// available index 1 and a device on a new connection (the "destination") continues from it.
#[test]
fn qemu_storage_daemon_logs_its_writes_and_a_new_connection_continues_the_ring() {
    use vhost_frontend::{BackendDirtyLog, LOG_PAGE_BYTES};
    use vm_memory::{Bytes, GuestAddress as G};

    let test = "qemu_storage_daemon_logs_its_writes_and_a_new_connection_continues_the_ring";
    let Some((_daemon, stream0, stream1)) = start_qsd_two_exports(test) else {
        return;
    };
    let mut config = AttachConfig::named("disk0");
    config.extra_protocol_features = VhostUserProtocolFeatures::CONFIG;
    let negotiated = negotiate(stream0, &config).unwrap();
    assert!(
        negotiated.backend_features & (1 << 26) != 0,
        "qemu-storage-daemon offers VHOST_F_LOG_ALL"
    );
    assert!(
        negotiated
            .protocol_features
            .contains(VhostUserProtocolFeatures::LOG_SHMFD)
    );

    const RAM: u64 = 16 * MIB;
    let (mut mem, ram) = shared_ram(RAM);
    let mut source = block_device(&negotiated, &ram);
    assert_eq!(source.migration_blocker(), None);
    mem.attach("disk0", negotiated).unwrap();
    let calls = activate_and_relay(&mut source);

    // Logging on; the log starts clear (taken once), and the data page is clean.
    let log = BackendDirtyLog::new(RAM).unwrap();
    source.start_logging(&log).unwrap();
    let driver = Driver { ram: ram.clone() };
    let buffers = 0x10000u64;
    let page = |addr: u64| addr / LOG_PAGE_BYTES;
    let before = log.take_range(0, RAM).unwrap();
    assert!(
        !page_is_set(&before, page(buffers + 0x1000)),
        "data page dirty before the request"
    );

    driver.post_read(0, 0, 0, buffers);
    kick(&mut source, &ram);
    driver.wait_used(&calls, 1);
    let mut data = [0u8; 512];
    ram.read_slice(&mut data, G(buffers + 0x1000)).unwrap();
    assert_eq!(data, [1u8; 512], "sector 0");
    assert_eq!(
        ram.read_obj::<u8>(G(buffers + 0x2000)).unwrap(),
        0,
        "VIRTIO_BLK_S_OK"
    );
    let dirty = log.take_range(0, RAM).unwrap();
    assert!(
        page_is_set(&dirty, page(buffers + 0x1000)),
        "data page logged"
    );
    assert!(
        page_is_set(&dirty, page(buffers + 0x2000)),
        "status page logged"
    );
    assert!(page_is_set(&dirty, page(USED)), "used ring page logged");
    assert!(
        !page_is_set(&dirty, page(buffers)),
        "the request header was only read"
    );

    // Switchover: the ring stops where the driver left it.
    let state = source.stop_rings().unwrap();
    assert_eq!(state.next_avail_idx, [1]);
    source.stop_logging().unwrap();

    // The destination: a new connection (the second export), the same guest memory.
    let negotiated = negotiate(stream1, &config).unwrap();
    let mut destination = block_device(&negotiated, &ram);
    mem.attach("disk1", negotiated).unwrap();
    destination.set_ring_bases(&state.next_avail_idx).unwrap();
    // The first request's data buffer refilled: a ring restarted at 0 would read it again.
    ram.write_slice(&[0xaa; 512], G(buffers + 0x1000)).unwrap();
    let next = 0x20000u64;
    driver.post_read(3, 1, 1, next);
    let calls = activate_and_relay(&mut destination);
    kick(&mut destination, &ram);
    driver.wait_used(&calls, 2);
    // Let a wrongly restarted ring finish its extra request before looking.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(driver.used_idx(), 2, "one more request served");
    assert_eq!(
        ram.read_obj::<u32>(G(USED + 4 + 8)).unwrap(),
        3,
        "used head"
    );
    assert_eq!(
        ram.read_obj::<u8>(G(next + 0x2000)).unwrap(),
        0,
        "VIRTIO_BLK_S_OK"
    );
    ram.read_slice(&mut data, G(next + 0x1000)).unwrap();
    assert_eq!(data, [2u8; 512], "sector 1");
    ram.read_slice(&mut data, G(buffers + 0x1000)).unwrap();
    assert_eq!(data, [0xaa; 512], "the first request was not served again");
    virtio::VirtioDevice::reset(&mut destination);
}
