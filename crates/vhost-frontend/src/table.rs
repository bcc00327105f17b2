//! The memory tables of all backends, kept equal to the set of mapped regions.

use std::collections::BTreeMap;

use vhost::VhostBackend;
use vhost::vhost_user::{Frontend, VhostUserFrontend};

use crate::conn::{Negotiated, TableMode, shut_down};
use crate::region::{RegionKey, SharedRegion};
use crate::{Error, Result};

/// Identifies an attached backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(pub u32);

/// Whether a backend still takes requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendHealth {
    /// Its table equals the mapped set.
    Ready,
    /// A request failed or it disconnected; it gets no more requests.
    Broken {
        /// What failed.
        reason: String,
    },
}

/// Something the owner should report (event log, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    /// A backend failed and was disconnected.
    Broken {
        /// Which backend.
        id: BackendId,
        /// Its name.
        name: String,
        /// What failed.
        reason: String,
    },
}

/// One backend as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    /// Its id.
    pub id: BackendId,
    /// Its name.
    pub name: String,
    /// How its table is updated.
    pub mode: TableMode,
    /// Regions it holds now.
    pub regions_held: usize,
    /// Whether it still works.
    pub health: BackendHealth,
}

/// The smallest region limit among working backends, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionLimit {
    /// The limiting backend's name.
    pub backend: String,
    /// How many regions it accepts.
    pub max_regions: u32,
}

struct Backend {
    id: BackendId,
    name: String,
    frontend: Frontend,
    mode: TableMode,
    /// The features GET_FEATURES reported at attach; the liveness probe expects them again.
    features: u64,
    /// What the backend holds: changed only after it acknowledged a request.
    shadow: BTreeMap<RegionKey, SharedRegion>,
    health: BackendHealth,
}

impl Backend {
    fn request_error(&self, request: &'static str, e: vhost::Error) -> Error {
        Error::Request {
            backend: self.name.clone(),
            request,
            reason: e.to_string(),
        }
    }

    /// A round trip after an acked change: libvhost-user acks a failed ADD_MEM_REG with 0 and
    /// then drops the connection, which this notices before the change counts as done.
    fn probe(&mut self) -> Result<()> {
        match self.frontend.get_features() {
            Ok(f) if f == self.features => Ok(()),
            Ok(f) => Err(Error::Request {
                backend: self.name.clone(),
                request: "GET_FEATURES (liveness probe)",
                reason: format!("features changed from {:#x} to {f:#x}", self.features),
            }),
            Err(e) => Err(self.request_error("GET_FEATURES (liveness probe)", e)),
        }
    }

    fn send_table(&mut self, table: &BTreeMap<RegionKey, SharedRegion>) -> Result<()> {
        let infos: Vec<_> = table.values().map(SharedRegion::info).collect();
        self.frontend
            .set_mem_table(&infos)
            .map_err(|e| self.request_error("SET_MEM_TABLE", e))?;
        self.probe()
    }

    /// Adds one region; the shadow changes only when the backend confirmed it.
    fn add(&mut self, region: &SharedRegion) -> Result<()> {
        let limit = self.mode.max_regions();
        if self.shadow.len() >= limit as usize {
            return Err(Error::BackendFull {
                backend: self.name.clone(),
                held: self.shadow.len(),
                limit,
            });
        }
        match self.mode {
            TableMode::MemSlots { .. } => {
                self.frontend
                    .add_mem_region(&region.info())
                    .map_err(|e| self.request_error("ADD_MEM_REG", e))?;
                self.probe()?;
            }
            TableMode::WholeTable => {
                let mut table = self.shadow.clone();
                table.insert(region.key(), region.clone());
                self.send_table(&table)?;
            }
        }
        self.shadow.insert(region.key(), region.clone());
        Ok(())
    }

