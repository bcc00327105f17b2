//! Connects the PCI bus to the machine: conf1 ports, BAR windows, and MSI delivery through KVM.

use std::sync::Arc;

use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;
use machine::BusDevice;
use pci::{BusEvent, BusEventKind, MmioAddress, MsiMessage, MsiSink, MsixVector, PciBus};

/// PCI configuration mechanism #1 ports.
pub const CONF1_PORT: u64 = 0xCF8;
/// Length of the conf1 port range (address + data ports).
pub const CONF1_PORTS: u64 = 8;

/// Delivers MSI-X messages with `KVM_SIGNAL_MSI`.
pub struct KvmMsiSink {
    vm: Arc<VmFd>,
}

impl KvmMsiSink {
    /// A sink for `vm`.
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmMsiSink { vm }
    }
}

impl MsiSink for KvmMsiSink {
    fn send(&self, vector: MsixVector, message: MsiMessage) {
        let msi = kvm_msi {
            address_lo: message.address as u32,
            address_hi: (message.address >> 32) as u32,
            data: message.data,
            ..Default::default()
        };
        if let Err(e) = self.vm.signal_msi(msi) {
            log::warn!("MSI-X vector {} ({message:?}) not delivered: {e}", vector.0);
        }
    }
}

/// The PCI bus as seen from the port-I/O bus (conf1).
pub struct PciPio(pub Arc<PciBus>);

impl BusDevice for PciPio {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        self.0.pio_read((base + offset) as u16, data);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        log_events(self.0.pio_write((base + offset) as u16, data));
    }
}

/// The PCI bus as seen from the MMIO bus (BAR windows).
pub struct PciMmio(pub Arc<PciBus>);

impl BusDevice for PciMmio {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        if !self.0.mmio_read(MmioAddress(base + offset), data) {
            // Nothing decodes there: reads float high, as on real hardware.
            data.fill(0xff);
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        log_events(self.0.mmio_write(MmioAddress(base + offset), data));
    }
}

/// MSI messages go straight to `KVM_SIGNAL_MSI` and notifications arrive as MMIO writes, so bus
/// events need no wiring; they are logged for diagnosis.
fn log_events(events: Vec<BusEvent>) {
    for event in events {
        match event.kind {
            BusEventKind::BarMoved(m) => log::debug!("PCI {:?}: BAR moved {m:?}", event.bdf),
            BusEventKind::Device(d) => log::trace!("PCI {:?}: {d:?}", event.bdf),
        }
    }
}
