//! Runs one boot of the guest while obeying pause and resume from the API: the thread that owns
//! the [`Machine`] waits for either a stop request (guest poweroff/reboot, API shutdown, fatal
//! vCPU condition) or an operator command.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use api::ApiError;
use api::model::VmState;
use boot::LinuxBootInfo;
use machine::{ExitReason, ExitSignal, Machine, StopRequest};

use crate::monitor::Monitor;

#[path = "control/snapshot_order.rs"]
mod snapshot_order;
pub use snapshot_order::{SnapshotSlot, error_chain};

/// How long the API waits for the VM thread to carry out a pause or resume.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the VM thread checks for a stop request on its own.
const EXIT_POLL: Duration = Duration::from_millis(500);

/// An operator command for the VM thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Pause,
    Resume,
    /// Write a snapshot of the paused VM (see [`SnapshotSlot`]).
    Snapshot,
}

#[derive(Debug, Default)]
struct State {
    order: Option<Order>,
    /// Result of the last order, taken by the API thread that gave it.
    done: Option<Result<VmState, String>>,
    /// Bumped by the exit watcher when a stop request arrives.
    exit_seen: u64,
}

/// Pause/resume orders from the API to the VM thread. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct VmControl {
    inner: Arc<(Mutex<State>, Condvar)>,
    /// Serialises orders: one at a time.
    order_lock: Arc<Mutex<()>>,
    /// The snapshot request and its answer.
    snapshots: Arc<SnapshotSlot>,
}

impl VmControl {
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the VM thread to pause (`true`) or resume, waits until it did; answers the new
    /// state or why not (409 when the VM is not in a state to do it).
    pub fn order(&self, pause: bool, monitor: &Monitor) -> Result<VmState, ApiError> {
        let _one = self.order_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (order, wanted, doing) = if pause {
            (Order::Pause, VmState::Running, "pause")
        } else {
            (Order::Resume, VmState::Paused, "resume")
        };
        let now = monitor.vm_state();
        if now != wanted {
            return Err(ApiError {
                status: 409,
                message: format!(
                    "cannot {doing} a VM that is {}; {doing} needs a {} VM",
                    state_name(now),
                    state_name(wanted)
                ),
            });
        }
        let mut s = self.state();
        s.order = Some(order);
        s.done = None;
        self.inner.1.notify_all();
        let (mut s, timeout) = self
            .inner
            .1
            .wait_timeout_while(s, COMMAND_TIMEOUT, |s| s.done.is_none())
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            s.order = None;
            return Err(ApiError::internal(format!(
                "the VM thread did not {doing} within {} s",
                COMMAND_TIMEOUT.as_secs()
            )));
        }
        match s.done.take() {
            Some(Ok(state)) => Ok(state),
            Some(Err(e)) => Err(ApiError {
                status: 409,
                message: format!("cannot {doing}: {e}"),
            }),
            None => Err(ApiError::internal("lost the VM thread's answer")),
        }
    }

    fn exit_arrived(&self) {
        self.state().exit_seen += 1;
        self.inner.1.notify_all();
    }
}

fn state_name(state: VmState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Starts the vCPUs for `boot` and runs until a stop request, pausing and resuming on order.
/// Like [`Machine::run`]: poweroff and reboot are results, a fatal or host stop an error.
pub fn run_boot(
    machine: &mut Machine,
    boot: &LinuxBootInfo,
    control: &VmControl,
    monitor: &Monitor,
) -> Result<ExitReason, machine::Error> {
    machine.start(boot)?;
    monitor.set_vm_state(VmState::Running);
    serve_orders(machine, control, monitor)
}

/// Runs a machine restored from a snapshot (it starts paused): resumes it at once if
/// `resume`, then obeys orders until a stop request, like [`run_boot`].
pub fn run_restored(
    machine: &mut Machine,
    control: &VmControl,
    monitor: &Monitor,
    resume: bool,
) -> Result<ExitReason, machine::Error> {
    if resume {
        machine.resume()?;
        monitor.set_vm_state(VmState::Running);
    } else {
        monitor.set_vm_state(VmState::Paused);
    }
    serve_orders(machine, control, monitor)
}

/// Waits for orders and the stop request of a started (running or paused) machine.
fn serve_orders(
    machine: &mut Machine,
    control: &VmControl,
    monitor: &Monitor,
) -> Result<ExitReason, machine::Error> {
    spawn_exit_watcher(machine.exit_signal().clone(), control.clone());
    let exit = machine.exit_signal().clone();
    loop {
        let order = {
            let s = control.state();
            // The watcher wakes this at once; the timeout only matters if it could not start.
            let (mut s, _) = control
                .inner
                .1
                .wait_timeout_while(s, EXIT_POLL, |s| s.order.is_none() && !exit.is_pending())
                .unwrap_or_else(|e| e.into_inner());
            if exit.is_pending() {
                // An order given now would never be answered: refuse it.
                if s.order.take().is_some() {
                    s.done = Some(Err("the VM is stopping".into()));
                    control.inner.1.notify_all();
                }
                break;
            }
            s.order.take()
        };
        let result = match order {
            Some(Order::Pause) => machine.pause().map(|()| VmState::Paused),
            Some(Order::Resume) => machine.resume().map(|()| VmState::Running),
            Some(Order::Snapshot) => {
                snapshot_order::serve(machine, control, monitor);
                Ok(VmState::Paused)
            }
            None => continue,
        };
        if let Ok(state) = &result {
            log::info!("VM {}", state_name(*state));
            monitor.set_vm_state(*state);
        }
        control.state().done = Some(result.map_err(|e| e.to_string()));
        control.inner.1.notify_all();
    }
    let request = exit.pending();
    machine.stop()?;
    match request {
        Some(StopRequest::Guest(reason)) => Ok(reason),
        Some(StopRequest::Fatal { vcpu, reason }) => {
            Err(machine::Error::VcpuFatal { vcpu, reason })
        }
        Some(StopRequest::Host) | None => Err(machine::Error::VcpuState("stopped by the host")),
    }
}

/// Wakes the VM thread when a stop request arrives (one watcher per boot: every boot ends
/// with a request, so the watcher always ends).
fn spawn_exit_watcher(exit: ExitSignal, control: VmControl) {
    let spawned = std::thread::Builder::new()
        .name("exit-watch".into())
        .spawn(move || {
            exit.wait();
            control.exit_arrived();
        });
    if let Err(e) = spawned {
        log::error!("cannot start the exit watcher: {e}");
    }
}
