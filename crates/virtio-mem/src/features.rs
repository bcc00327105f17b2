//! virtio-mem feature bits and what the device offers.

/// The node id in the config space is an ACPI proximity domain (bit 0).
pub const VIRTIO_MEM_F_ACPI_PXM: u32 = 0;
/// Unplugged memory must not be accessed by the driver (bit 1). Always offered.
pub const VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE: u32 = 1;
/// Plugged memory survives suspend-to-RAM (bit 2).
pub const VIRTIO_MEM_F_PERSISTENT_SUSPEND: u32 = 2;
/// A modern (virtio 1.x) device (bit 32).
pub use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// The virtio device id of virtio-mem.
pub use virtio_bindings::virtio_ids::VIRTIO_ID_MEM;

/// The feature mask with bit `bit` set.
pub const fn feature_bit(bit: u32) -> u64 {
    1u64 << bit
}

/// The optional features this device offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct FeatureOffer {
    /// Offer `VIRTIO_MEM_F_ACPI_PXM` (the VM has NUMA and ACPI).
    pub acpi_pxm: bool,
    /// Offer `VIRTIO_MEM_F_PERSISTENT_SUSPEND` (the VM supports suspend-to-RAM wake-up).
    pub persistent_suspend: bool,
}

impl FeatureOffer {
    /// The device feature bits: VERSION_1 and UNPLUGGED_INACCESSIBLE always, plus the options.
    pub fn device_features(self) -> u64 {
        let mut features =
            feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE);
        if self.acpi_pxm {
            features |= feature_bit(VIRTIO_MEM_F_ACPI_PXM);
        }
        if self.persistent_suspend {
            features |= feature_bit(VIRTIO_MEM_F_PERSISTENT_SUSPEND);
        }
        features
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unplugged_inaccessible_and_version_1_are_always_offered() {
        let f = FeatureOffer::default().device_features();
        assert_eq!(f, (1 << 32) | 0b010);
    }

    #[test]
    fn optional_features_follow_the_offer() {
        let f = FeatureOffer {
            acpi_pxm: true,
            persistent_suspend: true,
        }
        .device_features();
        assert_eq!(f, (1 << 32) | 0b111);
    }
}
