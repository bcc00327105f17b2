//! The wire protocol: a stream of frames, each `MAGIC`, header length (u32 LE), body length
//! (u64 LE), a postcard-encoded [`Message`] header, then the body (raw page bytes, or the
//! device state in the snapshot state-file format). Both sides check the protocol version in
//! the handshake; the destination then checks everything else (see [`Handshake::check`]).

use std::io::{Read, Write};
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// First bytes of every frame.
pub const MAGIC: [u8; 4] = *b"HMIG";
/// Version of this protocol (2: ping/pong for the switchover estimate, the destination's
/// switchover steps in `running`).
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest header accepted.
pub const MAX_HEADER_BYTES: u32 = 16 << 20;
/// Largest body accepted (a page batch or the device state).
pub const MAX_BODY_BYTES: u64 = 256 << 20;

/// A boot RAM range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamShape {
    /// Guest physical start.
    pub guest_addr: u64,
    /// Length.
    pub size_bytes: u64,
}

/// What source and destination must agree on for each memory device (QEMU's sanity checks).
/// Slot policy and slot budget may differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceShape {
    /// Device id.
    pub id: String,
    /// Region size.
    pub region_size_bytes: u64,
    /// Block size.
    pub block_size_bytes: u64,
    /// Guest physical address of the region.
    pub guest_addr: u64,
    /// NUMA node (virtio-mem `node_id`).
    pub node: u32,
}

/// One CPUID register the guest may rely on: the destination must offer every bit the
/// source offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuFeatureWord {
    /// e.g. `leaf_0x7.ebx`.
    pub name: String,
    /// Feature bits.
    pub bits: u32,
}

/// The source's first message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    /// [`PROTOCOL_VERSION`] of the source.
    pub protocol_version: u32,
    /// hotmem version of the source.
    pub hotmem_version: String,
    /// Snapshot state-file format version the device state will be written in.
    pub format_version: u32,
    /// CPU features the source's guest sees.
    pub cpu_features: Vec<CpuFeatureWord>,
    /// Boot RAM, in guest address order.
    pub boot_ram: Vec<RamShape>,
    /// Memory devices, in configuration order.
    pub devices: Vec<DeviceShape>,
    /// The VM configuration (a snapshot `vm-config` component, opaque here).
    pub vm_config: Vec<u8>,
}

/// What the destination knows about itself, to check a [`Handshake`] against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFacts {
    /// This side's protocol version.
    pub protocol_version: u32,
    /// This side's hotmem version.
    pub hotmem_version: String,
    /// State-file format versions this side reads.
    pub format_versions: RangeInclusive<u32>,
    /// CPU features this side can give the guest.
    pub cpu_features: Vec<CpuFeatureWord>,
    /// Boot RAM this side built.
    pub boot_ram: Vec<RamShape>,
    /// Memory devices this side built.
    pub devices: Vec<DeviceShape>,
}

/// Why a destination refused: the field that differs and both values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The mismatching field, e.g. `devices[mem0].block_size_bytes`.
    pub field: String,
    /// What the source sent.
    pub source: String,
    /// What the destination has.
    pub destination: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} differs: source {}, destination {}",
            self.field, self.source, self.destination
        )
    }
}

fn refuse(field: impl Into<String>, source: impl ToString, destination: impl ToString) -> Refusal {
    Refusal {
        field: field.into(),
        source: source.to_string(),
        destination: destination.to_string(),
    }
}

fn same<T: PartialEq + std::fmt::Debug>(
    field: &str,
    source: &T,
    here: &T,
) -> std::result::Result<(), Refusal> {
    if source == here {
        Ok(())
    } else {
        Err(refuse(field, format!("{source:?}"), format!("{here:?}")))
    }
}

