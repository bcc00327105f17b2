//! Connects the PCI bus to the machine: conf1 ports, BAR windows, MSI-X through irqfds, and
//! queue ioeventfds that follow BAR moves.

use std::sync::Arc;

use std::sync::Mutex;

use kvm_bindings::kvm_msi;
use machine::{BusDevice, Gsi, Vm};
use pci::{BusEvent, BusEventKind, MmioAddress, MsiMessage, MsiSink, MsixVector, PciBus};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::SharedMemoryDevice;
use crate::notify::{QueueNotifiers, serve_deferred};
use crate::shared_device::lock_or_recover;

/// PCI configuration mechanism #1 ports.
pub const CONF1_PORT: u64 = 0xCF8;
/// Length of the conf1 port range (address + data ports).
pub const CONF1_PORTS: u64 = 8;

/// One MSI-X vector's irqfd: writing the eventfd raises the GSI, routed to the vector's message.
struct VectorIrq {
    gsi: Gsi,
    evt: EventFd,
    routed: Mutex<Option<MsiMessage>>,
}

/// Delivers one device's MSI-X messages through irqfds, one GSI per vector. A vector's GSI route
/// follows the message the guest programmed: it is (re)set the first time a changed message is
/// sent, so masking, unmasking and table rewrites need no extra wiring.
pub struct IrqfdMsiSink {
    vm: Arc<Vm>,
    vectors: Vec<VectorIrq>,
}

impl IrqfdMsiSink {
    /// Allocates a GSI and an irqfd for each of `vector_count` vectors.
    pub fn new(vm: Arc<Vm>, vector_count: u16) -> Result<Self, machine::Error> {
        let mut vectors = Vec::with_capacity(usize::from(vector_count));
        for _ in 0..vector_count {
            let gsi = vm.allocate_gsi()?;
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| machine::Error::Io {
                what: "creating an MSI-X irqfd",
                source,
            })?;
            vm.register_irqfd(&evt, gsi)?;
            vectors.push(VectorIrq {
                gsi,
                evt,
                routed: Mutex::new(None),
            });
        }
        Ok(IrqfdMsiSink { vm, vectors })
    }

    fn signal_directly(&self, vector: MsixVector, message: MsiMessage) {
        let msi = kvm_msi {
            address_lo: message.address as u32,
            address_hi: (message.address >> 32) as u32,
            data: message.data,
            ..Default::default()
        };
        if let Err(e) = self.vm.fd().signal_msi(msi) {
            log::warn!("MSI-X vector {} ({message:?}) not delivered: {e}", vector.0);
        }
    }
}

impl MsiSink for IrqfdMsiSink {
    fn send(&self, vector: MsixVector, message: MsiMessage) {
        let Some(irq) = self.vectors.get(usize::from(vector.0)) else {
            // More vectors than the device declared: still deliver, just without an irqfd.
            self.signal_directly(vector, message);
            return;
        };
        let mut routed = lock_or_recover(&irq.routed, "MSI-X route");
        if *routed != Some(message) {
            let route = machine::MsiMessage {
                address: message.address,
                data: message.data,
            };
            if let Err(e) = self.vm.set_msi_route(irq.gsi, route) {
                log::warn!(
                    "MSI-X vector {}: routing failed ({e}); signalling directly",
                    vector.0
                );
                self.signal_directly(vector, message);
                return;
            }
            *routed = Some(message);
        }
        if let Err(e) = irq.evt.write(1) {
            log::warn!("MSI-X vector {}: irqfd write failed: {e}", vector.0);
        }
    }
}

/// The PCI bus and what must follow its BARs.
#[derive(Clone)]
pub struct PciHost {
    /// The bus.
    pub bus: Arc<PciBus>,
    /// Queue ioeventfds, moved along with the BARs.
    pub notifiers: Arc<Mutex<QueueNotifiers>>,
    /// The memory devices on the bus: after a guest write their status is published and a plug
    /// the write prepared is populated (see [`crate::notify::serve_deferred`]).
    pub devices: Vec<SharedMemoryDevice>,
}

impl PciHost {
    /// Moves ioeventfds after BAR moves; MSI routes follow messages lazily (see
    /// [`IrqfdMsiSink`]), so device events are only logged.
    fn handle(&self, events: Vec<BusEvent>) {
        for event in events {
            match event.kind {
                BusEventKind::BarMoved(m) => {
                    log::debug!("PCI {:?}: BAR moved {m:?}", event.bdf);
                    let synced =
                        lock_or_recover(&self.notifiers, "queue notifiers").sync(event.bdf);
                    if let Err(e) = synced {
                        log::error!("PCI {:?}: moving queue ioeventfds failed: {e}", event.bdf);
                    }
                }
                BusEventKind::Device(d) => log::trace!("PCI {:?}: {d:?}", event.bdf),
            }
        }
    }
}

impl PciHost {
    /// After a guest write: events handled, then every device's prepared plugs populated and
    /// its status published.
    fn after_write(&self, events: Vec<BusEvent>) {
        self.handle(events);
        for device in &self.devices {
            serve_deferred(device);
            device.publish(&device.lock());
        }
    }

    /// After a device's config space was reset behind the bus (system reset): the bus stops
    /// routing BARs the device no longer decodes and the ioeventfds follow.
    pub fn refresh(&self, bdf: pci::PciBdf) {
        let events = self.bus.refresh_mapping(bdf);
        self.handle(events);
    }
}

/// The PCI bus as seen from the port-I/O bus (conf1).
pub struct PciPio(pub PciHost);

impl BusDevice for PciPio {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        self.0.bus.pio_read((base + offset) as u16, data);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let events = self.0.bus.pio_write((base + offset) as u16, data);
        self.0.after_write(events);
    }
}

/// The PCI bus as seen from the MMIO bus (BAR windows). Notify writes only land here while
/// their ioeventfd is not registered.
pub struct PciMmio(pub PciHost);

impl BusDevice for PciMmio {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        if !self.0.bus.mmio_read(MmioAddress(base + offset), data) {
            // Nothing decodes there: reads float high, as on real hardware.
            data.fill(0xff);
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let events = self.0.bus.mmio_write(MmioAddress(base + offset), data);
        self.0.after_write(events);
    }
}
