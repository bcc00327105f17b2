//! Port-I/O and MMIO buses: address ranges mapped to shared devices.
//!
//! A bus is shared by all vCPU threads. Lookups take a read lock on the range map, clone the
//! device handle and release the map before calling the device, so a device may itself
//! insert or remove ranges (e.g. when the guest moves a PCI BAR).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::Error;

/// A device on a bus. `base` is the start of the range the access hit, `offset` is relative
/// to it. Accesses are 1, 2, 4 or 8 bytes; `data` is little-endian.
pub trait BusDevice: Send {
    /// Guest read: fill `data`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Guest write of `data`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// A device handle as stored on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// Which bus: for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    /// x86 I/O ports.
    Pio,
    /// Memory-mapped I/O.
    Mmio,
}

/// A set of non-overlapping ranges → devices.
pub struct Bus {
    kind: BusKind,
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<(u64, u64)> = read_map(&self.ranges)
            .iter()
            .map(|(b, e)| (*b, e.len))
            .collect();
        f.debug_struct("Bus")
            .field("kind", &self.kind)
            .field("ranges", &ranges)
            .finish()
    }
}

fn read_map(
    l: &RwLock<BTreeMap<u64, Entry>>,
) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Entry>> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Lock a device, recovering from a poisoned lock (a panicking device must not take the
/// vCPU threads down with it).
pub(crate) fn lock(device: &SharedDevice) -> MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

impl Bus {
    /// An empty bus.
    pub fn new(kind: BusKind) -> Self {
        Self {
            kind,
            ranges: RwLock::new(BTreeMap::new()),
        }
    }

    /// Map `device` at `base..base+len`. Fails if the range is empty, wraps, or overlaps.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), Error> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let overlap = Error::BusOverlap {
            kind: self.kind,
            base,
            len,
        };
        let Some(end) = end else {
            return Err(overlap);
        };
        let mut map = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        if let Some((b, e)) = map.range(..end).next_back()
            && b + e.len > base
        {
            return Err(overlap);
        }
        map.insert(base, Entry { len, device });
        Ok(())
    }

    /// Unmap the range starting exactly at `base`, returning its device.
    pub fn remove(&self, base: u64) -> Result<SharedDevice, Error> {
        let mut map = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&base)
            .map(|e| e.device)
            .ok_or(Error::BusNoDevice {
                kind: self.kind,
                addr: base,
            })
    }

    /// The device covering all of `addr..addr+len`, with its range base.
    fn resolve(&self, addr: u64, len: usize) -> Option<(u64, SharedDevice)> {
        let map = read_map(&self.ranges);
        let (base, e) = map.range(..=addr).next_back()?;
        let end = addr.checked_add(len as u64)?;
        (end <= base + e.len).then(|| (*base, e.device.clone()))
    }

    /// Dispatch a read. Returns false (and leaves `data` alone) if nothing is mapped there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((base, dev)) => {
                lock(&dev).read(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write. Returns false if nothing is mapped there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((base, dev)) => {
                lock(&dev).write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.writes.push((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_with_offset_relative_to_base() {
        let bus = Bus::new(BusKind::Pio);
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3F8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3FD, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3F8, &[0x41]));
        assert_eq!(dev.lock().unwrap().writes, vec![(0x3F8, 0, vec![0x41])]);
    }

    #[test]
    fn misses_outside_and_across_range_end() {
        let bus = Bus::new(BusKind::Mmio);
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x10)
            .unwrap();
        let mut b = [0xAAu8; 4];
        assert!(!bus.read(0xFFF, &mut b[..1]));
        assert!(!bus.read(0x1010, &mut b[..1]));
        assert!(!bus.read(0x100E, &mut b)); // straddles the end
        assert_eq!(b, [0xAA; 4]);
        assert!(bus.read(0x100C, &mut b));
    }

    #[test]
    fn rejects_overlap_and_empty_ranges() {
        let bus = Bus::new(BusKind::Mmio);
        let d = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(d(), 0x1000, 0x100).unwrap();
        assert!(bus.insert(d(), 0x10FF, 1).is_err());
        assert!(bus.insert(d(), 0xF00, 0x101).is_err());
        assert!(bus.insert(d(), 0x2000, 0).is_err());
        assert!(bus.insert(d(), u64::MAX, 2).is_err());
        bus.insert(d(), 0x1100, 0x100).unwrap();
        bus.insert(d(), 0xF00, 0x100).unwrap();
    }

    #[test]
    fn remove_frees_the_range() {
        let bus = Bus::new(BusKind::Mmio);
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x10)
            .unwrap();
        assert!(bus.remove(0x1004).is_err());
        bus.remove(0x1000).unwrap();
        let mut b = [0u8; 1];
        assert!(!bus.write(0x1000, &b));
        assert!(!bus.read(0x1000, &mut b));
    }
}
