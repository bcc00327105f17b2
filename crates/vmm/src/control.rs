//! Runs one boot of the guest while obeying pause and resume from the API: the thread that owns
//! the [`Machine`] waits for either a stop request (guest poweroff/reboot, API shutdown, fatal
//! vCPU condition) or an operator command.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use api::ApiError;
use api::model::{VmState, VmStateAnswer};
use boot::LinuxBootInfo;
use machine::{ExitReason, ExitSignal, Machine, StopRequest};

use crate::monitor::Monitor;
use crate::shared_device::lock_or_recover;

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
    /// The order not taken yet, with its number.
    order: Option<(u64, Order)>,
    /// Orders given so far (numbers them).
    orders: u64,
    /// Outcome of the order with that number, taken by the API thread that gave it (a late
    /// outcome of an order its API thread gave up on is never mistaken for a later one's).
    done: Option<(u64, Result<VmState, String>)>,
    /// An order the VM thread is still carrying out after its API thread stopped waiting.
    underway: Option<(u64, Order)>,
    /// Bumped by the exit watcher when a stop request arrives.
    exit_seen: u64,
}

/// Pause/resume orders from the API to the VM thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct VmControl {
    inner: Arc<(Mutex<State>, Condvar)>,
    /// Serialises orders: one at a time.
    order_lock: Arc<Mutex<()>>,
    /// How long the API waits for the VM thread to take an order, and again to finish it.
    timeout: Duration,
    /// The snapshot request and its answer.
    snapshots: Arc<SnapshotSlot>,
}

impl Default for VmControl {
    fn default() -> Self {
        Self::with_timeout(COMMAND_TIMEOUT)
    }
}

impl VmControl {
    /// Orders wait `timeout` for the VM thread (tests use short ones).
    pub fn with_timeout(timeout: Duration) -> Self {
        VmControl {
            inner: Arc::default(),
            order_lock: Arc::default(),
            timeout,
            snapshots: Arc::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock_or_recover(&self.inner.0, "VM control")
    }

    /// Asks the VM thread to pause (`true`) or resume, waits until it did; answers the new
    /// state or why not (409 when the VM is not in a state to do it).
    ///
    /// The answer is always what happened: an order the VM thread has not taken when the wait
    /// runs out is withdrawn (it can never be carried out later) and the answer (504) says the
    /// VM is as it was; an order it is carrying out is waited for once more and its real
    /// outcome answered (with a note that it was late), or, if it is still under way, a 504
    /// that says so and names the state the VM is in now.
    pub fn order(&self, pause: bool, monitor: &Monitor) -> Result<VmStateAnswer, ApiError> {
        let _one = lock_or_recover(&self.order_lock, "VM control order");
        let (order, wanted, doing) = if pause {
            (Order::Pause, VmState::Running, "pause")
        } else {
            (Order::Resume, VmState::Paused, "resume")
        };
        if let Some((_, earlier)) = self.state().underway {
            return Err(ApiError {
                status: 409,
                message: format!(
                    "cannot {doing} yet: the VM thread is still carrying out the earlier {}; \
                     GET /v1/vm shows when it is done",
                    order_name(earlier)
                ),
            });
        }
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
        s.orders += 1;
        let id = s.orders;
        s.order = Some((id, order));
        self.inner.1.notify_all();
        let waited_s = self.timeout.as_secs_f64();
        let (mut s, timeout) = self.wait_done(s, id);
        let mut note = None;
        if timeout {
            if s.order.take().is_some() {
                return Err(ApiError {
                    status: 504,
                    message: format!(
                        "the VM thread did not take the {doing} order within {waited_s} s; the \
                         order is withdrawn and the VM is still {}",
                        state_name(wanted)
                    ),
                });
            }
            // The VM thread is carrying it out: its answer is what happened.
            let (again, still_waiting) = self.wait_done(s, id);
            s = again;
            if still_waiting {
                s.underway = Some((id, order));
                drop(s);
                return Err(ApiError {
                    status: 504,
                    message: format!(
                        "the VM thread is still trying to {doing} after {} s; the VM is {} now \
                         (GET /v1/vm shows when that changes)",
                        2.0 * waited_s,
                        state_name(monitor.vm_state())
                    ),
                });
            }
            note = Some(format!(
                "the {doing} took longer than {waited_s} s but completed"
            ));
        }
        match s.done.take().map(|(_, result)| result) {
            Some(Ok(state)) => Ok(VmStateAnswer { state, note }),
            Some(Err(e)) => Err(ApiError {
                status: 409,
                message: format!("cannot {doing}: {e}"),
            }),
            None => Err(ApiError::internal("lost the VM thread's answer")),
        }
    }

    /// Waits up to the timeout for the VM thread's answer to order `id`; `true` if it did not
    /// come.
    fn wait_done<'a>(&'a self, s: MutexGuard<'a, State>, id: u64) -> (MutexGuard<'a, State>, bool) {
        let (s, timeout) = self
            .inner
            .1
            .wait_timeout_while(s, self.timeout, |s| {
                s.done.as_ref().is_none_or(|(done, _)| *done != id)
            })
            .unwrap_or_else(|e| e.into_inner());
        (s, timeout.timed_out())
    }

    /// The VM thread's outcome of order `id`, which it took.
    fn answer(&self, id: u64, result: Result<VmState, String>) {
        let mut s = self.state();
        if s.underway.is_some_and(|(underway, _)| underway == id) {
            s.underway = None;
        }
        s.done = Some((id, result));
        drop(s);
        self.inner.1.notify_all();
    }

