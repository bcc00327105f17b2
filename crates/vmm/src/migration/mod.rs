//! Live migration between hotmem processes, on top of the `migration` crate (protocol,
//! tracker, pre-copy driver) and the snapshot state format.
//!
//! - [`source`]: `PUT /v1/vm/migrate`: the `migration` thread drives pre-copy over the VM's
//!   memory and dirty logs while the guest keeps running — and keeps plugging and unplugging.
//! - `settings`: auto-converge as the request asks it.
//! - [`vhost`]: vhost-user devices across a migration.
//! - [`incoming`]: `hotmem --incoming ADDR`: waits for one migration, receives memory into a
//!   fresh machine and device regions, then restores the devices (mapping only the slots that
//!   hold plugged blocks, under this run's slot policy) and runs the VM.
//! - [`MigrationSlot`]: progress for `GET /v1/vm/migration`, cancel, and the hand-over of the
//!   machine state from the VM thread.

pub mod incoming;
mod settings;
pub mod source;
pub mod timing;
pub mod vhost;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use api::model::{MigrationState, MigrationStatus};
use migration::protocol::CpuFeatureWord;
use snapshot::Component;

use crate::Error;
use crate::shared_device::lock_or_recover;

pub use source::SourceContext;

/// A migration stream: TCP or a Unix socket.
#[derive(Debug)]
pub enum Stream {
    /// `tcp:HOST:PORT`.
    Tcp(TcpStream),
    /// `unix:PATH`.
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// A parsed `tcp:HOST:PORT` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `HOST:PORT`.
    Tcp(String),
    /// A socket path.
    Unix(std::path::PathBuf),
}

impl std::str::FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("tcp", rest))
                if rest
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
            {
                Ok(Address::Tcp(rest.to_string()))
            }
            Some(("unix", path)) if !path.is_empty() => Ok(Address::Unix(path.into())),
            _ => Err(format!("{s:?}: expected tcp:HOST:PORT or unix:PATH")),
        }
    }
}

impl Address {
    /// Connects (source side).
    pub fn connect(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Address::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Address::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
        })
    }

    /// Listens and accepts one connection (destination side).
    pub fn accept_one(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Address::Tcp(a) => {
                let (s, peer) = TcpListener::bind(a)?.accept()?;
                log::info!("incoming migration from {peer}");
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Address::Unix(p) => {
                let _ = std::fs::remove_file(p);
                let listener = UnixListener::bind(p)?;
                let (s, _) = listener.accept()?;
                let _ = std::fs::remove_file(p);
                Stream::Unix(s)
            }
        })
    }
}

/// The CPUID registers a guest relies on, as this host's KVM offers them (both sides compute
/// them the same way; the destination must offer every bit the source does).
pub fn cpu_features() -> Result<Vec<CpuFeatureWord>, Error> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| Error::Config(format!("/dev/kvm: {e}")))?;
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::Config(format!("KVM_GET_SUPPORTED_CPUID: {e}")))?;
    let mut words = Vec::new();
    for (function, index) in [(1u32, 0u32), (7, 0), (7, 1), (0xd, 1), (0x8000_0001, 0)] {
        let Some(e) = cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
        else {
            continue;
        };
        for (reg, bits) in [
            ("eax", e.eax),
            ("ebx", e.ebx),
            ("ecx", e.ecx),
            ("edx", e.edx),
        ] {
            if function == 1 && (reg == "ebx" || reg == "eax") {
                continue; // APIC id, family/model: not features
            }
            words.push(CpuFeatureWord {
                name: format!("leaf_{function:#x}.{index}.{reg}"),
                bits,
            });
        }
    }
    Ok(words)
}

#[derive(Debug)]
struct SlotInner {
    context: Option<Arc<SourceContext>>,
    /// Why the VM cannot be migrated, when it cannot.
    blocker: Option<String>,
    status: MigrationStatus,
    running: bool,
    cancel: Arc<AtomicBool>,
    machine_state: Option<Result<Component, String>>,
    worker: Option<std::sync::mpsc::Sender<source::Job>>,
}

impl Default for SlotInner {
    fn default() -> Self {
        SlotInner {
            context: None,
            blocker: None,
            status: idle_status(),
            running: false,
            cancel: Arc::default(),
            machine_state: None,
            worker: None,
        }
    }
}

