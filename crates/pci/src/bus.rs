//! Bus 0: configuration mechanism #1 (ports 0xCF8/0xCFC) and MMIO dispatch to BARs.
//!
//! The bus is shared between vCPU threads (`&self` everywhere); devices sit behind their own
//! mutexes. Locks are never nested: the BAR map lock is released before a device is locked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::{BarIndex, BarRegion, DeviceEvent, MmioAddress, PciBdf, PciDevice, PciError};

/// CONFIG_ADDRESS port (dword access only).
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// First CONFIG_DATA port; 0xCFC..=0xCFF select the byte within the register.
pub const CONFIG_DATA_PORT: u16 = 0xcfc;
/// Number of ports the bus claims, starting at [`CONFIG_ADDRESS_PORT`].
pub const CONFIG_PORT_COUNT: u16 = 8;

const ADDRESS_ENABLE: u32 = 1 << 31;

/// A shared device handle, as stored on the bus.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// A BAR appearing, disappearing or moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMove {
    /// Which BAR.
    pub bar: BarIndex,
    /// Its size.
    pub size_bytes: u64,
    /// Where it was decoded before (`None`: not decoded).
    pub old: Option<MmioAddress>,
    /// Where it is decoded now (`None`: not decoded any more).
    pub new: Option<MmioAddress>,
}

/// What happened on the bus that the VMM must mirror in KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusEventKind {
    /// A BAR moved (re-register ioeventfds that live inside it).
    BarMoved(BarMove),
    /// A device-level event (MSI-X route change).
    Device(DeviceEvent),
}

/// A [`BusEventKind`] with the function it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusEvent {
    /// Source function.
    pub bdf: PciBdf,
    /// What happened.
    pub kind: BusEventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    end_exclusive: u64,
    bdf: PciBdf,
    bar: BarIndex,
}

/// PCI bus 0 with its devices.
pub struct PciBus {
    devices: BTreeMap<PciBdf, SharedPciDevice>,
    config_address: AtomicU32,
    mmio: RwLock<BTreeMap<u64, Mapping>>,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBus")
            .field("devices", &self.devices.keys().collect::<Vec<_>>())
            .field("config_address", &self.config_address)
            .finish_non_exhaustive()
    }
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

