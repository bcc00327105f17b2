//! The monitor: samples every memory device every [`MonitorSettings::sample_interval`], turns
//! changes into events ([`crate::events`]), keeps the last ones and fans them out to the
//! subscribers of `GET /v1/events`. Each subscriber has a bounded queue: one that reads too
//! slowly loses events (counted, and told with an `events-dropped` line), never blocks the
//! monitor, the VM or other subscribers. Waiters (a resize with `wait`) sleep on the monitor's
//! tick.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use api::model::{DriverState, Event, EventKind, MemoryDeviceStatus, VmState};
use api::{ApiError, LineStream, StreamItem};

use crate::devices::{MemTransport, SharedMemoryDevice};
use crate::events::{DeviceSample, DeviceTracker, EventSettings};
use crate::shared_device::lock_or_recover;

/// Virtio device status bits the driver sets.
const STATUS_NEEDS_RESET: u8 = 0x40;
const STATUS_FAILED: u8 = 0x80;

/// How the monitor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorSettings {
    /// Time between samples.
    pub sample_interval: Duration,
    /// When events are due.
    pub events: EventSettings,
    /// Events kept for late subscribers.
    pub history_len: usize,
    /// Lines a subscriber may have unread before further events are dropped for it.
    pub subscriber_queue_len: usize,
    /// Subscribers at once.
    pub max_subscribers: usize,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        MonitorSettings {
            sample_interval: Duration::from_millis(50),
            events: EventSettings::default(),
            history_len: 512,
            subscriber_queue_len: 1024,
            max_subscribers: 16,
        }
    }
}

/// The status of a device behind its transport: the device's view plus what the transport
/// knows of the driver (it set FAILED, or the transport needs a reset).
pub fn device_status(transport: &MemTransport) -> MemoryDeviceStatus {
    let mut status = transport.device().api_status();
    let bits = transport.device_status();
    if status.driver_state != DriverState::NeedsReset {
        if bits & STATUS_NEEDS_RESET != 0 {
            status.driver_state = DriverState::NeedsReset;
        } else if bits & STATUS_FAILED != 0 {
            status.driver_state = DriverState::Broken;
        }
    }
    status
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    lock_or_recover(m, "monitor")
}

/// One subscriber's queue.
#[derive(Debug, Default)]
struct Queue {
    lines: VecDeque<Arc<str>>,
    dropped: u64,
    closed: bool,
}

#[derive(Debug, Default)]
struct Subscriber {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// Everything behind the hub lock.
struct Hub {
    seq: u64,
    history: VecDeque<(u64, Arc<str>)>,
    subscribers: Vec<Arc<Subscriber>>,
    trackers: Vec<Option<DeviceTracker>>,
    vm_state: VmState,
}

struct Shared {
    devices: Vec<SharedMemoryDevice>,
    started: Instant,
    settings: MonitorSettings,
    hub: Mutex<Hub>,
    /// Samples taken; waiters sleep on `tick` until it moves.
    ticks: Mutex<u64>,
    tick: Condvar,
    dropped_total: AtomicU64,
    stopping: AtomicBool,
}

/// Samples devices, emits events, serves subscribers and waiters. Cheap to clone.
#[derive(Clone)]
pub struct Monitor(Arc<Shared>);

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("devices", &self.0.devices.len())
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// A monitor of `devices`; nothing is sampled until [`Monitor::spawn`] or
    /// [`Monitor::sample_now`].
    pub fn new(
        devices: Vec<SharedMemoryDevice>,
        started: Instant,
        settings: MonitorSettings,
    ) -> Self {
        let trackers = devices.iter().map(|_| None).collect();
        Monitor(Arc::new(Shared {
            devices,
            started,
            settings,
            hub: Mutex::new(Hub {
                seq: 0,
                history: VecDeque::new(),
                subscribers: Vec::new(),
                trackers,
                vm_state: VmState::Booting,
            }),
            ticks: Mutex::new(0),
            tick: Condvar::new(),
            dropped_total: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }))
    }