/// The status before any migration.
pub fn idle_status() -> MigrationStatus {
    MigrationStatus {
        state: MigrationState::None,
        destination: None,
        round: 0,
        transferred_bytes: 0,
        remaining_bytes: 0,
        dirty_rate_pages_per_s: 0,
        expected_downtime_ms: 0,
        switchover_ms: 0,
        throttle_percent: 0,
        downtime_ms: None,
        downtime_breakdown: None,
        total_ms: 0,
        error: None,
    }
}

/// The VM's migration: what it needs from the VM, its progress and cancel flag.
#[derive(Debug, Default)]
pub struct MigrationSlot(Mutex<SlotInner>);

impl MigrationSlot {
    fn lock(&self) -> MutexGuard<'_, SlotInner> {
        lock_or_recover(&self.0, "migration")
    }

    /// Makes the VM migratable (set once it is built; VMs with vhost-user devices or shared
    /// memory are not).
    pub fn set_context(&self, context: SourceContext) {
        self.lock().context = Some(Arc::new(context));
    }

    /// The context, if the VM is migratable.
    pub fn context(&self) -> Option<Arc<SourceContext>> {
        self.lock().context.clone()
    }

    /// Records why the VM cannot be migrated (instead of a context).
    pub fn set_blocker(&self, reason: String) {
        self.lock().blocker = Some(reason);
    }

    /// Why the VM cannot be migrated, if it was recorded.
    pub fn blocker(&self) -> Option<String> {
        self.lock().blocker.clone()
    }

    /// Progress now.
    pub fn status(&self) -> MigrationStatus {
        self.lock().status.clone()
    }

    /// Updates the progress.
    pub fn update(&self, f: impl FnOnce(&mut MigrationStatus)) {
        f(&mut self.lock().status);
    }

    /// Marks a migration as running and answers its cancel flag; `None` if one already runs.
    pub fn begin(&self, destination: &str) -> Option<Arc<AtomicBool>> {
        let mut s = self.lock();
        if s.running {
            return None;
        }
        s.running = true;
        s.cancel = Arc::default();
        s.status = MigrationStatus {
            state: MigrationState::Setup,
            destination: Some(destination.to_string()),
            ..idle_status()
        };
        Some(s.cancel.clone())
    }

    /// Marks the migration as ended.
    pub fn end(&self) {
        self.lock().running = false;
    }

    /// Asks the running migration to stop; `false` if none runs.
    pub fn cancel(&self) -> bool {
        let s = self.lock();
        if s.running {
            s.cancel.store(true, std::sync::atomic::Ordering::Release);
        }
        s.running
    }

    pub(crate) fn set_worker(&self, jobs: std::sync::mpsc::Sender<source::Job>) {
        self.lock().worker = Some(jobs);
    }

    pub(crate) fn submit(&self, job: source::Job) -> Result<(), String> {
        let s = self.lock();
        let worker = s
            .worker
            .as_ref()
            .ok_or("the migration thread is not running (the VM is not set up yet)")?;
        worker
            .send(job)
            .map_err(|_| "the migration thread has ended".to_string())
    }

    pub(crate) fn set_machine_state(&self, state: Result<Component, String>) {
        self.lock().machine_state = Some(state);
    }

    pub(crate) fn take_machine_state(&self) -> Option<Result<Component, String>> {
        self.lock().machine_state.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_tcp_host_port_or_unix_path() {
        assert_eq!(
            "tcp:127.0.0.1:4444".parse(),
            Ok(Address::Tcp("127.0.0.1:4444".into()))
        );
        assert_eq!(
            "unix:/run/m.sock".parse(),
            Ok(Address::Unix("/run/m.sock".into()))
        );
        for bad in [
            "127.0.0.1:4444",
            "tcp:1.2.3.4",
            "tcp::1",
            "unix:",
            "udp:h:1",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
    }

    #[test]
    fn only_one_migration_runs_at_a_time_and_cancel_reaches_it() {
        let slot = MigrationSlot::default();
        assert!(!slot.cancel(), "nothing to cancel");
        let flag = slot.begin("tcp:h:1").unwrap();
        assert!(slot.begin("tcp:h:2").is_none());
        assert!(slot.cancel());
        assert!(flag.load(std::sync::atomic::Ordering::Acquire));
        slot.end();
        assert!(slot.begin("tcp:h:2").is_some());
    }
}