    /// Removes exactly the region that was added under `key`; a region the backend does not
    /// hold is never named.
    fn remove(&mut self, key: &RegionKey) -> Result<()> {
        let Some(region) = self.shadow.get(key).cloned() else {
            return Ok(());
        };
        match self.mode {
            TableMode::MemSlots { .. } => {
                self.frontend
                    .remove_mem_region(&region.info())
                    .map_err(|e| self.request_error("REM_MEM_REG", e))?;
            }
            TableMode::WholeTable => {
                let mut table = self.shadow.clone();
                table.remove(key);
                if table.is_empty() {
                    return Err(Error::Unsupported {
                        backend: self.name.clone(),
                        what: "without CONFIGURE_MEM_SLOTS the last region cannot be removed \
                               (SET_MEM_TABLE needs at least one)"
                            .into(),
                    });
                }
                self.send_table(&table)?;
            }
        }
        self.shadow.remove(key);
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.health == BackendHealth::Ready
    }
}

/// Keeps every attached backend's memory table equal to the set of mapped regions.
///
/// Regions are never merged: each mapped memslot is one backend region, added before the slot
/// counts as mapped and removed with exactly the values it was added with. A backend whose
/// request fails is marked broken, disconnected and skipped from then on; the operation during
/// which it failed reports the error so the caller can refuse (BUSY) and roll back.
#[derive(Default)]
pub struct VhostUserMemory {
    mapped: BTreeMap<RegionKey, SharedRegion>,
    backends: Vec<Backend>,
    next_id: u32,
    events: Vec<BackendEvent>,
}

impl std::fmt::Debug for VhostUserMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserMemory")
            .field("mapped", &self.mapped.keys().collect::<Vec<_>>())
            .field("backends", &self.status())
            .finish_non_exhaustive()
    }
}

impl VhostUserMemory {
    /// No regions, no backends.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches a negotiated backend and gives it every mapped region.
    ///
    /// Refused, and the backend disconnected, when it cannot hold the mapped regions or fails to
    /// take them.
    pub fn attach(&mut self, name: &str, negotiated: Negotiated) -> Result<BackendId> {
        let id = BackendId(self.next_id);
        let mut backend = Backend {
            id,
            name: name.to_string(),
            frontend: negotiated.frontend,
            mode: negotiated.mode,
            features: negotiated.backend_features,
            shadow: BTreeMap::new(),
            health: BackendHealth::Ready,
        };
        let limit = backend.mode.max_regions();
        let result = if self.mapped.len() > limit as usize {
            Err(Error::BackendFull {
                backend: backend.name.clone(),
                held: self.mapped.len(),
                limit,
            })
        } else {
            match backend.mode {
                TableMode::MemSlots { .. } => self.mapped.values().try_for_each(|r| backend.add(r)),
                TableMode::WholeTable if self.mapped.is_empty() => Ok(()),
                TableMode::WholeTable => backend.send_table(&self.mapped).map(|()| {
                    backend.shadow = self.mapped.clone();
                }),
            }
        };
        if let Err(e) = result {
            shut_down(&backend.frontend);
            return Err(e);
        }
        self.next_id += 1;
        self.backends.push(backend);
        Ok(id)
    }

    /// Disconnects a backend (device removed).
    pub fn detach(&mut self, id: BackendId) -> Result<()> {
        let pos = self
            .backends
            .iter()
            .position(|b| b.id == id)
            .ok_or(Error::UnknownBackend(id.0))?;
        let backend = self.backends.remove(pos);
        shut_down(&backend.frontend);
        Ok(())
    }