    fn exit_arrived(&self) {
        self.state().exit_seen += 1;
        self.inner.1.notify_all();
    }
}

fn order_name(order: Order) -> &'static str {
    match order {
        Order::Pause => "pause",
        Order::Resume => "resume",
        Order::Snapshot => "snapshot",
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
                if let Some((id, _)) = s.order.take() {
                    s.done = Some((id, Err("the VM is stopping".into())));
                    control.inner.1.notify_all();
                }
                break;
            }
            s.order.take()
        };
        let Some((id, order)) = order else {
            continue;
        };
        let result = match order {
            Order::Pause => machine.pause().map(|()| VmState::Paused),
            Order::Resume => machine.resume().map(|()| VmState::Running),
            Order::Snapshot => {
                snapshot_order::serve(machine, control, monitor);
                Ok(VmState::Paused)
            }
        };
        if let Ok(state) = &result {
            log::info!("VM {}", state_name(*state));
            monitor.set_vm_state(*state);
        }
        control.answer(id, result.map_err(|e| e.to_string()));
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
            sandbox::enter_or_abort(sandbox::ThreadKind::ExitWatch);
            exit.wait();
            control.exit_arrived();
        });
    if let Err(e) = spawned {
        log::error!("cannot start the exit watcher: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::monitor::MonitorSettings;

    const WAIT: Duration = Duration::from_millis(300);

    fn running() -> Monitor {
        let monitor = Monitor::new(Vec::new(), Instant::now(), MonitorSettings::default());
        monitor.set_vm_state(VmState::Running);
        monitor
    }

    /// A VM thread that looks for an order after `take_after` and needs `pause_takes` to pause.
    fn slow_vm_thread(
        control: &VmControl,
        monitor: &Monitor,
        take_after: Duration,
        pause_takes: Duration,
    ) -> std::thread::JoinHandle<bool> {
        let (control, monitor) = (control.clone(), monitor.clone());
        std::thread::spawn(move || {
            std::thread::sleep(take_after);
            let Some((id, Order::Pause)) = control.state().order.take() else {
                return false;
            };
            std::thread::sleep(pause_takes);
            monitor.set_vm_state(VmState::Paused);
            control.answer(id, Ok(VmState::Paused));
            true
        })
    }

    #[test]
    fn a_pause_that_completes_after_the_wait_is_reported_paused_with_a_note() {
        let control = VmControl::with_timeout(WAIT);
        let monitor = running();
        let vm = slow_vm_thread(&control, &monitor, WAIT / 10, WAIT * 3 / 2);
        let answer = control.order(true, &monitor).expect("the VM did pause");
        assert_eq!(answer.state, VmState::Paused);
        assert!(answer.note.unwrap().contains("took longer"));
        assert!(vm.join().unwrap());
        assert_eq!(monitor.vm_state(), VmState::Paused);
    }

    #[test]
    fn a_pause_not_taken_in_time_is_withdrawn_and_the_answer_says_running() {
        let control = VmControl::with_timeout(WAIT);
        let monitor = running();
        let vm = slow_vm_thread(&control, &monitor, WAIT * 2, Duration::ZERO);
        let err = control.order(true, &monitor).unwrap_err();
        assert_eq!(err.status, 504);
        assert!(err.message.contains("withdrawn"), "{}", err.message);
        assert!(err.message.contains("still running"), "{}", err.message);
        assert!(
            !vm.join().unwrap(),
            "the withdrawn pause was carried out later"
        );
        assert_eq!(monitor.vm_state(), VmState::Running);
    }

    #[test]
    fn a_pause_still_under_way_after_both_waits_names_the_current_state() {
        let control = VmControl::with_timeout(WAIT);
        let monitor = running();
        let vm = slow_vm_thread(&control, &monitor, WAIT / 10, WAIT * 4);
        let err = control.order(true, &monitor).unwrap_err();
        assert_eq!(err.status, 504);
        assert!(
            err.message.contains("still trying to pause") && err.message.contains("running now"),
            "{}",
            err.message
        );
        assert!(vm.join().unwrap());
    }

    #[test]
    fn no_new_order_is_taken_while_an_abandoned_one_is_under_way_and_its_late_answer_is_not_reused()
    {
        let control = VmControl::with_timeout(WAIT);
        let monitor = running();
        let vm = slow_vm_thread(&control, &monitor, WAIT / 10, WAIT * 3);
        assert_eq!(control.order(true, &monitor).unwrap_err().status, 504);
        let err = control.order(true, &monitor).unwrap_err();
        assert_eq!(err.status, 409);
        assert!(
            err.message.contains("still carrying out the earlier pause"),
            "{}",
            err.message
        );
        assert!(vm.join().unwrap());
        // The late answer (paused) cleared the way; a resume now waits for its own answer.
        let vm = std::thread::spawn({
            let control = control.clone();
            move || {
                std::thread::sleep(WAIT / 10);
                let Some((id, Order::Resume)) = control.state().order.take() else {
                    return;
                };
                control.answer(id, Ok(VmState::Running));
            }
        });
        let answer = control.order(false, &monitor).unwrap();
        assert_eq!((answer.state, answer.note), (VmState::Running, None));
        vm.join().unwrap();
    }
}
