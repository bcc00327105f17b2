//! A migration destination on arbitrary bytes: the source is an untrusted peer. The input is
//! the whole stream the source sends; the destination accepts the hello, checks it against
//! fixed [`LocalFacts`] and receives into [`CheckingSink`], which asserts what the receiver
//! promises: no page outside its region or misaligned, no page in a block the latest bitmap
//! says is unplugged, no discard past a device. Nothing may panic, and no length field may
//! make it allocate more than the bytes that really arrived (libFuzzer's `-rss_limit_mb` and
//! `-malloc_limit_mb` catch that).

use std::io::{Read, Write};

use migration::destination::{DestinationMemory, Incoming};
use migration::protocol::{
    DeviceShape, LocalFacts, Message, RamShape, read_message, write_message,
};
use migration::source::{Settings, migrate};
use migration::{Bitmap, Handshake, PAGE_BYTES, PROTOCOL_VERSION, RegionId};

/// Boot RAM of the fixed destination.
pub const BOOT_BYTES: u64 = 64 * PAGE_BYTES;
/// Its one memory device: block size and block count.
pub const BLOCK_BYTES: u64 = 4 * PAGE_BYTES;
/// Blocks of the device.
pub const BLOCKS: u64 = 32;
const FORMAT_VERSION: u32 = 2;

/// What the fixed destination is.
pub fn local_facts() -> LocalFacts {
    LocalFacts {
        protocol_version: PROTOCOL_VERSION,
        hotmem_version: "fuzz".into(),
        format_versions: 1..=FORMAT_VERSION,
        cpu_features: vec![migration::protocol::CpuFeatureWord {
            name: "leaf_0x1.0.ecx".into(),
            bits: 0xff,
        }],
        boot_ram: vec![RamShape {
            guest_addr: 0,
            size_bytes: BOOT_BYTES,
        }],
        devices: vec![DeviceShape {
            id: "mem0".into(),
            region_size_bytes: BLOCK_BYTES * BLOCKS,
            block_size_bytes: BLOCK_BYTES,
            guest_addr: 1 << 32,
            node: 0,
        }],
    }
}

/// The stream: reads the input, swallows what the destination writes.
struct Peer<'a> {
    input: &'a [u8],
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A destination that owns no memory: it checks every call against the shape and the plugged
/// blocks it was told about.
#[derive(Debug)]
pub struct CheckingSink {
    plugged: Bitmap,
    /// Pages written.
    pub pages: u64,
}

impl Default for CheckingSink {
    fn default() -> Self {
        CheckingSink {
            plugged: Bitmap::new(BLOCKS),
            pages: 0,
        }
    }
}

impl DestinationMemory for CheckingSink {
    fn write_page(
        &mut self,
        region: RegionId,
        offset_bytes: u64,
        data: Option<&[u8]>,
    ) -> Result<(), String> {
        assert!(offset_bytes.is_multiple_of(PAGE_BYTES), "{offset_bytes:#x}");
        if let Some(d) = data {
            assert_eq!(d.len() as u64, PAGE_BYTES);
        }
        match region {
            RegionId::BootRam(0) => assert!(offset_bytes + PAGE_BYTES <= BOOT_BYTES),
            RegionId::Device(0) => {
                assert!(offset_bytes + PAGE_BYTES <= BLOCK_BYTES * BLOCKS);
                let block = offset_bytes / BLOCK_BYTES;
                assert!(self.plugged.get(block), "page in unplugged block {block}");
            }
            other => panic!("page of {other:?}, which this destination does not have"),
        }
        self.pages += 1;
        Ok(())
    }

    fn discard_blocks(
        &mut self,
        device: u32,
        first_block: u64,
        block_count: u64,
    ) -> Result<(), String> {
        assert_eq!(device, 0);
        assert!(first_block.saturating_add(block_count) <= BLOCKS);
        Ok(())
    }

    fn apply_bitmap(&mut self, device: u32, plugged: &Bitmap) -> Result<(), String> {
        assert_eq!(device, 0);
        assert_eq!(plugged.len(), BLOCKS);
        self.plugged = plugged.clone();
        Ok(())
    }
}

/// One fuzz input: the whole stream from the source.
pub fn run_incoming(data: &[u8]) {
    let Ok(mut incoming) = Incoming::accept(Peer { input: data }) else {
        return;
    };
    if incoming.check(&local_facts()).is_err() {
        return;
    }
    let mut sink = CheckingSink::default();
    let Ok(received) = incoming.receive(&mut sink) else {
        return;
    };
    assert_eq!(received.bitmaps.len(), 1);
    assert_eq!(received.bitmaps[0], sink.plugged, "the last bitmap applied");
    assert_eq!(received.data_pages + received.zero_pages, sink.pages);
    let _ = incoming.running(vec![]);
}

/// The source's side of a migration, recorded: the hello every seed starts with.
pub fn hello() -> Handshake {
    let facts = local_facts();
    Handshake {
        protocol_version: PROTOCOL_VERSION,
        hotmem_version: facts.hotmem_version,
        format_version: FORMAT_VERSION,
        cpu_features: facts.cpu_features,
        boot_ram: facts.boot_ram,
        devices: facts.devices,
        vm_config: vec![1, 2, 3],
    }
}

/// A stream that records what the source writes and answers like a destination would
/// (accepted, pongs, running), without threads: the recording is the same every time.
#[derive(Default)]
struct Recorder {
    written: Vec<u8>,
    parsed: usize,
    replies: Vec<u8>,
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Read for Recorder {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.replies.is_empty() {
            let mut rest = &self.written[self.parsed..];
            while !rest.is_empty() {
                let (message, _) = read_message(&mut rest).expect("the source writes frames");
                let reply = match message {
                    Message::Hello(_) => Some(Message::Accepted),
                    Message::Ping { seq } => Some(Message::Pong {
                        seq,
                        restore_estimate_micros: 0,
                    }),
                    Message::Done => Some(Message::Running { steps: vec![] }),
                    _ => None,
                };
                if let Some(reply) = reply {
                    write_message(&mut self.replies, &reply, &[]).expect("encodes");
                }
            }
            self.parsed = self.written.len();
        }
        let n = buf.len().min(self.replies.len());
        buf[..n].copy_from_slice(&self.replies[..n]);
        self.replies.drain(..n);
        Ok(n)
    }
}

/// The bytes a real source sends for `vm` (the fake VM of the `migration` crate).
pub fn recorded_stream(mut vm: migration::fake::FakeSource) -> Vec<u8> {
    let mut stream = Recorder::default();
    let settings = Settings {
        max_downtime_ms: 60_000,
        batch_pages: 16,
        ..Settings::default()
    };
    migrate(&mut stream, hello(), &mut vm, &settings, &mut |_| {}).expect("the seed migrates");
    stream.written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_stream_is_received_whole() {
        let mut vm =
            migration::fake::FakeSource::new(BOOT_BYTES, &[(BLOCK_BYTES * BLOCKS, BLOCK_BYTES)]);
        vm.apply(migration::fake::GuestOp::Plug {
            device: 0,
            block: 3,
        });
        let bytes = recorded_stream(vm);
        let mut incoming = Incoming::accept(Peer { input: &bytes }).unwrap();
        incoming.check(&local_facts()).unwrap();
        let mut sink = CheckingSink::default();
        let received = incoming.receive(&mut sink).unwrap();
        assert!(received.bitmaps[0].get(3));
        assert_eq!(
            sink.pages,
            BOOT_BYTES / PAGE_BYTES + BLOCK_BYTES / PAGE_BYTES
        );
    }
}
