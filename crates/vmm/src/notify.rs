//! Queue notifications without a VM exit to userspace on the vCPU: one ioeventfd per queue at its
//! notify address, served by an event thread; kept in step when the guest moves a BAR.
//!
//! A preallocating plug populates its memory without the transport lock
//! ([`serve_notification`]): the API, the monitor and other devices are not held up by it.
//!
//! A vhost-user device's ioeventfds are its backend's kick eventfds ([`QueueNotifiers::add_direct`]):
//! KVM signals the backend without any hotmem thread in between.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use machine::Vm;
use pci::PciBdf;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::Error;
use crate::devices::SharedMemoryDevice;
use crate::memory_device::REQUEST_QUEUE;
use crate::shared_device::lock_or_recover;

struct QueueFd {
    queue: u16,
    evt: EventFd,
    registered_at: Option<u64>,
}

struct DeviceFds {
    device: SharedMemoryDevice,
    queues: Vec<QueueFd>,
}

/// Where a directly kicked device's notify addresses are now (read after every BAR move).
pub type NotifyAddressSource = Box<dyn Fn() -> Vec<virtio::NotifyAddress> + Send>;

/// A device whose queues someone else (a vhost-user backend) reads its eventfds for.
struct DirectFds {
    addresses: NotifyAddressSource,
    queues: Vec<QueueFd>,
}

/// The ioeventfds of every virtio device, by PCI function.
pub struct QueueNotifiers {
    vm: Arc<Vm>,
    devices: HashMap<PciBdf, DeviceFds>,
    direct: HashMap<PciBdf, DirectFds>,
}

impl QueueNotifiers {
    /// No devices yet.
    pub fn new(vm: Arc<Vm>) -> Self {
        QueueNotifiers {
            vm,
            devices: HashMap::new(),
            direct: HashMap::new(),
        }
    }

    /// Registers `kicks` (one per queue, in queue order) as the ioeventfds of the device at
    /// `bdf`, where `addresses` says its notify addresses are; nothing in hotmem reads them.
    pub fn add_direct(
        &mut self,
        bdf: PciBdf,
        addresses: NotifyAddressSource,
        kicks: Vec<EventFd>,
    ) -> Result<(), Error> {
        let queues = (0u16..)
            .zip(kicks)
            .map(|(queue, evt)| QueueFd {
                queue,
                evt,
                registered_at: None,
            })
            .collect();
        self.direct.insert(bdf, DirectFds { addresses, queues });
        self.sync(bdf)
    }

    /// Creates one eventfd per queue of `device` and registers those whose BAR is decoded.
    pub fn add(&mut self, device: SharedMemoryDevice) -> Result<(), Error> {
        let bdf = device.bdf;
        let count = device.lock().notify_addresses().len();
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
        self.devices.insert(bdf, DeviceFds { device, queues });
        self.sync(bdf)
    }

    /// Moves the ioeventfds of `bdf` to where its notify addresses are now (after a BAR move or
    /// the guest switching memory decoding on or off).
    pub fn sync(&mut self, bdf: PciBdf) -> Result<(), Error> {
        if let Some(direct) = self.direct.get_mut(&bdf) {
            let addresses = (direct.addresses)();
            return move_fds(&self.vm, &mut direct.queues, &addresses);
        }
        let Some(device) = self.devices.get_mut(&bdf) else {
            return Ok(());
        };
        let addresses = device.device.lock().notify_addresses();
        move_fds(&self.vm, &mut device.queues, &addresses)
    }

    /// Signals `queue` of the device at `bdf` as KVM does when the guest writes its notify
    /// address; `false` if there is no such queue.
    pub fn kick(&self, bdf: PciBdf, queue: u16) -> bool {
        let fd = self
            .devices
            .get(&bdf)
            .and_then(|d| d.queues.iter().find(|q| q.queue == queue));
        fd.is_some_and(|q| q.evt.write(1).is_ok())
    }

    /// Starts the thread that turns eventfd wake-ups into queue notifications.
    pub fn spawn(notifiers: Arc<Mutex<QueueNotifiers>>) -> Result<(), Error> {
        let io = |e: std::io::Error| Error::Device(format!("notification thread: {e}"));
        let epoll = Epoll::new().map_err(io)?;
        let mut targets = Vec::new();
        {
            let n = lock_or_recover(&notifiers, "queue notifiers");
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
                    targets.push((evt, device.device.clone(), q.queue));
                }
            }
        }
        std::thread::Builder::new()
            .name("queue-notify".into())
            .spawn(move || {
                sandbox::enter_or_abort(sandbox::ThreadKind::QueueNotify);
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
                        let Some((evt, device, queue)) = targets.get(event.data() as usize) else {
                            continue;
                        };
                        if evt.read().is_ok() {
                            serve_notification(device, *queue);
                        }
                    }
                }
            })
            .map(|_| ())
            .map_err(io)
    }
}

/// Serves a notification of `queue` on `device`, then runs the preallocations of the plugs it
/// prepared, each populated without the transport lock. A broken device is not served.
pub fn serve_notification(device: &SharedMemoryDevice, queue: u16) {
    let job = {
        let mut transport = device.lock();
        if device.is_broken() {
            return;
        }
        transport.notify_queue(queue);
        let job = transport.device_mut().core_mut().take_populate_job();
        device.publish(&transport);
        job
    };
    run_populate_jobs(device, job);
}

/// Runs the preallocation of a plug prepared outside a notification (a queue served from a
/// vCPU's MMIO write, or replayed at DRIVER_OK).
pub fn serve_deferred(device: &SharedMemoryDevice) {
    let job = {
        let mut transport = device.lock();
        if device.is_broken() {
            return;
        }
        transport.device_mut().core_mut().take_populate_job()
    };
    run_populate_jobs(device, job);
}

/// Populates each job's range **without the transport lock**, then commits it under the lock and
/// serves the queue again (the plug's answer, then the requests that waited behind it).
fn run_populate_jobs(device: &SharedMemoryDevice, mut job: Option<virtio_mem::PopulateJob>) {
    while let Some(j) = job {
        let populated = device.populate(j);
        let mut transport = device.lock();
        if device.is_broken() {
            return;
        }
        transport.device_mut().finish_populate(j.ticket, populated);
        transport.notify_queue(REQUEST_QUEUE);
        job = transport.device_mut().core_mut().take_populate_job();
        device.publish(&transport);
    }
}

/// Moves each queue's ioeventfd to where `addresses` says its notify address is now.
fn move_fds(
    vm: &Vm,
    queues: &mut [QueueFd],
    addresses: &[virtio::NotifyAddress],
) -> Result<(), Error> {
    for q in queues {
        let now = addresses
            .iter()
            .find(|a| a.queue == q.queue)
            .and_then(|a| a.address)
            .map(|a| a.raw());
        if now == q.registered_at {
            continue;
        }
        if let Some(old) = q.registered_at.take() {
            vm.unregister_mmio_ioeventfd(&q.evt, old)?;
        }
        if let Some(new) = now {
            vm.register_mmio_ioeventfd(&q.evt, new)?;
            q.registered_at = Some(new);
        }
    }
    Ok(())
}