    /// Starts the sampling thread; it ends when the last clone of the monitor is dropped or
    /// [`Monitor::stop`] is called.
    pub fn spawn(&self) -> std::io::Result<()> {
        let weak: Weak<Shared> = Arc::downgrade(&self.0);
        let interval = self.0.settings.sample_interval;
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || {
                sandbox::enter_or_abort(sandbox::ThreadKind::Monitor);
                while let Some(shared) = weak.upgrade() {
                    if shared.stopping.load(Ordering::Acquire) {
                        break;
                    }
                    Monitor(shared).sample_now();
                    std::thread::sleep(interval);
                }
            })?;
        Ok(())
    }

    /// Stops the sampling thread and ends every subscription.
    pub fn stop(&self) {
        self.0.stopping.store(true, Ordering::Release);
        let hub = lock(&self.0.hub);
        for s in &hub.subscribers {
            lock(&s.queue).closed = true;
            s.ready.notify_all();
        }
    }

    /// Milliseconds since the VMM started.
    pub fn uptime_ms(&self) -> u64 {
        u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The memory devices.
    pub fn devices(&self) -> &[SharedMemoryDevice] {
        &self.0.devices
    }

    /// Samples every device now and emits what changed; wakes waiters.
    ///
    /// Devices are read from their published status, before the hub is locked: a device busy
    /// serving its queue holds up neither the monitor nor the API.
    pub fn sample_now(&self) {
        let samples: Vec<DeviceSample> = self
            .0
            .devices
            .iter()
            .map(|d| DeviceSample::new(d.status(), &d.stats()))
            .collect();
        let mut hub = lock(&self.0.hub);
        let now = Instant::now();
        let paused = hub.vm_state == VmState::Paused;
        let mut events = Vec::new();
        for (i, sample) in samples.into_iter().enumerate() {
            match &mut hub.trackers[i] {
                Some(tracker) => {
                    events.extend(tracker.update(sample, now, &self.0.settings.events, paused));
                }
                slot @ None => *slot = Some(DeviceTracker::new(sample, now)),
            }
        }
        for kind in events {
            self.emit_locked(&mut hub, kind);
        }
        drop(hub);
        *lock(&self.0.ticks) += 1;
        self.0.tick.notify_all();
    }

    /// The VM's state.
    pub fn vm_state(&self) -> VmState {
        lock(&self.0.hub).vm_state
    }

    /// Records a VM state change (an event when it differs).
    pub fn set_vm_state(&self, state: VmState) {
        let mut hub = lock(&self.0.hub);
        if hub.vm_state != state {
            hub.vm_state = state;
            self.emit_locked(&mut hub, EventKind::VmStateChanged { state });
        }
    }

    /// Emits one event.
    pub fn emit(&self, kind: EventKind) {
        let mut hub = lock(&self.0.hub);
        self.emit_locked(&mut hub, kind);
    }

    fn emit_locked(&self, hub: &mut Hub, kind: EventKind) {
        hub.seq += 1;
        let event = Event {
            seq: hub.seq,
            uptime_ms: self.uptime_ms(),
            kind,
        };
        let Ok(json) = serde_json::to_string(&event) else {
            return;
        };
        log::debug!("event {json}");
        let line: Arc<str> = json.into();
        hub.history.push_back((event.seq, line.clone()));
        while hub.history.len() > self.0.settings.history_len {
            hub.history.pop_front();
        }
        let cap = self.0.settings.subscriber_queue_len;
        hub.subscribers.retain(|s| {
            let mut q = lock(&s.queue);
            if q.closed {
                return false;
            }
            if q.lines.len() >= cap {
                q.dropped += 1;
                self.0.dropped_total.fetch_add(1, Ordering::Relaxed);
            } else {
                q.lines.push_back(line.clone());
                s.ready.notify_one();
            }
            true
        });
    }

    /// Events with `seq >= since_seq` still kept, then (with `follow`) every new one.
    pub fn subscribe(&self, since_seq: u64, follow: bool) -> Result<Subscription, ApiError> {
        let mut hub = lock(&self.0.hub);
        let backlog: VecDeque<Arc<str>> = hub
            .history
            .iter()
            .filter(|(seq, _)| *seq >= since_seq)
            .map(|(_, line)| line.clone())
            .collect();
        let subscriber = Arc::new(Subscriber::default());
        lock(&subscriber.queue).lines = backlog;
        if follow {
            hub.subscribers.retain(|s| !lock(&s.queue).closed);
            if hub.subscribers.len() >= self.0.settings.max_subscribers {
                return Err(ApiError {
                    status: 503,
                    message: format!(
                        "{} event subscribers already; close one and retry",
                        self.0.settings.max_subscribers
                    ),
                });
            }
            hub.subscribers.push(subscriber.clone());
        } else {
            lock(&subscriber.queue).closed = true;
        }
        Ok(Subscription { subscriber })
    }

    /// Current subscribers and events dropped for slow ones so far.
    pub fn subscriber_stats(&self) -> (usize, u64) {
        let mut hub = lock(&self.0.hub);
        hub.subscribers.retain(|s| !lock(&s.queue).closed);
        (
            hub.subscribers.len(),
            self.0.dropped_total.load(Ordering::Relaxed),
        )
    }

    /// Calls `check` after every sample until it answers `Some`, or `timeout` passes (`None`).
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut ticks = *lock(&self.0.ticks);
        loop {
            if let Some(done) = check() {
                return Some(done);
            }
            let mut guard = lock(&self.0.ticks);
            while *guard == ticks {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    drop(guard);
                    return check();
                }
                guard = self
                    .0
                    .tick
                    .wait_timeout(guard, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            ticks = *guard;
        }
    }
}

/// One reader of the event stream.
#[derive(Debug)]
pub struct Subscription {
    subscriber: Arc<Subscriber>,
}

