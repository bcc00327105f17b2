//! Connecting to one backend and negotiating what memory-table updates need.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost::VhostBackend;
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};

use crate::{Error, Result};

/// Regions a SET_MEM_TABLE message carries at most (QEMU's and libvhost-user's baseline).
pub const MEM_TABLE_MAX_REGIONS: u32 = 8;

/// How a backend's memory table is updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableMode {
    /// CONFIGURE_MEM_SLOTS: one ADD_MEM_REG / REM_MEM_REG per region, up to `max_slots`.
    MemSlots {
        /// The backend's GET_MAX_MEM_SLOTS answer.
        max_slots: u32,
    },
    /// No CONFIGURE_MEM_SLOTS: the whole table in one SET_MEM_TABLE, at most 8 regions.
    WholeTable,
}

impl TableMode {
    /// How many regions the backend accepts.
    pub fn max_regions(self) -> u32 {
        match self {
            TableMode::MemSlots { max_slots } => max_slots,
            TableMode::WholeTable => MEM_TABLE_MAX_REGIONS,
        }
    }
}

/// How to talk to a backend.
#[derive(Debug, Clone)]
pub struct AttachConfig {
    /// Name used in errors, events and the API (e.g. the device id).
    pub name: String,
    /// Protocol features the device wants besides REPLY_ACK and CONFIGURE_MEM_SLOTS.
    pub extra_protocol_features: VhostUserProtocolFeatures,
    /// How long to wait for any answer before the backend counts as failed.
    pub reply_timeout: Duration,
    /// Queues the device will hand to the backend (for the `vhost` crate's checks).
    pub max_queue_count: u64,
}

impl AttachConfig {
    /// Defaults for a backend called `name`: 5 s timeout, one queue, no extra features.
    pub fn named(name: &str) -> Self {
        AttachConfig {
            name: name.to_string(),
            extra_protocol_features: VhostUserProtocolFeatures::empty(),
            reply_timeout: Duration::from_secs(5),
            max_queue_count: 1,
        }
    }
}

/// A backend after SET_OWNER and feature negotiation.
pub struct Negotiated {
    /// The connection (clonable; devices use it for rings and config).
    pub frontend: Frontend,
    /// How its memory table is kept.
    pub mode: TableMode,
    /// Virtio features the backend offered (GET_FEATURES).
    pub backend_features: u64,
    /// Protocol features both sides agreed on.
    pub protocol_features: VhostUserProtocolFeatures,
}

impl std::fmt::Debug for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Negotiated")
            .field("mode", &self.mode)
            .field(
                "backend_features",
                &format_args!("{:#x}", self.backend_features),
            )
            .field("protocol_features", &self.protocol_features)
            .finish_non_exhaustive()
    }
}

/// Connects over `stream`: SET_OWNER, features, protocol features (REPLY_ACK required,
/// CONFIGURE_MEM_SLOTS and LOG_SHMFD if offered) and GET_MAX_MEM_SLOTS. Every later request
/// asks for an ack.
pub fn negotiate(stream: UnixStream, config: &AttachConfig) -> Result<Negotiated> {
    let fail = |request: &'static str| {
        let name = config.name.clone();
        move |e: vhost::Error| Error::Request {
            backend: name,
            request,
            reason: e.to_string(),
        }
    };
    let io_fail = |e: std::io::Error| Error::Request {
        backend: config.name.clone(),
        request: "socket setup",
        reason: e.to_string(),
    };
    stream
        .set_read_timeout(Some(config.reply_timeout))
        .map_err(io_fail)?;
    stream
        .set_write_timeout(Some(config.reply_timeout))
        .map_err(io_fail)?;
    let mut frontend = Frontend::from_stream(stream, config.max_queue_count);
    frontend.set_owner().map_err(fail("SET_OWNER"))?;
    let backend_features = frontend.get_features().map_err(fail("GET_FEATURES"))?;
    if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
        return Err(Error::Unsupported {
            backend: config.name.clone(),
            what: "does not offer VHOST_USER_F_PROTOCOL_FEATURES".into(),
        });
    }
    let offered = frontend
        .get_protocol_features()
        .map_err(fail("GET_PROTOCOL_FEATURES"))?;
    if !offered.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        return Err(Error::Unsupported {
            backend: config.name.clone(),
            what: "does not offer REPLY_ACK, so memory table updates cannot be confirmed".into(),
        });
    }
    // LOG_SHMFD (the dirty log is shared memory passed as an fd) is acked whenever offered:
    // it changes nothing until logging starts, and a migration needs it then.
    let wanted = VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::LOG_SHMFD
        | config.extra_protocol_features;
    let agreed = offered & wanted;
    frontend
        .set_protocol_features(agreed)
        .map_err(fail("SET_PROTOCOL_FEATURES"))?;
    frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let mode = if agreed.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS) {
        let max = frontend
            .get_max_mem_slots()
            .map_err(fail("GET_MAX_MEM_SLOTS"))?;
        let max_slots = u32::try_from(max).unwrap_or(u32::MAX);
        if max_slots == 0 {
            return Err(Error::Unsupported {
                backend: config.name.clone(),
                what: "GET_MAX_MEM_SLOTS answered 0".into(),
            });
        }
        TableMode::MemSlots { max_slots }
    } else {
        TableMode::WholeTable
    };
    Ok(Negotiated {
        frontend,
        mode,
        backend_features,
        protocol_features: agreed,
    })
}

/// Closes both directions of the backend's socket, so it stops and drops its mappings.
pub(crate) fn shut_down(frontend: &Frontend) {
    // SAFETY: shutdown on the socket fd the frontend owns; it only changes the socket's state.
    unsafe { libc::shutdown(frontend.as_raw_fd(), libc::SHUT_RDWR) };
}
