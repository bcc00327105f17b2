//! [`Machine`]: everything needed to boot a Linux guest, minus PCI and virtio (which the VMM
//! attaches to the buses).
//!
//! Life cycle: [`Machine::new`] → attach devices to [`Machine::pio_bus`] /
//! [`Machine::mmio_bus`] → [`Machine::load_linux`] → [`Machine::run`] (or `start` + wait on
//! [`Machine::exit_signal`] + `stop`). On [`ExitReason::Reboot`] call `load_linux` and `run`
//! again on the same machine: vCPUs, LAPICs, PIC/IOAPIC/PIT and PV MSRs are reset, memory
//! and memslots stay.
//!
//! Snapshot: [`Machine::pause`] → [`Machine::save_state`] (+ guest RAM via
//! [`Machine::memory`]); in a new process [`Machine::restore`] → fill RAM → attach and
//! restore devices → [`Machine::resume`].

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use boot::{GuestLayout, LinuxBootInfo, LinuxBootSpec};
use hostmem::{Backing, BackingKind, HostRegion};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::Error;
use crate::bus::{Bus, BusKind, SharedDevice};
use crate::cpuid::CpuPackages;
use crate::exit::{ExitReason, ExitSignal, StopRequest};
use crate::gsi::Gsi;
use crate::legacy::{
    ACPI_PM_PORT, AcpiPowerDevice, CMOS_PORT, COM1_IRQ, COM1_PORT, Cmos, I8042, I8042_DATA_PORT,
    IGNORED_PORT_RANGES, IgnoredPorts, SerialDevice,
};
use crate::throttle::VcpuThrottle;
use crate::vcpu::{RunContext, Vcpu};
use crate::vm::Vm;

mod pause;
mod snapshot;

pub use snapshot::BootRamRange;

/// Where COM1 output goes.
pub enum SerialOutput {
    /// The VMM's stdout.
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// Any writer.
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for SerialOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdout => write!(f, "Stdout"),
            Self::File(p) => write!(f, "File({p:?})"),
            Self::Writer(_) => write!(f, "Writer"),
        }
    }
}

/// Machine shape.
#[derive(Debug)]
pub struct MachineConfig {
    /// vCPUs (1..=254).
    pub num_cpus: u8,
    /// Boot RAM (not hotpluggable), >= 64 MiB, page aligned.
    pub ram_size_bytes: u64,
    /// COM1 output.
    pub serial: SerialOutput,
}

/// Offset from SIGRTMIN of the signal used to kick vCPU threads out of KVM_RUN.
const KICK_SIGNAL_OFFSET: i32 = 0;
const BOOT_FIRST_SLOT: u32 = 0;

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

pub(crate) fn kick_signal() -> i32 {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

pub(crate) fn install_kick_handler() -> Result<(), Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), kick_handler).map_err(|e| Error::Io {
            what: "installing vCPU kick signal handler",
            source: std::io::Error::from_raw_os_error(e.errno()),
        });
    });
    result
}

/// Maps boot RAM as hostmem regions: huge-page aligned (guest and host addresses agree modulo a
/// huge page, so KVM can map 2 MiB pages) and advised for transparent huge pages, as QEMU does.
/// The regions own the mappings; the returned guest memory only borrows them.
fn map_boot_ram(
    layout: &GuestLayout,
    kind: BackingKind,
) -> Result<(GuestMemoryMmap, Vec<HostRegion>), Error> {
    if kind == BackingKind::Hugetlbfs {
        return Err(Error::Config(
            "boot RAM on hugetlbfs is not supported; use anon or memfd".into(),
        ));
    }
    let mut regions = Vec::new();
    let mut backing = Vec::new();
    for r in layout.ram_ranges() {
        let host = HostRegion::new(&Backing {
            kind,
            ..Backing::anon(r.end - r.start)
        })
        .map_err(|e| Error::GuestMemory(format!("boot RAM: {e}")))?;
        let size = usize::try_from(host.size_bytes())
            .map_err(|_| Error::GuestMemory("boot RAM larger than address space".into()))?;
        let flags = match kind {
            BackingKind::Anon => libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            _ => libc::MAP_SHARED | libc::MAP_NORESERVE,
        };
        // SAFETY: the range is `host`'s mapping, which the machine keeps (in `_boot_ram`) for as
        // long as the guest memory built on it.
        let mapping = unsafe {
            MmapRegion::build_raw(
                host.host_addr() as *mut u8,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
            )
        }
        .map_err(|e| Error::GuestMemory(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.start))
            .ok_or_else(|| Error::GuestMemory("region end overflows".into()))?;
        regions.push(region);
        backing.push(host);
    }
    let memory =
        GuestMemoryMmap::from_regions(regions).map_err(|e| Error::GuestMemory(e.to_string()))?;
    Ok((memory, backing))
}