fn lock(device: &SharedPciDevice) -> MutexGuard<'_, dyn PciDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PciBus {
    /// An empty bus (add a [`HostBridge`](crate::HostBridge) at 00:00.0 first).
    pub fn new() -> Self {
        Self {
            devices: BTreeMap::new(),
            config_address: AtomicU32::new(0),
            mmio: RwLock::new(BTreeMap::new()),
        }
    }

    /// Plugs `device` at `bdf` (bus 0 only). Its decoded BARs become routable at once.
    pub fn add_device(&mut self, bdf: PciBdf, device: SharedPciDevice) -> Result<(), PciError> {
        if bdf.bus() != 0 {
            return Err(PciError::InvalidBdf {
                bus: bdf.bus(),
                device: bdf.device(),
                function: bdf.function(),
            });
        }
        if self.devices.contains_key(&bdf) {
            return Err(PciError::SlotOccupied(bdf));
        }
        let regions = lock(&device).bar_regions();
        self.devices.insert(bdf, device);
        self.update_mapping(bdf, &regions);
        Ok(())
    }

    /// The lowest free device number on bus 0 (function 0), if any.
    pub fn first_free_slot(&self) -> Option<PciBdf> {
        (0..32u8)
            .filter_map(|d| PciBdf::new(0, d, 0).ok())
            .find(|bdf| !self.devices.contains_key(bdf))
    }

    /// The device at `bdf`.
    pub fn device(&self, bdf: PciBdf) -> Option<&SharedPciDevice> {
        self.devices.get(&bdf)
    }

    /// Re-reads `bdf`'s decoded BARs after its config space changed other than through a
    /// bus access (e.g. a system reset of the device); returns the BARs that moved.
    pub fn refresh_mapping(&self, bdf: PciBdf) -> Vec<BusEvent> {
        let Some(device) = self.devices.get(&bdf) else {
            return Vec::new();
        };
        let regions = lock(device).bar_regions();
        self.update_mapping(bdf, &regions)
            .into_iter()
            .map(|m| BusEvent {
                bdf,
                kind: BusEventKind::BarMoved(m),
            })
            .collect()
    }

    /// Every decoded BAR on the bus.
    pub fn mmio_regions(&self) -> Vec<(PciBdf, BarRegion)> {
        let map = self.mmio.read().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(start, m)| {
                let region = BarRegion {
                    index: m.bar,
                    address: MmioAddress(*start),
                    size_bytes: m.end_exclusive - start,
                };
                (m.bdf, region)
            })
            .collect()
    }

    /// Guest `in` from 0xCF8..0xCFF. Absent devices and invalid accesses read all ones.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        match port.checked_sub(CONFIG_ADDRESS_PORT) {
            Some(0) if data.len() == 4 => {
                data.copy_from_slice(&self.config_address.load(Ordering::SeqCst).to_le_bytes());
            }
            Some(4..=7) => {
                let Some((bdf, offset)) = self.target(port, data.len()) else {
                    return;
                };
                if let Some(device) = self.devices.get(&bdf) {
                    lock(device).config_read(offset, data);
                }
            }
            _ => {}
        }
    }

    /// Guest `out` to 0xCF8..0xCFF. Returns what the VMM must mirror (BAR moves, MSI-X).
    pub fn pio_write(&self, port: u16, data: &[u8]) -> Vec<BusEvent> {
        match port.checked_sub(CONFIG_ADDRESS_PORT) {
            Some(0) => {
                if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                    self.config_address
                        .store(u32::from_le_bytes(bytes), Ordering::SeqCst);
                }
                Vec::new()
            }
            Some(4..=7) => self.config_write(port, data),
            _ => Vec::new(),
        }
    }

    /// Guest MMIO read. Returns `false` (and fills all ones) when no BAR claims `address`.
    pub fn mmio_read(&self, address: MmioAddress, data: &mut [u8]) -> bool {
        let Some((bdf, bar, offset)) = self.find_bar(address) else {
            data.fill(0xff);
            return false;
        };
        match self.devices.get(&bdf) {
            Some(device) => {
                lock(device).bar_read(bar, offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Guest MMIO write; unclaimed writes are dropped.
    pub fn mmio_write(&self, address: MmioAddress, data: &[u8]) -> Vec<BusEvent> {
        let Some((bdf, bar, offset)) = self.find_bar(address) else {
            log::debug!("pci: unclaimed MMIO write at {address}");
            return Vec::new();
        };
        let Some(device) = self.devices.get(&bdf) else {
            return Vec::new();
        };
        let events = lock(device).bar_write(bar, offset, data);
        events
            .into_iter()
            .map(|e| BusEvent {
                bdf,
                kind: BusEventKind::Device(e),
            })
            .collect()
    }

    fn config_write(&self, port: u16, data: &[u8]) -> Vec<BusEvent> {
        let Some((bdf, offset)) = self.target(port, data.len()) else {
            return Vec::new();
        };
        let Some(device) = self.devices.get(&bdf) else {
            return Vec::new();
        };
        let (device_events, regions) = {
            let mut guard = lock(device);
            let events = guard.config_write(offset, data);
            (events, guard.bar_regions())
        };
        let mut events: Vec<BusEvent> = self
            .update_mapping(bdf, &regions)
            .into_iter()
            .map(|m| BusEvent {
                bdf,
                kind: BusEventKind::BarMoved(m),
            })
            .collect();
        events.extend(device_events.into_iter().map(|e| BusEvent {
            bdf,
            kind: BusEventKind::Device(e),
        }));
        events
    }

    /// Decodes CONFIG_ADDRESS for a data-port access of `len` bytes at `port`.
    fn target(&self, port: u16, len: usize) -> Option<(PciBdf, usize)> {
        let address = self.config_address.load(Ordering::SeqCst);
        let byte = usize::from(port - CONFIG_DATA_PORT);
        if address & ADDRESS_ENABLE == 0 || !matches!(len, 1 | 2 | 4) || byte + len > 4 {
            return None;
        }
        // Bits 27:24 are the AMD extended-register field: registers >= 256 do not exist here.
        if address & 0x0f00_0000 != 0 {
            return None;
        }
        let bus = ((address >> 16) & 0xff) as u8;
        let device = ((address >> 11) & 0x1f) as u8;
        let function = ((address >> 8) & 0x7) as u8;
        let register = (address & 0xfc) as usize;
        let bdf = PciBdf::new(bus, device, function).ok()?;
        Some((bdf, register + byte))
    }

    fn find_bar(&self, address: MmioAddress) -> Option<(PciBdf, BarIndex, u64)> {
        let map = self.mmio.read().unwrap_or_else(|p| p.into_inner());
        let (start, mapping) = map.range(..=address.raw()).next_back()?;
        (address.raw() < mapping.end_exclusive)
            .then(|| (mapping.bdf, mapping.bar, address.raw() - start))
    }

    /// Replaces `bdf`'s entries in the MMIO map by `regions`; returns the BARs that moved.
    fn update_mapping(&self, bdf: PciBdf, regions: &[BarRegion]) -> Vec<BarMove> {
        let mut map = self.mmio.write().unwrap_or_else(|p| p.into_inner());
        let old: Vec<(u64, Mapping)> = map
            .iter()
            .filter(|(_, m)| m.bdf == bdf)
            .map(|(s, m)| (*s, *m))
            .collect();
        let mut moves = Vec::new();
        for (start, mapping) in &old {
            let still = regions
                .iter()
                .any(|r| r.index == mapping.bar && r.address.raw() == *start);
            if !still {
                if map.get(start).is_some_and(|m| m == mapping) {
                    map.remove(start);
                }
                let new = regions.iter().find(|r| r.index == mapping.bar);
                moves.push(BarMove {
                    bar: mapping.bar,
                    size_bytes: mapping.end_exclusive - start,
                    old: Some(MmioAddress(*start)),
                    new: new.map(|r| r.address),
                });
            }
        }
        for region in regions {
            let known = old
                .iter()
                .any(|(s, m)| m.bar == region.index && *s == region.address.raw());
            let Some(end) = region.address.checked_add(region.size_bytes) else {
                continue;
            };
            if !known {
                map.insert(
                    region.address.raw(),
                    Mapping {
                        end_exclusive: end.raw(),
                        bdf,
                        bar: region.index,
                    },
                );
                let was_moved = moves.iter().any(|m| m.bar == region.index);
                if !was_moved {
                    moves.push(BarMove {
                        bar: region.index,
                        size_bytes: region.size_bytes,
                        old: None,
                        new: Some(region.address),
                    });
                }
            }
        }
        moves
    }
}

#[cfg(test)]
#[path = "bus_tests.rs"]
mod tests;
