//! Writing a paused VM to a snapshot directory.

use std::path::Path;
use std::time::{Duration, Instant};

use snapshot::memfile;
use snapshot::{
    ByteRange, Component, DeviceSnapshot, GuestAddr, HostMemory, MemoryManifest, RegionFile,
    SnapshotDir, VmSnapshot,
};

use super::restore::{SavedVmConfig, VM_CONFIG_COMPONENT, VM_CONFIG_VERSION};
use super::{
    HOTMEM_VERSION, MEM_DEVICE_COMPONENT, MEM_DEVICE_VERSION, MachinePart, TRANSPORT_COMPONENT,
    TRANSPORT_VERSION, boot_ram_name, memory_file_name,
};
use crate::Error;
use crate::devices::SharedMemoryDevice;

/// What a snapshot wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveReport {
    /// Guest memory bytes written to the memory files.
    pub memory_data_bytes: u64,
    /// Guest memory bytes examined (boot RAM plus plugged device memory).
    pub memory_scanned_bytes: u64,
    /// Time taken.
    pub duration: Duration,
}

/// What [`save_vm`] saves, and where.
pub struct SaveInputs<'a> {
    /// The machine (paused).
    pub machine: &'a dyn MachinePart,
    /// The memory devices.
    pub devices: &'a [SharedMemoryDevice],
    /// The VM's configuration, recorded for the restore (and reboots after it).
    pub vm_config: &'a SavedVmConfig,
    /// Directory to write (created if missing).
    pub destination: &'a Path,
    /// Called with (bytes scanned, bytes to scan) as memory is written.
    pub progress: &'a mut dyn FnMut(u64, u64),
}

/// Writes the VM to `inputs.destination`. The machine must be paused; the device locks are
/// held throughout, so nothing changes underneath. The state file is written last: a
/// directory without `state.bin` is not a snapshot.
pub fn save_vm(inputs: SaveInputs<'_>) -> Result<SaveReport, Error> {
    let started = Instant::now();
    let machine = inputs
        .machine
        .save_component()
        .map_err(|e| Error::Device(format!("snapshot: machine state: {e}")))?;
    let dir = SnapshotDir::create(inputs.destination)?;
    let _ = std::fs::remove_file(dir.state_path());
    let guards: Vec<_> = inputs
        .devices
        .iter()
        .map(|d| (d, d.transport.lock().unwrap_or_else(|e| e.into_inner())))
        .collect();
    // A preallocating plug populates without the device lock and commits later: its blocks
    // are neither plugged nor free yet, so no consistent state can be written now.
    if let Some((d, _)) = guards
        .iter()
        .find(|(_, t)| t.device().core().plug_in_progress())
    {
        return Err(Error::Device(format!(
            "snapshot: memory device '{}' is preallocating a plug; try again when it is done",
            d.id
        )));
    }
    let boot_ram = inputs.machine.boot_ram();
    let mut total = boot_ram.iter().map(|r| r.size_bytes).sum::<u64>();
    for (_, t) in &guards {
        total += t.device().core().state().plugged_size_bytes;
    }
    let mut scanned = 0;
    let mut data = 0;
    let mut regions = Vec::new();
    let boot_memory = inputs.machine.boot_ram_memory();
    if boot_memory.len() != boot_ram.len() {
        return Err(Error::Config(format!(
            "snapshot: {} boot RAM ranges but {} host memories",
            boot_ram.len(),
            boot_memory.len()
        )));
    }
    for (index, (range, memory)) in boot_ram.iter().zip(&boot_memory).enumerate() {
        let name = boot_ram_name(index);
        let file_name = memory_file_name(&name);
        let whole = [ByteRange {
            offset_bytes: 0,
            size_bytes: range.size_bytes,
        }];
        let stats = memfile::save(memory, &whole, &dir.file_path(&file_name)?, &mut |n| {
            (inputs.progress)(scanned + n, total)
        })?;
        scanned += stats.scanned_bytes;
        data += stats.data_bytes;
        regions.push(RegionFile {
            name,
            guest_addr: GuestAddr(range.guest_addr),
            size_bytes: range.size_bytes,
            file_name,
            data_bytes: stats.data_bytes,
        });
    }
    let mut devices = Vec::new();
    for (shared, transport) in &guards {
        let device = transport.device();
        let state = device.core().state();
        let block = state.block_size_bytes;
        let plugged: Vec<ByteRange> = state
            .plugged_runs
            .iter()
            .map(|run| ByteRange {
                offset_bytes: run.first_block * block,
                size_bytes: run.block_count * block,
            })
            .collect();
        let file_name = memory_file_name(&shared.id);
        let memory = HostMemory::from_region(device.region());
        let stats = memfile::save(&memory, &plugged, &dir.file_path(&file_name)?, &mut |n| {
            (inputs.progress)(scanned + n, total)
        })?;
        scanned += stats.scanned_bytes;
        data += stats.data_bytes;
        regions.push(RegionFile {
            name: shared.id.clone(),
            guest_addr: GuestAddr(state.guest_addr),
            size_bytes: state.region_size_bytes,
            file_name,
            data_bytes: stats.data_bytes,
        });
        devices.push(DeviceSnapshot {
            id: shared.id.clone(),
            components: vec![
                Component::encode(
                    TRANSPORT_COMPONENT,
                    TRANSPORT_VERSION,
                    &transport.save_state(),
                )?,
                Component::encode(MEM_DEVICE_COMPONENT, MEM_DEVICE_VERSION, &state)?,
            ],
        });
    }
    let snapshot = VmSnapshot {
        created_unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        vm_config: Some(Component::encode(
            VM_CONFIG_COMPONENT,
            VM_CONFIG_VERSION,
            inputs.vm_config,
        )?),
        machine,
        devices,
        memory: MemoryManifest { regions },
    };
    dir.write_state(&snapshot, HOTMEM_VERSION)?;
    Ok(SaveReport {
        memory_data_bytes: data,
        memory_scanned_bytes: scanned,
        duration: started.elapsed(),
    })
}
