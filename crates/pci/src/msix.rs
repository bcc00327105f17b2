//! MSI-X emulation: the capability registers, the vector table and the pending-bit array.
//!
//! The table and PBA live in a memory BAR of the owning device; the device forwards BAR
//! accesses at [`MsixLayout::table_offset_bytes`] and [`MsixLayout::pba_offset_bytes`] here.

use std::sync::Arc;

use crate::{BarIndex, MsiMessage, MsiSink, MsixVector, PciError};

/// PCI capability id of MSI-X.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// Size in bytes of one MSI-X table entry.
pub const MSIX_ENTRY_SIZE_BYTES: u64 = 16;
/// Largest table the capability can describe.
pub const MSIX_MAX_VECTORS: usize = 2048;
/// Message Control bit 15: MSI-X enable.
pub const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
/// Message Control bit 14: function mask.
pub const MSIX_CONTROL_FUNCTION_MASK: u16 = 1 << 14;

const VECTOR_CONTROL_MASKED: u32 = 1;

/// Where the table and PBA live, and how many vectors there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    /// Number of vectors (1..=2048).
    pub vector_count: u16,
    /// BAR holding both the table and the PBA.
    pub bar: BarIndex,
    /// Table offset in the BAR (8-byte aligned).
    pub table_offset_bytes: u32,
    /// PBA offset in the BAR (8-byte aligned).
    pub pba_offset_bytes: u32,
}

impl MsixLayout {
    /// Table length in bytes.
    pub fn table_len_bytes(&self) -> u64 {
        u64::from(self.vector_count) * MSIX_ENTRY_SIZE_BYTES
    }

    /// PBA length in bytes (whole qwords).
    pub fn pba_len_bytes(&self) -> u64 {
        u64::from(self.vector_count).div_ceil(64) * 8
    }

    /// The capability body after the id/next bytes: Message Control (table size - 1, enable and
    /// function mask clear), Table Offset/BIR, PBA Offset/BIR.
    pub fn capability_body(&self) -> [u8; 10] {
        let control = self.vector_count.saturating_sub(1) & 0x7ff;
        let table = (self.table_offset_bytes & !7) | u32::from(self.bar.get());
        let pba = (self.pba_offset_bytes & !7) | u32::from(self.bar.get());
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&control.to_le_bytes());
        body[2..6].copy_from_slice(&table.to_le_bytes());
        body[6..10].copy_from_slice(&pba.to_le_bytes());
        body
    }

    /// Which bytes of [`Self::capability_body`] the guest may write (enable + function mask).
    pub fn capability_writable_mask() -> [u8; 10] {
        let mut mask = [0u8; 10];
        mask[1] = 0xc0;
        mask
    }
}

/// Result of [`Msix::trigger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixDelivery {
    /// The message was handed to the sink.
    Sent,
    /// The vector (or the function) is masked: its pending bit is now set.
    Pending,
    /// MSI-X is disabled in the capability: nothing was sent or latched.
    Disabled,
    /// The vector is beyond the table.
    InvalidVector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

impl Entry {
    const RESET: Self = Self {
        address: 0,
        data: 0,
        control: VECTOR_CONTROL_MASKED,
    };

    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.address.to_le_bytes());
        b[8..12].copy_from_slice(&self.data.to_le_bytes());
        b[12..16].copy_from_slice(&self.control.to_le_bytes());
        b
    }

    fn from_bytes(b: [u8; 16]) -> Self {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            address: u64::from(word(0)) | (u64::from(word(4)) << 32),
            data: word(8),
            control: word(12) & VECTOR_CONTROL_MASKED,
        }
    }

    fn message(self) -> MsiMessage {
        MsiMessage {
            address: self.address,
            data: self.data,
        }
    }

    fn masked(self) -> bool {
        self.control & VECTOR_CONTROL_MASKED != 0
    }
}

