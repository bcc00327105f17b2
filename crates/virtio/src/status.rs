//! Device status bits and transport-level feature bits.

use virtio_bindings::virtio_config as cfg;
use virtio_bindings::virtio_ring as ring;

/// Guest OS noticed the device.
pub const ACKNOWLEDGE: u8 = cfg::VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
/// Guest OS knows how to drive the device.
pub const DRIVER: u8 = cfg::VIRTIO_CONFIG_S_DRIVER as u8;
/// Driver is set up and ready.
pub const DRIVER_OK: u8 = cfg::VIRTIO_CONFIG_S_DRIVER_OK as u8;
/// Feature negotiation is complete.
pub const FEATURES_OK: u8 = cfg::VIRTIO_CONFIG_S_FEATURES_OK as u8;
/// The device hit an error and needs a reset (set by the device only).
pub const DEVICE_NEEDS_RESET: u8 = cfg::VIRTIO_CONFIG_S_NEEDS_RESET as u8;
/// The driver gave up on the device.
pub const FAILED: u8 = cfg::VIRTIO_CONFIG_S_FAILED as u8;

/// `VIRTIO_F_VERSION_1`: always offered, and required from the driver (modern only).
pub const FEATURE_VERSION_1: u64 = 1 << cfg::VIRTIO_F_VERSION_1;
/// `VIRTIO_RING_F_EVENT_IDX`: when negotiated, the transport enables event-index interrupt
/// suppression on every queue.
pub const FEATURE_RING_EVENT_IDX: u64 = 1 << ring::VIRTIO_RING_F_EVENT_IDX;

/// `VIRTIO_MSI_NO_VECTOR`: no MSI-X vector assigned.
pub const NO_VECTOR: u16 = 0xffff;

/// ISR bit 0: a queue was used (only when MSI-X is disabled).
pub const ISR_QUEUE: u8 = 1;
/// ISR bit 1: the device configuration changed.
pub const ISR_CONFIG: u8 = 2;
