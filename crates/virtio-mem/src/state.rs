//! Saving and restoring the device state (snapshots, migration).

use fixedbitset::FixedBitSet;
use hostmem::BlockMemory;
use memslots::{Memslots, SlotBackend};
use serde::{Deserialize, Serialize};

use crate::blocks::PluggedBlocks;
use crate::device::VirtioMem;
use crate::settings::{Prealloc, VirtioMemConfig, check_requested_size, usable_target_bytes};
use crate::{Error, Result};

/// Everything needed to recreate the device's guest-visible state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Guest physical address of the region (must match the new device).
    pub guest_addr: u64,
    /// Region size (must match).
    pub region_size_bytes: u64,
    /// Block size (must match).
    pub block_size_bytes: u64,
    /// Node id (must match).
    pub node_id: u16,
    /// Requested size.
    pub requested_size_bytes: u64,
    /// Usable region size.
    pub usable_region_size_bytes: u64,
    /// Plugged size (must equal the bitmap's count times the block size).
    pub plugged_size_bytes: u64,
    /// Features the driver accepted, if it had acked them.
    pub driver_features: Option<u64>,
    /// Number of blocks in the region (must match).
    pub block_count: u64,
    /// The plugged blocks as maximal runs, in order.
    pub plugged_runs: Vec<BlockRun>,
}

/// Consecutive plugged blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRun {
    /// Index of the first block.
    pub first_block: u64,
    /// Number of blocks.
    pub block_count: u64,
}

impl<B: SlotBackend, M: BlockMemory> VirtioMem<B, M> {
    /// The current state, for saving.
    pub fn state(&self) -> DeviceState {
        DeviceState {
            guest_addr: self.config.guest_addr.0,
            region_size_bytes: self.config.region_size_bytes,
            block_size_bytes: self.config.block_size_bytes,
            node_id: self.config.node_id,
            requested_size_bytes: self.requested_size_bytes,
            usable_region_size_bytes: self.usable_region_size_bytes,
            plugged_size_bytes: self.plugged_size_bytes,
            driver_features: self.driver_features,
            block_count: self.blocks.block_count() as u64,
            plugged_runs: self
                .blocks
                .plugged_runs()
                .map(|run| BlockRun {
                    first_block: run.start as u64,
                    block_count: run.len() as u64,
                })
                .collect(),
        }
    }

    /// A device in a saved state: checks it against `config`, maps the slots holding plugged
    /// blocks (and, for a legacy driver, the usable region) and, with prealloc, populates the
    /// plugged ranges. The memory contents are restored by the caller; unplugged ranges are
    /// assumed to hold no data.
    pub fn restore(
        config: VirtioMemConfig,
        memslots: Memslots<B>,
        memory: M,
        state: &DeviceState,
    ) -> Result<Self> {
        let mut device = VirtioMem::new(config, memslots, memory)?;
        let bits = check_state(&config, state, device.device_features())?;
        device.blocks = PluggedBlocks::from_bits(bits);
        device.plugged_size_bytes = state.plugged_size_bytes;
        device.requested_size_bytes = state.requested_size_bytes;
        device.usable_region_size_bytes = state.usable_region_size_bytes;
        device.driver_features = state.driver_features;
        if let Err(e) = device.map_and_populate() {
            // Best effort: leave nothing mapped behind a device that will not exist.
            let _ = device.memslots.unmap_all();
            return Err(e);
        }
        Ok(device)
    }

    fn map_and_populate(&mut self) -> Result<()> {
        self.sync_slots()?;
        if self.config.prealloc == Prealloc::OnPlug {
            let block = self.config.block_size_bytes;
            for run in self.blocks.plugged_runs() {
                self.memory
                    .populate(run.start as u64 * block, run.len() as u64 * block)?;
            }
        }
        Ok(())
    }
}

fn mismatch(field: &str, saved: u64, now: u64) -> Error {
    Error::State(format!(
        "{field} changed from {saved:#x} (saved) to {now:#x} (this device)"
    ))
}

/// Checks the state against the device; returns its bitmap.
fn check_state(
    config: &VirtioMemConfig,
    state: &DeviceState,
    device_features: u64,
) -> Result<FixedBitSet> {
    let block = config.block_size_bytes;
    let region = config.region_size_bytes;
    if state.guest_addr != config.guest_addr.0 {
        return Err(mismatch(
            "guest address",
            state.guest_addr,
            config.guest_addr.0,
        ));
    }
    if state.region_size_bytes != region {
        return Err(mismatch("region size", state.region_size_bytes, region));
    }
    if state.block_size_bytes != block {
        return Err(mismatch("block size", state.block_size_bytes, block));
    }
    if state.node_id != config.node_id {
        return Err(mismatch(
            "node id",
            state.node_id.into(),
            config.node_id.into(),
        ));
    }
    let bad = |what: String| Err(Error::State(what));
    if state.block_count != region / block {
        return bad(format!(
            "the saved bitmap has {} blocks but the region has {}",
            state.block_count,
            region / block
        ));
    }
    let mut bits = FixedBitSet::with_capacity(state.block_count as usize);
    for run in &state.plugged_runs {
        let end = run.first_block.checked_add(run.block_count);
        match end {
            Some(end) if end <= state.block_count => {
                bits.insert_range(run.first_block as usize..end as usize);
            }
            _ => return bad(format!("plugged run {run:?} lies outside the region")),
        }
    }
    if bits.count_ones(..) as u64 * block != state.plugged_size_bytes {
        return bad(format!(
            "plugged size {:#x} does not match the bitmap",
            state.plugged_size_bytes
        ));
    }
    check_requested_size(state.requested_size_bytes, block, region)
        .map_err(|e| Error::State(e.to_string()))?;
    let usable = state.usable_region_size_bytes;
    let min_usable = usable_target_bytes(state.requested_size_bytes, block, region);
    if usable > region || !usable.is_multiple_of(block) || usable < min_usable {
        return bad(format!(
            "usable region size {usable:#x} is not a block multiple between {min_usable:#x} and \
             the region size"
        ));
    }
    let end_of_plugged = bits.maximum().map_or(0, |m| m as u64 + 1) * block;
    if end_of_plugged > usable {
        return bad(format!(
            "blocks are plugged up to {end_of_plugged:#x}, past the usable region {usable:#x}"
        ));
    }
    if let Some(features) = state.driver_features
        && features & !device_features != 0
    {
        return bad(format!(
            "driver features {features:#x} include bits this device does not offer \
             ({device_features:#x})"
        ));
    }
    Ok(bits)
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
