//! `VirtioPciDevice`: the virtio-pci modern transport around a [`VirtioDevice`].

mod common_cfg;
mod persist;

pub use persist::{VirtioPciState, VirtqState};

use std::sync::Arc;

use pci::{
    BarIndex, BarKind, BarRegion, BarSpec, ConfigSpace, DeviceEvent, InterruptPin, MmioAddress,
    MsiSink, Msix, MsixVector, PciClass, PciDevice, PciIds,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;

use crate::layout::{
    self, BAR_SIZE_BYTES, COMMON_OFFSET, DEVICE_CONFIG_OFFSET, ISR_OFFSET, MAX_QUEUES,
    MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, NOTIFY_OFF_MULTIPLIER, NOTIFY_OFFSET, REGION_SIZE_BYTES,
};
use crate::status::{DEVICE_NEEDS_RESET, DRIVER_OK, ISR_CONFIG, ISR_QUEUE, NO_VECTOR};
use crate::{VirtioDevice, VirtioError};

/// PCI vendor id of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern device ids are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Revision id of modern-only devices.
pub const VIRTIO_PCI_REVISION: u8 = 1;

/// How the VMM places the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioPciConfig {
    /// Initial BAR 0 address (aligned to [`BAR_SIZE_BYTES`]), as firmware would program it;
    /// `None` leaves it unassigned. See [`pci::MmioAllocator::allocate_bar`].
    pub bar_address: Option<MmioAddress>,
    /// PCI class code (virtio-mem uses 0xff/00/00, "unclassified").
    pub class: PciClass,
}

impl Default for VirtioPciConfig {
    fn default() -> Self {
        Self {
            bar_address: None,
            class: PciClass {
                base: 0xff,
                sub: 0,
                prog_if: 0,
            },
        }
    }
}

/// Where the driver writes to notify a queue; register an ioeventfd there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyAddress {
    /// Queue index.
    pub queue: u16,
    /// Offset in BAR 0.
    pub bar_offset_bytes: u64,
    /// Guest-physical address while BAR 0 is decoded.
    pub address: Option<MmioAddress>,
    /// Width of the driver's write (the queue index, 16 bits).
    pub len_bytes: u8,
}

/// Driver-visible registers of one queue (applied to the [`Queue`] when enabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QueueRegs {
    size: u16,
    desc_table: u64,
    driver_area: u64,
    device_area: u64,
    msix_vector: u16,
    enabled: bool,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        Self {
            size: max_size,
            desc_table: 0,
            driver_area: 0,
            device_area: 0,
            msix_vector: NO_VECTOR,
            enabled: false,
        }
    }
}

#[derive(Debug)]
struct VirtqSlot {
    queue: Queue,
    regs: QueueRegs,
    max_size: u16,
    notified_before_driver_ok: bool,
}

/// A virtio device on PCI: modern only (device id 0x1040 + type, revision 1), all structures
/// in one 64-bit memory BAR, MSI-X with vector 0..=queues available for the config vector and
/// one per queue.
///
/// `A` is the guest memory the queues live in (e.g. `GuestMemoryAtomic<GuestMemoryMmap>`); a
/// fresh snapshot is taken for every notification.
pub struct VirtioPciDevice<D: VirtioDevice, A: GuestAddressSpace> {
    device: D,
    memory: A,
    config: ConfigSpace,
    /// The config space as created (BAR at its initial address), restored by a system reset.
    initial_config: ConfigSpace,
    msix: Msix,
    queues: Vec<VirtqSlot>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_msix_vector: u16,
    queue_select: u16,
    status: u8,
    config_generation: u8,
    isr: u8,
}

impl<D: VirtioDevice, A: GuestAddressSpace> std::fmt::Debug for VirtioPciDevice<D, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("driver_features", &self.driver_features)
            .field("queues", &self.queues)
            .field("msix", &self.msix)
            .finish_non_exhaustive()
    }
}

