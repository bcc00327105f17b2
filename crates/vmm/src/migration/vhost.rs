//! Live migration of vhost-user devices.
//!
//! - The destination's `--disk`/`--fs` must be the source's devices ([`match_devices`]).
//! - On the source, [`VhostSource`] has every backend log its writes into guest memory in one
//!   shared dirty log (VHOST_F_LOG_ALL), collected with KVM's each round; once the vCPUs are
//!   paused it stops the rings (GET_VRING_BASE), waits until the backend has answered every
//!   request it took, and records each ring's position next to the transport state. If the
//!   migration fails the rings start again where they stopped.
//! - On the destination, [`VhostRestore`] brings a device on a new backend connection to the
//!   same place: the transport state, the driver's features, the rings at their positions.

use std::time::{Duration, Instant};

use migration::{DirtyPages, RegionId};
use serde::{Deserialize, Serialize};
use snapshot::{Component, DeviceSnapshot};
use vhost_frontend::{BackendDirtyLog, SharedMemoryTable};
use virtio::VirtioPciState;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::snapshot::vm_config::SavedVhostDevice;
use crate::snapshot::{TRANSPORT_COMPONENT, TRANSPORT_VERSION};
use crate::vhost_user::{PlacedVhostDevice, VhostUserSpec};

/// Component name of a vhost-user device's ring positions.
pub const RINGS_COMPONENT: &str = "vhost-user-rings";
/// Version of [`RingPositions`]' layout.
pub const RINGS_VERSION: u32 = 1;
/// How long the source waits, once the rings are stopped, for the backend to answer the
/// requests it had taken.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a device's rings stood when they were stopped: the next available-ring index of each
/// queue (0 for a queue that never started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingPositions {
    /// Per queue, in index order.
    pub next_avail: Vec<u16>,
}

/// A vhost-user device's saved state, checked.
#[derive(Debug, Clone)]
pub struct VhostRestore {
    /// Device id.
    pub id: String,
    /// Transport state.
    pub transport: VirtioPciState,
    /// Ring positions.
    pub rings: RingPositions,
}

impl VhostRestore {
    /// Reads device `id`'s components from a decoded state.
    pub fn from_snapshot(device: &DeviceSnapshot) -> Result<Self, snapshot::Error> {
        let (_, transport) = device
            .component(TRANSPORT_COMPONENT)?
            .decode(TRANSPORT_COMPONENT, TRANSPORT_VERSION..=TRANSPORT_VERSION)?;
        let (_, rings) = device
            .component(RINGS_COMPONENT)?
            .decode(RINGS_COMPONENT, RINGS_VERSION..=RINGS_VERSION)?;
        Ok(VhostRestore {
            id: device.id.clone(),
            transport,
            rings,
        })
    }
}

/// Why a VM with these devices cannot be migrated: the first virtio-fs device (its backend's
/// state does not move) or backend that cannot log its writes into guest memory, named.
pub fn blocker(devices: &[PlacedVhostDevice]) -> Option<String> {
    devices.iter().find_map(|d| {
        let t = crate::shared_device::lock_or_recover(&d.transport, "vhost-user device");
        if virtio::VirtioDevice::device_type(t.device()) == vhost_frontend::VIRTIO_ID_FS {
            // The backend holds the guest's FUSE session (inodes, open files); without moving
            // that state, a destination backend would not know the guest's handles.
            return Some(format!(
                "virtio-fs device '{}': the backend's state (the guest's open files) cannot be \
                 moved yet",
                d.id
            ));
        }
        t.device()
            .migration_blocker()
            .map(|why| format!("vhost-user device '{}': {why}", d.id))
    })
}

/// The source's vhost-user devices during a migration.
pub struct VhostSource {
    devices: Vec<PlacedVhostDevice>,
    /// Held while logging starts: the start reads a reply outside the frontend's own lock, so
    /// no memory-table update may use the connections meanwhile.
    table: Option<SharedMemoryTable>,
    log: Option<BackendDirtyLog>,
    /// The guest's regions as `(id, guest address, size)`, whose logged pages `collect` takes.
    regions: Vec<(RegionId, u64, u64)>,
    /// Ring positions of each device while its rings are stopped.
    stopped: Vec<Option<RingPositions>>,
    /// Pages the backends marked, over the whole migration.
    pages_written: u64,
}