/// MSI-X state of one PCI function.
pub struct Msix {
    layout: MsixLayout,
    entries: Vec<Entry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    sink: Arc<dyn MsiSink>,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix")
            .field("layout", &self.layout)
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl Msix {
    /// Creates the table with every vector masked, MSI-X disabled.
    pub fn new(layout: MsixLayout, sink: Arc<dyn MsiSink>) -> Result<Self, PciError> {
        let count = usize::from(layout.vector_count);
        if count == 0 || count > MSIX_MAX_VECTORS {
            return Err(PciError::InvalidMsixVectorCount(count));
        }
        Ok(Self {
            layout,
            entries: vec![Entry::RESET; count],
            pending: vec![0; count.div_ceil(64)],
            enabled: false,
            function_masked: false,
            sink,
        })
    }

    /// Table/PBA placement.
    pub fn layout(&self) -> MsixLayout {
        self.layout
    }

    /// Number of vectors.
    pub fn vector_count(&self) -> u16 {
        self.layout.vector_count
    }

    /// Whether the guest set the MSI-X enable bit.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the guest set the function mask bit.
    pub fn is_function_masked(&self) -> bool {
        self.function_masked
    }

    /// Whether `vector` is masked, by its own mask bit or the function mask.
    pub fn is_masked(&self, vector: MsixVector) -> bool {
        self.function_masked
            || self
                .entries
                .get(usize::from(vector.0))
                .is_none_or(|e| e.masked())
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: MsixVector) -> bool {
        let v = usize::from(vector.0);
        self.pending
            .get(v / 64)
            .is_some_and(|w| w & (1u64 << (v % 64)) != 0)
    }

    /// The message currently programmed for `vector` (the VMM's GSI route source).
    pub fn message(&self, vector: MsixVector) -> Option<MsiMessage> {
        self.entries.get(usize::from(vector.0)).map(|e| e.message())
    }

    /// Applies a guest write of Message Control (enable and function mask bits). Pending
    /// vectors that become unmasked are delivered.
    pub fn write_control(&mut self, control: u16) {
        self.enabled = control & MSIX_CONTROL_ENABLE != 0;
        self.function_masked = control & MSIX_CONTROL_FUNCTION_MASK != 0;
        self.deliver_unmasked_pending();
    }

    /// Signals `vector`: sends its message, latches its pending bit if masked, or does nothing
    /// when MSI-X is disabled.
    pub fn trigger(&mut self, vector: MsixVector) -> MsixDelivery {
        let v = usize::from(vector.0);
        let Some(entry) = self.entries.get(v).copied() else {
            return MsixDelivery::InvalidVector;
        };
        if !self.enabled {
            return MsixDelivery::Disabled;
        }
        if self.function_masked || entry.masked() {
            self.pending[v / 64] |= 1u64 << (v % 64);
            return MsixDelivery::Pending;
        }
        self.sink.send(vector, entry.message());
        MsixDelivery::Sent
    }

    /// Reads `data.len()` bytes of the table at `offset_bytes` (table-relative). Bytes outside
    /// the table read as zero.
    pub fn table_read(&self, offset_bytes: u64, data: &mut [u8]) {
        data.fill(0);
        for (i, byte) in data.iter_mut().enumerate() {
            let Some(off) = offset_bytes.checked_add(i as u64) else {
                return;
            };
            let Ok(index) = usize::try_from(off / MSIX_ENTRY_SIZE_BYTES) else {
                return;
            };
            if let Some(entry) = self.entries.get(index) {
                *byte = entry.to_bytes()[(off % MSIX_ENTRY_SIZE_BYTES) as usize];
            }
        }
    }

    /// Writes the table at `offset_bytes` (table-relative). Returns the vector whose message
    /// (address or data) changed, if any. Writes must stay within one entry; others are
    /// ignored. Unmasking a pending vector delivers it.
    pub fn table_write(
        &mut self,
        offset_bytes: u64,
        data: &[u8],
    ) -> Option<(MsixVector, MsiMessage)> {
        let len = data.len() as u64;
        let within = offset_bytes % MSIX_ENTRY_SIZE_BYTES;
        if data.is_empty() || within + len > MSIX_ENTRY_SIZE_BYTES {
            log::debug!("msix: ignoring table write at {offset_bytes:#x} len {len}");
            return None;
        }
        let index = usize::try_from(offset_bytes / MSIX_ENTRY_SIZE_BYTES).ok()?;
        let old = *self.entries.get(index)?;
        let mut bytes = old.to_bytes();
        let start = within as usize;
        bytes[start..start + data.len()].copy_from_slice(data);
        let new = Entry::from_bytes(bytes);
        self.entries[index] = new;
        let vector = MsixVector(u16::try_from(index).ok()?);
        if old.masked() && !new.masked() {
            self.deliver_if_pending(index);
        }
        (old.message() != new.message()).then(|| (vector, new.message()))
    }

    /// Reads the pending-bit array at `offset_bytes` (PBA-relative); outside reads as zero.
    pub fn pba_read(&self, offset_bytes: u64, data: &mut [u8]) {
        data.fill(0);
        for (i, byte) in data.iter_mut().enumerate() {
            let Some(off) = offset_bytes.checked_add(i as u64) else {
                return;
            };
            let Ok(word) = usize::try_from(off / 8) else {
                return;
            };
            if let Some(w) = self.pending.get(word) {
                *byte = w.to_le_bytes()[(off % 8) as usize];
            }
        }
    }

    /// Function-level reset: every entry masked and zeroed, nothing pending, MSI-X disabled.
    pub fn reset(&mut self) {
        self.entries.fill(Entry::RESET);
        self.pending.fill(0);
        self.enabled = false;
        self.function_masked = false;
    }

    fn deliver_unmasked_pending(&mut self) {
        if !self.enabled || self.function_masked {
            return;
        }
        for index in 0..self.entries.len() {
            if !self.entries[index].masked() {
                self.deliver_if_pending(index);
            }
        }
    }

    fn deliver_if_pending(&mut self, index: usize) {
        let bit = 1u64 << (index % 64);
        if !self.enabled || self.function_masked || self.pending[index / 64] & bit == 0 {
            return;
        }
        self.pending[index / 64] &= !bit;
        let Ok(vector) = u16::try_from(index) else {
            return;
        };
        self.sink
            .send(MsixVector(vector), self.entries[index].message());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records every message sent.
    #[derive(Default)]
    pub(crate) struct RecordingSink(pub Mutex<Vec<(MsixVector, MsiMessage)>>);

    impl MsiSink for RecordingSink {
        fn send(&self, vector: MsixVector, message: MsiMessage) {
            self.0.lock().unwrap().push((vector, message));
        }
    }

    fn layout(vectors: u16) -> MsixLayout {
        MsixLayout {
            vector_count: vectors,
            bar: BarIndex::new(0).unwrap(),
            table_offset_bytes: 0x4000,
            pba_offset_bytes: 0x5000,
        }
    }

    fn msix(vectors: u16) -> (Msix, Arc<RecordingSink>) {
        let sink = Arc::new(RecordingSink::default());
        (Msix::new(layout(vectors), sink.clone()).unwrap(), sink)
    }

    fn program(m: &mut Msix, vector: u16, address: u64, data: u32) {
        let base = u64::from(vector) * 16;
        m.table_write(base, &(address as u32).to_le_bytes());
        m.table_write(base + 4, &((address >> 32) as u32).to_le_bytes());
        m.table_write(base + 8, &data.to_le_bytes());
    }

    fn unmask(m: &mut Msix, vector: u16) {
        m.table_write(u64::from(vector) * 16 + 12, &0u32.to_le_bytes());
    }

    #[test]
    fn capability_encodes_table_size_minus_one_and_bir() {
        let body = layout(3).capability_body();
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), 2);
        assert_eq!(u32::from_le_bytes(body[2..6].try_into().unwrap()), 0x4000);
        assert_eq!(u32::from_le_bytes(body[6..10].try_into().unwrap()), 0x5000);
    }