    /// Adds `region` to every working backend, or to none.
    ///
    /// On error the region is not mapped; backends that took it are told to remove it again,
    /// and the one that failed is broken (unless it was merely full).
    pub fn map(&mut self, region: SharedRegion) -> Result<()> {
        region.check()?;
        if self.mapped.values().any(|m| m.overlaps(&region)) {
            return Err(Error::InvalidRegion {
                guest_addr: region.guest_addr,
                reason: "overlaps a mapped region",
            });
        }
        let key = region.key();
        let mut failure = None;
        let mut done = Vec::new();
        for (i, backend) in self.backends.iter_mut().enumerate() {
            if !backend.is_ready() {
                continue;
            }
            match backend.add(&region) {
                Ok(()) => done.push(i),
                Err(e) => {
                    failure = Some((i, e));
                    break;
                }
            }
        }
        let Some((failed, error)) = failure else {
            self.mapped.insert(key, region);
            return Ok(());
        };
        if !matches!(error, Error::BackendFull { .. }) {
            self.mark_broken(failed, &error);
        }
        for i in done {
            if let Err(e) = self.backends[i].remove(&key) {
                self.mark_broken(i, &e);
            }
        }
        Err(error)
    }

    /// Removes the region mapped at exactly `key` from every backend and the mapped set.
    ///
    /// The region is unmapped whatever the backends answer; a backend that fails is broken and
    /// the first such failure is returned for reporting.
    pub fn unmap(&mut self, key: &RegionKey) -> Result<()> {
        if self.mapped.remove(key).is_none() {
            return Err(Error::InvalidRegion {
                guest_addr: key.guest_addr,
                reason: "no region is mapped with this address, size and host address",
            });
        }
        let mut first_error = None;
        for i in 0..self.backends.len() {
            if !self.backends[i].is_ready() {
                continue;
            }
            if let Err(e) = self.backends[i].remove(key) {
                self.mark_broken(i, &e);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn mark_broken(&mut self, index: usize, error: &Error) {
        let backend = &mut self.backends[index];
        if !backend.is_ready() {
            return;
        }
        let reason = error.to_string();
        log::error!("vhost-user backend '{}' broken: {reason}", backend.name);
        shut_down(&backend.frontend);
        backend.shadow.clear();
        backend.health = BackendHealth::Broken {
            reason: reason.clone(),
        };
        self.events.push(BackendEvent::Broken {
            id: backend.id,
            name: backend.name.clone(),
            reason,
        });
    }

    /// The regions mapped now, by guest address.
    pub fn mapped(&self) -> impl Iterator<Item = &SharedRegion> {
        self.mapped.values()
    }

    /// What backend `id` holds (as far as it confirmed), by key.
    pub fn backend_regions(&self, id: BackendId) -> Result<Vec<RegionKey>> {
        self.backends
            .iter()
            .find(|b| b.id == id)
            .map(|b| b.shadow.keys().copied().collect())
            .ok_or(Error::UnknownBackend(id.0))
    }

    /// Every backend's state.
    pub fn status(&self) -> Vec<BackendStatus> {
        self.backends
            .iter()
            .map(|b| BackendStatus {
                id: b.id,
                name: b.name.clone(),
                mode: b.mode,
                regions_held: b.shadow.len(),
                health: b.health.clone(),
            })
            .collect()
    }

    /// The smallest region limit among working backends (none: no limit from vhost-user).
    pub fn region_limit(&self) -> Option<RegionLimit> {
        self.backends
            .iter()
            .filter(|b| b.is_ready())
            .min_by_key(|b| b.mode.max_regions())
            .map(|b| RegionLimit {
                backend: b.name.clone(),
                max_regions: b.mode.max_regions(),
            })
    }

    /// One [`memslots::SlotLimit`] per working backend, for the VM's slot budget: each backend's
    /// table holds the `held_slots` regions of boot memory plus every mapped device slot.
    pub fn slot_limits(&self, held_slots: u32) -> Vec<memslots::SlotLimit> {
        self.backends
            .iter()
            .filter(|b| b.is_ready())
            .map(|b| memslots::SlotLimit {
                owner: format!("vhost-user backend '{}'", b.name),
                max_slots: b.mode.max_regions(),
                held_slots,
            })
            .collect()
    }

    /// Events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<BackendEvent> {
        std::mem::take(&mut self.events)
    }
}
