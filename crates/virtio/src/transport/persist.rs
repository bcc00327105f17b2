//! Saving and restoring a [`VirtioPciDevice`]'s transport state: PCI config space, MSI-X,
//! feature negotiation, status, ISR, config generation and every queue.
//!
//! The wrapped [`VirtioDevice`] saves and restores its own state (virtio-mem:
//! `virtio_mem::DeviceState`); restoring the transport does not replay `ack_features` or
//! `activate` into it. Restore onto a device freshly built with the same configuration and
//! after guest memory is mapped (enabled queues are checked against it).

use pci::{ConfigSpaceState, MsixState};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace};

use super::{QueueRegs, VirtioPciDevice};
use crate::status::NO_VECTOR;
use crate::{VirtioDevice, VirtioError};

/// State of one virtqueue: the driver's registers and the device's ring positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtqState {
    /// Maximum size the device offers (must match on restore).
    pub max_size: u16,
    /// Size the driver selected.
    pub size: u16,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Driver (available) ring address.
    pub driver_area: u64,
    /// Device (used) ring address.
    pub device_area: u64,
    /// MSI-X vector of the queue (0xffff: none).
    pub msix_vector: u16,
    /// Whether the driver enabled the queue.
    pub enabled: bool,
    /// Next available-ring index the device will read.
    pub next_avail: u16,
    /// Next used-ring index the device will write.
    pub next_used: u16,
    /// Whether VIRTIO_F_RING_EVENT_IDX is in use.
    pub event_idx: bool,
    /// A notification arrived before DRIVER_OK and is replayed at activation.
    pub notified_before_driver_ok: bool,
}

/// The transport's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioPciState {
    /// Virtio device type (must match).
    pub device_type: u32,
    /// PCI configuration space.
    pub pci_config: ConfigSpaceState,
    /// MSI-X table, PBA, enable and function mask.
    pub msix: MsixState,
    /// Features offered when saved (must be offered again).
    pub offered_features: u64,
    /// `device_feature_select`.
    pub device_feature_select: u32,
    /// `driver_feature_select`.
    pub driver_feature_select: u32,
    /// Features the driver wrote (accepted once FEATURES_OK is set).
    pub driver_features: u64,
    /// `config_msix_vector`.
    pub config_msix_vector: u16,
    /// `queue_select`.
    pub queue_select: u16,
    /// Device status.
    pub status: u8,
    /// Configuration generation.
    pub config_generation: u8,
    /// ISR bits not yet read.
    pub isr: u8,
    /// The queues, in index order.
    pub queues: Vec<VirtqState>,
}

impl<D: VirtioDevice, A: GuestAddressSpace> VirtioPciDevice<D, A> {
    /// The transport state to save (the device's own state is saved separately).
    pub fn save_state(&self) -> VirtioPciState {
        VirtioPciState {
            device_type: self.device.device_type(),
            pci_config: self.config.save_state(),
            msix: self.msix.save_state(),
            offered_features: self.offered_features(),
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            config_msix_vector: self.config_msix_vector,
            queue_select: self.queue_select,
            status: self.status,
            config_generation: self.config_generation,
            isr: self.isr,
            queues: self
                .queues
                .iter()
                .map(|slot| VirtqState {
                    max_size: slot.max_size,
                    size: slot.regs.size,
                    desc_table: slot.regs.desc_table,
                    driver_area: slot.regs.driver_area,
                    device_area: slot.regs.device_area,
                    msix_vector: slot.regs.msix_vector,
                    enabled: slot.regs.enabled,
                    next_avail: slot.queue.next_avail(),
                    next_used: slot.queue.next_used(),
                    event_idx: slot.queue.event_idx_enabled(),
                    notified_before_driver_ok: slot.notified_before_driver_ok,
                })
                .collect(),
        }
    }