impl VhostSource {
    /// The devices of a VM (none: everything here is a no-op).
    pub fn new(devices: Vec<PlacedVhostDevice>, table: Option<SharedMemoryTable>) -> Self {
        let stopped = vec![None; devices.len()];
        VhostSource {
            devices,
            table,
            log: None,
            regions: Vec::new(),
            stopped,
            pages_written: 0,
        }
    }

    /// Pages the backends wrote during the migration (as their log said).
    pub fn pages_written(&self) -> u64 {
        self.pages_written
    }

    /// Has every backend log its writes into the guest's `regions` (`(id, guest address,
    /// size)`; a region's place never changes while the VM runs).
    pub fn start_log(&mut self, regions: Vec<(RegionId, u64, u64)>) -> Result<(), String> {
        if self.devices.is_empty() {
            return Ok(());
        }
        let end_gpa_bytes = regions
            .iter()
            .map(|&(_, addr, size)| addr + size)
            .max()
            .unwrap_or(0);
        let log = BackendDirtyLog::new(end_gpa_bytes)
            .map_err(|e| format!("vhost-user dirty log: {e}"))?;
        let _table = self
            .table
            .as_ref()
            .map(|t| crate::shared_device::lock_or_recover(t, "vhost-user memory table"));
        for d in &self.devices {
            let mut t = crate::shared_device::lock_or_recover(&d.transport, "vhost-user device");
            t.device_mut().start_logging(&log).map_err(|e| {
                format!("vhost-user device '{}': starting its dirty log: {e}", d.id)
            })?;
        }
        self.log = Some(log);
        self.regions = regions;
        Ok(())
    }

