//! Carries out API commands against the running VM.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use api::model::{MemoryDeviceList, MemoryDeviceStatus, VmInfo};
use api::{ApiError, Command, Handler};
use machine::{ExitSignal, StopRequest};

use crate::devices::SharedMemoryDevice;

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
}

/// The VMM side of the API.
pub struct VmApi {
    devices: Vec<SharedMemoryDevice>,
    facts: Arc<VmFacts>,
    exit: ExitSignal,
    /// Serialises resizes so two clients cannot interleave a resize and its notification.
    resize_lock: Mutex<()>,
}

impl VmApi {
    /// An API over `devices`; `exit` stops the VM on `PUT /v1/vm/shutdown`.
    pub fn new(devices: Vec<SharedMemoryDevice>, facts: Arc<VmFacts>, exit: ExitSignal) -> Self {
        VmApi {
            devices,
            facts,
            exit,
            resize_lock: Mutex::new(()),
        }
    }

    fn find(&self, id: &str) -> Result<&SharedMemoryDevice, ApiError> {
        self.devices.iter().find(|d| d.id == id).ok_or_else(|| {
            let known: Vec<&str> = self.devices.iter().map(|d| d.id.as_str()).collect();
            ApiError::not_found(format!(
                "no memory device '{id}'; known: {}",
                known.join(", ")
            ))
        })
    }

    fn status(device: &SharedMemoryDevice) -> MemoryDeviceStatus {
        device
            .transport
            .lock()
            .expect("device lock")
            .device()
            .api_status()
    }

    fn resize(&self, id: &str, requested_bytes: u64) -> Result<MemoryDeviceStatus, ApiError> {
        let device = self.find(id)?;
        let _serial = self.resize_lock.lock().expect("resize lock");
        let mut transport = device.transport.lock().expect("device lock");
        let _notify: virtio_mem::ConfigChanged = transport
            .device_mut()
            .core_mut()
            .set_requested_size(requested_bytes)
            .map_err(|e| ApiError::bad_request(format!("memory device '{id}': {e}")))?;
        transport.config_changed();
        log::info!("memory device '{id}': requested size now {requested_bytes:#x}");
        Ok(transport.device().api_status())
    }

    fn json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, ApiError> {
        serde_json::to_value(value).map_err(|e| ApiError::internal(e.to_string()))
    }
}

impl Handler for VmApi {
    fn handle(&self, command: Command) -> Result<serde_json::Value, ApiError> {
        match command {
            Command::ListMemoryDevices => Self::json(&MemoryDeviceList {
                memory_devices: self.devices.iter().map(Self::status).collect(),
            }),
            Command::GetMemoryDevice { id } => Self::json(&Self::status(self.find(&id)?)),
            Command::ResizeMemoryDevice {
                id,
                requested_bytes,
            } => Self::json(&self.resize(&id, requested_bytes)?),
            Command::GetVm => Self::json(&VmInfo {
                state: if self.exit.is_pending() {
                    "shutting-down"
                } else {
                    "running"
                }
                .into(),
                vcpus: self.facts.vcpus,
                boot_memory_bytes: self.facts.boot_memory_bytes,
                uptime_ms: self.facts.started.elapsed().as_millis() as u64,
                boots: self.facts.boots.load(Ordering::Relaxed),
            }),
            Command::Shutdown => {
                self.exit.request(StopRequest::Host);
                Ok(serde_json::json!({"state": "shutting-down"}))
            }
        }
    }
}
