//! Queue notifications without a VM exit to userspace on the vCPU: one ioeventfd per queue at its
//! notify address, served by an event thread; kept in step when the guest moves a BAR.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use machine::Vm;
use pci::PciBdf;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::Error;

/// A virtio transport whose queues are notified through ioeventfds.
pub trait QueueTarget: Send {
    /// Where the driver notifies each queue.
    fn notify_addresses(&self) -> Vec<virtio::NotifyAddress>;
    /// Queue `queue` was notified.
    fn notify_queue(&mut self, queue: u16);
}

impl<D, A> QueueTarget for virtio::VirtioPciDevice<D, A>
where
    D: virtio::VirtioDevice,
    A: vm_memory::GuestAddressSpace + Send,
{
    fn notify_addresses(&self) -> Vec<virtio::NotifyAddress> {
        virtio::VirtioPciDevice::notify_addresses(self)
    }

    fn notify_queue(&mut self, queue: u16) {
        virtio::VirtioPciDevice::notify_queue(self, queue);
    }
}

/// A transport shared with the PCI bus.
pub type SharedQueueTarget = Arc<Mutex<dyn QueueTarget>>;

struct QueueFd {
    queue: u16,
    evt: EventFd,
    registered_at: Option<u64>,
}

struct DeviceFds {
    transport: SharedQueueTarget,
    queues: Vec<QueueFd>,
}

/// The ioeventfds of every virtio device, by PCI function.
pub struct QueueNotifiers {
    vm: Arc<Vm>,
    devices: HashMap<PciBdf, DeviceFds>,
}

impl QueueNotifiers {
    /// No devices yet.
    pub fn new(vm: Arc<Vm>) -> Self {
        QueueNotifiers {
            vm,
            devices: HashMap::new(),
        }
    }

    /// Creates one eventfd per queue of `transport` and registers those whose BAR is decoded.
    pub fn add(&mut self, bdf: PciBdf, transport: SharedQueueTarget) -> Result<(), Error> {
        let count = transport
            .lock()
            .expect("device lock")
            .notify_addresses()
            .len();
        let mut queues = Vec::with_capacity(count);
        for queue in 0..count {
            let evt = EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| Error::Device(format!("queue eventfd: {e}")))?;
            let queue =
                u16::try_from(queue).map_err(|_| Error::Device("too many queues".into()))?;
            queues.push(QueueFd {
                queue,
                evt,
                registered_at: None,
            });
        }
        self.devices.insert(bdf, DeviceFds { transport, queues });
        self.sync(bdf)
    }

    /// Moves the ioeventfds of `bdf` to where its notify addresses are now (after a BAR move or
    /// the guest switching memory decoding on or off).
    pub fn sync(&mut self, bdf: PciBdf) -> Result<(), Error> {
        let Some(device) = self.devices.get_mut(&bdf) else {
            return Ok(());
        };
        let addresses = device
            .transport
            .lock()
            .expect("device lock")
            .notify_addresses();
        for q in &mut device.queues {
            let now = addresses
                .iter()
                .find(|a| a.queue == q.queue)
                .and_then(|a| a.address)
                .map(|a| a.raw());
            if now == q.registered_at {
                continue;
            }
            if let Some(old) = q.registered_at.take() {
                self.vm.unregister_mmio_ioeventfd(&q.evt, old)?;
            }
            if let Some(new) = now {
                self.vm.register_mmio_ioeventfd(&q.evt, new)?;
                q.registered_at = Some(new);
            }
        }
        Ok(())
    }

    /// Starts the thread that turns eventfd wake-ups into queue notifications.
    pub fn spawn(notifiers: Arc<Mutex<QueueNotifiers>>) -> Result<(), Error> {
        let io = |e: std::io::Error| Error::Device(format!("notification thread: {e}"));
        let epoll = Epoll::new().map_err(io)?;
        let mut targets = Vec::new();
        {
            let n = notifiers.lock().expect("notifiers lock");
            for device in n.devices.values() {
                for q in &device.queues {
                    let token = targets.len() as u64;
                    epoll
                        .ctl(
                            ControlOperation::Add,
                            q.evt.as_raw_fd(),
                            EpollEvent::new(EventSet::IN, token),
                        )
                        .map_err(io)?;
                    let evt = q.evt.try_clone().map_err(io)?;
                    targets.push((evt, device.transport.clone(), q.queue));
                }
            }
        }
        std::thread::Builder::new()
            .name("queue-notify".into())
            .spawn(move || {
                let mut events = vec![EpollEvent::default(); targets.len().max(1)];
                loop {
                    let ready = match epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            log::error!("queue notification thread stops: {e}");
                            return;
                        }
                    };
                    for event in &events[..ready] {
                        let Some((evt, transport, queue)) = targets.get(event.data() as usize)
                        else {
                            continue;
                        };
                        if evt.read().is_ok() {
                            transport.lock().expect("device lock").notify_queue(*queue);
                        }
                    }
                }
            })
            .map(|_| ())
            .map_err(io)
    }
}
