//! The receiver on the destination: checks the handshake, then applies bitmaps, discards and
//! pages to a [`DestinationMemory`] until the device state and `done` arrive. It refuses a
//! page of a block the latest bitmap says is unplugged, so unplugged blocks are never written.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::protocol::{
    Handshake, LocalFacts, Message, RegionId, Step, name, read_message, write_message,
};
use crate::tracker::Bitmap;
use crate::{Error, PAGE_BYTES, Result};

/// Where received memory goes.
pub trait DestinationMemory {
    /// Writes one page (`None`: an all-zero page).
    fn write_page(
        &mut self,
        region: RegionId,
        offset_bytes: u64,
        data: Option<&[u8]>,
    ) -> std::result::Result<(), String>;
    /// Discards (zeroes) blocks of a device.
    fn discard_blocks(
        &mut self,
        device: u32,
        first_block: u64,
        block_count: u64,
    ) -> std::result::Result<(), String>;
    /// A device's new bitmap, after the discards it implies (e.g. to map slots).
    fn apply_bitmap(&mut self, device: u32, plugged: &Bitmap) -> std::result::Result<(), String> {
        let _ = (device, plugged);
        Ok(())
    }
    /// This side's estimate of its switchover work (decode the state, restore the machine and
    /// devices, start the vCPUs), reported to the source in every pong; zero if unknown.
    fn restore_estimate(&self) -> Duration {
        Duration::ZERO
    }
}

/// What arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The device state (a snapshot state file).
    pub device_state: Vec<u8>,
    /// The final bitmap of each device.
    pub bitmaps: Vec<Bitmap>,
    /// Bytes read.
    pub received_bytes: u64,
    /// Pages written with data.
    pub data_pages: u64,
    /// Zero pages.
    pub zero_pages: u64,
    /// When `done` arrived (the destination's part of the switchover starts).
    pub done_at: Option<Instant>,
}

/// One incoming migration, after the source's hello.
pub struct Incoming<S> {
    stream: S,
    handshake: Handshake,
}

impl<S: Read + Write> Incoming<S> {
    /// Reads the source's handshake.
    pub fn accept(mut stream: S) -> Result<Self> {
        match read_message(&mut stream)?.0 {
            Message::Hello(handshake) => Ok(Incoming { stream, handshake }),
            other => Err(Error::Protocol(format!(
                "expected hello, got {}",
                name(&other)
            ))),
        }
    }

    /// The source's handshake.
    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    /// Checks the handshake against this side; accepts, or refuses naming the field.
    pub fn check(&mut self, local: &LocalFacts) -> Result<()> {
        match self.handshake.check(local) {
            Ok(()) => {
                write_message(&mut self.stream, &Message::Accepted, &[])?;
                Ok(())
            }
            Err(refusal) => {
                write_message(&mut self.stream, &Message::Refused(refusal.clone()), &[])?;
                Err(Error::Refused(refusal))
            }
        }
    }

    /// Refuses for a reason found outside the handshake check (e.g. building the VM failed).
    pub fn refuse(&mut self, refusal: crate::Refusal) -> Error {
        let _ = write_message(&mut self.stream, &Message::Refused(refusal.clone()), &[]);
        Error::Refused(refusal)
    }