    #[test]
    fn vector_count_zero_or_too_large_is_rejected() {
        let sink = Arc::new(RecordingSink::default());
        assert!(Msix::new(layout(0), sink.clone()).is_err());
        assert!(Msix::new(layout(2049), sink).is_err());
    }

    #[test]
    fn entries_start_masked_and_read_back_programmed_message() {
        let (mut m, _) = msix(2);
        assert!(m.is_masked(MsixVector(1)));
        program(&mut m, 1, 0xfee0_1000, 0x4041);
        let mut buf = [0u8; 16];
        m.table_read(16, &mut buf);
        assert_eq!(
            u64::from_le_bytes(buf[0..8].try_into().unwrap()),
            0xfee0_1000
        );
        assert_eq!(u32::from_le_bytes(buf[8..12].try_into().unwrap()), 0x4041);
        assert_eq!(u32::from_le_bytes(buf[12..16].try_into().unwrap()), 1);
    }

    #[test]
    fn table_write_reports_message_change_only_when_it_changes() {
        let (mut m, _) = msix(1);
        let changed = m.table_write(8, &0x30u32.to_le_bytes());
        assert_eq!(
            changed,
            Some((
                MsixVector(0),
                MsiMessage {
                    address: 0,
                    data: 0x30
                }
            ))
        );
        assert_eq!(m.table_write(8, &0x30u32.to_le_bytes()), None);
        assert_eq!(m.table_write(12, &0u32.to_le_bytes()), None);
    }

