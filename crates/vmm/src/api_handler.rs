//! Carries out API commands against the running VM.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::model::{ErrorBody, MemoryDeviceList, MemoryDeviceStatus, VmInfo, VmState, VmStateAnswer};
use api::size::format_size;
use api::{ApiError, Command, Handler, PROMETHEUS_TEXT, Reply};
use machine::{ExitSignal, StopRequest};

use crate::control::VmControl;
use crate::devices::SharedMemoryDevice;
use crate::monitor::Monitor;
use crate::shared_device::lock_or_recover;

/// Facts about the VM the API reports.
#[derive(Debug)]
pub struct VmFacts {
    /// vCPU count.
    pub vcpus: u32,
    /// Boot memory.
    pub boot_memory_bytes: u64,
    /// When the VMM started.
    pub started: Instant,
    /// Boots so far (1 after the first boot).
    pub boots: AtomicU32,
    /// NUMA nodes (`--numa`), as `GET /v1/vm` shows them.
    pub numa_nodes: Option<Vec<api::model::NumaNodeInfo>>,
    /// The memory slot budget planned at start.
    pub slot_budget: Option<api::model::SlotBudgetInfo>,
    /// vhost-user devices, if any.
    pub vhost_user: Option<crate::vhost_user::VhostUserView>,
}

/// What the API acts on.
#[derive(Debug, Clone)]
pub struct VmHandles {
    /// Facts for `GET /v1/vm`.
    pub facts: Arc<VmFacts>,
    /// Stops the VM on `PUT /v1/vm/shutdown`.
    pub exit: ExitSignal,
    /// Samples devices, streams events, wakes waiters.
    pub monitor: Monitor,
    /// Pause and resume.
    pub control: VmControl,
}

/// The VMM side of the API.
pub struct VmApi {
    vm: VmHandles,
    /// Serialises resizes so two clients cannot interleave a resize and its notification.
    resize_lock: Mutex<()>,
}

/// How a resize with `wait` ended.
enum WaitEnd {
    Reached(MemoryDeviceStatus),
    Superseded(MemoryDeviceStatus),
}

impl VmApi {
    /// An API over the VM's devices (the monitor's).
    pub fn new(vm: VmHandles) -> Self {
        VmApi {
            vm,
            resize_lock: Mutex::new(()),
        }
    }

    fn devices(&self) -> &[SharedMemoryDevice] {
        self.vm.monitor.devices()
    }

    fn find(&self, id: &str) -> Result<&SharedMemoryDevice, ApiError> {
        self.devices().iter().find(|d| d.id == id).ok_or_else(|| {
            let known: Vec<&str> = self.devices().iter().map(|d| d.id.as_str()).collect();
            ApiError::not_found(format!(
                "no memory device '{id}'; known: {}",
                known.join(", ")
            ))
        })
    }

    fn status(device: &SharedMemoryDevice) -> MemoryDeviceStatus {
        device.status()
    }

    fn resize(
        &self,
        id: &str,
        requested_bytes: u64,
        wait_timeout_ms: Option<u64>,
    ) -> Result<Reply, ApiError> {
        let device = self.find(id)?;
        {
            let _serial = lock_or_recover(&self.resize_lock, "resize");
            let mut transport = device.lock();
            if device.is_broken() {
                return Err(ApiError {
                    status: 409,
                    message: format!(
                        "memory device '{id}' is broken (a VMM thread failed while serving it); \
                         its memory stays as it is and it takes no resize"
                    ),
                });
            }
            let _notify: virtio_mem::ConfigChanged = transport
                .device_mut()
                .core_mut()
                .set_requested_size(requested_bytes)
                .map_err(|e| ApiError::bad_request(resize_error(id, &e)))?;
            transport.config_changed();
            device.publish(&transport);
            log::info!(
                "memory device '{id}': requested size now {}",
                format_size(requested_bytes)
            );
        }
        // Sample at once so the event stream sees every resize, even quick back-and-forths.
        self.vm.monitor.sample_now();
        let Some(timeout_ms) = wait_timeout_ms else {
            return Reply::ok(&Self::status(device));
        };
        let end = self
            .vm
            .monitor
            .wait_for(Duration::from_millis(timeout_ms), || {
                let s = Self::status(device);
                if s.requested_bytes != requested_bytes {
                    Some(WaitEnd::Superseded(s))
                } else if s.plugged_bytes == requested_bytes {
                    Some(WaitEnd::Reached(s))
                } else {
                    None
                }
            });
        match end {
            Some(WaitEnd::Reached(s)) => Reply::ok(&s),
            Some(WaitEnd::Superseded(s)) => Reply::with_status(
                409,
                &ErrorBody {
                    error: format!(
                        "memory device '{id}': another request changed the requested size to {} while waiting",
                        format_size(s.requested_bytes)
                    ),
                    device: Some(s),
                },
            ),
            None => {
                let s = Self::status(device);
                Reply::with_status(
                    504,
                    &ErrorBody {
                        error: format!(
                            "memory device '{id}': the guest has plugged {} of {} after {timeout_ms} ms (driver {}); the request stays in force",
                            format_size(s.plugged_bytes),
                            format_size(requested_bytes),
                            s.driver_state.as_str()
                        ),
                        device: Some(s),
                    },
                )
            }
        }
    }

