//! What a live migration needs from a vhost-user device: the backend logs the guest pages it
//! writes into a [`BackendDirtyLog`] (SET_LOG_BASE, LOG_ALL, SET_VRING_ADDR with
//! `VHOST_VRING_F_LOG`), and at switchover the rings stop and hand over their positions
//! ([`RingState`]) for the device on the destination to start from.
//!
//! What the backends do with it (seen in this crate's tests): qemu-storage-daemon 10.0.2
//! (libvhost-user) logs only while LOG_ALL is set, data and status buffers by guest address
//! and used-ring writes at the SET_VRING_ADDR log address (even without `VHOST_VRING_F_LOG`,
//! so that address is always the used ring's guest address). virtiofsd 1.14.0 (rust-vmm
//! vhost-user-backend) logs every write through guest memory as soon as SET_LOG_BASE gave it
//! the log, LOG_ALL and the ring flag or not. Both offer VHOST_F_LOG_ALL and LOG_SHMFD.

use vhost::VhostBackend;
use vhost::vhost_user::message::VhostUserVringAddrFlags;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::device::VhostUserDevice;
use crate::dirty_log::BackendDirtyLog;
use crate::{Error, Result};

/// Where each queue's ring stopped: what GET_VRING_BASE answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingState {
    /// The next available-ring index each queue would have read, by queue index (0 for a
    /// queue that was not started).
    pub next_avail_idx: Vec<u16>,
}

impl VhostUserDevice {
    /// Why this device's backend cannot log dirty pages for a migration, or `None` if it can.
    /// Sends nothing.
    pub fn migration_blocker(&self) -> Option<String> {
        let mut missing = Vec::new();
        if self.backend_features & VhostUserVirtioFeatures::LOG_ALL.bits() == 0 {
            missing.push("the virtio feature VHOST_F_LOG_ALL (bit 26)");
        }
        if !self
            .protocol_features
            .contains(VhostUserProtocolFeatures::LOG_SHMFD)
        {
            missing.push("the protocol feature LOG_SHMFD");
        }
        (!missing.is_empty()).then(|| {
            format!(
                "vhost-user backend '{}' cannot log dirty pages for a migration: it does not \
                 offer {}",
                self.name,
                missing.join(" nor ")
            )
        })
    }

    /// Whether the backend is logging its writes.
    pub fn is_logging(&self) -> bool {
        self.logging
    }

    /// The features SET_FEATURES carries: the driver's, PROTOCOL_FEATURES, and LOG_ALL while
    /// logging.
    pub(crate) fn backend_feature_bits(&self) -> u64 {
        let log_all = if self.logging {
            VhostUserVirtioFeatures::LOG_ALL.bits()
        } else {
            0
        };
        self.acked_features | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | log_all
    }

    /// SET_VRING_ADDR flags: `VHOST_VRING_F_LOG` while logging.
    pub(crate) fn vring_flags(&self) -> u32 {
        if self.logging {
            VhostUserVringAddrFlags::VHOST_VRING_F_LOG.bits()
        } else {
            0
        }
    }

