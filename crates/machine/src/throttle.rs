//! Slowing the vCPUs down, for live migration's auto-converge: at `p` % each vCPU sleeps
//! `p / (100 - p)` times as long as it ran, once it has run a [`TIMESLICE`] (50 %: 10 ms of
//! sleep per 10 ms of running; 99 %: 990 ms). A guest busy writing memory may never leave KVM_RUN by itself
//! (its timer interrupts and halts stay in the kernel), so while throttled every vCPU arms a
//! POSIX timer of its own that sends it the kick signal once per timeslice.
//!
//! [`VcpuThrottle`] is the handle any thread may hold; [`VcpuThrottle::set_percent`] returns
//! once every running vCPU has seen the new value (it kicks them until they have).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::Error;

/// Running time between two sleeps of a throttled vCPU.
pub const TIMESLICE: Duration = Duration::from_millis(10);
/// Largest throttle (a vCPU then runs 1 % of the time).
pub const MAX_PERCENT: u8 = 99;
/// Longest a throttled vCPU sleeps before it looks at its stop flag again.
const SLEEP_CHUNK: Duration = Duration::from_millis(5);
/// How long `set_percent` kicks vCPUs that have not seen a new value yet.
const ACK_TIMEOUT: Duration = Duration::from_millis(500);

/// A vCPU thread while it runs: its thread and the throttle it last saw.
struct Running {
    thread: libc::pthread_t,
    seen: Arc<AtomicU8>,
}

#[derive(Default)]
struct Inner {
    percent: AtomicU8,
    running: Mutex<Vec<Running>>,
}

/// The vCPUs' throttle (0 = off); cheap to clone.
#[derive(Clone, Default)]
pub struct VcpuThrottle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for VcpuThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuThrottle")
            .field("percent", &self.percent())
            .finish_non_exhaustive()
    }
}

impl VcpuThrottle {
    /// The throttle now.
    pub fn percent(&self) -> u8 {
        self.inner.percent.load(Ordering::Acquire)
    }

