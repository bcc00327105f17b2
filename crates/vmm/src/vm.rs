//! Runs a VM: machine, devices, API, and the boot loop (reboot = system reset + boot again).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use boot::{DeviceAreaAllocator, LinuxBootSpec};
use machine::{ExitReason, Machine, MachineConfig, SerialOutput, StopRequest};
use memslots::SlotBudget;
use pci::{MmioAddress, MmioAllocator};

use crate::Error;
use crate::api_handler::VmFacts;
use crate::config::{SerialTarget, VmConfig};
use crate::devices::{self, DeviceSetup, SharedMemoryDevice};
use crate::notify::QueueNotifiers;
use crate::operator::{Operator, OperatorSetup};
use crate::pci_glue::{CONF1_PORT, CONF1_PORTS, PciHost, PciMmio, PciPio};

/// How the VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEnd {
    /// The guest powered off.
    Poweroff,
    /// The API asked for a shutdown.
    Shutdown,
}

/// Builds the VM described by `config` and runs it until the guest powers off or the API
/// shuts it down.
pub fn run(config: VmConfig) -> Result<VmEnd, Error> {
    let started = Instant::now();
    let vcpus = u8::try_from(config.vcpus).map_err(|_| Error::Config("too many vCPUs".into()))?;
    let machine_config = MachineConfig {
        num_cpus: vcpus,
        ram_size_bytes: config.boot_memory_bytes,
        serial: match &config.serial {
            SerialTarget::Stdio => SerialOutput::Stdout,
            SerialTarget::File(p) => SerialOutput::File(p.clone()),
        },
    };
    let mut machine = match &config.restore {
        Some(plan) => crate::snapshot::machine_part::restore_machine(machine_config, plan)?,
        None => Machine::new(machine_config)?,
    };
    let used_slots = machine.boot_memslots().iter().max().map_or(0, |m| m + 1);
    let total_slots = u32::try_from(machine.nr_memslots()).unwrap_or(u32::MAX);
    let window = machine.layout().pci_mmio32_window();
    let built = devices::build(
        DeviceSetup {
            vm: machine.vm(),
            budget: SlotBudget::new(total_slots, used_slots),
            area: DeviceAreaAllocator::new(machine.layout()),
            bars: MmioAllocator::new(MmioAddress(window.start), MmioAddress(window.end))
                .map_err(|e| Error::Device(format!("PCI window: {e}")))?,
            memory: Arc::new(machine.memory().clone()),
            restore: config.restore.as_deref(),
        },
        &config.mem_devices,
    )?;
    for (region, trap) in built.unplugged_traps {
        machine.mmio_bus().insert(
            Arc::new(Mutex::new(trap)),
            region.start,
            region.end - region.start,
        )?;
    }
    let devices = built.memory_devices;
    let notifiers = Arc::new(Mutex::new(built.notifiers));
    QueueNotifiers::spawn(notifiers.clone())?;
    let host = PciHost {
        bus: Arc::new(built.bus),
        notifiers,
    };
    machine.pio_bus().insert(
        Arc::new(Mutex::new(PciPio(host.clone()))),
        CONF1_PORT,
        CONF1_PORTS,
    )?;
    machine.mmio_bus().insert(
        Arc::new(Mutex::new(PciMmio(host))),
        window.start,
        window.end - window.start,
    )?;

    let facts = Arc::new(VmFacts {
        vcpus: config.vcpus,
        boot_memory_bytes: config.boot_memory_bytes,
        started,
        boots: Default::default(),
    });
    let operator = Operator::start(OperatorSetup {
        api_socket: config.api_socket.as_deref(),
        devices: devices.clone(),
        facts: facts.clone(),
        exit: machine.exit_signal().clone(),
        not_following_after: config.not_following_after,
    })?;
    operator.set_snapshot_config((&config).into());
    if config.serial == SerialTarget::Stdio {
        crate::console::spawn_stdin_pump(machine.serial().clone())
            .map_err(|e| Error::Config(format!("starting the console thread: {e}")))?;
    }
    log::info!("VM ready in {} ms", started.elapsed().as_millis());

    let spec = LinuxBootSpec {
        kernel: config.kernel.clone(),
        initramfs: config.initramfs.clone(),
        cmdline: config.cmdline.clone(),
        num_cpus: vcpus,
        pci_mmio64: 0..0,
    };
    let mut restored = config.restore.is_some();
    loop {
        let ended = if std::mem::take(&mut restored) {
            facts.boots.fetch_add(1, Ordering::Relaxed);
            operator.run_restored(&mut machine, config.resume_after_restore)
        } else {
            let boot = machine.load_linux(&spec)?;
            facts.boots.fetch_add(1, Ordering::Relaxed);
            operator.run_boot(&mut machine, &boot)
        };
        match ended {
            Ok(ExitReason::Poweroff) => return Ok(VmEnd::Poweroff),
            Ok(ExitReason::Reboot) => {
                log::info!("guest reboot: system reset");
                operator.rebooting();
                system_reset(&devices)?;
            }
            Err(machine::Error::VcpuState(_))
                if machine.exit_signal().pending() == Some(StopRequest::Host) =>
            {
                return Ok(VmEnd::Shutdown);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// System reset: every memory device unplugs everything (the new kernel starts with none).
fn system_reset(devices: &[SharedMemoryDevice]) -> Result<(), Error> {
    for d in devices {
        let mut transport = d.transport.lock().expect("device lock");
        transport
            .device_mut()
            .core_mut()
            .system_reset()
            .map_err(|e| Error::Device(format!("memory device '{}': system reset: {e}", d.id)))?;
    }
    Ok(())
}
