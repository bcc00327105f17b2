//! `PUT /v1/vm/snapshot`: the API thread hands the destination to the VM thread (the owner of
//! the [`Machine`]), which writes the snapshot while the VM stays paused, and waits for the
//! answer.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use api::ApiError;
use api::model::{SnapshotAnswer, VmState};
use machine::Machine;

use super::{Order, VmControl};
use crate::monitor::Monitor;
use crate::snapshot::restore::SavedVmConfig;
use crate::snapshot::save::{SaveInputs, SaveReport, save_vm};

/// How long the API waits for a snapshot (memory is written at disk speed).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
struct SlotState {
    vm_config: Option<SavedVmConfig>,
    destination: Option<PathBuf>,
    answer: Option<Result<SaveReport, String>>,
}

/// The pending snapshot request, its answer, and the configuration snapshots record.
#[derive(Debug, Default)]
pub struct SnapshotSlot(Mutex<SlotState>);

impl SnapshotSlot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl VmControl {
    /// Records the VM configuration every snapshot carries (set once the VM is built).
    pub fn set_snapshot_config(&self, config: SavedVmConfig) {
        self.snapshots.lock().vm_config = Some(config);
    }

    /// Has the VM thread write a snapshot to `destination`; the VM must be paused (409
    /// otherwise) and stays paused.
    pub fn snapshot(
        &self,
        destination: &Path,
        monitor: &Monitor,
    ) -> Result<SnapshotAnswer, ApiError> {
        let _one = crate::shared_device::lock_or_recover(&self.order_lock, "VM control order");
        let now = monitor.vm_state();
        if now != VmState::Paused {
            return Err(ApiError {
                status: 409,
                message: format!(
                    "cannot snapshot a VM that is {}: pause it first (PUT /v1/vm/pause; \
                     `hotmem-ctl snapshot` pauses for you)",
                    super::state_name(now)
                ),
            });
        }
        {
            let mut slot = self.snapshots.lock();
            if slot.vm_config.is_none() {
                return Err(ApiError {
                    status: 409,
                    message: "this VM cannot be snapshotted: snapshots of VMs with vhost-user \
                              devices or shared memory are not supported yet"
                        .into(),
                });
            }
            slot.destination = Some(destination.to_path_buf());
            slot.answer = None;
        }
        let mut s = self.state();
        if let Some((_, earlier)) = s.underway {
            return Err(ApiError {
                status: 409,
                message: format!(
                    "cannot snapshot yet: the VM thread is still carrying out the earlier {}",
                    super::order_name(earlier)
                ),
            });
        }
        s.orders += 1;
        let id = s.orders;
        s.order = Some((id, Order::Snapshot));
        self.inner.1.notify_all();
        let (mut s, timeout) = self
            .inner
            .1
            .wait_timeout_while(s, SNAPSHOT_TIMEOUT, |s| {
                s.done.as_ref().is_none_or(|(done, _)| *done != id)
            })
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            if s.order.take().is_some() {
                return Err(ApiError {
                    status: 504,
                    message: "the VM thread did not take the snapshot order; it is withdrawn"
                        .into(),
                });
            }
            s.underway = Some((id, Order::Snapshot));
            return Err(ApiError {
                status: 504,
                message: format!(
                    "the snapshot is still being written after {} s (GET /v1/vm shows the VM)",
                    SNAPSHOT_TIMEOUT.as_secs()
                ),
            });
        }
        if let Some((_, Err(e))) = s.done.take() {
            return Err(ApiError {
                status: 409,
                message: format!("cannot snapshot: {e}"),
            });
        }
        drop(s);
        match self.snapshots.lock().answer.take() {
            Some(Ok(report)) => Ok(SnapshotAnswer {
                destination: destination.display().to_string(),
                memory_data_bytes: report.memory_data_bytes,
                memory_scanned_bytes: report.memory_scanned_bytes,
                duration_ms: u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
            }),
            Some(Err(e)) => Err(ApiError::internal(format!("snapshot failed: {e}"))),
            None => Err(ApiError::internal("lost the VM thread's snapshot answer")),
        }
    }
}

/// Carries out the pending request on the VM thread (the machine is paused).
pub(super) fn serve(machine: &Machine, control: &VmControl, monitor: &Monitor) {
    let (destination, config) = {
        let mut slot = control.snapshots.lock();
        (slot.destination.take(), slot.vm_config.clone())
    };
    let answer = match (destination, config) {
        (Some(destination), Some(vm_config)) => {
            let mut last_tenth = 0;
            let mut progress = |done: u64, total: u64| {
                let tenth = (done * 10).checked_div(total).unwrap_or(10);
                if tenth > last_tenth {
                    last_tenth = tenth;
                    log::info!("snapshot: {}% of {total} bytes of memory", tenth * 10);
                }
            };
            save_vm(SaveInputs {
                machine,
                devices: monitor.devices(),
                vm_config: &vm_config,
                destination: &destination,
                progress: &mut progress,
            })
            .map_err(|e| error_chain(&e))
        }
        _ => Err("no snapshot request".into()),
    };
    match &answer {
        Ok(r) => log::info!(
            "snapshot written: {} of {} bytes of memory in {} ms",
            r.memory_data_bytes,
            r.memory_scanned_bytes,
            r.duration.as_millis()
        ),
        Err(e) => log::error!("snapshot failed: {e}"),
    }
    control.snapshots.lock().answer = Some(answer);
}

/// An error and its sources, joined.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::monitor::MonitorSettings;

    #[test]
    fn a_snapshot_of_a_vm_that_is_not_paused_is_refused_with_409() {
        let monitor = Monitor::new(Vec::new(), Instant::now(), MonitorSettings::default());
        let control = VmControl::default();
        control.set_snapshot_config(SavedVmConfig {
            kernel: "/k".into(),
            initramfs: None,
            cmdline: String::new(),
            boot_memory_bytes: 64 << 20,
            vcpus: 1,
            mem_devices: Vec::new(),
            vhost_user: Vec::new(),
        });
        for state in [VmState::Booting, VmState::Running, VmState::Rebooting] {
            monitor.set_vm_state(state);
            let e = control.snapshot(Path::new("/tmp/x"), &monitor).unwrap_err();
            assert_eq!(e.status, 409, "{state:?}");
            assert!(e.message.contains("pause it first"), "{}", e.message);
        }
        assert!(
            control.snapshots.lock().destination.is_none(),
            "nothing was ordered"
        );
    }
}
