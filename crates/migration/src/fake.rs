//! In-memory [`SourceMemory`] and [`DestinationMemory`] for tests: a scripted guest writes,
//! plugs and unplugs while the driver runs.

use std::collections::VecDeque;
use std::time::Duration;

use crate::destination::DestinationMemory;
use crate::protocol::BlockRun;
use crate::source::{DeviceBlocks, RegionInfo, SourceMemory};
use crate::tracker::{Bitmap, DirtyPages};
use crate::{PAGE_BYTES, RegionId};

/// One guest action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestOp {
    /// Writes `byte` at `offset` of a region (skipped in an unplugged device block).
    Write {
        /// Region.
        region: RegionId,
        /// Byte offset.
        offset_bytes: u64,
        /// Value.
        byte: u8,
    },
    /// Plugs a block (no-op if plugged).
    Plug {
        /// Device.
        device: u32,
        /// Block.
        block: u64,
    },
    /// Unplugs (and zeroes) a block (no-op if unplugged).
    Unplug {
        /// Device.
        device: u32,
        /// Block.
        block: u64,
    },
}

/// A fake device.
#[derive(Debug, Clone)]
pub struct FakeDevice {
    /// Block size.
    pub block_size_bytes: u64,
    /// Memory.
    pub memory: Vec<u8>,
    /// Plugged blocks.
    pub plugged: Bitmap,
    discarded: Vec<u64>,
}

/// A fake VM: boot RAM, devices, a dirty log, and a guest script run while the driver works.
#[derive(Debug, Clone)]
pub struct FakeSource {
    /// Boot RAM ranges.
    pub boot_ram: Vec<Vec<u8>>,
    /// Devices.
    pub devices: Vec<FakeDevice>,
    log: DirtyPages,
    logging: bool,
    /// Paused (the guest script stops).
    pub paused: bool,
    /// Pauses and resumes seen.
    pub pauses: u32,
    /// Resumes seen.
    pub resumes: u32,
    /// Script still to run.
    pub script: VecDeque<GuestOp>,
    /// Ops run per driver call.
    pub ops_per_call: usize,
    /// The device state `final_state` (and `preview_state`) answers.
    pub state: Vec<u8>,
    /// How long building the device state takes (both the final one and a preview).
    pub state_delay: Duration,
    /// What `pause_cost` answers.
    pub pause_cost: Duration,
    /// The vCPU throttle: the script runs `100 - throttle` % of `ops_per_call` per call.
    pub throttle_percent: u8,
    /// Every throttle the driver set, in order.
    pub throttles: Vec<u8>,
}

impl FakeSource {
    /// Boot RAM of `boot_bytes`, and devices of (region, block) sizes, nothing plugged.
    pub fn new(boot_bytes: u64, devices: &[(u64, u64)]) -> Self {
        FakeSource {
            boot_ram: vec![vec![0; boot_bytes as usize]],
            devices: devices
                .iter()
                .map(|&(size, block)| FakeDevice {
                    block_size_bytes: block,
                    memory: vec![0; size as usize],
                    plugged: Bitmap::new(size / block),
                    discarded: Vec::new(),
                })
                .collect(),
            log: DirtyPages::default(),
            logging: false,
            paused: false,
            pauses: 0,
            resumes: 0,
            script: VecDeque::new(),
            ops_per_call: 1,
            state: b"device-state".to_vec(),
            state_delay: Duration::ZERO,
            pause_cost: Duration::ZERO,
            throttle_percent: 0,
            throttles: Vec::new(),
        }
    }

    /// Runs one guest op now.
    pub fn apply(&mut self, op: GuestOp) {
        match op {
            GuestOp::Write {
                region,
                offset_bytes,
                byte,
            } => {
                let memory = match region {
                    RegionId::BootRam(i) => &mut self.boot_ram[i as usize],
                    RegionId::Device(d) => {
                        let dev = &mut self.devices[d as usize];
                        if !dev.plugged.get(offset_bytes / dev.block_size_bytes) {
                            return;
                        }
                        &mut dev.memory
                    }
                };
                if let Some(b) = memory.get_mut(offset_bytes as usize) {
                    *b = byte;
                    if self.logging {
                        self.log.mark_range(region, offset_bytes, 1);
                    }
                }
            }
            GuestOp::Plug { device, block } => {
                self.devices[device as usize].plugged.set(block, true);
            }
            GuestOp::Unplug { device, block } => {
                let dev = &mut self.devices[device as usize];
                if dev.plugged.get(block) {
                    let start = (block * dev.block_size_bytes) as usize;
                    dev.memory[start..start + dev.block_size_bytes as usize].fill(0);
                    dev.plugged.set(block, false);
                    dev.discarded.push(block);
                }
            }
        }
    }

    fn run_script(&mut self) {
        if self.paused {
            return;
        }
        let ops = self.ops_per_call * usize::from(100 - self.throttle_percent.min(100)) / 100;
        for _ in 0..ops {
            match self.script.pop_front() {
                Some(op) => self.apply(op),
                None => return,
            }
        }
    }
}

