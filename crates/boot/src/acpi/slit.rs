//! SLIT (System Locality Information Table): the node distance matrix.

use super::{finish_table, header};

const SLIT_REVISION: u8 = 1;

/// Build the SLIT from `distances[from][to]` (a square matrix indexed by PXM).
pub(crate) fn build(distances: &[Vec<u8>]) -> Vec<u8> {
    let mut t = header(b"SLIT", SLIT_REVISION);
    t.extend_from_slice(&(distances.len() as u64).to_le_bytes());
    for row in distances {
        t.extend_from_slice(row);
    }
    finish_table(t)
}