    /// Sets the throttle (0 turns it off) and kicks every running vCPU until it has seen the
    /// value (a kick that lands just before a vCPU enters KVM_RUN is lost, so once is not
    /// enough). More than [`MAX_PERCENT`] is refused.
    pub fn set_percent(&self, percent: u8) -> Result<(), Error> {
        let kick_signal = crate::machine::kick_signal();
        if percent > MAX_PERCENT {
            return Err(Error::Config(format!(
                "vCPU throttle {percent} % is above {MAX_PERCENT} %"
            )));
        }
        self.inner.percent.store(percent, Ordering::Release);
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            let behind = {
                let running = self.running();
                let mut behind = 0;
                for r in running
                    .iter()
                    .filter(|r| r.seen.load(Ordering::Acquire) != percent)
                {
                    behind += 1;
                    // SAFETY: a thread stays in `running` until it deregisters itself, under
                    // this lock, before it ends: the id names a live thread.
                    unsafe { libc::pthread_kill(r.thread, kick_signal) };
                }
                behind
            };
            if behind == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                log::warn!(
                    "{behind} vCPU(s) did not see throttle {percent} % within {ACK_TIMEOUT:?}"
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn running(&self) -> MutexGuard<'_, Vec<Running>> {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the calling vCPU thread until the returned pacer is dropped.
    pub(crate) fn pacer(&self) -> Pacer {
        let seen = Arc::new(AtomicU8::new(0));
        self.running().push(Running {
            // SAFETY: pthread_self has no preconditions.
            thread: unsafe { libc::pthread_self() },
            seen: seen.clone(),
        });
        Pacer {
            throttle: self.clone(),
            seen,
            timer: None,
            armed: false,
            slice_start: Instant::now(),
        }
    }
}

/// One vCPU thread's side of the throttle: its timer and when its timeslice began.
pub(crate) struct Pacer {
    throttle: VcpuThrottle,
    seen: Arc<AtomicU8>,
    timer: Option<libc::timer_t>,
    armed: bool,
    slice_start: Instant,
}

impl Pacer {
    /// Called before every KVM_RUN: arms or disarms the timer for the throttle now and, once
    /// a timeslice has run, sleeps its share (returning early when `stopping` says so).
    pub(crate) fn pace(&mut self, stopping: &dyn Fn() -> bool) {
        let percent = self.throttle.percent();
        self.set_timer(percent > 0);
        self.seen.store(percent, Ordering::Release);
        if percent == 0 {
            self.slice_start = Instant::now();
            return;
        }
        let ran = self.slice_start.elapsed();
        if ran < TIMESLICE {
            return;
        }
        // In proportion to the time really run (the timer's ticks are not in phase with the
        // slice), but never more than the share of two slices.
        let ratio = f64::from(percent) / f64::from(100 - percent);
        let until = Instant::now() + ran.min(2 * TIMESLICE).mul_f64(ratio);
        while !stopping() && self.throttle.percent() != 0 {
            let now = Instant::now();
            if now >= until {
                break;
            }
            std::thread::sleep((until - now).min(SLEEP_CHUNK));
        }
        self.slice_start = Instant::now();
    }

    /// Arms (once per timeslice, periodic) or disarms this thread's kick timer.
    fn set_timer(&mut self, armed: bool) {
        if armed == self.armed {
            return;
        }
        let Some(timer) = self.timer.or_else(|| self.create_timer()) else {
            return;
        };
        self.timer = Some(timer);
        let period = if armed {
            libc::timespec {
                tv_sec: 0,
                tv_nsec: TIMESLICE.as_nanos() as libc::c_long,
            }
        } else {
            libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }
        };
        let spec = libc::itimerspec {
            it_interval: period,
            it_value: period,
        };
        // SAFETY: `timer` was created by this thread and not deleted; `spec` is a valid value.
        let ret = unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) };
        if ret == 0 {
            self.armed = armed;
        } else {
            log::warn!("vCPU throttle timer: {}", std::io::Error::last_os_error());
        }
    }

    /// A timer that sends this thread (not the process) the kick signal.
    fn create_timer(&self) -> Option<libc::timer_t> {
        // SAFETY: an all-zero sigevent is a valid value; the fields used are set below.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = crate::machine::kick_signal();
        // SAFETY: gettid has no preconditions.
        event.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `event` and `timer` are valid for the call; the timer is deleted on drop.
        let ret = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) };
        if ret != 0 {
            log::warn!(
                "vCPU throttle timer: {}; the guest is throttled only when it exits",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(timer)
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            // SAFETY: created by this thread, deleted once.
            unsafe { libc::timer_delete(timer) };
        }
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        // SAFETY: comparing thread ids has no preconditions.
        self.throttle
            .running()
            .retain(|r| unsafe { libc::pthread_equal(r.thread, me) } == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_above_99_percent_is_refused_and_changes_nothing() {
        let t = VcpuThrottle::default();
        t.set_percent(40).unwrap();
        assert!(t.set_percent(100).is_err());
        assert_eq!(t.percent(), 40);
    }

    #[test]
    fn set_percent_returns_once_every_registered_thread_has_seen_it() {
        crate::machine::install_kick_handler().unwrap();
        let t = VcpuThrottle::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (t2, stop2) = (t.clone(), stop.clone());
        let (registered, ready) = std::sync::mpsc::channel();
        // Plays a vCPU that only looks at the throttle between exits (every 50 ms here).
        let handle = std::thread::spawn(move || {
            let mut pacer = t2.pacer();
            registered.send(()).unwrap();
            while !stop2.load(Ordering::Acquire) {
                pacer.pace(&|| stop2.load(Ordering::Acquire));
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        ready.recv().unwrap();
        t.set_percent(30).unwrap();
        assert_eq!(t.running()[0].seen.load(Ordering::Acquire), 30);
        t.set_percent(0).unwrap();
        assert_eq!(t.running()[0].seen.load(Ordering::Acquire), 0);
        stop.store(true, Ordering::Release);
        handle.join().unwrap();
        assert!(t.running().is_empty(), "a finished thread deregisters");
    }
}
