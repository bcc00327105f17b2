//! The 256-byte type-0 configuration space: identification registers, command/status, BARs
//! with size probing, and the capability list.
//!
//! Every byte has a writable mask and a write-one-to-clear mask; guest writes outside them are
//! dropped, so read-only fields stay read-only whatever the guest does. BAR registers are
//! modelled separately: the guest can only write address bits above the BAR size, which is
//! what makes "write all ones, read back the size mask" probing work.

use crate::msix::{MSIX_CAPABILITY_ID, MsixLayout};
use crate::{BAR_COUNT, BarIndex, InterruptPin, MmioAddress, PciError, PciIds};

/// Size of the legacy configuration space.
pub const CONFIG_SPACE_SIZE_BYTES: usize = 256;
/// Offset of the command register.
pub const COMMAND_OFFSET: usize = 0x04;
/// Command bit 1: memory space decoding enabled.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command bit 2: bus mastering (DMA) enabled.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command bit 10: legacy INTx disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status bit 4: the capability list exists.
pub const STATUS_CAPABILITY_LIST: u16 = 1 << 4;

const VENDOR_ID: usize = 0x00;
const DEVICE_ID: usize = 0x02;
const STATUS: usize = 0x06;
const REVISION_ID: usize = 0x08;
const CLASS_PROG_IF: usize = 0x09;
const CACHE_LINE_SIZE: usize = 0x0c;
const LATENCY_TIMER: usize = 0x0d;
const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
const SUBSYSTEM_ID: usize = 0x2e;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
const INTERRUPT_PIN: usize = 0x3d;
const FIRST_CAPABILITY: usize = 0x40;
const BAR_FIRST: usize = 0x10;
const BAR_END: usize = 0x28;
/// Writable command bits: I/O, memory, bus master, parity, SERR#, INTx disable.
const COMMAND_WRITABLE: u16 = 0x0547;
/// Status bits cleared by writing one: master data parity, target/master aborts, SERR, parity.
const STATUS_WRITE_ONE_TO_CLEAR: u16 = 0xf900;

/// Kind of a memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR (one register).
    Memory32 {
        /// Prefetchable bit.
        prefetchable: bool,
    },
    /// 64-bit memory BAR (two registers: index and index + 1).
    Memory64 {
        /// Prefetchable bit.
        prefetchable: bool,
    },
}

/// A BAR to declare with [`ConfigSpace::add_bar`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarSpec {
    /// 32- or 64-bit memory BAR.
    pub kind: BarKind,
    /// Size: a power of two, at least 16 bytes.
    pub size_bytes: u64,
    /// Address programmed before the guest runs (the VMM plays firmware), aligned to the size.
    pub address: Option<MmioAddress>,
}

/// A BAR currently decoded by the device (memory decoding on, address assigned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRegion {
    /// Which BAR.
    pub index: BarIndex,
    /// Guest-physical base.
    pub address: MmioAddress,
    /// Size of the region.
    pub size_bytes: u64,
}

/// What a config write changed that the device model must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConfigWriteEffects {
    /// New MSI-X Message Control value when the write touched it; pass it to
    /// [`Msix::write_control`](crate::Msix::write_control).
    pub msix_control: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BarSlot {
    Unused,
    Bar {
        kind: BarKind,
        size_bytes: u64,
        address: u64,
    },
    /// Upper half of the 64-bit BAR in the previous slot.
    Upper,
}

/// A type-0 configuration space.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    regs: [u8; CONFIG_SPACE_SIZE_BYTES],
    writable: [u8; CONFIG_SPACE_SIZE_BYTES],
    write_one_to_clear: [u8; CONFIG_SPACE_SIZE_BYTES],
    bars: [BarSlot; BAR_COUNT],
    next_capability: usize,
    last_capability: Option<usize>,
    msix_capability: Option<usize>,
}