    /// Restores saved transport state onto a freshly built device; checks everything first,
    /// so on error nothing changes. No interrupt is sent.
    pub fn restore_state(&mut self, state: &VirtioPciState) -> Result<(), VirtioError> {
        let bad = |what: String| Err(VirtioError::State(what));
        if state.device_type != self.device.device_type() {
            return bad(format!(
                "virtio device type {} saved, this device is type {}",
                state.device_type,
                self.device.device_type()
            ));
        }
        if state.offered_features & !self.offered_features() != 0 {
            return bad(format!(
                "features {:#x} were offered but this device offers {:#x}",
                state.offered_features,
                self.offered_features()
            ));
        }
        if state.driver_features & !state.offered_features != 0 {
            return bad(format!(
                "driver features {:#x} were never offered",
                state.driver_features
            ));
        }
        if state.queues.len() != self.queues.len() {
            return bad(format!(
                "{} queues saved, this device has {}",
                state.queues.len(),
                self.queues.len()
            ));
        }
        let vectors = self.msix.vector_count();
        let vector_ok = |v: u16| v == NO_VECTOR || v < vectors;
        if !vector_ok(state.config_msix_vector) {
            return bad(format!("config MSI-X vector {}", state.config_msix_vector));
        }
        let memory = self.memory.memory();
        let mut queues = Vec::with_capacity(state.queues.len());
        for (index, (saved, slot)) in state.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != slot.max_size || !vector_ok(saved.msix_vector) {
                return bad(format!(
                    "queue {index}: max size {} / vector {} do not fit this device (max size {})",
                    saved.max_size, saved.msix_vector, slot.max_size
                ));
            }
            let queue = restored_queue(saved)
                .filter(|q| !saved.enabled || q.is_valid(&*memory))
                .ok_or_else(|| {
                    VirtioError::State(format!("queue {index}: invalid saved layout {saved:?}"))
                })?;
            queues.push(queue);
        }
        let mut config = self.config.clone();
        let pci = |e: pci::PciError| VirtioError::State(e.to_string());
        config.restore_state(&state.pci_config).map_err(pci)?;
        self.msix.restore_state(&state.msix).map_err(pci)?;
        self.config = config;
        for ((slot, saved), queue) in self.queues.iter_mut().zip(&state.queues).zip(queues) {
            slot.queue = queue;
            slot.regs = QueueRegs {
                size: saved.size,
                desc_table: saved.desc_table,
                driver_area: saved.driver_area,
                device_area: saved.device_area,
                msix_vector: saved.msix_vector,
                enabled: saved.enabled,
            };
            slot.notified_before_driver_ok = saved.notified_before_driver_ok;
        }
        self.device_feature_select = state.device_feature_select;
        self.driver_feature_select = state.driver_feature_select;
        self.driver_features = state.driver_features;
        self.config_msix_vector = state.config_msix_vector;
        self.queue_select = state.queue_select;
        self.status = state.status;
        self.config_generation = state.config_generation;
        self.isr = state.isr;
        Ok(())
    }
}

impl<D: VirtioDevice, A: GuestAddressSpace> VirtioPciDevice<D, A> {
    /// After [`VirtioPciDevice::restore_state`], for a device whose negotiated state lives
    /// outside the VMM (a vhost-user backend on a new connection): replays what the driver
    /// did into the device — its features if FEATURES_OK was set, then, if DRIVER_OK was,
    /// the activation with every queue's saved setup. Nothing for a device the driver had not
    /// set up. On error the device is left unactivated and the caller decides.
    pub fn replay_negotiation(&mut self) -> Result<(), VirtioError> {
        use crate::status::{DRIVER_OK, FEATURES_OK};
        if self.status & FEATURES_OK == 0 {
            return Ok(());
        }
        self.device
            .ack_features(self.driver_features)
            .map_err(|e| VirtioError::State(e.to_string()))?;
        if self.status & DRIVER_OK == 0 {
            return Ok(());
        }
        let setups = self.queue_setups();
        self.device
            .activate_with_queues(&setups)
            .map_err(|e| VirtioError::State(e.to_string()))
    }
}

/// The queue as it was: an enabled queue gets its registers applied and its ring positions.
fn restored_queue(saved: &VirtqState) -> Option<Queue> {
    let mut queue = Queue::new(saved.max_size).ok()?;
    if !saved.enabled {
        return Some(queue);
    }
    queue.try_set_size(saved.size).ok()?;
    queue
        .try_set_desc_table_address(GuestAddress(saved.desc_table))
        .ok()?;
    queue
        .try_set_avail_ring_address(GuestAddress(saved.driver_area))
        .ok()?;
    queue
        .try_set_used_ring_address(GuestAddress(saved.device_area))
        .ok()?;
    queue.set_event_idx(saved.event_idx);
    queue.set_next_avail(saved.next_avail);
    queue.set_next_used(saved.next_used);
    queue.set_ready(true);
    Some(queue)
}

#[cfg(test)]
#[path = "persist_tests.rs"]
mod tests;
