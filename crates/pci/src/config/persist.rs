//! Saving and restoring a [`ConfigSpace`]: the register bytes and BAR addresses.
//!
//! The layout (ids, BAR sizes, capabilities, writable masks) is rebuilt by the device's
//! constructor; restoring checks that every read-only byte matches it, so a snapshot of another
//! device (or a corrupted one) is refused instead of half-applied.

use serde::{Deserialize, Serialize};

use super::{BAR_END, BAR_FIRST, BarSlot, CONFIG_SPACE_SIZE_BYTES, ConfigSpace};
use crate::{BAR_COUNT, PciError};

/// The guest-visible state of a configuration space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSpaceState {
    /// The 256 register bytes (BAR registers excluded: see `bar_addresses`).
    pub regs: Vec<u8>,
    /// Programmed address of each BAR slot (0 for unused slots and upper halves).
    pub bar_addresses: Vec<u64>,
}

impl ConfigSpace {
    /// The state to save.
    pub fn save_state(&self) -> ConfigSpaceState {
        let mut regs = self.regs.to_vec();
        regs[BAR_FIRST..BAR_END].fill(0);
        ConfigSpaceState {
            regs,
            bar_addresses: self
                .bars
                .iter()
                .map(|slot| match slot {
                    BarSlot::Bar { address, .. } => *address,
                    _ => 0,
                })
                .collect(),
        }
    }

    /// Restores saved state onto a space with the same layout; on error nothing changes.
    pub fn restore_state(&mut self, state: &ConfigSpaceState) -> Result<(), PciError> {
        let bad = |what: String| Err(PciError::State(what));
        if state.regs.len() != CONFIG_SPACE_SIZE_BYTES || state.bar_addresses.len() != BAR_COUNT {
            return bad(format!(
                "{} register bytes and {} BARs saved, expected {CONFIG_SPACE_SIZE_BYTES} and \
                 {BAR_COUNT}",
                state.regs.len(),
                state.bar_addresses.len()
            ));
        }
        for offset in 0..CONFIG_SPACE_SIZE_BYTES {
            let guest_changeable = self.writable[offset] | self.write_one_to_clear[offset];
            let fixed = !guest_changeable;
            let in_bars = (BAR_FIRST..BAR_END).contains(&offset);
            if !in_bars && (state.regs[offset] ^ self.regs[offset]) & fixed != 0 {
                return bad(format!(
                    "read-only config byte {offset:#04x} is {:#04x} in the snapshot but {:#04x} \
                     on this device",
                    state.regs[offset], self.regs[offset]
                ));
            }
        }
        let mut bars = self.bars;
        for (index, (slot, &saved)) in bars.iter_mut().zip(&state.bar_addresses).enumerate() {
            match slot {
                BarSlot::Bar {
                    size_bytes,
                    address,
                    ..
                } => {
                    if !saved.is_multiple_of(*size_bytes) {
                        return bad(format!(
                            "BAR {index} address {saved:#x} is not aligned to its size \
                             {size_bytes:#x}"
                        ));
                    }
                    *address = saved;
                }
                _ if saved != 0 => {
                    return bad(format!(
                        "BAR {index} has an address but no BAR on this device"
                    ));
                }
                _ => {}
            }
        }
        for offset in 0..CONFIG_SPACE_SIZE_BYTES {
            if !(BAR_FIRST..BAR_END).contains(&offset) {
                self.regs[offset] = state.regs[offset];
            }
        }
        self.bars = bars;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        BarIndex, BarKind, BarSpec, COMMAND_MEMORY_SPACE, InterruptPin, MmioAddress, PciClass,
        PciIds,
    };

    fn space(device_id: u16) -> ConfigSpace {
        let ids = PciIds {
            vendor_id: 0x1af4,
            device_id,
            revision_id: 1,
            class: PciClass {
                base: 0xff,
                sub: 0,
                prog_if: 0,
            },
            subsystem_vendor_id: 0x1af4,
            subsystem_id: device_id,
        };
        let mut s = ConfigSpace::new(ids, InterruptPin::None);
        s.add_bar(
            BarIndex::new(0).unwrap(),
            BarSpec {
                kind: BarKind::Memory64 {
                    prefetchable: false,
                },
                size_bytes: 0x4000,
                address: None,
            },
        )
        .unwrap();
        s.add_capability_with_mask(0x11, &[0; 10], &[0, 0xc0])
            .unwrap();
        s
    }

    #[test]
    fn guest_programmed_state_round_trips() {
        let mut s = space(0x1058);
        s.write(0x10, &0xfebf_c000u32.to_le_bytes());
        s.write(0x14, &0x1u32.to_le_bytes());
        s.write(0x04, &(COMMAND_MEMORY_SPACE | 0x4).to_le_bytes());
        s.write(0x3c, &[11]);
        s.write(0x43, &[0xc0]);
        let saved = s.save_state();
        let bytes = postcard::to_allocvec(&saved).unwrap();
        let loaded: ConfigSpaceState = postcard::from_bytes(&bytes).unwrap();
        let mut fresh = space(0x1058);
        fresh.restore_state(&loaded).unwrap();
        for offset in 0..256 {
            let (mut a, mut b) = ([0u8], [0u8]);
            s.read(offset, &mut a);
            fresh.read(offset, &mut b);
            assert_eq!(a, b, "byte {offset:#x}");
        }
        assert_eq!(
            fresh.bar_address(BarIndex::new(0).unwrap()),
            Some(MmioAddress(0x1_febf_c000))
        );
        assert_eq!(fresh.decoded_bars(), s.decoded_bars());
    }

    #[test]
    fn state_of_another_device_is_refused_and_changes_nothing() {
        let saved = space(0x1058).save_state();
        let mut other = space(0x1041);
        let before = other.save_state();
        let e = other.restore_state(&saved).unwrap_err();
        assert!(e.to_string().contains("read-only config byte 0x02"), "{e}");
        assert_eq!(other.save_state(), before);
        let mut misaligned = saved.clone();
        misaligned.bar_addresses[0] = 0x1000;
        let e = space(0x1058).restore_state(&misaligned).unwrap_err();
        assert!(e.to_string().contains("not aligned"), "{e}");
        let mut short = saved;
        short.regs.pop();
        assert!(space(0x1058).restore_state(&short).is_err());
    }
}
