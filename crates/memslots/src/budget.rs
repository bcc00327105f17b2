//! The VM-wide budget of KVM memory slots shared by all memory devices.

use crate::backend::KvmSlotId;
use crate::{Error, Result};

/// Hands out KVM slot numbers: KVM's `KVM_CAP_NR_MEMSLOTS` minus the slots already in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotBudget {
    total_slots: u32,
    next_free: u32,
}

/// A contiguous range of KVM slot numbers reserved for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotIds {
    first: u32,
    count: u32,
}

impl SlotBudget {
    /// A budget of `total_slots` numbers of which the first `used_slots` are taken (boot memory).
    pub fn new(total_slots: u32, used_slots: u32) -> Self {
        SlotBudget {
            total_slots,
            next_free: used_slots.min(total_slots),
        }
    }

    /// How many slot numbers are still free.
    pub fn available(&self) -> u32 {
        self.total_slots - self.next_free
    }

    /// Reserves `count` slot numbers for `owner`, or says clearly why it cannot.
    pub fn reserve(&mut self, owner: &str, count: u32) -> Result<SlotIds> {
        if count > self.available() {
            return Err(Error::BudgetExhausted {
                owner: owner.to_string(),
                needed: count,
                available: self.available(),
            });
        }
        let ids = SlotIds {
            first: self.next_free,
            count,
        };
        self.next_free += count;
        Ok(ids)
    }
}

impl SlotIds {
    /// Slot numbers `first..first + count`, for callers that manage ids themselves.
    pub fn new(first: u32, count: u32) -> Self {
        SlotIds { first, count }
    }

    /// How many numbers the range holds.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The `index`-th number of the range.
    pub fn get(&self, index: usize) -> Option<KvmSlotId> {
        let index = u32::try_from(index).ok().filter(|&i| i < self.count)?;
        Some(KvmSlotId(self.first + index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_do_not_overlap_and_skip_used_slots() {
        let mut b = SlotBudget::new(100, 2);
        let a = b.reserve("mem0", 10).unwrap();
        let c = b.reserve("mem1", 20).unwrap();
        assert_eq!(a.get(0), Some(KvmSlotId(2)));
        assert_eq!(a.get(9), Some(KvmSlotId(11)));
        assert_eq!(a.get(10), None);
        assert_eq!(c.get(0), Some(KvmSlotId(12)));
        assert_eq!(b.available(), 68);
    }

    #[test]
    fn device_that_does_not_fit_is_refused_and_budget_is_unchanged() {
        let mut b = SlotBudget::new(16, 6);
        let err = b.reserve("mem0", 11).unwrap_err();
        assert_eq!(
            err,
            Error::BudgetExhausted {
                owner: "mem0".into(),
                needed: 11,
                available: 10
            }
        );
        assert!(err.to_string().contains("mem0 needs 11"));
        assert_eq!(b.available(), 10);
        assert!(b.reserve("mem0", 10).is_ok());
    }
}
