//! Turning successive samples of a memory device into events: what changed, and whether the
//! guest follows the requested size. Pure logic, tested without KVM.

use std::time::{Duration, Instant};

use api::model::{DriverState, EventKind, MemoryDeviceStatus, NotFollowingReason};
use virtio_mem::{ResponseCounters, Stats};

/// When events are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSettings {
    /// Requested ≠ plugged with no progress for this long is "guest not following".
    pub not_following_after: Duration,
    /// At most one plugged-size event per device per this interval.
    pub plugged_event_interval: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            not_following_after: Duration::from_secs(10),
            plugged_event_interval: Duration::from_secs(1),
        }
    }
}

/// What one sample of a device holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSample {
    /// The status as the API reports it.
    pub status: MemoryDeviceStatus,
    /// BUSY and NACK answers to PLUG, UNPLUG and UNPLUG_ALL so far.
    pub refusals: u64,
}

impl DeviceSample {
    /// A sample from a status and the device counters.
    pub fn new(status: MemoryDeviceStatus, stats: &Stats) -> Self {
        let refused = |c: &ResponseCounters| c.busy + c.nack;
        DeviceSample {
            status,
            refusals: refused(&stats.plug) + refused(&stats.unplug) + refused(&stats.unplug_all),
        }
    }
}

/// Follows one device from sample to sample.
#[derive(Debug)]
pub struct DeviceTracker {
    last: DeviceSample,
    /// Plugged size in the last plugged-size event (or at start).
    reported_plugged_bytes: u64,
    last_plugged_event: Option<Instant>,
    /// Last time plugged or requested moved.
    last_progress: Instant,
    refusals_at_progress: u64,
    not_following_reported: bool,
}

impl DeviceTracker {
    /// Starts tracking at `sample`.
    pub fn new(sample: DeviceSample, now: Instant) -> Self {
        DeviceTracker {
            reported_plugged_bytes: sample.status.plugged_bytes,
            refusals_at_progress: sample.refusals,
            last: sample,
            last_plugged_event: None,
            last_progress: now,
            not_following_reported: false,
        }
    }