/// A VM with boot RAM, vCPUs, buses and legacy devices.
pub struct Machine {
    num_cpus: u8,
    ram_size_bytes: u64,
    vm: Arc<Vm>,
    layout: GuestLayout,
    memory: GuestMemoryMmap,
    /// Owns the boot RAM mappings `memory` is built on.
    _boot_ram: Vec<HostRegion>,
    boot_slots: Vec<u32>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: ExitSignal,
    stop: Arc<AtomicBool>,
    throttle: VcpuThrottle,
    idle: Vec<Vcpu>,
    running: Vec<JoinHandle<Vcpu>>,
    serial: Arc<Mutex<SerialDevice>>,
    serial_irq: EventFd,
    cmos: Arc<Mutex<Cmos>>,
    irqchip_dirty: bool,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("num_cpus", &self.num_cpus)
            .field("layout", &self.layout)
            .field("boot_slots", &self.boot_slots)
            .field("running", &self.running.len())
            .finish_non_exhaustive()
    }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

impl Machine {
    /// Create the VM, map and register boot RAM, create vCPUs (all in one package), attach the
    /// legacy devices.
    pub fn new(config: MachineConfig) -> Result<Self, Error> {
        Self::with_packages(config, CpuPackages::Single)
    }

    /// [`Machine::new`] with the vCPUs grouped into packages as `packages` says (a NUMA guest
    /// uses [`CpuPackages::PerCpu`] so that no package spans two nodes).
    pub fn with_packages(config: MachineConfig, packages: CpuPackages) -> Result<Self, Error> {
        Self::with_packages_and_ram(config, packages, BackingKind::Anon)
    }

    /// Like [`Machine::new`], with boot RAM of the given kind: `Memfd` makes it shareable with
    /// vhost-user backends (see [`Machine::boot_ram_regions`]).
    pub fn with_ram_backing(config: MachineConfig, ram: BackingKind) -> Result<Self, Error> {
        Self::with_packages_and_ram(config, CpuPackages::Single, ram)
    }

    /// [`Machine::with_packages`] and [`Machine::with_ram_backing`] together.
    pub fn with_packages_and_ram(
        config: MachineConfig,
        packages: CpuPackages,
        ram: BackingKind,
    ) -> Result<Self, Error> {
        if config.num_cpus == 0 || config.num_cpus > boot::mptable::MAX_CPUS {
            return Err(Error::Config(format!(
                "num_cpus {} not in 1..={}",
                config.num_cpus,
                boot::mptable::MAX_CPUS
            )));
        }
        let layout = GuestLayout::new(config.ram_size_bytes)?;
        let vm = Arc::new(Vm::new()?);
        let (memory, boot_ram) = map_boot_ram(&layout, ram)?;
        let boot_slots = vm.register_memory(&memory, BOOT_FIRST_SLOT)?;

        let supported = vm
            .kvm()
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| Error::Kvm {
                what: "KVM_GET_SUPPORTED_CPUID",
                source,
            })?;
        let idle = (0..config.num_cpus)
            .map(|i| Vcpu::new(&vm, i, (config.num_cpus, packages), &supported))
            .collect::<Result<Vec<_>, _>>()?;