impl<D: VirtioDevice, A: GuestAddressSpace> VirtioPciDevice<D, A> {
    /// Wraps `device`. `sink` receives its MSI-X messages.
    pub fn new(
        device: D,
        memory: A,
        sink: Arc<dyn MsiSink>,
        pci: VirtioPciConfig,
    ) -> Result<Self, VirtioError> {
        let device_type = device.device_type();
        let device_id = u16::try_from(device_type)
            .ok()
            .filter(|t| *t < 0x40)
            .map(|t| VIRTIO_PCI_DEVICE_ID_BASE + t)
            .ok_or(VirtioError::InvalidDeviceType(device_type))?;
        let max_sizes = device.queue_max_sizes().to_vec();
        if max_sizes.len() > MAX_QUEUES {
            return Err(VirtioError::TooManyQueues(max_sizes.len()));
        }
        let mut queues = Vec::with_capacity(max_sizes.len());
        for (index, size) in max_sizes.iter().copied().enumerate() {
            let queue = Queue::new(size)
                .map_err(|_| VirtioError::InvalidQueueMaxSize { queue: index, size })?;
            queues.push(VirtqSlot {
                queue,
                regs: QueueRegs::new(size),
                max_size: size,
                notified_before_driver_ok: false,
            });
        }
        let queue_count =
            u16::try_from(queues.len()).map_err(|_| VirtioError::TooManyQueues(max_sizes.len()))?;
        let ids = PciIds {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id,
            revision_id: VIRTIO_PCI_REVISION,
            class: pci.class,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: device_id,
        };
        let mut config = ConfigSpace::new(ids, InterruptPin::None);
        config.add_bar(
            layout::virtio_bar(),
            BarSpec {
                kind: BarKind::Memory64 {
                    prefetchable: false,
                },
                size_bytes: BAR_SIZE_BYTES,
                address: pci.bar_address,
            },
        )?;
        let msix_layout = layout::msix_layout(queue_count + 1);
        config.add_msix_capability(&msix_layout)?;
        layout::add_virtio_capabilities(&mut config, queue_count)?;
        let msix = Msix::new(msix_layout, sink)?;
        Ok(Self {
            device,
            memory,
            initial_config: config.clone(),
            config,
            msix,
            queues,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_msix_vector: NO_VECTOR,
            queue_select: 0,
            status: 0,
            config_generation: 0,
            isr: 0,
        })
    }

    /// The wrapped device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The wrapped device, mutably (e.g. to resize virtio-mem, then call
    /// [`Self::config_changed`]).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status register.
    pub fn device_status(&self) -> u8 {
        self.status
    }

    /// Features the driver acknowledged (valid once FEATURES_OK stuck).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The configuration generation counter.
    pub fn config_generation(&self) -> u8 {
        self.config_generation
    }

    /// MSI-X state (e.g. `msix().message(vector)` to rebuild GSI routes).
    pub fn msix(&self) -> &Msix {
        &self.msix
    }

    /// The queue at `index`, as configured by the driver.
    pub fn queue(&self, index: u16) -> Option<&Queue> {
        self.queues.get(usize::from(index)).map(|s| &s.queue)
    }

    /// Whether the driver set DRIVER_OK and the device has not asked for a reset.
    pub fn is_active(&self) -> bool {
        self.status & DRIVER_OK != 0 && self.status & DEVICE_NEEDS_RESET == 0
    }

    /// Notification addresses of every queue, absolute while BAR 0 is decoded.
    pub fn notify_addresses(&self) -> Vec<NotifyAddress> {
        let base = self
            .config
            .decoded_bars()
            .into_iter()
            .find(|r| r.index == layout::virtio_bar())
            .map(|r| r.address);
        (0..self.queues.len())
            .filter_map(|q| u16::try_from(q).ok())
            .map(|queue| {
                let offset = NOTIFY_OFFSET + u64::from(queue) * u64::from(NOTIFY_OFF_MULTIPLIER);
                NotifyAddress {
                    queue,
                    bar_offset_bytes: offset,
                    address: base.and_then(|b| b.checked_add(offset)),
                    len_bytes: 2,
                }
            })
            .collect()
    }

    /// Handles a driver notification for `queue` (from an ioeventfd or an MMIO write). Before
    /// DRIVER_OK the notification is remembered and replayed at activation.
    pub fn notify_queue(&mut self, queue: u16) {
        let active = self.is_active();
        let Some(slot) = self.queues.get_mut(usize::from(queue)) else {
            log::debug!("virtio-pci: notify for missing queue {queue}");
            return;
        };
        if !active {
            if self.status & DRIVER_OK == 0 {
                slot.notified_before_driver_ok = true;
            }
            return;
        }
        if !slot.regs.enabled {
            return;
        }
        let memory = self.memory.memory();
        let outcome = self.device.process_queue(queue, &mut slot.queue, &*memory);
        if outcome.used_buffers && slot.queue.needs_notification(&*memory).unwrap_or(true) {
            self.signal_queue(queue);
        }
        if outcome.needs_reset {
            self.enter_needs_reset();
        }
    }