impl ConfigSpace {
    /// A header with the given ids, no BARs, no capabilities, command = 0.
    pub fn new(ids: PciIds, pin: InterruptPin) -> Self {
        let mut space = Self {
            regs: [0; CONFIG_SPACE_SIZE_BYTES],
            writable: [0; CONFIG_SPACE_SIZE_BYTES],
            write_one_to_clear: [0; CONFIG_SPACE_SIZE_BYTES],
            bars: [BarSlot::Unused; BAR_COUNT],
            next_capability: FIRST_CAPABILITY,
            last_capability: None,
            msix_capability: None,
        };
        space.set_u16(VENDOR_ID, ids.vendor_id);
        space.set_u16(DEVICE_ID, ids.device_id);
        space.regs[REVISION_ID] = ids.revision_id;
        space.regs[CLASS_PROG_IF] = ids.class.prog_if;
        space.regs[CLASS_PROG_IF + 1] = ids.class.sub;
        space.regs[CLASS_PROG_IF + 2] = ids.class.base;
        space.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor_id);
        space.set_u16(SUBSYSTEM_ID, ids.subsystem_id);
        space.regs[INTERRUPT_PIN] = pin.register_value();
        space.writable[COMMAND_OFFSET..COMMAND_OFFSET + 2]
            .copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        space.write_one_to_clear[STATUS..STATUS + 2]
            .copy_from_slice(&STATUS_WRITE_ONE_TO_CLEAR.to_le_bytes());
        space.writable[CACHE_LINE_SIZE] = 0xff;
        space.writable[LATENCY_TIMER] = 0xff;
        space.writable[INTERRUPT_LINE] = 0xff;
        space
    }

    /// Declares a memory BAR. A 64-bit BAR also occupies `index + 1`.
    pub fn add_bar(&mut self, index: BarIndex, spec: BarSpec) -> Result<(), PciError> {
        let i = index.as_usize();
        let is_64 = matches!(spec.kind, BarKind::Memory64 { .. });
        let size = spec.size_bytes;
        let max_size = if is_64 { 1u64 << 63 } else { 1u64 << 31 };
        if !size.is_power_of_two() || size < 16 || size > max_size {
            return Err(PciError::InvalidBarSize(size));
        }
        if is_64 && i + 1 >= BAR_COUNT {
            return Err(PciError::InvalidBarIndex(index.get()));
        }
        let upper_busy = is_64 && self.bars[i + 1] != BarSlot::Unused;
        if self.bars[i] != BarSlot::Unused || upper_busy {
            return Err(PciError::BarInUse(index.get()));
        }
        let address = spec.address.map_or(0, MmioAddress::raw);
        let fits = is_64 || address <= u64::from(u32::MAX) - (size - 1);
        if !address.is_multiple_of(size) || !fits || address.checked_add(size - 1).is_none() {
            return Err(PciError::InvalidBarAddress {
                address,
                size_bytes: size,
            });
        }
        self.bars[i] = BarSlot::Bar {
            kind: spec.kind,
            size_bytes: size,
            address,
        };
        if is_64 {
            self.bars[i + 1] = BarSlot::Upper;
        }
        Ok(())
    }

    /// Appends a capability (`id`, then `body`) to the list; returns its offset. The body is
    /// read-only to the guest.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<usize, PciError> {
        self.add_capability_with_mask(id, body, &[])
    }

    /// Like [`Self::add_capability`], with a writable mask for the body's first bytes.
    pub fn add_capability_with_mask(
        &mut self,
        id: u8,
        body: &[u8],
        writable_body: &[u8],
    ) -> Result<usize, PciError> {
        let len = 2 + body.len();
        let offset = self.next_capability;
        if offset + len > CONFIG_SPACE_SIZE_BYTES {
            return Err(PciError::ConfigSpaceFull { len_bytes: len });
        }
        let Ok(offset_u8) = u8::try_from(offset) else {
            return Err(PciError::ConfigSpaceFull { len_bytes: len });
        };
        self.regs[offset] = id;
        self.regs[offset + 1] = 0;
        self.regs[offset + 2..offset + len].copy_from_slice(body);
        for (i, mask) in writable_body.iter().take(body.len()).enumerate() {
            self.writable[offset + 2 + i] = *mask;
        }
        match self.last_capability {
            Some(last) => self.regs[last + 1] = offset_u8,
            None => self.regs[CAPABILITIES_POINTER] = offset_u8,
        }
        self.last_capability = Some(offset);
        self.next_capability = (offset + len).next_multiple_of(4);
        let status = self.u16_at(STATUS) | STATUS_CAPABILITY_LIST;
        self.set_u16(STATUS, status);
        Ok(offset)
    }

    /// Appends the MSI-X capability for `layout`; later writes to its Message Control are
    /// reported in [`ConfigWriteEffects::msix_control`].
    pub fn add_msix_capability(&mut self, layout: &MsixLayout) -> Result<usize, PciError> {
        let offset = self.add_capability_with_mask(
            MSIX_CAPABILITY_ID,
            &layout.capability_body(),
            &MsixLayout::capability_writable_mask(),
        )?;
        self.msix_capability = Some(offset);
        Ok(offset)
    }

    /// Offset of the MSI-X capability, if any.
    pub fn msix_capability_offset(&self) -> Option<usize> {
        self.msix_capability
    }

    /// Guest read. Bytes beyond 256 read as 0xff.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i)
                .filter(|o| *o < CONFIG_SPACE_SIZE_BYTES)
                .map_or(0xff, |o| self.read_byte(o));
        }
    }

    /// Guest write: honours writable and write-one-to-clear masks, BAR size masks; accesses
    /// beyond 256 bytes are dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> ConfigWriteEffects {
        let Some(end) = offset.checked_add(data.len()) else {
            return ConfigWriteEffects::default();
        };
        if end > CONFIG_SPACE_SIZE_BYTES || data.is_empty() {
            log::debug!(
                "pci config: dropping write at {offset:#x} len {}",
                data.len()
            );
            return ConfigWriteEffects::default();
        }
        let first_dword = offset / 4;
        let last_dword = (end - 1) / 4;
        for dword in first_dword..=last_dword {
            let base = dword * 4;
            let mut bytes = [0u8; 4];
            self.read(base, &mut bytes);
            let mut touched = [false; 4];
            for (i, value) in data.iter().enumerate() {
                let o = offset + i;
                if (base..base + 4).contains(&o) {
                    bytes[o - base] = *value;
                    touched[o - base] = true;
                }
            }
            if (BAR_FIRST..BAR_END).contains(&base) {
                self.write_bar_register((base - BAR_FIRST) / 4, u32::from_le_bytes(bytes));
                continue;
            }
            for (i, value) in bytes.iter().enumerate() {
                if touched[i] {
                    self.write_plain_byte(base + i, *value);
                }
            }
        }
        let msix_control = self.msix_capability.and_then(|cap| {
            let control = cap + 2;
            (offset < control + 2 && end > control).then(|| self.u16_at(control))
        });
        ConfigWriteEffects { msix_control }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(COMMAND_OFFSET)
    }

    /// Programmed address of a BAR (even if decoding is off), `None` if the BAR is absent.
    pub fn bar_address(&self, index: BarIndex) -> Option<MmioAddress> {
        match self.bars[index.as_usize()] {
            BarSlot::Bar { address, .. } => Some(MmioAddress(address)),
            _ => None,
        }
    }

    /// Size of a BAR, `None` if absent.
    pub fn bar_size_bytes(&self, index: BarIndex) -> Option<u64> {
        match self.bars[index.as_usize()] {
            BarSlot::Bar { size_bytes, .. } => Some(size_bytes),
            _ => None,
        }
    }

    /// BARs the device currently decodes: memory space enabled in the command register and a
    /// non-zero address.
    pub fn decoded_bars(&self) -> Vec<BarRegion> {
        if self.command() & COMMAND_MEMORY_SPACE == 0 {
            return Vec::new();
        }
        let mut regions = Vec::new();
        for (i, slot) in self.bars.iter().enumerate() {
            let BarSlot::Bar {
                size_bytes,
                address,
                ..
            } = *slot
            else {
                continue;
            };
            let index = u8::try_from(i).ok().and_then(|i| BarIndex::new(i).ok());
            if let Some(index) = index
                && address != 0
            {
                regions.push(BarRegion {
                    index,
                    address: MmioAddress(address),
                    size_bytes,
                });
            }
        }
        regions
    }

    fn read_byte(&self, offset: usize) -> u8 {
        if (BAR_FIRST..BAR_END).contains(&offset) {
            let reg = self.bar_register((offset - BAR_FIRST) / 4);
            return reg.to_le_bytes()[offset % 4];
        }
        self.regs[offset]
    }

    fn bar_register(&self, slot: usize) -> u32 {
        match self.bars[slot] {
            BarSlot::Unused => 0,
            BarSlot::Bar { kind, address, .. } => {
                let flags = match kind {
                    BarKind::Memory32 { prefetchable } => u32::from(prefetchable) << 3,
                    BarKind::Memory64 { prefetchable } => (u32::from(prefetchable) << 3) | 0b100,
                };
                (address as u32 & !0xf) | flags
            }
            BarSlot::Upper => match self.bars[slot - 1] {
                BarSlot::Bar { address, .. } => (address >> 32) as u32,
                _ => 0,
            },
        }
    }

    fn write_bar_register(&mut self, slot: usize, value: u32) {
        match self.bars[slot] {
            BarSlot::Unused => {}
            BarSlot::Bar {
                kind,
                size_bytes,
                address,
            } => {
                let mask = !(size_bytes - 1) & 0xffff_ffff & !0xf;
                let low = u64::from(value) & mask;
                self.bars[slot] = BarSlot::Bar {
                    kind,
                    size_bytes,
                    address: (address & !0xffff_ffff) | low,
                };
            }
            BarSlot::Upper => {
                if let BarSlot::Bar {
                    kind,
                    size_bytes,
                    address,
                } = self.bars[slot - 1]
                {
                    let high = (u64::from(value) << 32) & !(size_bytes - 1);
                    self.bars[slot - 1] = BarSlot::Bar {
                        kind,
                        size_bytes,
                        address: (address & 0xffff_ffff) | high,
                    };
                }
            }
        }
    }

    fn write_plain_byte(&mut self, offset: usize, value: u8) {
        let writable = self.writable[offset];
        let clear = self.write_one_to_clear[offset] & value;
        let old = self.regs[offset];
        self.regs[offset] = ((old & !writable) | (value & writable)) & !clear;
    }

    fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.regs[offset], self.regs[offset + 1]])
    }

    fn set_u16(&mut self, offset: usize, value: u16) {
        self.regs[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    /// Device-side status update (e.g. to latch an error bit); not reachable by the guest.
    pub fn set_status_bits(&mut self, bits: u16) {
        let status = self.u16_at(STATUS) | bits;
        self.set_u16(STATUS, status);
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

mod persist;
pub use persist::ConfigSpaceState;