    /// The events between the last sample and `sample`.
    pub fn update(
        &mut self,
        sample: DeviceSample,
        now: Instant,
        settings: &EventSettings,
        vm_paused: bool,
    ) -> Vec<EventKind> {
        let mut events = Vec::new();
        let device = sample.status.id.clone();
        let (old, new) = (&self.last.status, &sample.status);
        if new.requested_bytes != old.requested_bytes {
            events.push(EventKind::RequestedSizeChanged {
                device: device.clone(),
                from_bytes: old.requested_bytes,
                to_bytes: new.requested_bytes,
            });
        }
        if new.requested_bytes != old.requested_bytes || new.plugged_bytes != old.plugged_bytes {
            self.last_progress = now;
            self.refusals_at_progress = sample.refusals;
            self.not_following_reported = false;
        }
        if new.slots_mapped != old.slots_mapped {
            let (count, mapped) = (
                new.slots_mapped.abs_diff(old.slots_mapped),
                new.slots_mapped > old.slots_mapped,
            );
            let (slots_mapped, mapped_bytes) = (new.slots_mapped, new.mapped_bytes);
            events.push(if mapped {
                EventKind::SlotMapped {
                    device: device.clone(),
                    count,
                    slots_mapped,
                    mapped_bytes,
                }
            } else {
                EventKind::SlotUnmapped {
                    device: device.clone(),
                    count,
                    slots_mapped,
                    mapped_bytes,
                }
            });
        }
        let reached = new.plugged_bytes == new.requested_bytes;
        let plugged_due = self
            .last_plugged_event
            .is_none_or(|at| now.duration_since(at) >= settings.plugged_event_interval);
        if new.plugged_bytes != self.reported_plugged_bytes && (plugged_due || reached) {
            events.push(EventKind::PluggedSizeChanged {
                device: device.clone(),
                from_bytes: self.reported_plugged_bytes,
                to_bytes: new.plugged_bytes,
                requested_bytes: new.requested_bytes,
            });
            self.reported_plugged_bytes = new.plugged_bytes;
            self.last_plugged_event = Some(now);
            if reached {
                events.push(EventKind::ResizeCompleted {
                    device: device.clone(),
                    plugged_bytes: new.plugged_bytes,
                });
            }
        }
        let broken = |s: DriverState| matches!(s, DriverState::NeedsReset | DriverState::Broken);
        if broken(new.driver_state) && !broken(old.driver_state) {
            events.push(EventKind::DeviceBroken {
                device: device.clone(),
                driver_state: new.driver_state,
            });
        }
        let stalled = now.duration_since(self.last_progress);
        if !reached && !self.not_following_reported && stalled >= settings.not_following_after {
            let reason = if vm_paused {
                NotFollowingReason::VmPaused
            } else if broken(new.driver_state) {
                NotFollowingReason::DeviceBroken
            } else if new.driver_state == DriverState::NotSeen {
                NotFollowingReason::DriverNotProbed
            } else if sample.refusals > self.refusals_at_progress {
                NotFollowingReason::BusyNackLoop
            } else {
                NotFollowingReason::NoRequests
            };
            events.push(EventKind::GuestNotFollowing {
                device,
                requested_bytes: new.requested_bytes,
                plugged_bytes: new.plugged_bytes,
                stalled_ms: u64::try_from(stalled.as_millis()).unwrap_or(u64::MAX),
                reason,
            });
            self.not_following_reported = true;
        }
        self.last = sample;
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn sample(requested: u64, plugged: u64, slots: usize, driver: DriverState) -> DeviceSample {
        DeviceSample {
            status: MemoryDeviceStatus {
                id: "mem0".into(),
                guest_addr: 1 << 32,
                block_size_bytes: 2 << 20,
                region_bytes: 64 * GIB,
                usable_region_bytes: 64 * GIB,
                requested_bytes: requested,
                plugged_bytes: plugged,
                slots_total: 29,
                slots_mapped: slots,
                mapped_bytes: slots as u64 * GIB,
                slot_policy: "adaptive".into(),
                legacy_mapping: false,
                driver_state: driver,
                last_request_age_ms: None,
                node: None,
            },
            refusals: 0,
        }
    }

    fn names(events: &[EventKind]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                serde_json::to_value(e).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    const SETTINGS: EventSettings = EventSettings {
        not_following_after: Duration::from_secs(5),
        plugged_event_interval: Duration::from_secs(1),
    };

    #[test]
    fn a_grow_reports_request_slots_progress_and_completion() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = DeviceTracker::new(sample(GIB, GIB, 1, DriverState::Active), t0);
        let e = t.update(
            sample(4 * GIB, GIB, 1, DriverState::Active),
            ms(50),
            &SETTINGS,
            false,
        );
        assert_eq!(names(&e), ["requested-size-changed"]);
        let e = t.update(
            sample(4 * GIB, 2 * GIB, 2, DriverState::Active),
            ms(100),
            &SETTINGS,
            false,
        );
        assert_eq!(names(&e), ["slot-mapped", "plugged-size-changed"]);
        // Within the interval: no plugged event, but the slot change is reported.
        let e = t.update(
            sample(4 * GIB, 3 * GIB, 3, DriverState::Active),
            ms(300),
            &SETTINGS,
            false,
        );
        assert_eq!(names(&e), ["slot-mapped"]);
        // Reaching the target flushes the plugged size at once.
        let e = t.update(
            sample(4 * GIB, 4 * GIB, 4, DriverState::Active),
            ms(400),
            &SETTINGS,
            false,
        );
        assert_eq!(
            names(&e),
            ["slot-mapped", "plugged-size-changed", "resize-completed"]
        );
        assert_eq!(
            e[1],
            EventKind::PluggedSizeChanged {
                device: "mem0".into(),
                from_bytes: 2 * GIB,
                to_bytes: 4 * GIB,
                requested_bytes: 4 * GIB
            }
        );
        let e = t.update(
            sample(GIB, GIB, 1, DriverState::Active),
            ms(2000),
            &SETTINGS,
            false,
        );
        assert_eq!(
            names(&e),
            [
                "requested-size-changed",
                "slot-unmapped",
                "plugged-size-changed",
                "resize-completed"
            ]
        );
    }

    #[test]
    fn a_guest_without_a_driver_is_reported_once_as_not_probed() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut t = DeviceTracker::new(sample(0, 0, 0, DriverState::NotSeen), t0);
        assert!(
            t.update(
                sample(2 * GIB, 0, 0, DriverState::NotSeen),
                s(1),
                &SETTINGS,
                false
            )
            .len()
                == 1
        );
        assert!(
            t.update(
                sample(2 * GIB, 0, 0, DriverState::NotSeen),
                s(5),
                &SETTINGS,
                false
            )
            .is_empty()
        );
        let e = t.update(
            sample(2 * GIB, 0, 0, DriverState::NotSeen),
            s(6),
            &SETTINGS,
            false,
        );
        assert_eq!(
            e,
            [EventKind::GuestNotFollowing {
                device: "mem0".into(),
                requested_bytes: 2 * GIB,
                plugged_bytes: 0,
                stalled_ms: 5000,
                reason: NotFollowingReason::DriverNotProbed
            }]
        );
        assert!(
            t.update(
                sample(2 * GIB, 0, 0, DriverState::NotSeen),
                s(20),
                &SETTINGS,
                false
            )
            .is_empty()
        );
        // Progress re-arms the detector.
        t.update(
            sample(2 * GIB, GIB, 1, DriverState::Active),
            s(21),
            &SETTINGS,
            false,
        );
        let e = t.update(
            sample(2 * GIB, GIB, 1, DriverState::Active),
            s(27),
            &SETTINGS,
            false,
        );
        assert_eq!(names(&e), ["guest-not-following"]);
    }

