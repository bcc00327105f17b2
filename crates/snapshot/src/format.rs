//! The state file: a fixed header, then the payload.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "HOTMEMSN"
//! 8       4     format version (u32 LE)
//! 12      2     length N of the hotmem version string (u16 LE, at most 64)
//! 14      N     hotmem version string (UTF-8) of the writer
//! 14+N    8     payload length P (u64 LE)
//! 22+N    4     CRC-32 (IEEE) of bytes 0..22+N followed by the payload
//! 26+N    P     payload: postcard encoding of the version's top-level type
//! ```
//!
//! The header layout is the same for every format version, so a reader can always name the
//! version and the writer of a file it cannot read. The reader checks, in this order: magic,
//! version, header, length (truncation, trailing bytes, size limit), checksum, payload; each
//! failure is its own [`Error`] variant. Version dispatch: [`decode_payload`] decodes each known
//! version into its own type and upgrades it to [`VmSnapshot`].

use crate::model::VmSnapshot;
use crate::v1::VmSnapshotV1;
use crate::{Error, Result};

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"HOTMEMSN";
/// The version this hotmem writes.
pub const CURRENT_FORMAT_VERSION: u32 = 2;
/// The oldest version this hotmem reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// Longest hotmem version string accepted.
pub const MAX_VERSION_STRING_BYTES: usize = 64;
/// Largest payload accepted (device state is kilobytes; the block bitmap of a 1 TiB region is
/// well under a megabyte).
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 20;

/// A decoded state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The file's format version (before upgrading).
    pub format_version: u32,
    /// hotmem version of the writer.
    pub hotmem_version: String,
    /// The state, upgraded to the current version.
    pub snapshot: VmSnapshot,
}

/// Encodes `snapshot` at the current format version.
pub fn encode(snapshot: &VmSnapshot, hotmem_version: &str) -> Result<Vec<u8>> {
    let payload = postcard::to_allocvec(snapshot).map_err(Error::Encode)?;
    frame(CURRENT_FORMAT_VERSION, hotmem_version, &payload)
}

/// Wraps an already encoded payload in a header (also used to write older-version fixtures).
pub fn frame(format_version: u32, hotmem_version: &str, payload: &[u8]) -> Result<Vec<u8>> {
    let version = hotmem_version.as_bytes();
    if version.len() > MAX_VERSION_STRING_BYTES {
        return Err(Error::BadHeader(format!(
            "hotmem version string of {} bytes is longer than {MAX_VERSION_STRING_BYTES}",
            version.len()
        )));
    }
    let mut out = Vec::with_capacity(26 + version.len() + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&format_version.to_le_bytes());
    out.extend_from_slice(&(version.len() as u16).to_le_bytes());
    out.extend_from_slice(version);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out);
    crc.update(payload);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Reads little-endian fields off the front of the file.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(len).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(Error::Truncated {
                needed_bytes: (self.pos + len) as u64,
                actual_bytes: self.bytes.len() as u64,
            });
        };
        let field = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(field)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

/// Decodes a whole state file. Nothing is trusted: see the module docs for the checks.
pub fn decode(bytes: &[u8]) -> Result<Decoded> {
    let head = &bytes[..bytes.len().min(MAGIC.len())];
    if head != &MAGIC[..head.len()] || head.is_empty() {
        return Err(Error::WrongMagic {
            found: head.to_vec(),
            expected: MAGIC,
        });
    }
    let mut cur = Cursor { bytes, pos: 0 };
    cur.take(MAGIC.len())?;
    let format_version = u32::from_le_bytes(cur.array()?);
    let version_len = usize::from(u16::from_le_bytes(cur.array()?));
    let writer = cur.take(version_len.min(MAX_VERSION_STRING_BYTES));
    if !(OLDEST_FORMAT_VERSION..=CURRENT_FORMAT_VERSION).contains(&format_version) {
        let writer = writer
            .ok()
            .filter(|_| version_len <= MAX_VERSION_STRING_BYTES)
            .and_then(|w| std::str::from_utf8(w).ok())
            .unwrap_or("unknown");
        return Err(Error::UnknownVersion {
            found: format_version,
            writer: writer.to_owned(),
            oldest: OLDEST_FORMAT_VERSION,
            newest: CURRENT_FORMAT_VERSION,
        });
    }
    if version_len > MAX_VERSION_STRING_BYTES {
        return Err(Error::BadHeader(format!(
            "hotmem version string length {version_len} exceeds {MAX_VERSION_STRING_BYTES}"
        )));
    }
    let hotmem_version = std::str::from_utf8(writer?)
        .map_err(|_| Error::BadHeader("hotmem version string is not UTF-8".into()))?
        .to_owned();
    let payload_len = u64::from_le_bytes(cur.array()?);
    let header_end = cur.pos;
    let stored = u32::from_le_bytes(cur.array()?);
    if payload_len > MAX_PAYLOAD_BYTES {
        return Err(Error::TooLarge {
            size_bytes: payload_len,
            limit_bytes: MAX_PAYLOAD_BYTES,
        });
    }
    let total = cur.pos as u64 + payload_len;
    let actual = bytes.len() as u64;
    if actual < total {
        return Err(Error::Truncated {
            needed_bytes: total,
            actual_bytes: actual,
        });
    }
    if actual > total {
        return Err(Error::TrailingBytes {
            extra_bytes: actual - total,
        });
    }
    let payload = &bytes[cur.pos..];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[..header_end]);
    crc.update(payload);
    let computed = crc.finalize();
    if computed != stored {
        return Err(Error::ChecksumMismatch { stored, computed });
    }
    Ok(Decoded {
        format_version,
        hotmem_version,
        snapshot: decode_payload(format_version, payload)?,
    })
}

/// Decodes the payload of `format_version` and upgrades it to the current [`VmSnapshot`].
pub fn decode_payload(format_version: u32, payload: &[u8]) -> Result<VmSnapshot> {
    let fail = |source| Error::Decode {
        version: format_version,
        source,
    };
    match format_version {
        1 => exact::<VmSnapshotV1>(payload)
            .map(VmSnapshot::from)
            .map_err(fail),
        2 => exact::<VmSnapshot>(payload).map_err(fail),
        other => Err(Error::UnknownVersion {
            found: other,
            writer: "unknown".into(),
            oldest: OLDEST_FORMAT_VERSION,
            newest: CURRENT_FORMAT_VERSION,
        }),
    }
}

/// Decodes `bytes` as one `T` with nothing left over.
fn exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> postcard::Result<T> {
    match postcard::take_from_bytes(bytes)? {
        (value, []) => Ok(value),
        _ => Err(postcard::Error::DeserializeBadEncoding),
    }
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