    /// System reset (the machine is reset, as at power-on): a virtio reset of the device, and
    /// the whole function reads as [`Self::new`] left it — PCI config space (command register,
    /// BARs at their initial addresses, MSI-X control), MSI-X table and PBA, status, feature
    /// selections, queues, ISR and the config generation. The caller moves whatever follows
    /// the BARs and the MSI-X messages (ioeventfds, GSI routes).
    pub fn system_reset(&mut self) {
        self.reset_transport();
        self.config = self.initial_config.clone();
        self.msix.reset();
        self.config_generation = 0;
    }

    /// Device-initiated configuration change (e.g. virtio-mem resized): bumps
    /// `config_generation` and sends the configuration interrupt.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.signal_config();
    }

    /// Interrupts the driver for `queue` (the device used buffers outside a notification).
    pub fn signal_queue(&mut self, queue: u16) {
        let Some(slot) = self.queues.get(usize::from(queue)) else {
            return;
        };
        if !self.msix.is_enabled() {
            self.isr |= ISR_QUEUE;
            return;
        }
        if slot.regs.msix_vector != NO_VECTOR {
            self.msix.trigger(MsixVector(slot.regs.msix_vector));
        }
    }

    fn signal_config(&mut self) {
        self.isr |= ISR_CONFIG;
        if self.msix.is_enabled() && self.config_msix_vector != NO_VECTOR {
            self.msix.trigger(MsixVector(self.config_msix_vector));
        }
    }

    /// Sets DEVICE_NEEDS_RESET; tells the driver when it is running.
    fn enter_needs_reset(&mut self) {
        if self.status & DEVICE_NEEDS_RESET != 0 {
            return;
        }
        log::warn!("virtio-pci: device needs reset");
        self.status |= DEVICE_NEEDS_RESET;
        if self.status & DRIVER_OK != 0 {
            self.signal_config();
        }
    }

    fn valid_vector(&self, vector: u16) -> u16 {
        if vector < self.msix.vector_count() {
            vector
        } else {
            NO_VECTOR
        }
    }

    fn read_isr(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0
            && let Some(first) = data.first_mut()
        {
            *first = self.isr;
            self.isr = 0;
        }
    }

    fn write_notify(&mut self, offset: u64, data: &[u8]) {
        let multiplier = u64::from(NOTIFY_OFF_MULTIPLIER);
        if !offset.is_multiple_of(multiplier) || data.is_empty() {
            return;
        }
        if let Ok(queue) = u16::try_from(offset / multiplier) {
            self.notify_queue(queue);
        }
    }
}

/// Splits a BAR access into (region start, offset within the region); `None` if it crosses a
/// region boundary or has an odd width.
fn region_of(offset_bytes: u64, len: usize) -> Option<(u64, u64)> {
    if !(1..=8).contains(&len) || offset_bytes >= BAR_SIZE_BYTES {
        return None;
    }
    let within = offset_bytes % REGION_SIZE_BYTES;
    (within + len as u64 <= REGION_SIZE_BYTES).then_some((offset_bytes - within, within))
}

impl<D, A> PciDevice for VirtioPciDevice<D, A>
where
    D: VirtioDevice,
    A: GuestAddressSpace + Send,
{
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) -> Vec<DeviceEvent> {
        let effects = self.config.write(offset, data);
        if let Some(control) = effects.msix_control {
            self.msix.write_control(control);
        }
        Vec::new()
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        self.config.decoded_bars()
    }

    fn bar_read(&mut self, bar: BarIndex, offset_bytes: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != layout::virtio_bar() {
            return;
        }
        let Some((region, within)) = region_of(offset_bytes, data.len()) else {
            return;
        };
        match region {
            COMMON_OFFSET => self.read_common(within, data),
            ISR_OFFSET => self.read_isr(within, data),
            DEVICE_CONFIG_OFFSET => self.device.read_config(within, data),
            MSIX_TABLE_OFFSET => self.msix.table_read(within, data),
            MSIX_PBA_OFFSET => self.msix.pba_read(within, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: BarIndex, offset_bytes: u64, data: &[u8]) -> Vec<DeviceEvent> {
        if bar != layout::virtio_bar() {
            return Vec::new();
        }
        let Some((region, within)) = region_of(offset_bytes, data.len()) else {
            log::debug!("virtio-pci: dropping BAR write at {offset_bytes:#x}");
            return Vec::new();
        };
        match region {
            COMMON_OFFSET => self.write_common(within, data),
            DEVICE_CONFIG_OFFSET => self.device.write_config(within, data),
            NOTIFY_OFFSET => self.write_notify(within, data),
            MSIX_TABLE_OFFSET => {
                if let Some((vector, message)) = self.msix.table_write(within, data) {
                    return vec![DeviceEvent::MsixMessageChanged { vector, message }];
                }
            }
            _ => {}
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests;