    #[test]
    fn qword_write_sets_whole_address() {
        let (mut m, _) = msix(1);
        m.table_write(0, &0x1_fee0_0000u64.to_le_bytes());
        assert_eq!(m.message(MsixVector(0)).unwrap().address, 0x1_fee0_0000);
    }

    #[test]
    fn write_crossing_entries_or_beyond_table_is_ignored() {
        let (mut m, _) = msix(1);
        assert_eq!(m.table_write(12, &[0xff; 8]), None);
        assert_eq!(m.table_write(16, &[0xff; 4]), None);
        assert!(m.is_masked(MsixVector(0)));
    }

    #[test]
    fn trigger_sends_when_enabled_and_unmasked() {
        let (mut m, sink) = msix(2);
        program(&mut m, 1, 0xfee0_0000, 0x51);
        unmask(&mut m, 1);
        m.write_control(MSIX_CONTROL_ENABLE);
        assert_eq!(m.trigger(MsixVector(1)), MsixDelivery::Sent);
        let sent = sink.0.lock().unwrap().clone();
        assert_eq!(
            sent,
            vec![(
                MsixVector(1),
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x51
                }
            )]
        );
    }

    #[test]
    fn trigger_while_disabled_does_nothing() {
        let (mut m, sink) = msix(1);
        unmask(&mut m, 0);
        assert_eq!(m.trigger(MsixVector(0)), MsixDelivery::Disabled);
        assert!(!m.is_pending(MsixVector(0)));
        assert!(sink.0.lock().unwrap().is_empty());
    }

    #[test]
    fn masked_vector_latches_pending_and_unmask_delivers() {
        let (mut m, sink) = msix(70);
        m.write_control(MSIX_CONTROL_ENABLE);
        program(&mut m, 65, 0xfee0_0000, 0x60);
        assert_eq!(m.trigger(MsixVector(65)), MsixDelivery::Pending);
        assert!(m.is_pending(MsixVector(65)));
        let mut pba = [0u8; 8];
        m.pba_read(8, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 1 << 1);
        unmask(&mut m, 65);
        assert!(!m.is_pending(MsixVector(65)));
        assert_eq!(sink.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn function_mask_holds_messages_until_cleared() {
        let (mut m, sink) = msix(1);
        unmask(&mut m, 0);
        m.write_control(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
        assert_eq!(m.trigger(MsixVector(0)), MsixDelivery::Pending);
        assert!(sink.0.lock().unwrap().is_empty());
        m.write_control(MSIX_CONTROL_ENABLE);
        assert_eq!(sink.0.lock().unwrap().len(), 1);
        assert!(!m.is_pending(MsixVector(0)));
    }

    #[test]
    fn out_of_range_vector_is_reported() {
        let (mut m, _) = msix(1);
        m.write_control(MSIX_CONTROL_ENABLE);
        assert_eq!(m.trigger(MsixVector(1)), MsixDelivery::InvalidVector);
    }

    #[test]
    fn reset_masks_everything_and_disables() {
        let (mut m, _) = msix(1);
        m.write_control(MSIX_CONTROL_ENABLE);
        unmask(&mut m, 0);
        m.trigger(MsixVector(0));
        m.reset();
        assert!(!m.is_enabled());
        assert!(m.is_masked(MsixVector(0)));
    }
}

mod persist;
pub use persist::{MsixEntryState, MsixState};
