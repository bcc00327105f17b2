//! Memory that only records what was asked of it, for tests and fuzzing.

use std::io;

use crate::{BlockMemory, Error, Result};

/// One operation a [`FakeMemory`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryOp {
    /// `discard(offset, size)`.
    Discard(u64, u64),
    /// `populate(offset, size)`.
    Populate(u64, u64),
}

/// Records operations; fails the next discards or populates on request.
#[derive(Debug, Default)]
pub struct FakeMemory {
    ops: Vec<MemoryOp>,
    failing_discards: u32,
    failing_populates: u32,
}

impl FakeMemory {
    /// A fake that succeeds at everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every operation so far, oldest first.
    pub fn ops(&self) -> &[MemoryOp] {
        &self.ops
    }

    /// Forgets the recorded operations.
    pub fn clear_ops(&mut self) {
        self.ops.clear();
    }

    /// Makes the next `count` discards fail.
    pub fn fail_discards(&mut self, count: u32) {
        self.failing_discards = count;
    }

    /// Makes the next `count` populates fail (like a hugetlbfs pool that ran dry).
    pub fn fail_populates(&mut self, count: u32) {
        self.failing_populates = count;
    }
}

impl BlockMemory for FakeMemory {
    fn discard(&mut self, offset_bytes: u64, size_bytes: u64) -> Result<()> {
        self.ops.push(MemoryOp::Discard(offset_bytes, size_bytes));
        if self.failing_discards > 0 {
            self.failing_discards -= 1;
            return Err(Error::Discard {
                offset_bytes,
                size_bytes,
                source: io::Error::from_raw_os_error(libc::EIO),
            });
        }
        Ok(())
    }

    fn populate(&mut self, offset_bytes: u64, size_bytes: u64) -> Result<()> {
        self.ops.push(MemoryOp::Populate(offset_bytes, size_bytes));
        if self.failing_populates > 0 {
            self.failing_populates -= 1;
            return Err(Error::Populate {
                offset_bytes,
                size_bytes,
                source: io::Error::from_raw_os_error(libc::ENOMEM),
            });
        }
        Ok(())
    }
}