    /// Adds the pages the backends wrote since the last call.
    pub fn collect(&mut self, dirty: &mut DirtyPages) -> Result<(), String> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        for &(region, guest_addr, size_bytes) in &self.regions {
            let bits = log
                .take_range(guest_addr, size_bytes)
                .map_err(|e| format!("vhost-user dirty log: {e}"))?;
            self.pages_written += bits.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
            dirty.merge_log(region, 0, &bits);
        }
        Ok(())
    }

    /// Turns the backends' logging off.
    pub fn stop_log(&mut self) {
        if self.log.take().is_none() {
            return;
        }
        for d in &self.devices {
            let mut t = crate::shared_device::lock_or_recover(&d.transport, "vhost-user device");
            if let Err(e) = t.device_mut().stop_logging() {
                log::warn!("vhost-user device '{}': stopping its dirty log: {e}", d.id);
            }
        }
    }

    /// Stops every device's rings (the vCPUs are paused) and waits until each backend has
    /// answered every request it took, so nothing writes guest memory any more.
    pub fn stop_rings(&mut self, memory: &GuestMemoryMmap) -> Result<(), String> {
        for (d, stopped) in self.devices.iter().zip(&mut self.stopped) {
            if stopped.is_some() {
                continue;
            }
            let mut t = crate::shared_device::lock_or_recover(&d.transport, "vhost-user device");
            let next_avail = t
                .device_mut()
                .stop_rings()
                .map(|r| r.next_avail_idx)
                .map_err(|e| format!("vhost-user device '{}': stopping its rings: {e}", d.id))?;
            let queues = t.save_state().queues;
            *stopped = Some(RingPositions {
                next_avail: next_avail.clone(),
            });
            drop(t);
            for (index, (q, &taken)) in queues.iter().zip(&next_avail).enumerate() {
                if q.enabled {
                    drain(memory, q.device_area, taken).map_err(|left| {
                        format!(
                            "vhost-user device '{}': queue {index}: the backend did not answer \
                             {left} request(s) it took within {DRAIN_TIMEOUT:?}",
                            d.id
                        )
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Starts stopped rings again where they stood (the migration failed).
    pub fn restart_rings(&mut self) -> Result<(), String> {
        for (d, stopped) in self.devices.iter().zip(&mut self.stopped) {
            let Some(rings) = stopped.take() else {
                continue;
            };
            let mut t = crate::shared_device::lock_or_recover(&d.transport, "vhost-user device");
            t.device_mut()
                .set_ring_bases(&rings.next_avail)
                .map_err(|e| format!("vhost-user device '{}': {e}", d.id))?;
            t.replay_negotiation()
                .map_err(|e| format!("vhost-user device '{}': restarting its rings: {e}", d.id))?;
            drop(t);
            crate::vhost_user::nudge(&d.transport);
        }
        Ok(())
    }

    /// Every device's state: the transport and where its rings stand (stopped: where they
    /// stopped; running, for the switchover estimate: zeros of the same size).
    pub fn states(&self) -> Result<Vec<DeviceSnapshot>, String> {
        let mut states = Vec::new();
        for (d, stopped) in self.devices.iter().zip(&self.stopped) {
            let t = crate::shared_device::lock_or_recover(&d.transport, "vhost-user device");
            let transport = t.save_state();
            let rings = stopped.clone().unwrap_or(RingPositions {
                next_avail: vec![0; transport.queues.len()],
            });
            let encode = |e: snapshot::Error| e.to_string();
            states.push(DeviceSnapshot {
                id: d.id.clone(),
                components: vec![
                    Component::encode(TRANSPORT_COMPONENT, TRANSPORT_VERSION, &transport)
                        .map_err(encode)?,
                    Component::encode(RINGS_COMPONENT, RINGS_VERSION, &rings).map_err(encode)?,
                ],
            });
        }
        Ok(states)
    }
}

/// Waits until the used ring at `used_ring_addr` has caught up with `taken` (the backend
/// answered every request it took); on timeout answers how many are missing.
fn drain(memory: &GuestMemoryMmap, used_ring_addr: u64, taken: u16) -> Result<(), u16> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let used: u16 = memory
            .read_obj(GuestAddress(used_ring_addr + 2))
            .map_err(|_| taken)?;
        let left = taken.wrapping_sub(used);
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The source's vhost-user devices, for a refusal.
pub fn describe(saved: &[SavedVhostDevice]) -> String {
    if saved.is_empty() {
        return "no vhost-user devices".into();
    }
    saved
        .iter()
        .map(|d| format!("{} ({:?}, queue size {})", d.id, d.kind, d.queue_size))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The destination's `--disk`/`--fs` devices must be the source's, in the same order and of
/// the same kind (their backends' sockets are the destination's own).
pub fn match_devices(saved: &[SavedVhostDevice], here: &[VhostUserSpec]) -> Result<(), String> {
    for (i, spec) in here.iter().enumerate() {
        let mine = SavedVhostDevice::from(spec);
        match saved.get(i) {
            Some(theirs) if *theirs == mine => {}
            Some(theirs) => {
                return Err(format!(
                    "vhost-user device {} here is {} ({:?}, queue size {}), the VM's is {} \
                     ({:?}, queue size {})",
                    i + 1,
                    mine.id,
                    mine.kind,
                    mine.queue_size,
                    theirs.id,
                    theirs.kind,
                    theirs.queue_size
                ));
            }
            None => {
                return Err(format!(
                    "vhost-user device '{}' is not in the incoming VM",
                    spec.id
                ));
            }
        }
    }
    if let Some(missing) = saved.get(here.len()) {
        return Err(format!(
            "the incoming VM has vhost-user device '{}': give it a backend with --disk or --fs",
            missing.id
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(spec: &str) -> VhostUserSpec {
        VhostUserSpec::parse_disk(spec, 0).unwrap()
    }

    #[test]
    fn the_same_devices_in_the_same_order_match() {
        let here = [
            disk("socket=/b.sock,id=disk0"),
            disk("socket=/c.sock,id=disk1"),
        ];
        let saved: Vec<SavedVhostDevice> =
            [disk("socket=/a.sock,id=disk0"), disk("socket=/x,id=disk1")]
                .iter()
                .map(SavedVhostDevice::from)
                .collect();
        assert_eq!(match_devices(&saved, &here), Ok(()));
        assert_eq!(match_devices(&[], &[]), Ok(()));
    }

    #[test]
    fn a_missing_extra_or_different_device_is_named() {
        let saved = vec![SavedVhostDevice::from(&disk("socket=/a,id=disk0"))];
        let e = match_devices(&saved, &[]).unwrap_err();
        assert!(e.contains("has vhost-user device 'disk0'"), "{e}");
        let e = match_devices(&[], &[disk("socket=/a,id=disk0")]).unwrap_err();
        assert!(e.contains("'disk0' is not in the incoming VM"), "{e}");
        let e = match_devices(&saved, &[disk("socket=/a,id=disk0,readonly=on")]).unwrap_err();
        assert!(e.contains("read_only: true"), "{e}");
        let e = match_devices(&saved, &[disk("socket=/a,id=disk0,queue_size=256")]).unwrap_err();
        assert!(e.contains("queue size 256"), "{e}");
        assert!(
            describe(&saved).starts_with("disk0"),
            "{}",
            describe(&saved)
        );
        assert_eq!(describe(&[]), "no vhost-user devices");
    }
}
