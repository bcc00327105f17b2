use super::*;
use crate::{
    BarKind, BarSpec, COMMAND_MEMORY_SPACE, ConfigSpace, HostBridge, InterruptPin, PciIds,
};

/// A device with one 64-bit BAR of 0x1000 bytes backed by plain memory.
struct ScratchDevice {
    config: ConfigSpace,
    memory: Vec<u8>,
}

impl ScratchDevice {
    fn shared(address: u64) -> SharedPciDevice {
        let ids = PciIds {
            vendor_id: 0x1234,
            device_id: 0x5678,
            ..PciIds::default()
        };
        let mut config = ConfigSpace::new(ids, InterruptPin::None);
        config
            .add_bar(
                BarIndex::new(0).unwrap(),
                BarSpec {
                    kind: BarKind::Memory64 {
                        prefetchable: false,
                    },
                    size_bytes: 0x1000,
                    address: Some(MmioAddress(address)),
                },
            )
            .unwrap();
        Arc::new(Mutex::new(Self {
            config,
            memory: vec![0; 0x1000],
        }))
    }
}

impl PciDevice for ScratchDevice {
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) -> Vec<DeviceEvent> {
        self.config.write(offset, data);
        Vec::new()
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        self.config.decoded_bars()
    }

    fn bar_read(&mut self, _bar: BarIndex, offset_bytes: u64, data: &mut [u8]) {
        let o = offset_bytes as usize;
        data.copy_from_slice(&self.memory[o..o + data.len()]);
    }

    fn bar_write(&mut self, _bar: BarIndex, offset_bytes: u64, data: &[u8]) -> Vec<DeviceEvent> {
        let o = offset_bytes as usize;
        self.memory[o..o + data.len()].copy_from_slice(data);
        Vec::new()
    }
}

fn bdf(device: u8) -> PciBdf {
    PciBdf::new(0, device, 0).unwrap()
}

fn bus_with_scratch_at_slot_1() -> PciBus {
    let mut bus = PciBus::new();
    bus.add_device(bdf(0), Arc::new(Mutex::new(HostBridge::new())))
        .unwrap();
    bus.add_device(bdf(1), ScratchDevice::shared(0xc000_0000))
        .unwrap();
    bus
}

fn conf1_address(device: u8, register: u32) -> [u8; 4] {
    (0x8000_0000 | (u32::from(device) << 11) | register).to_le_bytes()
}

fn conf_read32(bus: &PciBus, device: u8, register: u32) -> u32 {
    bus.pio_write(CONFIG_ADDRESS_PORT, &conf1_address(device, register));
    let mut data = [0u8; 4];
    bus.pio_read(CONFIG_DATA_PORT, &mut data);
    u32::from_le_bytes(data)
}

fn conf_write(bus: &PciBus, device: u8, register: u32, data: &[u8]) -> Vec<BusEvent> {
    bus.pio_write(CONFIG_ADDRESS_PORT, &conf1_address(device, register & !3));
    bus.pio_write(CONFIG_DATA_PORT + (register & 3) as u16, data)
}

#[test]
fn config_address_reads_back_as_linux_type1_check_expects() {
    let bus = PciBus::new();
    bus.pio_write(0xcfb, &[0x01]);
    bus.pio_write(CONFIG_ADDRESS_PORT, &0x8000_0000u32.to_le_bytes());
    let mut data = [0u8; 4];
    bus.pio_read(CONFIG_ADDRESS_PORT, &mut data);
    assert_eq!(u32::from_le_bytes(data), 0x8000_0000);
    let mut byte = [0u8; 1];
    bus.pio_read(CONFIG_ADDRESS_PORT, &mut byte);
    assert_eq!(byte, [0xff]);
}

#[test]
fn enumerates_host_bridge_and_device_and_absent_slots_read_ones() {
    let bus = bus_with_scratch_at_slot_1();
    assert_eq!(conf_read32(&bus, 0, 0), 0x0d57_8086);
    assert_eq!(conf_read32(&bus, 0, 0x08) >> 8, 0x06_0000);
    assert_eq!(conf_read32(&bus, 1, 0), 0x5678_1234);
    assert_eq!(conf_read32(&bus, 2, 0), 0xffff_ffff);
}

#[test]
fn data_port_byte_and_word_offsets_select_register_bytes() {
    let bus = bus_with_scratch_at_slot_1();
    bus.pio_write(CONFIG_ADDRESS_PORT, &conf1_address(1, 0));
    let mut word = [0u8; 2];
    bus.pio_read(CONFIG_DATA_PORT + 2, &mut word);
    assert_eq!(u16::from_le_bytes(word), 0x5678);
    let mut byte = [0u8; 1];
    bus.pio_read(CONFIG_DATA_PORT + 1, &mut byte);
    assert_eq!(byte, [0x12]);
    let mut misaligned = [0u8; 4];
    bus.pio_read(CONFIG_DATA_PORT + 2, &mut misaligned);
    assert_eq!(misaligned, [0xff; 4]);
}

#[test]
fn disabled_address_other_bus_and_extended_registers_read_ones() {
    let bus = bus_with_scratch_at_slot_1();
    let mut data = [0u8; 4];
    bus.pio_write(CONFIG_ADDRESS_PORT, &0x0000_0800u32.to_le_bytes());
    bus.pio_read(CONFIG_DATA_PORT, &mut data);
    assert_eq!(data, [0xff; 4]);
    bus.pio_write(CONFIG_ADDRESS_PORT, &0x8001_0800u32.to_le_bytes());
    bus.pio_read(CONFIG_DATA_PORT, &mut data);
    assert_eq!(data, [0xff; 4]);
    bus.pio_write(CONFIG_ADDRESS_PORT, &0x8100_0800u32.to_le_bytes());
    bus.pio_read(CONFIG_DATA_PORT, &mut data);
    assert_eq!(data, [0xff; 4]);
}

