//! The virtio-pci modern transport for hotmem, independent of KVM.
//!
//! A device implements [`VirtioDevice`] (type id, queue sizes, features, config space, queue
//! processing) and knows nothing about PCI. [`VirtioPciDevice`] wraps it into a
//! [`pci::PciDevice`] that the stock Linux `virtio_pci` driver binds to: vendor 0x1AF4, device
//! 0x1040 + type, revision 1, one 64-bit memory BAR holding the common configuration, ISR,
//! device configuration, notification area and MSI-X table/PBA (see [`layout`]).
//!
//! VMM wiring:
//!
//! ```text
//! let dev = Arc::new(Mutex::new(VirtioPciDevice::new(mem_dev, guest_mem, sink, cfg)?));
//! bus.add_device(bdf, dev.clone())?;                   // pci::PciBus
//! // after every BusEventKind::BarMoved for this bdf:
//! for n in dev.lock().notify_addresses() { /* KVM ioeventfd at n.address, then */ }
//! // ioeventfd n fired:      dev.lock().notify_queue(n.queue)
//! // device resized:         dev.lock().device_mut().resize(..); dev.lock().config_changed()
//! // DeviceEvent::MsixMessageChanged { vector, message }: update the GSI route of `vector`
//! ```
//!
//! Interrupts go through the [`pci::MsiSink`] given to [`VirtioPciDevice::new`]: a vector's
//! message is sent only while MSI-X is enabled and the vector unmasked (otherwise its pending
//! bit is latched). Queue `n` uses the vector the driver wrote to `queue_msix_vector`, the
//! configuration change uses `config_msix_vector`.
//!
//! Guest mistakes never panic: invalid widths/offsets and writes to read-only fields are
//! ignored; an invalid queue at enable time, a failed activation or a device reporting
//! [`QueueOutcome::needs_reset`] set DEVICE_NEEDS_RESET and send a configuration interrupt.
//!
//! Not implemented: legacy/transitional interface, INTx delivery (ISR bits are kept but no
//! line is raised), `VIRTIO_PCI_CAP_PCI_CFG`, `VIRTIO_F_RING_RESET`, packed rings,
//! notification data.

mod device;
mod error;
pub mod layout;
pub mod status;
mod transport;

pub use device::{QueueOutcome, QueueSetup, VirtioDevice};
pub use error::{ActivateError, FeaturesRefused, VirtioError};
pub use layout::MAX_QUEUES;
pub use transport::{
    NotifyAddress, VIRTIO_PCI_DEVICE_ID_BASE, VIRTIO_PCI_REVISION, VIRTIO_PCI_VENDOR_ID,
    VirtioPciConfig, VirtioPciDevice, VirtioPciState, VirtqState,
};
pub use virtio_queue::{Queue, QueueT};
