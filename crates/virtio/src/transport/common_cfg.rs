//! The common configuration structure (virtio 1.2 §4.1.4.3) and the device status machine.

use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestAddressSpace};

use super::{QueueRegs, VirtioPciDevice};
use crate::VirtioDevice;
use crate::layout::COMMON_CONFIG_LEN_BYTES;
use crate::status::{
    ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FEATURE_RING_EVENT_IDX, FEATURE_VERSION_1,
    FEATURES_OK, NO_VECTOR,
};

const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// Little-endian value of a 1..=8 byte access.
fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .rev()
        .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte))
}

/// Applies a 32-bit half or a 64-bit write at `rel` (0 or 4) to a 64-bit register.
fn write_u64_part(register: &mut u64, rel: u64, len: usize, value: u64) {
    match (rel, len) {
        (0, 8) => *register = value,
        (0, 4) => *register = (*register & !0xffff_ffff) | value,
        (4, 4) => *register = (*register & 0xffff_ffff) | (value << 32),
        _ => log::debug!("virtio-pci: ignoring {len}-byte write to 64-bit field at +{rel}"),
    }
}

impl<D: VirtioDevice, A: GuestAddressSpace> VirtioPciDevice<D, A> {
    /// Features offered to the driver.
    pub fn offered_features(&self) -> u64 {
        self.device.device_features() | FEATURE_VERSION_1
    }

    /// Snapshot of the structure as the driver sees it (reads have no side effects).
    fn common_image(&self) -> [u8; COMMON_CONFIG_LEN_BYTES as usize] {
        let mut image = [0u8; COMMON_CONFIG_LEN_BYTES as usize];
        let mut put = |offset: u64, bytes: &[u8]| {
            let start = offset as usize;
            image[start..start + bytes.len()].copy_from_slice(bytes);
        };
        let window = |features: u64, select: u32| match select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        put(
            DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        let offered = window(self.offered_features(), self.device_feature_select);
        put(DEVICE_FEATURE, &offered.to_le_bytes());
        put(
            DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        let acked = window(self.driver_features, self.driver_feature_select);
        put(DRIVER_FEATURE, &acked.to_le_bytes());
        put(CONFIG_MSIX_VECTOR, &self.config_msix_vector.to_le_bytes());
        let num_queues = u16::try_from(self.queues.len()).unwrap_or(u16::MAX);
        put(NUM_QUEUES, &num_queues.to_le_bytes());
        put(DEVICE_STATUS, &[self.status]);
        put(CONFIG_GENERATION, &[self.config_generation]);
        put(QUEUE_SELECT, &self.queue_select.to_le_bytes());
        if let Some(slot) = self.queues.get(usize::from(self.queue_select)) {
            let regs = slot.regs;
            put(QUEUE_SIZE, &regs.size.to_le_bytes());
            put(QUEUE_MSIX_VECTOR, &regs.msix_vector.to_le_bytes());
            put(QUEUE_ENABLE, &u16::from(regs.enabled).to_le_bytes());
            put(QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(QUEUE_DESC, &regs.desc_table.to_le_bytes());
            put(QUEUE_DRIVER, &regs.driver_area.to_le_bytes());
            put(QUEUE_DEVICE, &regs.device_area.to_le_bytes());
        }
        image
    }

    pub(super) fn read_common(&self, offset: u64, data: &mut [u8]) {
        let image = self.common_image();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset as usize + i;
            *byte = image.get(at).copied().unwrap_or(0);
        }
    }

    pub(super) fn write_common(&mut self, offset: u64, data: &[u8]) {
        let value = le_value(data);
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = value as u32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = value as u32,
            (DRIVER_FEATURE, 4) => self.write_driver_features(value),
            (CONFIG_MSIX_VECTOR, 2) => self.config_msix_vector = self.valid_vector(value as u16),
            (DEVICE_STATUS, 1) => self.write_status(value as u8),
            (QUEUE_SELECT, 2) => self.queue_select = value as u16,
            (QUEUE_MSIX_VECTOR, 2) => {
                let vector = self.valid_vector(value as u16);
                if let Some(slot) = self.queues.get_mut(usize::from(self.queue_select)) {
                    slot.regs.msix_vector = vector;
                }
            }
            (QUEUE_ENABLE, 2) => self.write_queue_enable(value as u16),
            (QUEUE_SIZE, 2) | (QUEUE_DESC..=0x37, _) => self.write_queue_setup(offset, data),
            _ => log::debug!(
                "virtio-pci: ignoring common config write at {offset:#x} len {}",
                data.len()
            ),
        }
    }

    fn write_driver_features(&mut self, value: u64) {
        if self.status & FEATURES_OK != 0 {
            return;
        }
        match self.driver_feature_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
            _ => {}
        }
    }