    #[test]
    fn the_reason_names_busy_loops_broken_devices_and_pauses() {
        let t0 = Instant::now();
        let reason = |later: DeviceSample, paused: bool| {
            let mut t = DeviceTracker::new(sample(2 * GIB, GIB, 1, DriverState::Active), t0);
            let e = t.update(later, t0 + Duration::from_secs(6), &SETTINGS, paused);
            match e.last() {
                Some(EventKind::GuestNotFollowing { reason, .. }) => *reason,
                other => panic!("{other:?}"),
            }
        };
        let mut busy = sample(2 * GIB, GIB, 1, DriverState::Active);
        busy.refusals = 40;
        assert_eq!(reason(busy, false), NotFollowingReason::BusyNackLoop);
        assert_eq!(
            reason(sample(2 * GIB, GIB, 1, DriverState::NeedsReset), false),
            NotFollowingReason::DeviceBroken
        );
        assert_eq!(
            reason(sample(2 * GIB, GIB, 1, DriverState::Active), true),
            NotFollowingReason::VmPaused
        );
        assert_eq!(
            reason(sample(2 * GIB, GIB, 1, DriverState::Active), false),
            NotFollowingReason::NoRequests
        );
    }

    #[test]
    fn a_device_that_breaks_is_reported_once() {
        let t0 = Instant::now();
        let mut t = DeviceTracker::new(sample(GIB, GIB, 1, DriverState::Active), t0);
        let e = t.update(
            sample(GIB, GIB, 1, DriverState::NeedsReset),
            t0,
            &SETTINGS,
            false,
        );
        assert_eq!(
            e,
            [EventKind::DeviceBroken {
                device: "mem0".into(),
                driver_state: DriverState::NeedsReset
            }]
        );
        assert!(
            t.update(
                sample(GIB, GIB, 1, DriverState::NeedsReset),
                t0,
                &SETTINGS,
                false
            )
            .is_empty()
        );
    }
}
