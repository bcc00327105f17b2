//! virtio-pci: config-space (direct and through the conf1 ports), BAR and notification accesses
//! against a [`VirtioPciDevice`] wrapping virtio-mem over fakes, on a [`PciBus`] with a host
//! bridge. Checks: no panic, the device invariants after every step, and FEATURES_OK never
//! sticks for features outside the offer.

use std::sync::{Arc, Mutex};

use pci::{
    BarIndex, CONFIG_ADDRESS_PORT, HostBridge, MmioAddress, MsiMessage, MsiSink, MsixVector,
    PciBdf, PciBus, PciDevice,
};
use virtio::status::FEATURES_OK;
use virtio::{ActivateError, FeaturesRefused, QueueOutcome, VirtioDevice, VirtioPciConfig};
use virtio_mem::VIRTIO_ID_MEM;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use crate::device::{Dev, Setup};
use crate::input::{Input, Output};

/// Where firmware put BAR 0.
pub const BAR_ADDR: u64 = 0xc000_0000;
/// Size of the guest memory holding the queue.
pub const MEM_BYTES: u64 = 0x1_0000;

/// virtio-mem over fakes, as a [`VirtioDevice`] (the VMM's adapter does the same over KVM).
#[derive(Debug)]
pub struct MemDevice {
    /// The state machine.
    pub core: Dev,
    queue_sizes: [u16; 1],
}

impl MemDevice {
    /// Wraps `core` with one request queue of `queue_size`.
    pub fn new(core: Dev, queue_size: u16) -> Self {
        MemDevice {
            core,
            queue_sizes: [queue_size],
        }
    }
}

impl VirtioDevice for MemDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_MEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.core.device_features()
    }

    fn ack_features(&mut self, features: u64) -> Result<(), FeaturesRefused> {
        self.core
            .ack_features(features)
            .map_err(|_| FeaturesRefused { features })
    }

    fn read_config(&self, offset_bytes: u64, data: &mut [u8]) {
        self.core.read_config(offset_bytes, data);
    }

    fn write_config(&mut self, _offset_bytes: u64, _data: &[u8]) {}

    fn activate(&mut self) -> Result<(), ActivateError> {
        Ok(())
    }

    fn reset(&mut self) {
        self.core.reset();
    }

    fn process_queue<M: GuestMemory>(
        &mut self,
        _queue_index: u16,
        queue: &mut virtio::Queue,
        memory: &M,
    ) -> QueueOutcome {
        let outcome = self.core.process_queue(queue, memory);
        QueueOutcome {
            used_buffers: outcome.used,
            needs_reset: outcome.needs_reset,
        }
    }
}

/// Drops every interrupt.
#[derive(Debug, Default)]
pub struct NullSink;

impl MsiSink for NullSink {
    fn send(&self, _vector: MsixVector, _message: MsiMessage) {}
}

/// The transport under test.
pub type PciMem = virtio::VirtioPciDevice<MemDevice, Arc<GuestMemoryMmap>>;

/// One guest access or host event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciOp {
    /// `out` to 0xCF8 + `port % 8`.
    PioWrite {
        /// Port offset.
        port: u8,
        /// Width code (see [`width`]).
        width: u8,
        /// Value.
        value: u32,
    },
    /// `in` from 0xCF8 + `port % 8`.
    PioRead {
        /// Port offset.
        port: u8,
        /// Width code.
        width: u8,
    },
    /// MMIO write at BAR_ADDR + offset (goes through the bus's BAR routing).
    MmioWrite {
        /// Offset from where BAR 0 started.
        offset: u32,
        /// Width code.
        width: u8,
        /// Value.
        value: u64,
    },
    /// MMIO read at BAR_ADDR + offset.
    MmioRead {
        /// Offset.
        offset: u32,
        /// Width code.
        width: u8,
    },
    /// Direct BAR write (as if BAR 0 were decoded wherever it is), any BAR index.
    BarWrite {
        /// BAR index (0..6).
        bar: u8,
        /// Offset in the BAR.
        offset: u16,
        /// Width code.
        width: u8,
        /// Value.
        value: u64,
    },
    /// Direct config-space write.
    ConfigWrite {
        /// Offset (0..256).
        offset: u8,
        /// Width code.
        width: u8,
        /// Value.
        value: u32,
    },
    /// The host resizes the device and signals a config change.
    Resize(u16),
    /// A notification for `queue`, as from an ioeventfd.
    Notify(u16),
    /// Write bytes into guest memory.
    Poke {
        /// Offset in guest memory.
        offset: u16,
        /// Bytes.
        bytes: [u8; 8],
    },
}

