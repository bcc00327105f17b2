//! A memory device as the VMM's threads share it, and the VMM's one policy for poisoned locks.
//!
//! **Readers never take the transport lock.** After every request batch, resize, reset and
//! driver register write the device's status is *published* ([`SharedMemoryDevice::publish`]);
//! the API, the monitor and the metrics read that copy, so they keep answering while a
//! notification holds the transport (or a long preallocation runs, see
//! [`crate::notify::serve_notification`]).
//!
//! **Poisoned locks** (a thread panicked while holding one) are handled one way everywhere in the
//! VMM, by [`lock_or_recover`]: logged once, the poison cleared, and the VMM keeps running with
//! the data. A poisoned *device* lock also marks the device broken: its requests are no longer
//! served (its state may be half-updated; the guest's memory stays mapped and intact), the API
//! reports `driver_state: broken`, the monitor emits `device-broken` and
//! `hotmem_memory_device_broken` is 1.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use api::metrics::Histogram;
use api::model::{DriverState, MemoryDeviceStatus};
use hostmem::HostRegion;
use pci::PciBdf;
use virtio_mem::{PopulateJob, Stats};

use crate::devices::MemTransport;
use crate::monitor::device_status;

/// Locks `mutex`; if a thread panicked while holding it, logs that (once: the poison is
/// cleared), calls `on_poison` and carries on with the data.
pub fn lock_or_recover_with<'a, T>(
    mutex: &'a Mutex<T>,
    what: &str,
    on_poison: impl FnOnce(),
) -> MutexGuard<'a, T> {
    mutex.lock().unwrap_or_else(|poisoned| {
        log::error!("{what}: a thread panicked while holding its lock; carrying on with its data");
        mutex.clear_poison();
        on_poison();
        poisoned.into_inner()
    })
}

/// [`lock_or_recover_with`] for locks whose data stays usable after a panic (bookkeeping).
pub fn lock_or_recover<'a, T>(mutex: &'a Mutex<T>, what: &str) -> MutexGuard<'a, T> {
    lock_or_recover_with(mutex, what, || {})
}

/// What the VMM knows about a device's health, shared by the device and its handles.
#[derive(Debug, Default)]
pub struct DeviceHealth {
    broken: AtomicBool,
    system_reset_failures: AtomicU64,
}

impl DeviceHealth {
    /// Whether a thread panicked while holding the device: its requests are not served any more.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
    }

    /// Guest reboots whose discard failed (memory stayed plugged).
    pub fn system_reset_failures(&self) -> u64 {
        self.system_reset_failures.load(Ordering::Relaxed)
    }

    /// Counts a reboot whose discard failed.
    pub fn count_system_reset_failure(&self) {
        self.system_reset_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// The copy readers see.
#[derive(Debug, Clone)]
struct Published {
    status: MemoryDeviceStatus,
    stats: Stats,
    latency: Histogram,
    at: Instant,
}

impl Published {
    fn of(transport: &MemTransport) -> Self {
        Published {
            status: device_status(transport),
            stats: transport.device().stats(),
            latency: transport.device().latency().clone(),
            at: Instant::now(),
        }
    }
}

/// A memory device as the VMM shares it between the PCI bus, the notification thread, the API
/// and the boot loop.
#[derive(Clone)]
pub struct SharedMemoryDevice {
    /// The device id.
    pub id: String,
    /// Where it sits on the PCI bus.
    pub bdf: PciBdf,
    /// The transport (and through it the device). Lock it with [`Self::lock`].
    pub transport: Arc<Mutex<MemTransport>>,
    region: Arc<HostRegion>,
    health: Arc<DeviceHealth>,
    unplugged_accesses: Arc<AtomicU64>,
    published: Arc<Mutex<Published>>,
}

impl std::fmt::Debug for SharedMemoryDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemoryDevice")
            .field("id", &self.id)
            .field("bdf", &self.bdf)
            .finish_non_exhaustive()
    }
}

impl SharedMemoryDevice {
    /// Shares `transport`, at `bdf`, and publishes its status.
    pub fn new(bdf: PciBdf, transport: Arc<Mutex<MemTransport>>) -> Self {
        let (id, region, health, unplugged_accesses, published) = {
            let t = lock_or_recover(&transport, "memory device");
            let device = t.device();
            (
                device.id().to_string(),
                device.region().clone(),
                device.health().clone(),
                device.unplugged_accesses().clone(),
                Published::of(&t),
            )
        };
        SharedMemoryDevice {
            id,
            bdf,
            transport,
            region,
            health,
            unplugged_accesses,
            published: Arc::new(Mutex::new(published)),
        }
    }

    /// Locks the transport; a poisoned lock marks the device broken (see the module docs).
    pub fn lock(&self) -> MutexGuard<'_, MemTransport> {
        lock_or_recover_with(
            &self.transport,
            &format!("memory device '{}'", self.id),
            || self.health.mark_broken(),
        )
    }

    /// The device's health.
    pub fn health(&self) -> &DeviceHealth {
        &self.health
    }

    /// Whether the device is broken (see [`DeviceHealth::is_broken`]).
    pub fn is_broken(&self) -> bool {
        self.health.is_broken()
    }

    /// Publishes the status of `transport` (this device's, locked) for readers.
    pub fn publish(&self, transport: &MemTransport) {
        let now = Published::of(transport);
        *lock_or_recover(&self.published, "published device status") = now;
    }

    /// The device as the API reports it, from the last published status.
    pub fn status(&self) -> MemoryDeviceStatus {
        let p = lock_or_recover(&self.published, "published device status").clone();
        let mut status = p.status;
        let since_ms = u64::try_from(p.at.elapsed().as_millis()).unwrap_or(u64::MAX);
        status.last_request_age_ms = status
            .last_request_age_ms
            .map(|age| age.saturating_add(since_ms));
        if self.is_broken() {
            status.driver_state = DriverState::Broken;
        }
        status
    }

    /// Request and failure counters, as last published.
    pub fn stats(&self) -> Stats {
        lock_or_recover(&self.published, "published device status").stats
    }

    /// Request latency, as last published.
    pub fn latency(&self) -> Histogram {
        lock_or_recover(&self.published, "published device status")
            .latency
            .clone()
    }

    /// Guest accesses to unmapped parts of the region so far.
    pub fn unplugged_accesses(&self) -> u64 {
        self.unplugged_accesses.load(Ordering::Relaxed)
    }

    /// Populates the range of a deferred plug (no lock held: see [`virtio_mem::populate`]).
    pub fn populate(&self, job: PopulateJob) -> hostmem::Result<()> {
        self.region.populate_range(job.offset_bytes, job.size_bytes)
    }
}
