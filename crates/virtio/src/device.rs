//! The transport-independent device interface.

use virtio_queue::Queue;
use vm_memory::GuestMemory;

use crate::{ActivateError, FeaturesRefused};

/// What [`VirtioDevice::process_queue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueOutcome {
    /// Buffers were added to the used ring: the transport interrupts the driver (unless the
    /// driver suppressed it via `VRING_AVAIL_F_NO_INTERRUPT` or event index).
    pub used_buffers: bool,
    /// The driver gave the device a malformed queue or request it cannot recover from: the
    /// transport sets DEVICE_NEEDS_RESET and sends a configuration interrupt.
    pub needs_reset: bool,
}

/// One queue as the driver set it up, for devices whose queues are served outside the VMM
/// (vhost-user): guest addresses of the three ring parts and the size the driver chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSetup {
    /// Queue index.
    pub index: u16,
    /// Size the driver chose.
    pub size: u16,
    /// Whether the driver enabled the queue.
    pub enabled: bool,
    /// Guest address of the descriptor table.
    pub desc_table_addr: u64,
    /// Guest address of the available (driver) ring.
    pub avail_ring_addr: u64,
    /// Guest address of the used (device) ring.
    pub used_ring_addr: u64,
}

/// A virtio device (virtio-mem, ...), unaware of PCI.
///
/// The [`VirtioPciDevice`](crate::VirtioPciDevice) transport owns the virtqueues and calls into
/// the device in this order: [`ack_features`](Self::ack_features) when the driver sets
/// FEATURES_OK, [`activate`](Self::activate) at DRIVER_OK, then
/// [`process_queue`](Self::process_queue) on each notification; [`reset`](Self::reset) when
/// the driver writes 0 to the status register. Config-space accesses may come at any time.
pub trait VirtioDevice: Send {
    /// Virtio device id (`VIRTIO_ID_MEM` = 24, ...); must be below 64.
    fn device_type(&self) -> u32;

    /// Maximum size of each queue (powers of two); the slice length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];

    /// Device-specific and ring features offered (`VIRTIO_F_VERSION_1` is added by the
    /// transport).
    fn device_features(&self) -> u64;

    /// The driver's final feature set (a subset of the offer, `VIRTIO_F_VERSION_1` included).
    /// Refusing keeps FEATURES_OK clear, so the driver sees the refusal.
    fn ack_features(&mut self, features: u64) -> Result<(), FeaturesRefused>;

    /// Reads the device configuration structure at `offset_bytes`; bytes the device does not
    /// have must read as zero.
    fn read_config(&self, offset_bytes: u64, data: &mut [u8]);

    /// Writes the device configuration structure; read-only fields ignore writes.
    fn write_config(&mut self, offset_bytes: u64, data: &[u8]);

    /// The driver set DRIVER_OK: queues are configured.
    fn activate(&mut self) -> Result<(), ActivateError>;

    /// Like [`activate`](Self::activate), with every queue's setup; the transport calls this
    /// one. Devices whose queues are served elsewhere (vhost-user) override it.
    fn activate_with_queues(&mut self, queues: &[QueueSetup]) -> Result<(), ActivateError> {
        let _ = queues;
        self.activate()
    }

    /// Virtio device reset: forget negotiated features and in-flight state.
    fn reset(&mut self);

    /// Handles a notification of queue `queue_index`: pop available chains from `queue`, add
    /// used entries, and report what happened.
    fn process_queue<M: GuestMemory>(
        &mut self,
        queue_index: u16,
        queue: &mut Queue,
        memory: &M,
    ) -> QueueOutcome;
}
