//! A memory device from a snapshot: device memory comes from the snapshot's memory file
//! (mapped copy-on-write for anonymous backing in lazy mode, so restore time does not grow
//! with the plugged size; read into the new memory in eager mode and for memfd and
//! hugetlbfs), then the device state maps exactly the slots holding plugged blocks under this
//! run's slot policy.

use std::fs::File;
use std::sync::Arc;

use hostmem::{Backing, BackingKind, HostRegion};
use snapshot::HostMemory;

use super::{MemoryDevice, MemoryDevicePlacement, device_error};
use crate::Error;
use crate::config::MemDeviceConfig;
use crate::snapshot::restore::{DeviceRestore, RestoreMemory};

impl MemoryDevice {
    /// The device `config` describes, in the state `saved` recorded; `mode` says whether
    /// anonymous device memory maps the memory file (lazy) or is read from it (eager).
    pub fn restore(
        config: &MemDeviceConfig,
        placement: MemoryDevicePlacement<'_>,
        saved: &DeviceRestore,
        mode: RestoreMemory,
    ) -> Result<Self, Error> {
        let fail = |what: &str, e: &dyn std::fmt::Display| device_error(config, what, e);
        if let Some(received) = &saved.received {
            let slots = received.take_slots().ok_or_else(|| {
                fail(
                    "restoring the device",
                    &"the slots of the received memory were already taken",
                )
            })?;
            return Self::assemble_on(
                config,
                placement.guest_addr,
                received.region().clone(),
                slots,
                Some(&saved.device),
            );
        }
        let path = &saved.memory_file;
        let region = if config.backing == BackingKind::Anon && mode == RestoreMemory::Lazy {
            let file = File::open(path).map_err(|e| fail(&path.display().to_string(), &e))?;
            HostRegion::from_snapshot_file(&file)
                .map_err(|e| fail("mapping the memory file", &e))?
        } else {
            let region = HostRegion::new(&Backing {
                kind: config.backing,
                size_bytes: config.size_bytes,
                hugetlbfs_dir: config.hugetlbfs_dir.clone(),
            })
            .map_err(|e| fail("host memory", &e))?;
            snapshot::memfile::load(path, &HostMemory::from_region(&region))
                .map_err(|e| fail("loading the memory file", &e))?;
            region
        };
        if region.size_bytes() != config.size_bytes {
            return Err(fail(
                "memory file",
                &format!(
                    "{:#x} bytes for a region of {:#x}",
                    region.size_bytes(),
                    config.size_bytes
                ),
            ));
        }
        Self::assemble(config, placement, Arc::new(region), Some(&saved.device))
    }
}