    fn vm_info(&self) -> VmInfo {
        let facts = &self.vm.facts;
        VmInfo {
            state: if self.vm.exit.pending() == Some(StopRequest::Host) {
                VmState::ShuttingDown
            } else {
                self.vm.monitor.vm_state()
            },
            vcpus: facts.vcpus,
            boot_memory_bytes: facts.boot_memory_bytes,
            uptime_ms: u64::try_from(facts.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            boots: facts.boots.load(Ordering::Relaxed),
            numa_nodes: facts.numa_nodes.clone(),
            slot_budget: facts.slot_budget.clone(),
            vhost_user_devices: facts
                .vhost_user
                .as_ref()
                .map(|v| v.statuses())
                .unwrap_or_default(),
        }
    }
}

/// Why a resize was refused, with sizes as people write them.
fn resize_error(id: &str, error: &virtio_mem::Error) -> String {
    match error {
        virtio_mem::Error::RequestedSize {
            requested_bytes,
            reason,
            block_size_bytes,
            region_size_bytes,
        } => format!(
            "memory device '{id}': invalid requested size {}: {reason}; allowed values are \
             multiples of the block size {} from 0 to the region size {}",
            format_size(*requested_bytes),
            format_size(*block_size_bytes),
            format_size(*region_size_bytes)
        ),
        other => format!("memory device '{id}': {other}"),
    }
}

impl Handler for VmApi {
    fn handle(&self, command: Command) -> Result<Reply, ApiError> {
        match command {
            Command::ListMemoryDevices => Reply::ok(&MemoryDeviceList {
                memory_devices: self.devices().iter().map(Self::status).collect(),
            }),
            Command::GetMemoryDevice { id } => Reply::ok(&Self::status(self.find(&id)?)),
            Command::ResizeMemoryDevice {
                id,
                requested_bytes,
                wait_timeout_ms,
            } => self.resize(&id, requested_bytes, wait_timeout_ms),
            Command::GetVm => Reply::ok(&self.vm_info()),
            Command::Pause | Command::Resume => {
                let pause = command == Command::Pause;
                Reply::ok(&self.vm.control.order(pause, &self.vm.monitor)?)
            }
            Command::Snapshot { destination } => Reply::ok(
                &self
                    .vm
                    .control
                    .snapshot(std::path::Path::new(&destination), &self.vm.monitor)?,
            ),
            Command::Shutdown => {
                self.vm.monitor.set_vm_state(VmState::ShuttingDown);
                self.vm.exit.request(StopRequest::Host);
                Reply::ok(&VmStateAnswer {
                    state: VmState::ShuttingDown,
                    note: None,
                })
            }
            Command::Migrate(body) => Reply::ok(&crate::migration::source::start(
                &self.vm.control,
                &self.vm.monitor,
                body,
            )?),
            Command::MigrationStatus => Reply::ok(&self.vm.control.migration.status()),
            Command::CancelMigration => {
                if !self.vm.control.migration.cancel() {
                    return Err(ApiError {
                        status: 409,
                        message: "no migration is running".into(),
                    });
                }
                Reply::ok(&self.vm.control.migration.status())
            }
            Command::Events { follow, since_seq } => Ok(Reply::Stream(Box::new(
                self.vm.monitor.subscribe(since_seq, follow)?,
            ))),
            Command::Metrics => Ok(Reply::Text {
                content_type: PROMETHEUS_TEXT,
                body: crate::metrics::render(&self.vm.monitor, &self.vm.facts),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::MonitorSettings;

    fn api() -> (VmApi, ExitSignal) {
        let started = Instant::now();
        let exit = ExitSignal::new().unwrap();
        let api = VmApi::new(VmHandles {
            facts: Arc::new(VmFacts {
                vcpus: 2,
                boot_memory_bytes: 512 << 20,
                started,
                boots: AtomicU32::new(0),
                numa_nodes: None,
                slot_budget: None,
                vhost_user: None,
            }),
            exit: exit.clone(),
            monitor: Monitor::new(Vec::new(), started, MonitorSettings::default()),
            control: VmControl::default(),
        });
        (api, exit)
    }

    fn json(reply: Result<Reply, ApiError>) -> serde_json::Value {
        match reply.unwrap() {
            Reply::Json { status: 200, body } => body,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pause_and_resume_need_the_right_state_and_say_so() {
        let (api, _exit) = api();
        let e = api.handle(Command::Pause).unwrap_err();
        assert_eq!(e.status, 409);
        assert!(
            e.message
                .contains("cannot pause a VM that is booting; pause needs a running VM"),
            "{}",
            e.message
        );
        assert_eq!(api.handle(Command::Resume).unwrap_err().status, 409);
        assert_eq!(json(api.handle(Command::GetVm))["state"], "booting");
    }

    #[test]
    fn a_vm_without_migration_support_refuses_to_migrate_and_nothing_runs() {
        let (api, _exit) = api();
        let migrate = |destination: &str| {
            api.handle(Command::Migrate(api::model::MigrateBody {
                destination: destination.into(),
                max_downtime_ms: None,
                max_bandwidth_bytes_per_s: None,
                auto_converge: None,
                max_throttle_percent: None,
            }))
        };
        let e = migrate("tcp:127.0.0.1:1").unwrap_err();
        assert_eq!(e.status, 409);
        assert!(e.message.contains("cannot be migrated"), "{}", e.message);
        assert_eq!(json(api.handle(Command::MigrationStatus))["state"], "none");
        let e = api.handle(Command::CancelMigration).unwrap_err();
        assert_eq!(e.status, 409);
        assert!(
            e.message.contains("no migration is running"),
            "{}",
            e.message
        );
    }

    #[test]
    fn unknown_devices_are_404_and_shutdown_stops_the_vm() {
        let (api, exit) = api();
        let e = api
            .handle(Command::ResizeMemoryDevice {
                id: "mem9".into(),
                requested_bytes: 0,
                wait_timeout_ms: None,
            })
            .unwrap_err();
        assert_eq!(e.status, 404);
        assert!(
            e.message.contains("no memory device 'mem9'"),
            "{}",
            e.message
        );
        assert_eq!(
            json(api.handle(Command::Shutdown))["state"],
            "shutting-down"
        );
        assert_eq!(exit.pending(), Some(StopRequest::Host));
        assert_eq!(json(api.handle(Command::GetVm))["state"], "shutting-down");
    }

    #[test]
    fn metrics_and_events_reflect_the_vm_state() {
        let (api, _exit) = api();
        api.vm.monitor.set_vm_state(VmState::Running);
        let Ok(Reply::Text { body, .. }) = api.handle(Command::Metrics) else {
            panic!("metrics are text");
        };
        assert!(
            body.contains("hotmem_vm_state{state=\"running\"} 1\n"),
            "{body}"
        );
        assert!(body.contains("hotmem_boots_total 0\n"), "{body}");
        let Ok(Reply::Stream(mut events)) = api.handle(Command::Events {
            follow: false,
            since_seq: 0,
        }) else {
            panic!("events are a stream");
        };
        let api::StreamItem::Line(line) = events.next_line(Duration::from_millis(10)) else {
            panic!("one kept event");
        };
        let event: api::model::Event = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (event.seq, event.kind),
            (
                1,
                api::model::EventKind::VmStateChanged {
                    state: VmState::Running
                }
            )
        );
        assert_eq!(
            events.next_line(Duration::from_millis(10)),
            api::StreamItem::End
        );
    }

    #[test]
    fn a_refused_resize_names_sizes_as_people_write_them() {
        let error = virtio_mem::Error::RequestedSize {
            requested_bytes: (1 << 30) + (1 << 20),
            reason: "not a multiple of the block size",
            block_size_bytes: 2 << 20,
            region_size_bytes: 64 << 30,
        };
        assert_eq!(
            resize_error("mem0", &error),
            "memory device 'mem0': invalid requested size 1025M: not a multiple of the block \
             size; allowed values are multiples of the block size 2M from 0 to the region size 64G"
        );
    }
}