impl LineStream for Subscription {
    fn next_line(&mut self, timeout: Duration) -> StreamItem {
        let s = &self.subscriber;
        let mut q = lock(&s.queue);
        if q.lines.is_empty() && q.dropped == 0 && !q.closed {
            q = s
                .ready
                .wait_timeout(q, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if q.dropped > 0 {
            let count = std::mem::take(&mut q.dropped);
            let event = Event {
                seq: 0,
                uptime_ms: 0,
                kind: EventKind::EventsDropped { count },
            };
            return StreamItem::Line(serde_json::to_string(&event).unwrap_or_default());
        }
        match q.lines.pop_front() {
            Some(line) => StreamItem::Line(line.to_string()),
            None if q.closed => StreamItem::End,
            None => StreamItem::Idle,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.subscriber.queue).closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor(queue_len: usize) -> Monitor {
        Monitor::new(
            Vec::new(),
            Instant::now(),
            MonitorSettings {
                subscriber_queue_len: queue_len,
                history_len: 4,
                max_subscribers: 2,
                ..MonitorSettings::default()
            },
        )
    }

    fn line(item: StreamItem) -> Event {
        match item {
            StreamItem::Line(l) => serde_json::from_str(&l).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    const SHORT: Duration = Duration::from_millis(10);

    #[test]
    fn subscribers_get_the_backlog_then_live_events_in_order() {
        let m = monitor(16);
        m.set_vm_state(VmState::Running);
        let mut sub = m.subscribe(0, true).unwrap();
        m.set_vm_state(VmState::Paused);
        let first = line(sub.next_line(SHORT));
        assert_eq!(
            (first.seq, first.kind),
            (
                1,
                EventKind::VmStateChanged {
                    state: VmState::Running
                }
            )
        );
        assert_eq!(line(sub.next_line(SHORT)).seq, 2);
        assert_eq!(sub.next_line(SHORT), StreamItem::Idle);
        let mut late = m.subscribe(2, true).unwrap();
        assert_eq!(line(late.next_line(SHORT)).seq, 2);
    }

    #[test]
    fn a_slow_subscriber_loses_events_and_is_told_how_many_others_lose_none() {
        let m = monitor(2);
        let mut slow = m.subscribe(0, true).unwrap();
        let mut fast = m.subscribe(0, true).unwrap();
        for state in [
            VmState::Running,
            VmState::Paused,
            VmState::Running,
            VmState::Paused,
            VmState::Running,
        ] {
            m.set_vm_state(state);
            assert!(matches!(fast.next_line(SHORT), StreamItem::Line(_)));
        }
        assert_eq!(
            line(slow.next_line(SHORT)).kind,
            EventKind::EventsDropped { count: 3 }
        );
        assert_eq!(line(slow.next_line(SHORT)).seq, 1);
        assert_eq!(line(slow.next_line(SHORT)).seq, 2);
        assert_eq!(slow.next_line(SHORT), StreamItem::Idle);
        assert_eq!(m.subscriber_stats(), (2, 3));
    }

    #[test]
    fn without_follow_the_stream_ends_after_the_kept_events_and_limits_apply() {
        let m = monitor(16);
        for state in [
            VmState::Running,
            VmState::Paused,
            VmState::Running,
            VmState::Paused,
            VmState::Running,
        ] {
            m.set_vm_state(state);
        }
        let mut once = m.subscribe(0, false).unwrap();
        let seqs: Vec<u64> = std::iter::from_fn(|| match once.next_line(SHORT) {
            StreamItem::Line(l) => Some(serde_json::from_str::<Event>(&l).unwrap().seq),
            _ => None,
        })
        .collect();
        assert_eq!(seqs, [2, 3, 4, 5], "history keeps the last 4");
        assert_eq!(once.next_line(SHORT), StreamItem::End);
        let a = m.subscribe(0, true).unwrap();
        let _b = m.subscribe(0, true).unwrap();
        assert_eq!(m.subscribe(0, true).unwrap_err().status, 503);
        drop(a);
        assert!(
            m.subscribe(0, true).is_ok(),
            "a closed subscription frees its place"
        );
    }

    #[test]
    fn stop_ends_subscriptions_and_wait_for_times_out_or_succeeds() {
        let m = monitor(16);
        let mut sub = m.subscribe(0, true).unwrap();
        m.stop();
        assert_eq!(sub.next_line(SHORT), StreamItem::End);
        let started = Instant::now();
        assert_eq!(m.wait_for(Duration::from_millis(30), || None::<()>), None);
        assert!(started.elapsed() >= Duration::from_millis(30));
        let mut calls = 0;
        let ticker = m.clone();
        let t = std::thread::spawn(move || {
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(5));
                ticker.sample_now();
            }
        });
        let got = m.wait_for(Duration::from_secs(5), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(got, Some(3));
        t.join().unwrap();
    }
}
