//! The crate's single error type.

use thiserror::Error;

/// Errors building a [`VirtioPciDevice`](crate::VirtioPciDevice). Guest mistakes are never
/// errors: they are ignored or put the device into DEVICE_NEEDS_RESET.
#[derive(Debug, Error)]
pub enum VirtioError {
    /// Modern device ids are 0x1040 + type and must stay within 0x107f.
    #[error("virtio device type {0} has no modern PCI device id")]
    InvalidDeviceType(u32),
    /// The BAR layout has room for at most [`MAX_QUEUES`](crate::MAX_QUEUES) queues.
    #[error("{0} queues requested, at most {max} supported", max = crate::MAX_QUEUES)]
    TooManyQueues(usize),
    /// A queue's maximum size must be a power of two in 1..=32768.
    #[error("queue {queue} has invalid maximum size {size}")]
    InvalidQueueMaxSize {
        /// Queue index.
        queue: usize,
        /// Offending size.
        size: u16,
    },
    /// Building the PCI function failed.
    #[error("PCI setup failed")]
    Pci(#[from] pci::PciError),
    /// Saved transport state does not fit this device (another device, or corrupted).
    #[error("saved virtio-pci state does not fit this device: {0}")]
    State(String),
}

/// Returned by [`VirtioDevice::ack_features`](crate::VirtioDevice::ack_features) when the device
/// will not work with the driver's feature set; FEATURES_OK then does not stick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("device refused driver features {features:#x}")]
pub struct FeaturesRefused {
    /// The refused feature set.
    pub features: u64,
}

/// Returned by [`VirtioDevice::activate`](crate::VirtioDevice::activate); the transport then
/// sets DEVICE_NEEDS_RESET.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("device activation failed: {reason}")]
pub struct ActivateError {
    /// Why (for logs).
    pub reason: String,
}
