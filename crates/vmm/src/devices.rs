//! The VM's PCI devices: host bridge plus one virtio-mem-pci device per `--mem-device`.

use std::sync::{Arc, Mutex};

use api::size::format_size;
use boot::DeviceAreaAllocator;
use machine::Vm;
use memslots::SlotBudget;
use pci::{HostBridge, MmioAddress, MmioAllocator, PciBdf, PciBus};
use virtio::{VirtioPciConfig, VirtioPciDevice};
use vm_memory::GuestMemoryMmap;

use crate::Error;
use crate::config::MemDeviceConfig;
use crate::memory_device::{MemoryDevice, MemoryDevicePlacement};
use crate::notify::QueueNotifiers;
use crate::pci_glue::IrqfdMsiSink;
pub use crate::shared_device::SharedMemoryDevice;
use crate::unplugged::UnpluggedAccessTrap;

/// Device sizes are multiples of this (Linux's memory block; see `MemDeviceConfig::parse`).
const DEVICE_SIZE_GRANULE_BYTES: u64 = 128 << 20;

/// MSI-X vectors of a virtio-mem transport: the config vector and the request queue's.
const MEM_DEVICE_VECTORS: u16 = 2;

/// Guest memory the virtqueues live in (boot RAM: the driver's buffers are kernel memory,
/// which never sits in hot-plugged ZONE_MOVABLE memory).
pub type QueueMemory = Arc<GuestMemoryMmap>;

/// A virtio-mem device behind its virtio-pci transport.
pub type MemTransport = VirtioPciDevice<MemoryDevice, QueueMemory>;

/// Everything needed to create the PCI devices.
pub struct DeviceSetup<'a> {
    /// The VM.
    pub vm: &'a Arc<Vm>,
    /// KVM slot budget left after boot memory.
    pub budget: SlotBudget,
    /// Where device regions go.
    pub area: DeviceAreaAllocator,
    /// Where BARs go.
    pub bars: MmioAllocator,
    /// Queue memory.
    pub memory: QueueMemory,
    /// Restore every device from this snapshot instead of starting it empty.
    pub restore: Option<&'a crate::snapshot::RestorePlan>,
}

/// The PCI bus, the memory devices on it and their queue notifiers.
pub struct BuiltDevices {
    /// Handlers for guest accesses to unmapped device memory, with the region each covers;
    /// the caller puts them on the MMIO bus.
    pub unplugged_traps: Vec<(std::ops::Range<u64>, UnpluggedAccessTrap)>,
    /// The bus (host bridge + devices).
    pub bus: PciBus,
    /// The memory devices, in command-line order.
    pub memory_devices: Vec<SharedMemoryDevice>,
    /// Queue ioeventfds.
    pub notifiers: QueueNotifiers,
    /// The vhost-user devices, in command-line order.
    pub vhost_devices: Vec<crate::vhost_user::PlacedVhostDevice>,
}

/// Places `config`'s region in the device area; when it does not fit, says so in the units the
/// operator wrote and names the largest size that still fits.
pub(crate) fn place_region(
    area: &mut DeviceAreaAllocator,
    config: &MemDeviceConfig,
) -> Result<std::ops::Range<u64>, Error> {
    let next_free = area.next_free().0;
    area.allocate(config.size_bytes).map_err(|e| match e {
        boot::Error::DeviceAreaExhausted { .. } => {
            let room_bytes = boot::layout::DEVICE_AREA_LIMIT.0.saturating_sub(next_free)
                / DEVICE_SIZE_GRANULE_BYTES
                * DEVICE_SIZE_GRANULE_BYTES;
            Error::Device(format!(
                "memory device '{}': size={} does not fit in guest physical memory; the largest \
                 region that fits is size={}",
                config.id,
                format_size(config.size_bytes),
                format_size(room_bytes)
            ))
        }
        other => Error::Device(format!(
            "memory device '{}': placing the region: {other}",
            config.id
        )),
    })
}

/// Builds the PCI bus with a host bridge and the memory devices.
pub fn build(setup: DeviceSetup<'_>, configs: &[MemDeviceConfig]) -> Result<BuiltDevices, Error> {
    build_with_vhost(setup, configs, None)
}