        let exit = ExitSignal::new().map_err(io_err("creating exit eventfd"))?;
        let out: Box<dyn Write + Send> = match config.serial {
            SerialOutput::Stdout => Box::new(std::io::stdout()),
            SerialOutput::File(p) => {
                Box::new(File::create(&p).map_err(io_err("creating serial output file"))?)
            }
            SerialOutput::Writer(w) => w,
        };
        let serial_irq =
            EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("creating serial eventfd"))?;
        vm.register_irqfd(&serial_irq, Gsi(COM1_IRQ))?;
        let serial_evt = serial_irq
            .try_clone()
            .map_err(io_err("cloning serial eventfd"))?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_evt, out)));

        let machine = Self {
            num_cpus: config.num_cpus,
            ram_size_bytes: config.ram_size_bytes,
            vm,
            layout,
            memory,
            _boot_ram: boot_ram,
            boot_slots,
            pio: Arc::new(Bus::new(BusKind::Pio)),
            mmio: Arc::new(Bus::new(BusKind::Mmio)),
            exit,
            stop: Arc::new(AtomicBool::new(false)),
            throttle: VcpuThrottle::default(),
            idle,
            running: Vec::new(),
            serial,
            serial_irq,
            cmos: Arc::new(Mutex::new(Cmos::default())),
            irqchip_dirty: false,
        };
        machine.attach_legacy_devices()?;
        Ok(machine)
    }

    fn attach_legacy_devices(&self) -> Result<(), Error> {
        let pio = &self.pio;
        pio.insert(self.serial.clone(), u64::from(COM1_PORT), 8)?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(self.exit.clone()))),
            u64::from(I8042_DATA_PORT),
            5,
        )?;
        pio.insert(self.cmos.clone(), u64::from(CMOS_PORT), 2)?;
        pio.insert(
            Arc::new(Mutex::new(AcpiPowerDevice::new(self.exit.clone()))),
            u64::from(ACPI_PM_PORT),
            3,
        )?;
        let ignored: SharedDevice = Arc::new(Mutex::new(IgnoredPorts));
        for (base, len) in IGNORED_PORT_RANGES {
            pio.insert(ignored.clone(), u64::from(*base), u64::from(*len))?;
        }
        Ok(())
    }

    /// The VM (irqfd, MSI routing, ioeventfd, memslot count).
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    /// The raw VM fd, e.g. for KVM_SET_USER_MEMORY_REGION by the memslot manager.
    pub fn vm_fd(&self) -> Arc<VmFd> {
        self.vm.fd().clone()
    }

    /// KVM_CAP_NR_MEMSLOTS.
    pub fn nr_memslots(&self) -> usize {
        self.vm.nr_memslots()
    }

    /// Memslot ids used by boot RAM; every other id below [`Machine::nr_memslots`] is free.
    pub fn boot_memslots(&self) -> &[u32] {
        &self.boot_slots
    }

    /// Boot RAM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Boot RAM: each region's guest address and host memory (with its fd when shared).
    pub fn boot_ram_regions(&self) -> impl Iterator<Item = (u64, &HostRegion)> {
        self.layout
            .ram_ranges()
            .iter()
            .map(|r| r.start)
            .zip(self._boot_ram.iter())
    }

    /// Makes boot RAM region `index` (in [`Machine::boot_ram_regions`] order) map `file`'s data
    /// copy-on-write instead of reading it (a lazy restore; see
    /// [`HostRegion::overlay_snapshot_file`]). Only while no vCPU runs.
    pub fn map_boot_ram_file(&mut self, index: usize, file: &std::fs::File) -> Result<(), Error> {
        if !self.running.is_empty() {
            return Err(Error::VcpuState(
                "boot RAM is replaced only while no vCPU runs",
            ));
        }
        let region = self
            ._boot_ram
            .get_mut(index)
            .ok_or_else(|| Error::GuestMemory(format!("no boot RAM region {index}")))?;
        region
            .overlay_snapshot_file(file)
            .map_err(|e| Error::GuestMemory(format!("boot RAM region {index}: {e}")))
    }

    /// Guest physical layout (device area start etc.).
    pub fn layout(&self) -> &GuestLayout {
        &self.layout
    }

    /// Port-I/O bus (the VMM adds PCI conf1 at 0xCF8..0xD00 here).
    pub fn pio_bus(&self) -> &Arc<Bus> {
        &self.pio
    }

    /// MMIO bus (the VMM adds BAR windows here).
    pub fn mmio_bus(&self) -> &Arc<Bus> {
        &self.mmio
    }

    /// Stop requests from the guest, vCPUs or the VMM ([`StopRequest::Host`]).
    pub fn exit_signal(&self) -> &ExitSignal {
        &self.exit
    }

    /// COM1, e.g. to feed input.
    pub fn serial(&self) -> &Arc<Mutex<SerialDevice>> {
        &self.serial
    }

    /// The eventfd wired to GSI 4 (COM1), kept for symmetry with devices the VMM wires.
    pub fn serial_irq(&self) -> &EventFd {
        &self.serial_irq
    }

    /// Load kernel, initramfs and firmware tables into boot RAM (`spec.num_cpus` is replaced
    /// by the machine's vCPU count).
    pub fn load_linux(&self, spec: &LinuxBootSpec) -> Result<LinuxBootInfo, Error> {
        let spec = LinuxBootSpec {
            num_cpus: self.num_cpus,
            ..spec.clone()
        };
        Ok(boot::load_linux(&self.memory, &self.layout, &spec)?)
    }

    /// Reset the vCPUs (and, after a previous run, the irqchip and PIT) to the boot state for
    /// `boot` and start one thread per vCPU.
    pub fn start(&mut self, boot: &LinuxBootInfo) -> Result<(), Error> {
        if !self.running.is_empty() || self.idle.len() != usize::from(self.num_cpus) {
            return Err(Error::VcpuState("start needs all vCPUs stopped"));
        }
        log::debug!(
            "starting {} vCPUs at {:#x}",
            self.idle.len(),
            boot.entry.raw()
        );
        self.exit.clear();
        self.stop.store(false, Ordering::Release);
        if self.irqchip_dirty {
            self.vm.reset_irqchip()?;
        }
        for vcpu in &mut self.idle {
            vcpu.reset(boot)?;
        }
        self.irqchip_dirty = true;
        self.spawn_vcpus()
    }

    /// Starts one thread per idle vCPU, in whatever state the vCPUs are. The kick signal's
    /// handler comes first (a restored VM resumes without a `start`; a kick without the
    /// handler would end the process).
    fn spawn_vcpus(&mut self) -> Result<(), Error> {
        install_kick_handler()?;
        let ctx = RunContext {
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            exit: self.exit.clone(),
            stop: self.stop.clone(),
            throttle: self.throttle.clone(),
        };
        for (i, vcpu) in std::mem::take(&mut self.idle).into_iter().enumerate() {
            let ctx = ctx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || {
                    sandbox::enter_or_abort(sandbox::ThreadKind::Vcpu);
                    vcpu.run(&ctx)
                })
                .map_err(io_err("spawning vCPU thread"))?;
            self.running.push(handle);
        }
        Ok(())
    }

    /// Stop all vCPU threads (kick them out of KVM_RUN) and join them. Idempotent.
    pub fn stop(&mut self) -> Result<(), Error> {
        self.stop.store(true, Ordering::Release);
        if !self.running.is_empty() {
            log::debug!("stopping {} vCPU threads", self.running.len());
        }
        let mut panicked = None;
        for (i, handle) in self.running.drain(..).enumerate() {
            while !handle.is_finished() {
                // ESRCH if the thread just exited; the loop condition sees that next.
                let _ = handle.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(1));
            }
            match handle.join() {
                Ok(vcpu) => self.idle.push(vcpu),
                Err(_) => panicked = Some(i),
            }
        }
        match panicked {
            Some(i) => Err(Error::VcpuFatal {
                vcpu: i as u8,
                reason: "vCPU thread panicked".into(),
            }),
            None => Ok(()),
        }
    }

    /// The vCPUs' throttle (live migration's auto-converge); any thread may set it.
    pub fn throttle(&self) -> VcpuThrottle {
        self.throttle.clone()
    }

    /// Registers of vCPU `index` while the vCPUs are stopped (diagnostics: where a hung
    /// guest was). Errors while running.
    pub fn vcpu_regs(&self, index: u8) -> Result<kvm_bindings::kvm_regs, Error> {
        self.idle
            .iter()
            .find(|v| v.index() == index)
            .ok_or(Error::VcpuState("vcpu_regs needs the vCPUs stopped"))?
            .regs()
    }

    /// Start, wait for the first stop request, stop and join. Poweroff and reboot are
    /// results; a fatal vCPU condition or a host stop is an error.
    pub fn run(&mut self, boot: &LinuxBootInfo) -> Result<ExitReason, Error> {
        self.start(boot)?;
        let request = self.exit.wait();
        self.stop()?;
        match request {
            StopRequest::Guest(reason) => Ok(reason),
            StopRequest::Fatal { vcpu, reason } => Err(Error::VcpuFatal { vcpu, reason }),
            StopRequest::Host => Err(Error::VcpuState("stopped by the host")),
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("stopping vCPUs: {e}");
        }
    }
}