/// Access width for a code: 1, 2, 4, 8 mostly, sometimes 0, 3 or 16.
pub fn width(code: u8) -> usize {
    [1, 2, 4, 8, 1, 2, 4, 0, 3, 16][usize::from(code) % 10]
}

impl PciOp {
    /// Decodes one step.
    pub fn decode(input: &mut Input<'_>) -> Option<PciOp> {
        Some(match input.u8()? % 9 {
            0 => PciOp::PioWrite {
                port: input.u8()?,
                width: input.u8()?,
                value: input.u32()?,
            },
            1 => PciOp::PioRead {
                port: input.u8()?,
                width: input.u8()?,
            },
            2 => PciOp::MmioWrite {
                offset: input.u32()?,
                width: input.u8()?,
                value: input.u64()?,
            },
            3 => PciOp::MmioRead {
                offset: input.u32()?,
                width: input.u8()?,
            },
            4 => PciOp::BarWrite {
                bar: input.u8()?,
                offset: input.u16()?,
                width: input.u8()?,
                value: input.u64()?,
            },
            5 => PciOp::ConfigWrite {
                offset: input.u8()?,
                width: input.u8()?,
                value: input.u32()?,
            },
            6 => PciOp::Resize(input.u16()?),
            7 => PciOp::Notify(input.u16()?),
            _ => PciOp::Poke {
                offset: input.u16()?,
                bytes: input.array()?,
            },
        })
    }

    /// Encodes the step so that [`PciOp::decode`] reads it back.
    pub fn encode(&self, out: &mut Output) {
        match *self {
            PciOp::PioWrite { port, width, value } => out.u8(0).u8(port).u8(width).u32(value),
            PciOp::PioRead { port, width } => out.u8(1).u8(port).u8(width),
            PciOp::MmioWrite {
                offset,
                width,
                value,
            } => out.u8(2).u32(offset).u8(width).u64(value),
            PciOp::MmioRead { offset, width } => out.u8(3).u32(offset).u8(width),
            PciOp::BarWrite {
                bar,
                offset,
                width,
                value,
            } => out.u8(4).u8(bar).u16(offset).u8(width).u64(value),
            PciOp::ConfigWrite {
                offset,
                width,
                value,
            } => out.u8(5).u8(offset).u8(width).u32(value),
            PciOp::Resize(blocks) => out.u8(6).u16(blocks),
            PciOp::Notify(queue) => out.u8(7).u16(queue),
            PciOp::Poke { offset, bytes } => out.u8(8).u16(offset).raw(&bytes),
        };
    }
}

/// The bus, the device on it and the guest memory.
pub struct PciHarness {
    /// Conf1 bus with the host bridge at 00:00.0 and the device at 00:01.0.
    pub bus: PciBus,
    /// The device (shared with the bus).
    pub dev: Arc<Mutex<PciMem>>,
    /// Guest memory.
    pub mem: Arc<GuestMemoryMmap>,
    block_size_bytes: u64,
}

fn lock(dev: &Mutex<PciMem>) -> std::sync::MutexGuard<'_, PciMem> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

fn value_bytes(value: u64, len: usize) -> Vec<u8> {
    let mut bytes = value.to_le_bytes().to_vec();
    bytes.resize(len, 0);
    bytes
}

