//! How vCPUs and devices tell the owning loop that the VM must stop.
//!
//! The first request wins; later ones are ignored until [`ExitSignal::clear`]. The owner can
//! block in [`ExitSignal::wait`] or poll the eventfd from its own epoll loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// Why the guest stopped (the normal outcomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The guest asked for a reset (ACPI reset register, i8042 0xFE, triple fault, KVM reset
    /// event). Boot again.
    Reboot,
}

/// A stop request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopRequest {
    /// Normal guest-initiated stop.
    Guest(ExitReason),
    /// A vCPU hit something it cannot continue from.
    Fatal {
        /// vCPU index.
        vcpu: u8,
        /// What happened.
        reason: String,
    },
    /// The VMM asked (e.g. an API call); not from the guest.
    Host,
}

struct Inner {
    state: Mutex<Option<StopRequest>>,
    pending: AtomicBool,
    cond: Condvar,
    evt: EventFd,
}

/// Shared stop flag + wakeup; cheap to clone.
#[derive(Clone)]
pub struct ExitSignal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ExitSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitSignal")
            .field("pending", &self.pending())
            .finish()
    }
}

impl ExitSignal {
    /// A fresh signal with nothing pending.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(None),
                pending: AtomicBool::new(false),
                cond: Condvar::new(),
                evt: EventFd::new(libc::EFD_NONBLOCK)?,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Option<StopRequest>> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Post a request; ignored if one is already pending.
    pub fn request(&self, request: StopRequest) {
        let mut s = self.state();
        if s.is_none() {
            log::info!("stop requested: {request:?}");
            *s = Some(request);
            self.inner.pending.store(true, Ordering::Release);
            // A full eventfd counter only happens after 2^64-1 writes; nothing to do then.
            let _ = self.inner.evt.write(1);
            self.inner.cond.notify_all();
        }
    }

    /// The pending request, if any.
    pub fn pending(&self) -> Option<StopRequest> {
        self.state().clone()
    }

    /// Cheap check (no lock) whether a request is pending.
    pub fn is_pending(&self) -> bool {
        self.inner.pending.load(Ordering::Acquire)
    }

    /// Block until a request is pending and return it (it stays pending).
    pub fn wait(&self) -> StopRequest {
        let mut s = self.state();
        loop {
            if let Some(r) = s.as_ref() {
                return r.clone();
            }
            s = self.inner.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Readable when a request is pending (for an epoll loop).
    pub fn eventfd(&self) -> &EventFd {
        &self.inner.evt
    }

    /// Forget the pending request (before booting again).
    pub fn clear(&self) {
        let mut s = self.state();
        *s = None;
        self.inner.pending.store(false, Ordering::Release);
        // EAGAIN when the counter is already zero is fine.
        let _ = self.inner.evt.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_wins_until_cleared() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.pending(), None);
        s.request(StopRequest::Guest(ExitReason::Reboot));
        s.request(StopRequest::Guest(ExitReason::Poweroff));
        assert_eq!(s.wait(), StopRequest::Guest(ExitReason::Reboot));
        assert_eq!(s.eventfd().read().unwrap(), 1);
        s.clear();
        assert_eq!(s.pending(), None);
        s.request(StopRequest::Guest(ExitReason::Poweroff));
        assert_eq!(s.pending(), Some(StopRequest::Guest(ExitReason::Poweroff)));
    }

    #[test]
    fn wait_wakes_on_request_from_another_thread() {
        let s = ExitSignal::new().unwrap();
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait());
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.request(StopRequest::Host);
        assert_eq!(t.join().unwrap(), StopRequest::Host);
    }
}
