//! A virtio device whose queues a vhost-user backend serves: vhost-user-blk (virtio-blk, id 2)
//! or virtio-fs (id 26). The VMM's virtio-pci transport keeps feature negotiation, config
//! space and MSI-X; at DRIVER_OK the rings go to the backend (SET_VRING_*), kicks are relayed
//! to the backend's kick eventfd and the backend's call eventfds are turned into queue
//! interrupts by [`spawn_call_relay`].

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VringConfigData};
use virtio::{ActivateError, FeaturesRefused, Queue, QueueOutcome, QueueSetup, VirtioDevice};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::conn::Negotiated;
use crate::{Error, Result};

/// Virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Virtio device id of a file system device.
pub const VIRTIO_ID_FS: u32 = 26;
/// `VIRTIO_BLK_F_RO`.
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Size of `struct virtio_blk_config` up to the write-zeroes fields (Linux 6.1 reads no more).
const BLK_CONFIG_BYTES: u32 = 60;
/// Length of the virtio-fs tag field.
pub const FS_TAG_BYTES: usize = 36;
/// Feature bits passed from the backend to the driver: device-specific bits 0-23,
/// INDIRECT_DESC (28), EVENT_IDX (29) and VERSION_1 (32). Packed rings, IOMMU, ring reset and
/// notification data are not offered (the transport does not implement them).
const PASSED_FEATURES: u64 = 0x00ff_ffff | (1 << 28) | (1 << 29) | (1 << 32);

/// What kind of device the backend serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VhostUserKind {
    /// vhost-user-blk; config space from the backend (GET_CONFIG).
    Block {
        /// Offer `VIRTIO_BLK_F_RO` to the driver whatever the backend says.
        read_only: bool,
    },
    /// virtio-fs: one high-priority queue and `request_queues` request queues.
    Fs {
        /// The mount tag (at most 36 bytes).
        tag: String,
        /// Request queues (at least 1).
        request_queues: u16,
    },
}

/// How to build a [`VhostUserDevice`].
#[derive(Debug, Clone)]
pub struct VhostUserDeviceConfig {
    /// Name for logs and errors.
    pub name: String,
    /// Kind of device.
    pub kind: VhostUserKind,
    /// Maximum size of every queue (a power of two).
    pub queue_size: u16,
}

/// A vhost-user device behind the virtio transport.
pub struct VhostUserDevice {
    pub(crate) name: String,
    device_type: u32,
    pub(crate) frontend: Frontend,
    queue_sizes: Vec<u16>,
    offered_features: u64,
    pub(crate) acked_features: u64,
    config_space: Vec<u8>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    /// Each queue's SET_VRING_ADDR values while it is started (`None` when stopped).
    pub(crate) started: Vec<Option<VringConfigData>>,
    /// Guest memory the rings live in, to find the frontend addresses SET_VRING_ADDR needs.
    pub(crate) ring_memory: Arc<GuestMemoryMmap>,
    /// Everything the backend offered (GET_FEATURES), LOG_ALL included.
    pub(crate) backend_features: u64,
    /// Protocol features agreed at negotiation.
    pub(crate) protocol_features: VhostUserProtocolFeatures,
    /// Next available index per queue for the next start (a migration's saved state).
    pub(crate) ring_bases: Vec<u16>,
    /// Whether the backend logs its writes (LOG_ALL is set).
    pub(crate) logging: bool,
}

impl std::fmt::Debug for VhostUserDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserDevice")
            .field("name", &self.name)
            .field("device_type", &self.device_type)
            .field(
                "started",
                &self.started.iter().map(Option::is_some).collect::<Vec<_>>(),
            )
            .field("logging", &self.logging)
            .finish_non_exhaustive()
    }
}

