//! The virtio-mem config space: `struct virtio_mem_config`, 56 bytes, little-endian.

/// Size of the config space in bytes.
pub const CONFIG_SPACE_BYTES: usize = 56;

const BLOCK_SIZE_OFFSET: usize = 0;
const NODE_ID_OFFSET: usize = 8;
const ADDR_OFFSET: usize = 16;
const REGION_SIZE_OFFSET: usize = 24;
const USABLE_REGION_SIZE_OFFSET: usize = 32;
const PLUGGED_SIZE_OFFSET: usize = 40;
const REQUESTED_SIZE_OFFSET: usize = 48;

/// The values the driver reads from the config space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConfigSpace {
    /// `block_size` (offset 0).
    pub block_size_bytes: u64,
    /// `node_id` (offset 8), followed by 6 bytes of padding.
    pub node_id: u16,
    /// `addr` (offset 16): guest physical start of the region.
    pub guest_addr: u64,
    /// `region_size` (offset 24).
    pub region_size_bytes: u64,
    /// `usable_region_size` (offset 32).
    pub usable_region_size_bytes: u64,
    /// `plugged_size` (offset 40).
    pub plugged_size_bytes: u64,
    /// `requested_size` (offset 48).
    pub requested_size_bytes: u64,
}

impl ConfigSpace {
    /// The wire layout.
    pub fn to_bytes(&self) -> [u8; CONFIG_SPACE_BYTES] {
        let mut bytes = [0u8; CONFIG_SPACE_BYTES];
        let mut put = |offset: usize, value: &[u8]| {
            bytes[offset..offset + value.len()].copy_from_slice(value);
        };
        put(BLOCK_SIZE_OFFSET, &self.block_size_bytes.to_le_bytes());
        put(NODE_ID_OFFSET, &self.node_id.to_le_bytes());
        put(ADDR_OFFSET, &self.guest_addr.to_le_bytes());
        put(REGION_SIZE_OFFSET, &self.region_size_bytes.to_le_bytes());
        put(
            USABLE_REGION_SIZE_OFFSET,
            &self.usable_region_size_bytes.to_le_bytes(),
        );
        put(PLUGGED_SIZE_OFFSET, &self.plugged_size_bytes.to_le_bytes());
        put(
            REQUESTED_SIZE_OFFSET,
            &self.requested_size_bytes.to_le_bytes(),
        );
        bytes
    }

    /// Copies the bytes at `offset..offset + data.len()` into `data`; bytes past the end of the
    /// config space (or an offset past it) read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let bytes = self.to_bytes();
        let Some(start) = usize::try_from(offset)
            .ok()
            .filter(|&s| s < CONFIG_SPACE_BYTES)
        else {
            return;
        };
        let len = data.len().min(CONFIG_SPACE_BYTES - start);
        data[..len].copy_from_slice(&bytes[start..start + len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConfigSpace {
        ConfigSpace {
            block_size_bytes: 0x20_0000,
            node_id: 0x0102,
            guest_addr: 0x1_0000_0000,
            region_size_bytes: 0x4_0000_0000,
            usable_region_size_bytes: 0x5000_0000,
            plugged_size_bytes: 0x4000_0000,
            requested_size_bytes: 0x1_4020_0000,
        }
    }

    fn le64(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    #[test]
    fn config_bytes_follow_the_virtio_mem_config_layout() {
        let b = sample().to_bytes();
        assert_eq!(b.len(), 56);
        assert_eq!(le64(&b, 0), 0x20_0000);
        assert_eq!(&b[8..10], &[0x02, 0x01]);
        assert_eq!(&b[10..16], &[0; 6], "padding is zero");
        assert_eq!(le64(&b, 16), 0x1_0000_0000);
        assert_eq!(le64(&b, 24), 0x4_0000_0000);
        assert_eq!(le64(&b, 32), 0x5000_0000);
        assert_eq!(le64(&b, 40), 0x4000_0000);
        assert_eq!(le64(&b, 48), 0x1_4020_0000);
    }

    #[test]
    fn partial_reads_return_the_requested_window() {
        let mut four = [0xffu8; 4];
        sample().read(40, &mut four);
        assert_eq!(four, [0, 0, 0, 0x40]);
        let mut two = [0u8; 2];
        sample().read(8, &mut two);
        assert_eq!(u16::from_le_bytes(two), 0x0102);
    }

    #[test]
    fn reads_past_the_end_give_zeros_without_panicking() {
        let mut data = [0xffu8; 8];
        sample().read(52, &mut data);
        assert_eq!(
            data,
            [1, 0, 0, 0, 0, 0, 0, 0],
            "requested_size high half then zeros"
        );
        let mut data = [0xffu8; 8];
        sample().read(56, &mut data);
        assert_eq!(data, [0; 8]);
        sample().read(u64::MAX, &mut data);
        assert_eq!(data, [0; 8]);
        sample().read(0, &mut []);
    }
}
