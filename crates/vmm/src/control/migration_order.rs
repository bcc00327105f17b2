//! The machine state a live migration sends last: the migration thread asks the VM thread (the
//! owner of the [`Machine`]) to read it while the VM is paused, and waits for the answer.

use api::model::VmState;
use machine::Machine;
use snapshot::Component;

use super::{Order, VmControl};
use crate::monitor::Monitor;
use crate::shared_device::lock_or_recover;
use crate::snapshot::MachinePart;

impl VmControl {
    /// The paused machine's state as a snapshot component (vCPUs, irqchip, PIT, clock, GSI
    /// routes, legacy devices).
    pub fn save_machine_state(&self, monitor: &Monitor) -> Result<Component, String> {
        let id = self.request_machine_state(monitor)?;
        self.machine_state_answer(id)
    }

    /// Asks the VM thread to read the paused machine's state and returns at once (the
    /// migration sends its last pages meanwhile); [`VmControl::machine_state_answer`] takes
    /// the answer. Until the VM thread has answered, other orders are refused as "still
    /// carrying out the earlier machine state read".
    pub fn request_machine_state(&self, monitor: &Monitor) -> Result<u64, String> {
        let _one = lock_or_recover(&self.order_lock, "VM control order");
        if monitor.vm_state() != VmState::Paused {
            return Err(format!(
                "the machine state is read from a paused VM; this one is {}",
                super::state_name(monitor.vm_state())
            ));
        }
        let mut s = self.state();
        if let Some((_, earlier)) = s.underway {
            return Err(format!(
                "the VM thread is still carrying out the earlier {}",
                super::order_name(earlier)
            ));
        }
        s.orders += 1;
        let id = s.orders;
        s.order = Some((id, Order::SaveMachine));
        // Keeps other orders out (they would replace this one) until the answer.
        s.underway = Some((id, Order::SaveMachine));
        self.inner.1.notify_all();
        Ok(id)
    }

    /// Waits for the answer to [`VmControl::request_machine_state`] `id`.
    pub fn machine_state_answer(&self, id: u64) -> Result<Component, String> {
        let _one = lock_or_recover(&self.order_lock, "VM control order");
        let s = self.state();
        let (mut s, timed_out) = self.wait_done(s, id);
        if timed_out {
            if s.order.take_if(|(order, _)| *order == id).is_some() {
                s.underway = None;
                return Err("the VM thread did not take the order; it is withdrawn".into());
            }
            return Err("the VM thread is still reading the machine state".into());
        }
        if let Some((_, Err(e))) = s.done.take() {
            return Err(e);
        }
        drop(s);
        self.migration
            .take_machine_state()
            .unwrap_or_else(|| Err("lost the VM thread's machine state".into()))
    }
}

/// Reads the state on the VM thread (the machine is paused).
pub(super) fn serve(machine: &Machine, control: &VmControl) {
    control
        .migration
        .set_machine_state(machine.save_component());
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::monitor::MonitorSettings;

    #[test]
    fn a_requested_machine_state_keeps_other_orders_out_until_it_is_answered() {
        let control = VmControl::with_timeout(Duration::from_secs(5));
        let monitor = Monitor::new(Vec::new(), Instant::now(), MonitorSettings::default());
        monitor.set_vm_state(VmState::Paused);
        let id = control.request_machine_state(&monitor).unwrap();
        // While the migration sends its last pages, a resume from the API would replace the
        // order: it is refused instead.
        let err = control.order(false, &monitor).unwrap_err();
        assert_eq!(err.status, 409);
        assert!(
            err.message
                .contains("still carrying out the earlier machine state read"),
            "{}",
            err.message
        );
        let vm = std::thread::spawn({
            let control = control.clone();
            move || {
                std::thread::sleep(Duration::from_millis(50));
                let Some((taken, Order::SaveMachine)) = control.state().order.take() else {
                    return;
                };
                control.migration.set_machine_state(Ok(Component {
                    name: "machine".into(),
                    version: 1,
                    data: vec![7],
                }));
                control.answer(taken, Ok(VmState::Paused));
            }
        });
        assert_eq!(control.machine_state_answer(id).unwrap().data, vec![7]);
        vm.join().unwrap();
        assert!(control.state().underway.is_none(), "the way is clear again");
    }
}