    fn request_error(&self, request: &'static str) -> impl Fn(String) -> Error + '_ {
        move |reason| Error::Request {
            backend: self.name.clone(),
            request,
            reason,
        }
    }

    /// Makes the backend log the guest pages it writes into `log`, which must cover all guest
    /// memory: SET_LOG_BASE with the log's memfd, SET_FEATURES with LOG_ALL, and SET_VRING_ADDR
    /// with `VHOST_VRING_F_LOG` (used-ring writes logged at its guest address) for every
    /// started queue. A backend that cannot log is refused before anything is sent (see
    /// [`Self::migration_blocker`]).
    ///
    /// Nothing else may send requests on this backend's connection meanwhile (hold the
    /// memory table's lock): SET_LOG_BASE's reply is read by hand, see `log_base.rs`.
    pub fn start_logging(&mut self, log: &BackendDirtyLog) -> Result<()> {
        if let Some(what) = self.migration_blocker() {
            return Err(Error::Unsupported {
                backend: self.name.clone(),
                what,
            });
        }
        let ram_end_bytes = self
            .ring_memory
            .iter()
            .map(|r| r.start_addr().0 + r.len())
            .max()
            .unwrap_or(0);
        if log.end_gpa_bytes() < ram_end_bytes {
            return Err(Error::InvalidLogRange {
                start_gpa: 0,
                size_bytes: log.end_gpa_bytes(),
                reason: "the log ends before guest memory does",
            });
        }
        crate::log_base::set_log_base(&self.frontend, log)
            .map_err(self.request_error("SET_LOG_BASE"))?;
        // The connection is still in step: the next request gets its own answer.
        let features = self
            .frontend
            .get_features()
            .map_err(|e| self.request_error("GET_FEATURES after SET_LOG_BASE")(e.to_string()))?;
        if features != self.backend_features {
            return Err(self.request_error("GET_FEATURES after SET_LOG_BASE")(
                format!(
                    "answered {features:#x}, not {:#x}: the connection is out of step",
                    self.backend_features
                ),
            ));
        }
        self.logging = true;
        if let Err(e) = self.apply_log_state() {
            self.logging = false;
            return Err(e);
        }
        Ok(())
    }

    /// Makes the backend stop logging: SET_FEATURES without LOG_ALL, and SET_VRING_ADDR
    /// without `VHOST_VRING_F_LOG` for every started queue.
    pub fn stop_logging(&mut self) -> Result<()> {
        self.logging = false;
        self.apply_log_state()
    }

    /// Sends SET_FEATURES and every started queue's SET_VRING_ADDR for the logging state.
    fn apply_log_state(&mut self) -> Result<()> {
        let features = self.backend_feature_bits();
        self.frontend
            .set_features(features)
            .map_err(|e| self.request_error("SET_FEATURES")(e.to_string()))?;
        let flags = self.vring_flags();
        for i in 0..self.started.len() {
            let Some(config) = self.started[i].as_mut() else {
                continue;
            };
            config.flags = flags;
            let config = *config;
            self.frontend
                .set_vring_addr(i, &config)
                .map_err(|e| self.request_error("SET_VRING_ADDR")(format!("queue {i}: {e}")))?;
        }
        Ok(())
    }

    /// Stops queue `i` if it is started (SET_VRING_ENABLE false, GET_VRING_BASE) and returns
    /// the next available index the backend answered.
    pub(crate) fn stop_queue(&mut self, i: usize) -> std::result::Result<Option<u16>, String> {
        if self.started[i].take().is_none() {
            return Ok(None);
        }
        self.frontend
            .set_vring_enable(i, false)
            .map_err(|e| format!("SET_VRING_ENABLE: {e}"))?;
        let base = self
            .frontend
            .get_vring_base(i)
            .map_err(|e| format!("GET_VRING_BASE: {e}"))?;
        u16::try_from(base)
            .map(Some)
            .map_err(|_| format!("GET_VRING_BASE answered {base}, not a split-ring index"))
    }

    /// Stops every started ring (SET_VRING_ENABLE false, then GET_VRING_BASE) and returns where
    /// each stopped, for [`Self::set_ring_bases`] on the destination. Every started ring is
    /// stopped even if one fails; the first failure is returned.
    pub fn stop_rings(&mut self) -> Result<RingState> {
        let mut state = RingState {
            next_avail_idx: vec![0; self.started.len()],
        };
        let mut first_error = None;
        for i in 0..self.started.len() {
            match self.stop_queue(i) {
                Ok(base) => state.next_avail_idx[i] = base.unwrap_or(0),
                Err(e) => {
                    first_error.get_or_insert(format!("queue {i}: {e}"));
                }
            }
        }
        match first_error {
            Some(reason) => Err(self.request_error("stopping the rings")(reason)),
            None => Ok(state),
        }
    }

    /// Makes the next [`virtio::VirtioDevice::activate_with_queues`] start queue `i` at
    /// available index `next_avail_idx[i]` (SET_VRING_BASE) instead of 0: the state
    /// [`Self::stop_rings`] returned on the source. Cleared by that activation or a reset.
    pub fn set_ring_bases(&mut self, next_avail_idx: &[u16]) -> Result<()> {
        if next_avail_idx.len() > self.started.len() {
            return Err(Error::Unsupported {
                backend: self.name.clone(),
                what: format!(
                    "{} ring bases given for {} queues",
                    next_avail_idx.len(),
                    self.started.len()
                ),
            });
        }
        self.ring_bases = next_avail_idx.to_vec();
        Ok(())
    }
}
