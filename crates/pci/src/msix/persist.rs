//! Saving and restoring [`Msix`]: the vector table, pending bits, enable and function mask.

use serde::{Deserialize, Serialize};

use super::{Entry, Msix, VECTOR_CONTROL_MASKED};
use crate::PciError;

/// One MSI-X table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixEntryState {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
    /// Vector control (bit 0: masked).
    pub control: u32,
}

/// The MSI-X state of a function (the table and PBA contents, and the capability's enable and
/// function-mask bits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixState {
    /// The table, one entry per vector.
    pub entries: Vec<MsixEntryState>,
    /// Pending bits, 64 vectors per word.
    pub pending: Vec<u64>,
    /// MSI-X enable.
    pub enabled: bool,
    /// Function mask.
    pub function_masked: bool,
}

impl Msix {
    /// The state to save.
    pub fn save_state(&self) -> MsixState {
        MsixState {
            entries: self
                .entries
                .iter()
                .map(|e| MsixEntryState {
                    address: e.address,
                    data: e.data,
                    control: e.control,
                })
                .collect(),
            pending: self.pending.clone(),
            enabled: self.enabled,
            function_masked: self.function_masked,
        }
    }

    /// Restores saved state onto a table of the same size; on error nothing changes. No
    /// message is sent: pending vectors stay pending until the guest unmasks them.
    pub fn restore_state(&mut self, state: &MsixState) -> Result<(), PciError> {
        if state.entries.len() != self.entries.len() || state.pending.len() != self.pending.len() {
            return Err(PciError::State(format!(
                "{} MSI-X vectors saved, this device has {}",
                state.entries.len(),
                self.entries.len()
            )));
        }
        let count = self.entries.len();
        let stray = state
            .pending
            .last()
            .is_some_and(|w| !count.is_multiple_of(64) && w >> (count % 64) != 0);
        if stray {
            return Err(PciError::State(
                "MSI-X pending bits set past the last vector".into(),
            ));
        }
        self.entries = state
            .entries
            .iter()
            .map(|e| Entry {
                address: e.address,
                data: e.data,
                control: e.control & VECTOR_CONTROL_MASKED,
            })
            .collect();
        self.pending.clone_from(&state.pending);
        self.enabled = state.enabled;
        self.function_masked = state.function_masked;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::msix::MsixLayout;
    use crate::{BarIndex, MsiMessage, MsiSink, MsixVector};

    #[derive(Default)]
    struct Sink(Mutex<Vec<MsiMessage>>);
    impl MsiSink for Sink {
        fn send(&self, _vector: MsixVector, message: MsiMessage) {
            self.0.lock().unwrap().push(message);
        }
    }

    fn msix(sink: Arc<Sink>) -> Msix {
        let layout = MsixLayout {
            vector_count: 2,
            bar: BarIndex::new(0).unwrap(),
            table_offset_bytes: 0x2000,
            pba_offset_bytes: 0x3000,
        };
        Msix::new(layout, sink).unwrap()
    }

    #[test]
    fn table_pending_and_enable_round_trip_without_sending() {
        let sink = Arc::new(Sink::default());
        let mut m = msix(sink.clone());
        m.table_write(16, &0xfee0_1000u32.to_le_bytes());
        m.table_write(24, &0x41u32.to_le_bytes());
        m.write_control(0x8000 | 0x4000); // enabled, function masked
        m.trigger(MsixVector(1));
        assert!(m.is_pending(MsixVector(1)));
        let saved = m.save_state();
        let loaded: MsixState =
            postcard::from_bytes(&postcard::to_allocvec(&saved).unwrap()).unwrap();
        let sink2 = Arc::new(Sink::default());
        let mut r = msix(sink2.clone());
        r.restore_state(&loaded).unwrap();
        assert_eq!(r.save_state(), saved);
        assert!(r.is_enabled() && r.is_function_masked() && r.is_pending(MsixVector(1)));
        assert!(sink2.0.lock().unwrap().is_empty());
        r.table_write(28, &0u32.to_le_bytes()); // unmask vector 1
        r.write_control(0x8000); // clear the function mask: the pending message goes out
        let sent = sink2.0.lock().unwrap().clone();
        assert_eq!(
            sent,
            [MsiMessage {
                address: 0xfee0_1000,
                data: 0x41
            }]
        );
    }

    #[test]
    fn a_table_of_another_size_or_stray_pending_bits_are_refused() {
        let sink = Arc::new(Sink::default());
        let mut saved = msix(sink.clone()).save_state();
        saved.entries.push(saved.entries[0]);
        let mut m = msix(sink.clone());
        assert!(
            m.restore_state(&saved)
                .unwrap_err()
                .to_string()
                .contains("3 MSI-X vectors")
        );
        let mut saved = msix(sink.clone()).save_state();
        saved.pending[0] = 1 << 5;
        assert!(m.restore_state(&saved).is_err());
        assert_eq!(m.save_state(), msix(sink).save_state());
    }
}