    /// Queue size and ring addresses: only while the selected queue is disabled.
    fn write_queue_setup(&mut self, offset: u64, data: &[u8]) {
        let value = le_value(data);
        let Some(slot) = self.queues.get_mut(usize::from(self.queue_select)) else {
            return;
        };
        if slot.regs.enabled {
            log::debug!("virtio-pci: ignoring setup write to enabled queue");
            return;
        }
        let regs = &mut slot.regs;
        match offset {
            QUEUE_SIZE => regs.size = value as u16,
            QUEUE_DESC..QUEUE_DRIVER => {
                write_u64_part(&mut regs.desc_table, offset - QUEUE_DESC, data.len(), value)
            }
            QUEUE_DRIVER..QUEUE_DEVICE => write_u64_part(
                &mut regs.driver_area,
                offset - QUEUE_DRIVER,
                data.len(),
                value,
            ),
            _ => write_u64_part(
                &mut regs.device_area,
                offset - QUEUE_DEVICE,
                data.len(),
                value,
            ),
        }
    }

    /// Enabling applies the registers to the queue; a bad size, misaligned rings or rings
    /// outside guest memory put the device into DEVICE_NEEDS_RESET.
    fn write_queue_enable(&mut self, value: u16) {
        let event_idx = self.driver_features & FEATURE_RING_EVENT_IDX != 0;
        let memory = self.memory.memory();
        let Some(slot) = self.queues.get_mut(usize::from(self.queue_select)) else {
            return;
        };
        if value != 1 || slot.regs.enabled {
            return;
        }
        let regs = slot.regs;
        let queue = &mut slot.queue;
        queue.reset();
        let applied = queue.try_set_size(regs.size).is_ok()
            && queue
                .try_set_desc_table_address(GuestAddress(regs.desc_table))
                .is_ok()
            && queue
                .try_set_avail_ring_address(GuestAddress(regs.driver_area))
                .is_ok()
            && queue
                .try_set_used_ring_address(GuestAddress(regs.device_area))
                .is_ok();
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        if applied && queue.is_valid(&*memory) {
            slot.regs.enabled = true;
            return;
        }
        log::warn!(
            "virtio-pci: queue {} enabled with invalid layout {regs:?}",
            self.queue_select
        );
        queue.set_ready(false);
        self.enter_needs_reset();
    }

    /// The status machine (virtio 1.2 §3.1.1): bits only accumulate, FEATURES_OK sticks only
    /// if the feature set is acceptable, DRIVER_OK activates the device, 0 resets.
    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset_transport();
            return;
        }
        let old = self.status;
        let requested = value & !DEVICE_NEEDS_RESET;
        if old & !DEVICE_NEEDS_RESET & !requested != 0 {
            log::debug!("virtio-pci: driver tried to clear status bits {old:#x} -> {value:#x}");
            return;
        }
        let added = requested & !old;
        let mut status = old | added;
        if added & FEATURES_OK != 0 && !self.accept_features() {
            status &= !FEATURES_OK;
        }
        if added & DRIVER_OK != 0 && status & FEATURES_OK == 0 {
            status &= !DRIVER_OK;
        }
        self.status = status;
        if added & DRIVER_OK != 0 && status & DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn accept_features(&mut self) -> bool {
        let features = self.driver_features;
        let handshake = self.status & (ACKNOWLEDGE | DRIVER) == ACKNOWLEDGE | DRIVER;
        let subset = features & !self.offered_features() == 0;
        let modern = features & FEATURE_VERSION_1 != 0;
        if !(handshake && subset && modern) {
            log::info!("virtio-pci: rejecting driver features {features:#x}");
            return false;
        }
        match self.device.ack_features(features) {
            Ok(()) => true,
            Err(refused) => {
                log::info!("virtio-pci: {refused}");
                false
            }
        }
    }

    /// Every queue's setup as the driver wrote it, for the device's activation.
    pub(super) fn queue_setups(&self) -> Vec<crate::QueueSetup> {
        (0u16..)
            .zip(&self.queues)
            .map(|(index, slot)| crate::QueueSetup {
                index,
                size: slot.regs.size,
                enabled: slot.regs.enabled,
                desc_table_addr: slot.regs.desc_table,
                avail_ring_addr: slot.regs.driver_area,
                used_ring_addr: slot.regs.device_area,
            })
            .collect()
    }

    fn activate(&mut self) {
        let setups = self.queue_setups();
        if let Err(error) = self.device.activate_with_queues(&setups) {
            log::warn!("virtio-pci: {error}");
            self.enter_needs_reset();
            return;
        }
        for index in 0..self.queues.len() {
            let slot = &mut self.queues[index];
            if std::mem::take(&mut slot.notified_before_driver_ok)
                && let Ok(queue) = u16::try_from(index)
            {
                self.notify_queue(queue);
            }
        }
    }

    /// Virtio reset: the device forgets everything; MSI-X (a PCI function property) stays.
    pub(super) fn reset_transport(&mut self) {
        self.device.reset();
        for slot in &mut self.queues {
            slot.queue.reset();
            slot.regs = QueueRegs::new(slot.max_size);
            slot.notified_before_driver_ok = false;
        }
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.config_msix_vector = NO_VECTOR;
        self.queue_select = 0;
        self.status = 0;
        self.isr = 0;
    }
}