#[test]
fn mmio_is_routed_only_after_memory_decoding_is_enabled() {
    let bus = bus_with_scratch_at_slot_1();
    let mut data = [0u8; 4];
    assert!(!bus.mmio_read(MmioAddress(0xc000_0010), &mut data));
    let events = conf_write(&bus, 1, 0x04, &COMMAND_MEMORY_SPACE.to_le_bytes());
    assert_eq!(
        events,
        vec![BusEvent {
            bdf: bdf(1),
            kind: BusEventKind::BarMoved(BarMove {
                bar: BarIndex::new(0).unwrap(),
                size_bytes: 0x1000,
                old: None,
                new: Some(MmioAddress(0xc000_0000)),
            }),
        }]
    );
    bus.mmio_write(MmioAddress(0xc000_0010), &[1, 2, 3, 4]);
    assert!(bus.mmio_read(MmioAddress(0xc000_0010), &mut data));
    assert_eq!(data, [1, 2, 3, 4]);
    assert!(!bus.mmio_read(MmioAddress(0xc000_1000), &mut data));
    assert_eq!(data, [0xff; 4]);
}

#[test]
fn guest_bar_relocation_moves_mmio_routing_and_reports_it() {
    let bus = bus_with_scratch_at_slot_1();
    conf_write(&bus, 1, 0x04, &COMMAND_MEMORY_SPACE.to_le_bytes());
    bus.mmio_write(MmioAddress(0xc000_0000), &[7]);
    // Linux sizing: decoding off, all ones, restore, then a new address, decoding on.
    let off = conf_write(&bus, 1, 0x04, &0u16.to_le_bytes());
    assert_eq!(off.len(), 1);
    conf_write(&bus, 1, 0x10, &[0xff; 4]);
    conf_write(&bus, 1, 0x14, &[0xff; 4]);
    assert_eq!(conf_read32(&bus, 1, 0x10), 0xffff_f004);
    conf_write(&bus, 1, 0x10, &0x0000_0000u32.to_le_bytes());
    conf_write(&bus, 1, 0x14, &0x1u32.to_le_bytes());
    let on = conf_write(&bus, 1, 0x04, &COMMAND_MEMORY_SPACE.to_le_bytes());
    let BusEventKind::BarMoved(moved) = on[0].kind else {
        panic!("expected a BAR move, got {on:?}");
    };
    assert_eq!(moved.new, Some(MmioAddress(0x1_0000_0000)));
    let mut byte = [0u8; 1];
    assert!(!bus.mmio_read(MmioAddress(0xc000_0000), &mut byte));
    assert!(bus.mmio_read(MmioAddress(0x1_0000_0000), &mut byte));
    assert_eq!(byte, [7]);
    assert_eq!(bus.mmio_regions().len(), 1);
}

#[test]
fn moving_a_decoded_bar_reports_old_and_new_address() {
    let bus = bus_with_scratch_at_slot_1();
    conf_write(&bus, 1, 0x04, &COMMAND_MEMORY_SPACE.to_le_bytes());
    let events = conf_write(&bus, 1, 0x10, &0xd000_0000u32.to_le_bytes());
    assert_eq!(
        events[0].kind,
        BusEventKind::BarMoved(BarMove {
            bar: BarIndex::new(0).unwrap(),
            size_bytes: 0x1000,
            old: Some(MmioAddress(0xc000_0000)),
            new: Some(MmioAddress(0xd000_0000)),
        })
    );
}

#[test]
fn duplicate_slot_and_nonzero_bus_are_rejected() {
    let mut bus = bus_with_scratch_at_slot_1();
    assert_eq!(
        bus.add_device(bdf(1), ScratchDevice::shared(0)),
        Err(PciError::SlotOccupied(bdf(1)))
    );
    let other_bus = PciBdf::new(1, 0, 0).unwrap();
    assert!(bus.add_device(other_bus, ScratchDevice::shared(0)).is_err());
    assert_eq!(bus.first_free_slot(), Some(bdf(2)));
}

#[test]
fn refresh_mapping_follows_a_config_change_made_behind_the_bus() {
    let bus = bus_with_scratch_at_slot_1();
    conf_write(&bus, 1, 0x04, &COMMAND_MEMORY_SPACE.to_le_bytes());
    let mut data = [0u8; 1];
    assert!(bus.mmio_read(MmioAddress(0xc000_0000), &mut data));
    // The device is reset without the bus seeing it (as a system reset does).
    let device = bus.device(bdf(1)).unwrap().clone();
    device
        .lock()
        .unwrap()
        .config_write(0x04, &0u16.to_le_bytes());
    let events = bus.refresh_mapping(bdf(1));
    assert_eq!(
        events,
        vec![BusEvent {
            bdf: bdf(1),
            kind: BusEventKind::BarMoved(BarMove {
                bar: BarIndex::new(0).unwrap(),
                size_bytes: 0x1000,
                old: Some(MmioAddress(0xc000_0000)),
                new: None,
            }),
        }]
    );
    assert!(!bus.mmio_read(MmioAddress(0xc000_0000), &mut data));
    assert!(bus.refresh_mapping(bdf(1)).is_empty());
    assert!(bus.refresh_mapping(bdf(9)).is_empty());
}