impl SourceMemory for FakeSource {
    fn regions(&self) -> Vec<RegionInfo> {
        let boot = self.boot_ram.iter().enumerate().map(|(i, r)| RegionInfo {
            id: RegionId::BootRam(i as u32),
            size_bytes: r.len() as u64,
            block_size_bytes: None,
        });
        let devices = self.devices.iter().enumerate().map(|(i, d)| RegionInfo {
            id: RegionId::Device(i as u32),
            size_bytes: d.memory.len() as u64,
            block_size_bytes: Some(d.block_size_bytes),
        });
        boot.chain(devices).collect()
    }

    fn start_dirty_log(&mut self) -> Result<(), String> {
        self.log = DirtyPages::default();
        for r in self.regions() {
            self.log.add_region(r.id, r.size_bytes);
        }
        self.logging = true;
        Ok(())
    }

    fn collect_dirty(&mut self, dirty: &mut DirtyPages) -> Result<(), String> {
        self.run_script();
        for r in self.log.regions().collect::<Vec<_>>() {
            for offset in self.log.dirty_offsets(r) {
                dirty.mark_range(r, offset, 1);
            }
        }
        let regions: Vec<_> = self.regions();
        self.log = DirtyPages::default();
        for r in regions {
            self.log.add_region(r.id, r.size_bytes);
        }
        Ok(())
    }

    fn stop_dirty_log(&mut self) {
        self.logging = false;
    }

    fn device_blocks(&mut self, device: u32) -> Result<DeviceBlocks, String> {
        self.run_script();
        let dev = &mut self.devices[device as usize];
        Ok(DeviceBlocks {
            plugged: dev.plugged.clone(),
            discarded: std::mem::take(&mut dev.discarded)
                .into_iter()
                .map(|b| BlockRun {
                    first_block: b,
                    block_count: 1,
                })
                .collect(),
        })
    }

    fn read_pages(
        &mut self,
        region: RegionId,
        offsets: &[u64],
        out: &mut [u8],
    ) -> Result<Vec<bool>, String> {
        self.run_script();
        let page = PAGE_BYTES as usize;
        let mut read = Vec::new();
        for (i, &offset) in offsets.iter().enumerate() {
            let (memory, ok) = match region {
                RegionId::BootRam(r) => (&self.boot_ram[r as usize], true),
                RegionId::Device(d) => {
                    let dev = &self.devices[d as usize];
                    (&dev.memory, dev.plugged.get(offset / dev.block_size_bytes))
                }
            };
            if ok {
                out[i * page..(i + 1) * page]
                    .copy_from_slice(&memory[offset as usize..offset as usize + page]);
            }
            read.push(ok);
        }
        Ok(read)
    }

    fn pause(&mut self) -> Result<(), String> {
        self.paused = true;
        self.pauses += 1;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), String> {
        self.paused = false;
        self.resumes += 1;
        Ok(())
    }

    fn final_state(&mut self) -> Result<Vec<u8>, String> {
        std::thread::sleep(self.state_delay);
        Ok(self.state.clone())
    }

    fn preview_state(&mut self) -> Result<Vec<u8>, String> {
        std::thread::sleep(self.state_delay);
        Ok(self.state.clone())
    }

    fn pause_cost(&self) -> Duration {
        self.pause_cost
    }

    fn set_throttle(&mut self, percent: u8) -> Result<(), String> {
        self.throttle_percent = percent;
        self.throttles.push(percent);
        Ok(())
    }
}

/// A fake destination: plain byte arrays; counts every byte it was asked to write.
#[derive(Debug, Clone)]
pub struct FakeSink {
    /// Boot RAM.
    pub boot_ram: Vec<Vec<u8>>,
    /// Device memory.
    pub devices: Vec<Vec<u8>>,
    /// Block size per device.
    pub block_sizes: Vec<u64>,
    /// Pages written.
    pub pages_written: u64,
}

impl FakeSink {
    /// Zeroed memory shaped like `source`.
    pub fn like(source: &FakeSource) -> Self {
        FakeSink {
            boot_ram: source.boot_ram.iter().map(|r| vec![0; r.len()]).collect(),
            devices: source
                .devices
                .iter()
                .map(|d| vec![0; d.memory.len()])
                .collect(),
            block_sizes: source.devices.iter().map(|d| d.block_size_bytes).collect(),
            pages_written: 0,
        }
    }
}

impl DestinationMemory for FakeSink {
    fn write_page(
        &mut self,
        region: RegionId,
        offset_bytes: u64,
        data: Option<&[u8]>,
    ) -> Result<(), String> {
        let memory = match region {
            RegionId::BootRam(i) => &mut self.boot_ram[i as usize],
            RegionId::Device(d) => &mut self.devices[d as usize],
        };
        let page = &mut memory[offset_bytes as usize..(offset_bytes + PAGE_BYTES) as usize];
        match data {
            Some(bytes) => page.copy_from_slice(bytes),
            None => page.fill(0),
        }
        self.pages_written += 1;
        Ok(())
    }

    fn discard_blocks(
        &mut self,
        device: u32,
        first_block: u64,
        block_count: u64,
    ) -> Result<(), String> {
        let block = self.block_sizes[device as usize];
        let start = (first_block * block) as usize;
        self.devices[device as usize][start..start + (block_count * block) as usize].fill(0);
        Ok(())
    }
}
