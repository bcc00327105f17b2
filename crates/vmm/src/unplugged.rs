//! Guest accesses to device memory that is not mapped into KVM (unplugged, or never plugged).
//!
//! A slot that holds no plugged block is not in KVM, so a guest touching it exits to hotmem
//! as MMIO. Such a guest breaks the virtio-mem contract (UNPLUGGED_INACCESSIBLE), but it must
//! not take the VMM down or see host memory: reads return all ones, writes are dropped, each
//! access is counted (metric `hotmem_memory_device_unplugged_accesses_total`) and a warning is
//! logged at most once per [`WARNING_INTERVAL`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use machine::BusDevice;

/// Least time between two warnings for one device.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The MMIO handler behind one device region.
pub struct UnpluggedAccessTrap {
    device_id: String,
    accesses: Arc<AtomicU64>,
    last_warning: Option<Instant>,
}

impl UnpluggedAccessTrap {
    /// A trap for device `device_id`, counting into `accesses`.
    pub fn new(device_id: String, accesses: Arc<AtomicU64>) -> Self {
        UnpluggedAccessTrap {
            device_id,
            accesses,
            last_warning: None,
        }
    }

    fn record(&mut self, what: &str, addr: u64) {
        let count = self.accesses.fetch_add(1, Ordering::Relaxed) + 1;
        let due = self
            .last_warning
            .is_none_or(|t| t.elapsed() >= WARNING_INTERVAL);
        if due {
            self.last_warning = Some(Instant::now());
            log::warn!(
                "memory device '{}': guest {what} unplugged memory at {addr:#x} ({count} such \
                 accesses so far); reads return all ones, writes are dropped",
                self.device_id
            );
        }
    }
}

impl BusDevice for UnpluggedAccessTrap {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        self.record("read", base + offset);
    }

    fn write(&mut self, base: u64, offset: u64, _data: &[u8]) {
        self.record("wrote", base + offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_all_ones_writes_dropped_and_both_counted() {
        let count = Arc::new(AtomicU64::new(0));
        let mut trap = UnpluggedAccessTrap::new("mem0".into(), count.clone());
        let mut data = [0u8; 8];
        trap.read(0x1_0000_0000, 0x20, &mut data);
        assert_eq!(data, [0xff; 8]);
        trap.write(0x1_0000_0000, 0x20, &[1, 2]);
        trap.read(0x1_0000_0000, 0x40, &mut data[..2]);
        assert_eq!(count.load(Ordering::Relaxed), 3);
    }
}
