//! Runs a VM: machine, devices, API, and the boot loop (reboot = system reset + boot again).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use boot::{DeviceAreaAllocator, LinuxBootSpec};
use machine::{CpuPackages, ExitReason, Machine, MachineConfig, SerialOutput, StopRequest};
use memslots::SlotBudget;
use pci::{MmioAddress, MmioAllocator};

use api::model::EventKind;
use api::size::format_size;

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
    let mut config = config;
    let vcpus = u8::try_from(config.vcpus).map_err(|_| Error::Config("too many vCPUs".into()))?;
    let machine_config = MachineConfig {
        num_cpus: vcpus,
        ram_size_bytes: config.boot_memory_bytes,
        serial: match &config.serial {
            SerialTarget::Stdio => SerialOutput::Stdout,
            SerialTarget::File(p) => SerialOutput::File(p.clone()),
        },
    };
    let packages = if config.numa.is_some() {
        CpuPackages::PerCpu
    } else {
        CpuPackages::Single
    };
    let incoming = config.incoming.clone();
    // A migration destination reserves (and maps) its devices' slots while memory arrives.
    let mut received_budget = None;
    let mut received_vhost = None;
    let mut machine = match (&incoming, &config.restore) {
        (Some(incoming), _) => {
            let received =
                crate::migration::incoming::receive_vm(incoming, &config, machine_config)?;
            config.restore = Some(Arc::new(received.plan));
            config.resume_after_restore = true;
            received_budget = Some((received.budget, received.planned_budget));
            received_vhost = Some(received.vhost);
            received.machine
        }
        // The saved CPUID (packages included) comes back with the vCPU state.
        (None, Some(plan)) => crate::snapshot::machine_part::restore_machine(machine_config, plan)?,
        (None, None) => Machine::with_packages_and_ram(
            machine_config,
            packages,
            if config.shared_memory {
                hostmem::BackingKind::Memfd
            } else {
                hostmem::BackingKind::Anon
            },
        )?,
    };
    let used_slots = machine.boot_memslots().iter().max().map_or(0, |m| m + 1);
    let total_slots = u32::try_from(machine.nr_memslots()).unwrap_or(u32::MAX);
    let window = machine.layout().pci_mmio32_window();
    let queue_memory = Arc::new(machine.memory().clone());
    let host_queue_memory = queue_memory.clone();
    let (vhost, budget, planned_budget) = match (received_vhost, received_budget) {
        // A destination connected its backends, and limited its budget by them, before the
        // memory arrived.
        (Some(vhost), Some((budget, planned))) => (vhost, budget, Some(planned)),
        _ => {
            let vhost = crate::vhost_user::connect(&config.vhost_user, &machine, &queue_memory)?;
            let mut budget = SlotBudget::new(total_slots, used_slots);
            for limit in vhost.iter().flat_map(|v| v.slot_limits()) {
                budget
                    .add_limit(limit)
                    .map_err(|e| Error::Config(e.to_string()))?;
            }
            (vhost, budget, None)
        }
    };
    if let Some(limit) = budget.limited_by() {
        log::info!(
            "memory slot budget: {} for memory devices, limited by {} ({} regions)",
            budget.available(),
            limit.owner,
            limit.max_slots
        );
    }
    let slot_budget = crate::vhost_user::budget_info(planned_budget.as_ref().unwrap_or(&budget));
    let vhost_view = vhost.as_ref().map(crate::vhost_user::VhostUserSetup::view);
    let vhost_table = vhost.as_ref().map(|v| v.table.clone());
    let built = devices::build_with_vhost(
        DeviceSetup {
            vm: machine.vm(),
            budget,
            area: DeviceAreaAllocator::new(machine.layout()),
            bars: MmioAllocator::new(MmioAddress(window.start), MmioAddress(window.end))
                .map_err(|e| Error::Device(format!("PCI window: {e}")))?,
            memory: queue_memory,
            restore: config.restore.as_deref(),
        },
        &config.mem_devices,
        vhost,
    )?;
    for (region, trap) in built.unplugged_traps {
        machine.mmio_bus().insert(
            Arc::new(Mutex::new(trap)),
            region.start,
            region.end - region.start,
        )?;
    }
    let devices = built.memory_devices;
    let built_vhost = built.vhost_devices;
    if let Some(incoming) = &incoming {
        incoming.switchover.mark("device_restore");
    }
    let numa = config
        .numa
        .as_ref()
        .map(|t| crate::numa::with_device_ranges(t, &devices));
    let device_ids: Vec<String> = config
        .mem_devices
        .iter()
        .filter(|d| d.node.is_some())
        .map(|d| d.id.clone())
        .collect();
    let notifiers = Arc::new(Mutex::new(built.notifiers));
    QueueNotifiers::spawn(notifiers.clone())?;
    let host = PciHost {
        bus: Arc::new(built.bus),
        notifiers,
        devices: devices.clone(),
    };
    machine.pio_bus().insert(
        Arc::new(Mutex::new(PciPio(host.clone()))),
        CONF1_PORT,
        CONF1_PORTS,
    )?;
    machine.mmio_bus().insert(
        Arc::new(Mutex::new(PciMmio(host.clone()))),
        window.start,
        window.end - window.start,
    )?;

    let facts = Arc::new(VmFacts {
        vcpus: config.vcpus,
        boot_memory_bytes: config.boot_memory_bytes,
        started,
        boots: Default::default(),
        numa_nodes: numa
            .as_ref()
            .map(|t| crate::numa::api_nodes(t, &device_ids)),
        slot_budget: Some(slot_budget),
        vhost_user: vhost_view,
    });
    let operator = Operator::start(OperatorSetup {
        api_socket: config.api_socket.as_deref(),
        devices: devices.clone(),
        facts: facts.clone(),
        exit: machine.exit_signal().clone(),
        not_following_after: config.not_following_after,
    })?;
    if let Some(view) = &facts.vhost_user {
        let (monitor, watched) = (operator.monitor().clone(), operator.monitor().clone());
        view.spawn_event_relay(
            move |kind| monitor.emit(kind),
            move || watched.vm_state() != api::model::VmState::ShuttingDown,
        )
        .map_err(|e| Error::Config(format!("starting the vhost-user event thread: {e}")))?;
    }
    if config.vhost_user.is_empty() && !config.shared_memory {
        operator.set_snapshot_config((&config).into());
    }
    match (
        crate::migration::vhost::blocker(&built_vhost),
        crate::migration::cpu_features(),
    ) {
        (Some(blocker), _) => operator.set_migration_blocker(blocker),
        (None, Err(e)) => operator.set_migration_blocker(e.to_string()),
        (None, Ok(cpu_features)) => {
            operator.set_migration_context(crate::migration::SourceContext {
                vm_fd: machine.vm_fd(),
                boot_ram: machine
                    .boot_ram_ranges()
                    .into_iter()
                    .zip(machine.boot_memslots())
                    .map(|(r, &kvm_slot)| crate::migration::source::BootSlot {
                        range: crate::snapshot::RamRange {
                            guest_addr: r.guest_addr,
                            size_bytes: r.size_bytes,
                            host_addr: r.host_addr as usize,
                        },
                        kvm_slot,
                    })
                    .collect(),
                devices: devices.clone(),
                queue_memory: host_queue_memory.clone(),
                vm_config: (&config).into(),
                cpu_features,
                exit: machine.exit_signal().clone(),
                throttle: machine.throttle(),
                vhost: built_vhost.clone(),
                vhost_table: vhost_table.clone(),
            })
        }
    }
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
        numa,
    };
    // Set up: from here on the VM thread (and the vCPUs it starts) keep to their lists.
    sandbox::enter_or_abort(sandbox::ThreadKind::Vmm);
    operator.spawn_migration_worker()?;
    let mut restored = config.restore.is_some();
    if let Some(incoming) = &incoming {
        crate::migration::incoming::report_running(incoming);
        log::info!(
            "migration from {} received; the VM runs here",
            incoming.address
        );
    }
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
                system_reset(&devices, &host, |kind| operator.emit(kind));
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

/// System reset, as a fresh machine: every memory device's transport reads as just created
/// (the bus and the ioeventfds follow its BARs; MSI-X routes follow the new messages when they
/// are first sent) and everything is unplugged. A failed discard is not fatal: the memory stays
/// plugged and consistent, it is logged, counted and reported (`emit`), and the next driver
/// unplugs it.
pub fn system_reset(
    devices: &[SharedMemoryDevice],
    host: &PciHost,
    mut emit: impl FnMut(EventKind),
) {
    for d in devices {
        let mut transport = d.lock();
        transport.system_reset();
        if let Err(e) = transport.device_mut().system_reset() {
            let plugged_bytes = transport.device().core().status().plugged_size_bytes;
            log::warn!(
                "memory device '{}': system reset: {e}; {} stays plugged until the next driver \
                 unplugs it",
                d.id,
                format_size(plugged_bytes)
            );
            d.health().count_system_reset_failure();
            emit(EventKind::SystemResetIncomplete {
                device: d.id.clone(),
                plugged_bytes,
            });
        }
        d.publish(&transport);
    }
    for d in devices {
        host.refresh(d.bdf);
    }
}