impl Handshake {
    /// Checks the source's handshake against this destination; the first mismatch is named.
    pub fn check(&self, local: &LocalFacts) -> std::result::Result<(), Refusal> {
        same(
            "protocol_version",
            &self.protocol_version,
            &local.protocol_version,
        )?;
        same(
            "hotmem_version",
            &self.hotmem_version,
            &local.hotmem_version,
        )?;
        if !local.format_versions.contains(&self.format_version) {
            return Err(refuse(
                "format_version",
                self.format_version,
                format!("{:?}", local.format_versions),
            ));
        }
        for word in &self.cpu_features {
            let here = local
                .cpu_features
                .iter()
                .find(|w| w.name == word.name)
                .map_or(0, |w| w.bits);
            if word.bits & !here != 0 {
                return Err(refuse(
                    format!("cpu_features.{}", word.name),
                    format!("{:#010x}", word.bits),
                    format!("{here:#010x} (missing {:#010x})", word.bits & !here),
                ));
            }
        }
        same("boot_ram.len", &self.boot_ram.len(), &local.boot_ram.len())?;
        for (i, (s, d)) in self.boot_ram.iter().zip(&local.boot_ram).enumerate() {
            same(
                &format!("boot_ram[{i}].guest_addr"),
                &s.guest_addr,
                &d.guest_addr,
            )?;
            same(
                &format!("boot_ram[{i}].size_bytes"),
                &s.size_bytes,
                &d.size_bytes,
            )?;
        }
        let ids = |d: &[DeviceShape]| d.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
        same("devices", &ids(&self.devices), &ids(&local.devices))?;
        for (s, d) in self.devices.iter().zip(&local.devices) {
            let field = |name: &str| format!("devices[{}].{name}", s.id);
            same(
                &field("region_size_bytes"),
                &s.region_size_bytes,
                &d.region_size_bytes,
            )?;
            same(
                &field("block_size_bytes"),
                &s.block_size_bytes,
                &d.block_size_bytes,
            )?;
            same(&field("guest_addr"), &s.guest_addr, &d.guest_addr)?;
            same(&field("node"), &s.node, &d.node)?;
        }
        Ok(())
    }
}

/// A memory region on the wire: boot RAM range `n` or memory device `n` (handshake order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RegionId {
    /// Boot RAM range.
    BootRam(u32),
    /// Memory device region.
    Device(u32),
}

/// One page of a [`Message::Pages`] batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageEntry {
    /// Offset of the page in its region.
    pub offset_bytes: u64,
    /// `true`: the page is all zeros and has no bytes in the body.
    pub zero: bool,
}

/// A run of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRun {
    /// First block.
    pub first_block: u64,
    /// Blocks in the run.
    pub block_count: u64,
}

/// One timed step of the switchover (e.g. `pause`, `state_build`, `machine_restore`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// What was done.
    pub name: String,
    /// How long it took, in microseconds.
    pub micros: u64,
}

/// Migration messages. Source → destination unless noted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First message: who the source is and what the VM looks like.
    Hello(Handshake),
    /// Destination → source: the handshake is accepted; memory may follow.
    Accepted,
    /// Destination → source: the handshake is refused.
    Refused(Refusal),
    /// A device's plugged-block bitmap (64 blocks a word, bit n of word n/64 = block n); the
    /// destination discards blocks it had plugged that are now unplugged.
    Bitmap {
        /// Device index.
        device: u32,
        /// Block count.
        blocks: u64,
        /// Bitmap words.
        words: Vec<u64>,
    },
    /// Blocks unplugged (and so zeroed) on the source since the last bitmap, even if plugged
    /// again since: the destination discards them.
    Discard {
        /// Device index.
        device: u32,
        /// Runs of blocks.
        runs: Vec<BlockRun>,
    },
    /// Pages of one region; the body holds the bytes of the non-zero pages, in order.
    Pages {
        /// Region.
        region: RegionId,
        /// The pages.
        pages: Vec<PageEntry>,
    },
    /// The final device state: the body is a snapshot state file (format, version checks and
    /// CRC of the `snapshot` crate).
    DeviceState,
    /// Everything is sent; the destination starts the VM.
    Done,
    /// The source abandons the migration.
    Abort {
        /// Why.
        reason: String,
    },
    /// Asks the destination for a [`Message::Pong`] (between rounds): the switchover estimate
    /// includes the measured round trip (which also drains what is still queued).
    Ping {
        /// Echoed back.
        seq: u32,
    },
    /// Destination → source: answer to [`Message::Ping`].
    Pong {
        /// The ping's.
        seq: u32,
        /// The destination's own estimate of its switchover work (decode the state, restore
        /// the machine and devices, start), microseconds; 0 if it has none.
        restore_estimate_micros: u64,
    },
    /// Destination → source: the VM runs on the destination.
    Running {
        /// The destination's switchover steps, from `done` to this message.
        steps: Vec<Step>,
    },
    /// Destination → source: the destination could not start the VM.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Writes one frame.