/// Like [`build`], plus vhost-user devices; memory devices then keep every backend's memory
/// table equal to their mapped slots.
pub fn build_with_vhost(
    setup: DeviceSetup<'_>,
    configs: &[MemDeviceConfig],
    vhost: Option<crate::vhost_user::VhostUserSetup>,
) -> Result<BuiltDevices, Error> {
    let vhost_table = vhost.as_ref().map(|v| v.table.clone());
    let DeviceSetup {
        vm,
        mut budget,
        mut area,
        mut bars,
        memory,
        restore,
    } = setup;
    let mut notifiers = QueueNotifiers::new(vm.clone());
    let pci_err = |e: pci::PciError| Error::Device(format!("PCI: {e}"));
    let mut bus = PciBus::new();
    let bridge = PciBdf::new(0, 0, 0).map_err(pci_err)?;
    bus.add_device(bridge, Arc::new(Mutex::new(HostBridge::new())))
        .map_err(pci_err)?;
    let mut devices = Vec::new();
    let mut unplugged_traps = Vec::new();
    for config in configs {
        let region = place_region(&mut area, config)?;
        let placement = MemoryDevicePlacement {
            vm: vm.fd(),
            budget: &mut budget,
            guest_addr: region.start,
            vhost_table: vhost_table.clone(),
        };
        let saved = match restore {
            Some(plan) => Some(plan.device(&config.id).ok_or_else(|| {
                Error::Device(format!(
                    "memory device '{}': not in the snapshot",
                    config.id
                ))
            })?),
            None => None,
        };
        let device = match (saved, restore) {
            (Some(saved), Some(plan)) => {
                MemoryDevice::restore(config, placement, saved, plan.memory)?
            }
            _ => MemoryDevice::new(config, placement)?,
        };
        let trap = UnpluggedAccessTrap::new(config.id.clone(), device.unplugged_accesses().clone());
        unplugged_traps.push((region.clone(), trap));
        let bar: MmioAddress = bars
            .allocate_bar(virtio::layout::BAR_SIZE_BYTES)
            .map_err(pci_err)?;
        let msi = IrqfdMsiSink::new(vm.clone(), MEM_DEVICE_VECTORS)?;
        let transport = VirtioPciDevice::new(
            device,
            memory.clone(),
            Arc::new(msi),
            VirtioPciConfig {
                bar_address: Some(bar),
                ..VirtioPciConfig::default()
            },
        )
        .map_err(|e| Error::Device(format!("memory device '{}': virtio-pci: {e}", config.id)))?;
        let mut transport = transport;
        if let Some(saved) = saved {
            transport.restore_state(&saved.transport).map_err(|e| {
                Error::Device(format!(
                    "memory device '{}': restoring virtio-pci: {e}",
                    config.id
                ))
            })?;
        }
        let transport = Arc::new(Mutex::new(transport));
        let slot = bus
            .first_free_slot()
            .ok_or_else(|| Error::Device("no free PCI slot".into()))?;
        bus.add_device(slot, transport.clone()).map_err(pci_err)?;
        let shared = SharedMemoryDevice::new(slot, transport.clone());
        if saved.is_some() {
            // A request the guest queued and notified just before the pause may not have been
            // served when the snapshot was taken; nothing would notify it again, and the
            // guest's driver would wait for its answer forever. Serve the queue once (a no-op
            // when nothing is pending; before DRIVER_OK there is nothing to serve).
            let active = shared.lock().is_active();
            if active {
                crate::notify::serve_notification(&shared, 0);
            }
        }
        notifiers.add(shared.clone())?;
        log::info!(
            "memory device '{}': region {:#x}..{:#x} at PCI {slot:?}, BAR {bar}",
            config.id,
            region.start,
            region.end
        );
        devices.push(shared);
    }
    let mut vhost_devices = Vec::new();
    for connected in vhost.map(|v| v.devices).unwrap_or_default() {
        let saved = match restore {
            Some(plan) => Some(
                plan.vhost
                    .iter()
                    .find(|v| v.id == connected.spec.id)
                    .ok_or_else(|| {
                        Error::Device(format!(
                            "vhost-user device '{}': no saved state",
                            connected.spec.id
                        ))
                    })?,
            ),
            None => None,
        };
        let placed = crate::vhost_user::add_to_bus(
            connected,
            crate::vhost_user::BusPlacement {
                vm,
                bus: &mut bus,
                bars: &mut bars,
                notifiers: &mut notifiers,
                memory: &memory,
                restore: saved,
            },
        )?;
        vhost_devices.push(placed);
    }
    Ok(BuiltDevices {
        unplugged_traps,
        bus,
        memory_devices: devices,
        notifiers,
        vhost_devices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_too_big_is_named_as_written_with_the_largest_that_fits() {
        let layout = boot::GuestLayout::new(1 << 30).unwrap();
        let mut area = DeviceAreaAllocator::new(&layout);
        let config = MemDeviceConfig::parse("id=m,size=100T").unwrap();
        let err = place_region(&mut area, &config).unwrap_err().to_string();
        assert!(err.contains("size=100T does not fit"), "{err}");
        assert!(!err.contains("109951162777600"), "{err}");
        // 64 TiB of guest physical addresses minus what lies below the device area (4 GiB).
        assert!(
            err.contains("largest region that fits is size=65532G"),
            "{err}"
        );
        let fits = MemDeviceConfig::parse("id=m,size=65532G").unwrap();
        assert!(place_region(&mut area, &fits).is_ok());
    }
}