impl VhostUserDevice {
    /// Builds the device over a negotiated backend (the same connection the memory table
    /// uses). Block devices read their config space from the backend now.
    pub fn new(
        config: &VhostUserDeviceConfig,
        negotiated: &Negotiated,
        ring_memory: Arc<GuestMemoryMmap>,
    ) -> Result<Self> {
        let fail = |what: String| Error::Unsupported {
            backend: config.name.clone(),
            what,
        };
        if !config.queue_size.is_power_of_two() {
            return Err(fail(format!(
                "queue size {} is not a power of two",
                config.queue_size
            )));
        }
        let mut frontend = negotiated.frontend.clone();
        let mut offered_features = negotiated.backend_features & PASSED_FEATURES;
        let (device_type, queue_count, config_space) = match &config.kind {
            VhostUserKind::Block { read_only } => {
                if !negotiated
                    .protocol_features
                    .contains(VhostUserProtocolFeatures::CONFIG)
                {
                    return Err(fail(
                        "a vhost-user-blk backend must offer the CONFIG protocol feature \
                         (the disk's config space comes from it)"
                            .into(),
                    ));
                }
                if *read_only {
                    offered_features |= VIRTIO_BLK_F_RO;
                }
                let (_, space) = frontend
                    .get_config(
                        0,
                        BLK_CONFIG_BYTES,
                        VhostUserConfigFlags::WRITABLE,
                        &[0; BLK_CONFIG_BYTES as usize],
                    )
                    .map_err(|e| Error::Request {
                        backend: config.name.clone(),
                        request: "GET_CONFIG",
                        reason: e.to_string(),
                    })?;
                (VIRTIO_ID_BLOCK, 1, space)
            }
            VhostUserKind::Fs {
                tag,
                request_queues,
            } => {
                if tag.is_empty() || tag.len() > FS_TAG_BYTES {
                    return Err(fail(format!("tag '{tag}' must be 1 to 36 bytes")));
                }
                if *request_queues == 0 {
                    return Err(fail("virtio-fs needs at least one request queue".into()));
                }
                let mut space = vec![0u8; FS_TAG_BYTES + 4];
                space[..tag.len()].copy_from_slice(tag.as_bytes());
                space[FS_TAG_BYTES..].copy_from_slice(&u32::from(*request_queues).to_le_bytes());
                (VIRTIO_ID_FS, 1 + request_queues, space)
            }
        };
        let eventfd = || {
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Request {
                backend: config.name.clone(),
                request: "eventfd",
                reason: e.to_string(),
            })
        };
        let count = usize::from(queue_count);
        Ok(VhostUserDevice {
            name: config.name.clone(),
            device_type,
            frontend,
            queue_sizes: vec![config.queue_size; count],
            offered_features,
            acked_features: 0,
            config_space,
            kicks: (0..count).map(|_| eventfd()).collect::<Result<_>>()?,
            calls: (0..count).map(|_| eventfd()).collect::<Result<_>>()?,
            started: vec![None; count],
            ring_memory,
            backend_features: negotiated.backend_features,
            protocol_features: negotiated.protocol_features,
            ring_bases: Vec::new(),
            logging: false,
        })
    }

    /// Clones of the kick eventfds, queue by queue: the VMM registers them as the queues'
    /// ioeventfds so KVM kicks the backend directly.
    pub fn kick_fds(&self) -> std::io::Result<Vec<EventFd>> {
        self.kicks.iter().map(EventFd::try_clone).collect()
    }

    /// Clones of the call eventfds, queue by queue, for [`spawn_call_relay`].
    pub fn call_fds(&self) -> std::io::Result<Vec<EventFd>> {
        self.calls.iter().map(EventFd::try_clone).collect()
    }

    /// Frontend address of `[guest_addr, guest_addr + len)`, which must lie in one region.
    fn host_addr(&self, guest_addr: u64, len: usize) -> Option<u64> {
        let slice = self
            .ring_memory
            .get_slice(GuestAddress(guest_addr), len)
            .ok()?;
        Some(slice.ptr_guard().as_ptr() as u64)
    }

    fn start_queue(&mut self, setup: &QueueSetup) -> std::result::Result<(), String> {
        let i = usize::from(setup.index);
        let size = usize::from(setup.size);
        let translate = |what, addr, len| {
            self.host_addr(addr, len)
                .ok_or_else(|| format!("queue {i}: {what} at {addr:#x} is not in guest RAM"))
        };
        let config = VringConfigData {
            queue_max_size: self.queue_sizes[i],
            queue_size: setup.size,
            flags: self.vring_flags(),
            desc_table_addr: translate("descriptor table", setup.desc_table_addr, 16 * size)?,
            used_ring_addr: translate("used ring", setup.used_ring_addr, 6 + 8 * size)?,
            avail_ring_addr: translate("available ring", setup.avail_ring_addr, 6 + 2 * size)?,
            // The used ring's guest address: where writes to it are logged once logging starts.
            log_addr: Some(setup.used_ring_addr),
        };
        let base = self.ring_bases.get(i).copied().unwrap_or(0);
        let f = &mut self.frontend;
        let step =
            |r: vhost::Result<()>, what: &str| r.map_err(|e| format!("queue {i}: {what}: {e}"));
        step(f.set_vring_num(i, setup.size), "SET_VRING_NUM")?;
        step(f.set_vring_addr(i, &config), "SET_VRING_ADDR")?;
        step(f.set_vring_base(i, base), "SET_VRING_BASE")?;
        step(f.set_vring_call(i, &self.calls[i]), "SET_VRING_CALL")?;
        step(f.set_vring_kick(i, &self.kicks[i]), "SET_VRING_KICK")?;
        step(f.set_vring_enable(i, true), "SET_VRING_ENABLE")?;
        self.started[i] = Some(config);
        Ok(())
    }
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.offered_features
    }

    fn ack_features(&mut self, features: u64) -> std::result::Result<(), FeaturesRefused> {
        if features & !(self.offered_features | (1 << 32)) != 0 {
            return Err(FeaturesRefused { features });
        }
        self.acked_features = features;
        Ok(())
    }

    fn read_config(&self, offset_bytes: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset_bytes)
                .ok()
                .and_then(|o| self.config_space.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset_bytes: u64, data: &[u8]) {
        log::debug!(
            "{}: ignoring config write of {} bytes at {offset_bytes:#x}",
            self.name,
            data.len()
        );
    }

    fn activate(&mut self) -> std::result::Result<(), ActivateError> {
        Err(ActivateError {
            reason: format!("{}: vhost-user devices need the queue setup", self.name),
        })
    }

    fn activate_with_queues(
        &mut self,
        queues: &[QueueSetup],
    ) -> std::result::Result<(), ActivateError> {
        // The backend's own features stay: only the ring features the driver took, plus
        // VHOST_USER_F_PROTOCOL_FEATURES so rings start disabled until SET_VRING_ENABLE (and
        // LOG_ALL while a migration logs).
        let features = self.backend_feature_bits();
        self.frontend
            .set_features(features)
            .map_err(|e| ActivateError {
                reason: format!("{}: SET_FEATURES: {e}", self.name),
            })?;
        for setup in queues.iter().filter(|q| q.enabled) {
            if usize::from(setup.index) >= self.queue_sizes.len() {
                continue;
            }
            self.start_queue(setup).map_err(|e| ActivateError {
                reason: format!("{}: {e}", self.name),
            })?;
        }
        // Saved ring positions are for this start only.
        self.ring_bases.clear();
        Ok(())
    }

    fn reset(&mut self) {
        for i in 0..self.started.len() {
            if let Err(e) = self.stop_queue(i) {
                log::warn!("{}: stopping queue {i}: {e}", self.name);
            }
        }
        self.acked_features = 0;
        self.ring_bases.clear();
    }

    fn process_queue<M: GuestMemory>(
        &mut self,
        queue_index: u16,
        _queue: &mut Queue,
        _memory: &M,
    ) -> QueueOutcome {
        if let Some(kick) = self.kicks.get(usize::from(queue_index))
            && let Err(e) = kick.write(1)
        {
            log::warn!("{}: kick of queue {queue_index} failed: {e}", self.name);
        }
        QueueOutcome::default()
    }
}

/// Turns the backend's call eventfds into queue interrupts: `signal(queue)` is called (on a
/// thread of its own) whenever queue `queue`'s call eventfd fires.
pub fn spawn_call_relay(
    name: &str,
    calls: Vec<EventFd>,
    signal: impl Fn(u16) + Send + 'static,
) -> std::io::Result<()> {
    let epoll = Epoll::new()?;
    for (token, call) in (0u64..).zip(&calls) {
        epoll.ctl(
            ControlOperation::Add,
            call.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        )?;
    }
    let thread_name = format!("vhost-call-{name}");
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            sandbox::enter_or_abort(sandbox::ThreadKind::VhostCallRelay);
            let mut events = vec![EpollEvent::default(); calls.len().max(1)];
            loop {
                let ready = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::error!("{thread_name} stops: {e}");
                        return;
                    }
                };
                for event in &events[..ready] {
                    let Some(call) = calls.get(event.data() as usize) else {
                        continue;
                    };
                    if call.read().is_ok()
                        && let Ok(queue) = u16::try_from(event.data())
                    {
                        signal(queue);
                    }
                }
            }
        })
        .map(|_| ())
}