pub fn write_message(w: &mut dyn Write, message: &Message, body: &[u8]) -> Result<u64> {
    let header = postcard::to_allocvec(message)
        .map_err(|e| Error::Protocol(format!("encoding {}: {e}", name(message))))?;
    let mut head = Vec::with_capacity(16 + header.len());
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&(header.len() as u32).to_le_bytes());
    head.extend_from_slice(&(body.len() as u64).to_le_bytes());
    head.extend_from_slice(&header);
    w.write_all(&head)?;
    w.write_all(body)?;
    w.flush()?;
    Ok((head.len() + body.len()) as u64)
}

/// Reads one frame: the message and its body.
pub fn read_message(r: &mut dyn Read) -> Result<(Message, Vec<u8>)> {
    let mut fixed = [0u8; 16];
    r.read_exact(&mut fixed)?;
    if fixed[..4] != MAGIC {
        return Err(Error::Protocol(format!(
            "frame starts with {:02x?}, not {:02x?} (not a hotmem migration stream?)",
            &fixed[..4],
            MAGIC
        )));
    }
    let header_len = u32::from_le_bytes(fixed[4..8].try_into().expect("4 bytes"));
    let body_len = u64::from_le_bytes(fixed[8..16].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER_BYTES || body_len > MAX_BODY_BYTES {
        return Err(Error::Protocol(format!(
            "frame of {header_len} + {body_len} bytes exceeds {MAX_HEADER_BYTES} + {MAX_BODY_BYTES}"
        )));
    }
    let header = read_exactly(r, u64::from(header_len))?;
    let message: Message = postcard::from_bytes(&header)
        .map_err(|e| Error::Protocol(format!("undecodable message: {e}")))?;
    let body = read_exactly(r, body_len)?;
    Ok((message, body))
}

/// Reads `len` bytes, growing the buffer as they arrive: a length field alone (a peer that
/// announces 256 MiB and sends 3 bytes) allocates nothing big.
fn read_exactly(r: &mut dyn Read, len: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(len.min(PREALLOCATE_BYTES) as usize);
    r.take(len).read_to_end(&mut bytes)?;
    if (bytes.len() as u64) < len {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("frame cut short: {} of {len} bytes", bytes.len()),
        )));
    }
    Ok(bytes)
}

/// Buffer reserved up front for a frame part (a page batch of 256 pages fits).
const PREALLOCATE_BYTES: u64 = 1 << 20;

/// The message's name, for errors.
pub fn name(message: &Message) -> &'static str {
    match message {
        Message::Hello(_) => "hello",
        Message::Accepted => "accepted",
        Message::Refused(_) => "refused",
        Message::Bitmap { .. } => "bitmap",
        Message::Discard { .. } => "discard",
        Message::Pages { .. } => "pages",
        Message::DeviceState => "device-state",
        Message::Done => "done",
        Message::Abort { .. } => "abort",
        Message::Ping { .. } => "ping",
        Message::Pong { .. } => "pong",
        Message::Running { .. } => "running",
        Message::Failed { .. } => "failed",
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
