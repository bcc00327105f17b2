//! Where things live in the single 64-bit memory BAR, and the capabilities that describe it.
//!
//! ```text
//! 0x0000 common configuration   (0x1000)
//! 0x1000 ISR status             (0x1000, one byte used)
//! 0x2000 device configuration   (0x1000)
//! 0x3000 notifications          (queue N at N * 4)
//! 0x4000 MSI-X table            (16 bytes per vector: config + one per queue)
//! 0x5000 MSI-X PBA
//! ```

use pci::{BarIndex, ConfigSpace, MsixLayout, PciError};

/// BAR used for every virtio structure.
pub const VIRTIO_BAR: u8 = BarIndex::ZERO.get();
/// Size of the virtio BAR.
pub const BAR_SIZE_BYTES: u64 = 0x8000;
/// Common configuration offset in the BAR.
pub const COMMON_OFFSET: u64 = 0x0000;
/// ISR offset in the BAR.
pub const ISR_OFFSET: u64 = 0x1000;
/// Device configuration offset in the BAR.
pub const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
/// Notification area offset in the BAR.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// MSI-X table offset in the BAR.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// MSI-X PBA offset in the BAR.
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// Size of each region above.
pub const REGION_SIZE_BYTES: u64 = 0x1000;
/// Bytes between two queues' notification addresses (`notify_off_multiplier`).
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Most queues the layout supports (one MSI-X vector each plus the config vector fits the
/// 0x1000-byte table region).
pub const MAX_QUEUES: usize = 255;
/// Length of the common configuration structure (virtio 1.2, up to `queue_reset`).
pub const COMMON_CONFIG_LEN_BYTES: u64 = 0x3c;

/// PCI capability id of vendor-specific capabilities (virtio structures).
const VENDOR_CAPABILITY_ID: u8 = 0x09;
/// `cfg_type` of the common configuration.
pub const CAP_COMMON_CFG: u8 = 1;
/// `cfg_type` of the notification structure.
pub const CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR.
pub const CAP_ISR_CFG: u8 = 3;
/// `cfg_type` of the device configuration.
pub const CAP_DEVICE_CFG: u8 = 4;

/// The BAR index used for virtio structures.
pub fn virtio_bar() -> BarIndex {
    BarIndex::ZERO
}

/// MSI-X placement for `vector_count` vectors.
pub fn msix_layout(vector_count: u16) -> MsixLayout {
    MsixLayout {
        vector_count,
        bar: virtio_bar(),
        table_offset_bytes: MSIX_TABLE_OFFSET as u32,
        pba_offset_bytes: MSIX_PBA_OFFSET as u32,
    }
}

/// Body of a `struct virtio_pci_cap` after the id/next bytes.
fn virtio_cap_body(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let cap_len = 16 + extra.len();
    let mut body = vec![cap_len as u8, cfg_type, VIRTIO_BAR, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

/// Adds the four virtio capabilities (common, notify, ISR, device) to `config`.
pub fn add_virtio_capabilities(config: &mut ConfigSpace, queue_count: u16) -> Result<(), PciError> {
    let notify_len = (u64::from(queue_count) * u64::from(NOTIFY_OFF_MULTIPLIER)).max(2);
    let caps = [
        virtio_cap_body(CAP_COMMON_CFG, COMMON_OFFSET, REGION_SIZE_BYTES, &[]),
        virtio_cap_body(
            CAP_NOTIFY_CFG,
            NOTIFY_OFFSET,
            notify_len,
            &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
        ),
        virtio_cap_body(CAP_ISR_CFG, ISR_OFFSET, REGION_SIZE_BYTES, &[]),
        virtio_cap_body(CAP_DEVICE_CFG, DEVICE_CONFIG_OFFSET, REGION_SIZE_BYTES, &[]),
    ];
    for body in caps {
        config.add_capability(VENDOR_CAPABILITY_ID, &body)?;
    }
    Ok(())
}