impl PciHarness {
    /// Builds the bus and device; `None` if the setup is refused.
    pub fn new(setup: Setup, queue_size: u16) -> Option<PciHarness> {
        let core = setup.build()?;
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_BYTES as usize)])
                .expect("small anonymous mapping"),
        );
        let config = VirtioPciConfig {
            bar_address: Some(MmioAddress(BAR_ADDR)),
            ..VirtioPciConfig::default()
        };
        let dev = virtio::VirtioPciDevice::new(
            MemDevice::new(core, queue_size),
            mem.clone(),
            Arc::new(NullSink),
            config,
        )
        .ok()?;
        let dev = Arc::new(Mutex::new(dev));
        let mut bus = PciBus::new();
        let bridge = PciBdf::new(0, 0, 0).expect("valid");
        bus.add_device(bridge, Arc::new(Mutex::new(HostBridge::new())))
            .expect("empty bus");
        let slot = PciBdf::new(0, 1, 0).expect("valid");
        bus.add_device(slot, dev.clone()).expect("free slot");
        Some(PciHarness {
            bus,
            dev,
            mem,
            block_size_bytes: setup.block_size_bytes(),
        })
    }

    /// Applies one step and checks the device.
    pub fn apply(&mut self, op: PciOp) {
        match op {
            PciOp::PioWrite {
                port,
                width: w,
                value,
            } => {
                let _ = self.bus.pio_write(
                    CONFIG_ADDRESS_PORT + u16::from(port % 8),
                    &value_bytes(u64::from(value), width(w)),
                );
            }
            PciOp::PioRead { port, width: w } => {
                let mut data = vec![0u8; width(w)];
                self.bus
                    .pio_read(CONFIG_ADDRESS_PORT + u16::from(port % 8), &mut data);
            }
            PciOp::MmioWrite {
                offset,
                width: w,
                value,
            } => {
                let address = MmioAddress(BAR_ADDR + u64::from(offset));
                let _ = self.bus.mmio_write(address, &value_bytes(value, width(w)));
            }
            PciOp::MmioRead { offset, width: w } => {
                let mut data = vec![0u8; width(w)];
                let _ = self
                    .bus
                    .mmio_read(MmioAddress(BAR_ADDR + u64::from(offset)), &mut data);
            }
            PciOp::BarWrite {
                bar,
                offset,
                width: w,
                value,
            } => {
                if let Ok(bar) = BarIndex::new(bar % 6) {
                    let _ = lock(&self.dev).bar_write(
                        bar,
                        u64::from(offset),
                        &value_bytes(value, width(w)),
                    );
                }
            }
            PciOp::ConfigWrite {
                offset,
                width: w,
                value,
            } => {
                let _ = lock(&self.dev).config_write(
                    usize::from(offset),
                    &value_bytes(u64::from(value), width(w)),
                );
            }
            PciOp::Resize(blocks) => {
                let mut dev = lock(&self.dev);
                let bytes = u64::from(blocks) * self.block_size_bytes;
                if dev.device_mut().core.set_requested_size(bytes).is_ok() {
                    dev.config_changed();
                }
            }
            PciOp::Notify(queue) => lock(&self.dev).notify_queue(queue),
            PciOp::Poke { offset, bytes } => {
                let start = u64::from(offset).min(MEM_BYTES - 8);
                self.mem
                    .write_slice(&bytes, GuestAddress(start))
                    .expect("clamped");
            }
        }
        self.check(&format!("after {op:?}"));
    }

    fn check(&self, when: &str) {
        let dev = lock(&self.dev);
        if let Err(problems) = dev.device().core.check_invariants() {
            panic!("{when}: invariants broken: {problems}");
        }
        if dev.device_status() & FEATURES_OK != 0 {
            let extra = dev.driver_features() & !dev.offered_features();
            assert_eq!(extra, 0, "{when}: FEATURES_OK with unoffered features");
        }
    }
}

/// The `virtio_pci` target: a setup, a queue size, then accesses.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(setup) = Setup::decode(&mut input) else {
        return;
    };
    let Some(shape) = input.u8() else {
        return;
    };
    let Some(mut harness) = PciHarness::new(setup, 1 << (shape % 9)) else {
        return;
    };
    while let Some(op) = PciOp::decode(&mut input) {
        harness.apply(op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf1_reads_the_virtio_mem_ids_at_00_01_0() {
        let setup = Setup {
            policy: 1,
            prealloc: false,
            block_size: 0,
            region_blocks: 512,
            requested_blocks: 0,
            slot_limit: 8,
        };
        let mut h = PciHarness::new(setup, 128).unwrap();
        h.apply(PciOp::PioWrite {
            port: 0,
            width: 2,
            value: 0x8000_0800,
        });
        let mut ids = [0u8; 4];
        h.bus.pio_read(CONFIG_ADDRESS_PORT + 4, &mut ids);
        assert_eq!(u32::from_le_bytes(ids), 0x1058_1af4);
    }

    #[test]
    fn steps_round_trip_through_their_encoding() {
        let ops = [
            PciOp::PioWrite {
                port: 1,
                width: 2,
                value: 3,
            },
            PciOp::PioRead { port: 4, width: 5 },
            PciOp::MmioWrite {
                offset: 6,
                width: 7,
                value: 8,
            },
            PciOp::MmioRead {
                offset: 9,
                width: 1,
            },
            PciOp::BarWrite {
                bar: 2,
                offset: 3,
                width: 4,
                value: 5,
            },
            PciOp::ConfigWrite {
                offset: 6,
                width: 7,
                value: 8,
            },
            PciOp::Resize(9),
            PciOp::Notify(1),
            PciOp::Poke {
                offset: 2,
                bytes: [3; 8],
            },
        ];
        let mut out = Output::default();
        for op in &ops {
            op.encode(&mut out);
        }
        let mut input = Input::new(&out.bytes);
        for op in ops {
            assert_eq!(PciOp::decode(&mut input), Some(op));
        }
    }
}
