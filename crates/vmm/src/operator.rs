//! The operator interface as the VM loop sees it: the monitor, pause/resume control and the API
//! socket, started together and stopped when dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use api::model::VmState;
use api::{ApiServer, Handler};
use boot::LinuxBootInfo;
use machine::{ExitReason, ExitSignal, Machine};

use crate::Error;
use crate::api_handler::{VmApi, VmFacts, VmHandles};
use crate::control::{VmControl, run_boot};
use crate::devices::SharedMemoryDevice;
use crate::events::EventSettings;
use crate::monitor::{Monitor, MonitorSettings};

/// What starting the interface needs.
pub struct OperatorSetup<'a> {
    /// Where to serve the API (none: no API, but the monitor still runs for the logs).
    pub api_socket: Option<&'a Path>,
    /// The memory devices.
    pub devices: Vec<SharedMemoryDevice>,
    /// Facts for `GET /v1/vm`.
    pub facts: Arc<VmFacts>,
    /// The machine's stop signal.
    pub exit: ExitSignal,
    /// Requested ≠ plugged without progress for this long is reported as "guest not following".
    pub not_following_after: Duration,
}

/// The running interface.
#[derive(Debug)]
pub struct Operator {
    monitor: Monitor,
    control: VmControl,
    socket: Option<PathBuf>,
}

impl Operator {
    /// Starts the monitor and, with a socket, the API server.
    pub fn start(setup: OperatorSetup<'_>) -> Result<Self, Error> {
        let monitor = Monitor::new(
            setup.devices,
            setup.facts.started,
            MonitorSettings {
                events: EventSettings {
                    not_following_after: setup.not_following_after,
                    ..EventSettings::default()
                },
                ..MonitorSettings::default()
            },
        );
        monitor
            .spawn()
            .map_err(|e| Error::Config(format!("starting the monitor thread: {e}")))?;
        let control = VmControl::default();
        let socket = match setup.api_socket {
            Some(path) => {
                let server = ApiServer::bind(path)
                    .map_err(|e| Error::Config(format!("--api-socket {}: {e}", path.display())))?;
                let handler: Arc<dyn Handler> = Arc::new(VmApi::new(VmHandles {
                    facts: setup.facts,
                    exit: setup.exit,
                    monitor: monitor.clone(),
                    control: control.clone(),
                }));
                std::thread::Builder::new()
                    .name("api".into())
                    .spawn(move || {
                        sandbox::enter_or_abort(sandbox::ThreadKind::ApiListener);
                        server.serve(handler)
                    })
                    .map_err(|e| Error::Config(format!("starting the API thread: {e}")))?;
                Some(path.to_path_buf())
            }
            None => None,
        };
        Ok(Operator {
            monitor,
            control,
            socket,
        })
    }

    /// Runs one boot, obeying pause and resume (see [`run_boot`]).
    pub fn run_boot(
        &self,
        machine: &mut Machine,
        boot: &LinuxBootInfo,
    ) -> Result<ExitReason, machine::Error> {
        run_boot(machine, boot, &self.control, &self.monitor)
    }

    /// Emits an event.
    pub fn emit(&self, kind: api::model::EventKind) {
        self.monitor.emit(kind);
    }

    /// The monitor (events, waiters).
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// Runs a machine restored from a snapshot (paused unless `resume`), obeying pause,
    /// resume and snapshot orders (see [`crate::control::run_restored`]).
    pub fn run_restored(
        &self,
        machine: &mut Machine,
        resume: bool,
    ) -> Result<ExitReason, machine::Error> {
        crate::control::run_restored(machine, &self.control, &self.monitor, resume)
    }

    /// Records the configuration every snapshot of this VM carries.
    pub fn set_snapshot_config(&self, config: crate::snapshot::restore::SavedVmConfig) {
        self.control.set_snapshot_config(config);
    }

    /// Starts the `migration` thread (from the VM thread, under its seccomp list).
    pub fn spawn_migration_worker(&self) -> Result<(), Error> {
        crate::migration::source::spawn_worker(&self.control.migration)
            .map_err(|e| Error::Config(format!("starting the migration thread: {e}")))
    }

    /// Makes the VM migratable (`PUT /v1/vm/migrate`).
    pub fn set_migration_context(&self, context: crate::migration::SourceContext) {
        self.control.migration.set_context(context);
    }

    /// Records why the VM cannot be migrated (`PUT /v1/vm/migrate` answers 409 with it).
    pub fn set_migration_blocker(&self, reason: String) {
        log::info!("this VM cannot be migrated: {reason}");
        self.control.migration.set_blocker(reason);
    }

    /// Records that the guest asked for a reboot (devices are being reset).
    pub fn rebooting(&self) {
        self.monitor.set_vm_state(VmState::Rebooting);
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.monitor.set_vm_state(VmState::ShuttingDown);
        self.monitor.stop();
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}