    /// Receives memory into `sink` until `done`.
    pub fn receive(&mut self, sink: &mut dyn DestinationMemory) -> Result<Received> {
        let block_sizes: Vec<u64> = self
            .handshake
            .devices
            .iter()
            .map(|d| d.block_size_bytes)
            .collect();
        let mut bitmaps: Vec<Bitmap> = self
            .handshake
            .devices
            .iter()
            .map(|d| Bitmap::new(d.region_size_bytes / d.block_size_bytes.max(1)))
            .collect();
        let sizes: Vec<u64> = self
            .handshake
            .boot_ram
            .iter()
            .map(|r| r.size_bytes)
            .collect();
        let region_size = |region: RegionId| match region {
            RegionId::BootRam(i) => sizes.get(i as usize).copied(),
            RegionId::Device(i) => self
                .handshake
                .devices
                .get(i as usize)
                .map(|d| d.region_size_bytes),
        };
        let mut received = Received {
            device_state: Vec::new(),
            bitmaps: Vec::new(),
            received_bytes: 0,
            data_pages: 0,
            zero_pages: 0,
            done_at: None,
        };
        let mut state = None;
        let vm = Error::Vm;
        loop {
            let (message, body) = read_message(&mut self.stream)?;
            received.received_bytes += body.len() as u64 + 16;
            match message {
                Message::Bitmap {
                    device,
                    blocks,
                    words,
                } => {
                    let old = bitmaps.get_mut(device as usize).ok_or_else(|| {
                        Error::Protocol(format!("bitmap of unknown device {device}"))
                    })?;
                    if blocks != old.len() {
                        return Err(Error::Protocol(format!(
                            "bitmap of device {device} has {blocks} blocks, expected {}",
                            old.len()
                        )));
                    }
                    let new = Bitmap::from_words(blocks, words);
                    for block in old.ones().filter(|&b| !new.get(b)).collect::<Vec<_>>() {
                        sink.discard_blocks(device, block, 1).map_err(vm)?;
                    }
                    *old = new;
                    sink.apply_bitmap(device, old).map_err(vm)?;
                }
                Message::Discard { device, runs } => {
                    let blocks =
                        bitmaps
                            .get(device as usize)
                            .map(Bitmap::len)
                            .ok_or_else(|| {
                                Error::Protocol(format!("discard on unknown device {device}"))
                            })?;
                    for run in runs {
                        if run.first_block.saturating_add(run.block_count) > blocks {
                            return Err(Error::Protocol(format!(
                                "discard of blocks {}+{} past device {device}'s {blocks}",
                                run.first_block, run.block_count
                            )));
                        }
                        sink.discard_blocks(device, run.first_block, run.block_count)
                            .map_err(vm)?;
                    }
                }
                Message::Pages { region, pages } => {
                    let size = region_size(region).ok_or_else(|| {
                        Error::Protocol(format!("pages of unknown region {region:?}"))
                    })?;
                    let mut data = body.chunks(PAGE_BYTES as usize);
                    for page in pages {
                        if !page.offset_bytes.is_multiple_of(PAGE_BYTES)
                            || page.offset_bytes.saturating_add(PAGE_BYTES) > size
                        {
                            return Err(Error::Protocol(format!(
                                "page at {:#x} outside {region:?} ({size:#x} bytes)",
                                page.offset_bytes
                            )));
                        }
                        if let RegionId::Device(d) = region {
                            let block = page.offset_bytes / block_sizes[d as usize];
                            if !bitmaps[d as usize].get(block) {
                                return Err(Error::Protocol(format!(
                                    "page at {:#x} of device {d} is in unplugged block {block}",
                                    page.offset_bytes
                                )));
                            }
                        }
                        let bytes = if page.zero {
                            received.zero_pages += 1;
                            None
                        } else {
                            received.data_pages += 1;
                            Some(
                                data.next()
                                    .filter(|d| d.len() == PAGE_BYTES as usize)
                                    .ok_or_else(|| {
                                        Error::Protocol("page batch body too short".into())
                                    })?,
                            )
                        };
                        sink.write_page(region, page.offset_bytes, bytes)
                            .map_err(vm)?;
                    }
                    if data.next().is_some() {
                        return Err(Error::Protocol("page batch body too long".into()));
                    }
                }
                Message::DeviceState => state = Some(body),
                Message::Ping { seq } => {
                    let estimate = sink.restore_estimate();
                    write_message(
                        &mut self.stream,
                        &Message::Pong {
                            seq,
                            restore_estimate_micros: estimate.as_micros() as u64,
                        },
                        &[],
                    )?;
                }
                Message::Done => {
                    received.done_at = Some(Instant::now());
                    received.device_state = state
                        .ok_or_else(|| Error::Protocol("done before the device state".into()))?;
                    received.bitmaps = bitmaps;
                    return Ok(received);
                }
                Message::Abort { reason } => return Err(Error::Aborted(reason)),
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected {} during memory transfer",
                        name(&other)
                    )));
                }
            }
        }
    }

    /// Tells the source the VM runs here, with this side's switchover steps.
    pub fn running(&mut self, steps: Vec<Step>) -> Result<()> {
        write_message(&mut self.stream, &Message::Running { steps }, &[])?;
        Ok(())
    }

    /// Tells the source the VM could not be started here.
    pub fn failed(&mut self, reason: &str) -> Result<()> {
        write_message(
            &mut self.stream,
            &Message::Failed {
                reason: reason.to_owned(),
            },
            &[],
        )?;
        Ok(())
    }
}
