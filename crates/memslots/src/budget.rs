//! The VM-wide budget of KVM memory slots shared by all memory devices.

use crate::backend::KvmSlotId;
use crate::{Error, Result};

/// Hands out KVM slot numbers: KVM's `KVM_CAP_NR_MEMSLOTS` minus the slots already in use,
/// further capped by any [`SlotLimit`] (e.g. a vhost-user backend's memory table size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotBudget {
    total_slots: u32,
    next_free: u32,
    /// Slots reserved by devices so far (each also counts against every limit).
    reserved_slots: u32,
    limits: Vec<SlotLimit>,
}

/// A cap besides KVM's on how many slots may be mapped at once: every mapped slot of every
/// memory device, plus what is held outside them, must fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotLimit {
    /// Who imposes it (named in refusals and shown by the API).
    pub owner: String,
    /// How many slots (regions) it allows in total.
    pub max_slots: u32,
    /// How many of them are held outside memory devices (boot memory).
    pub held_slots: u32,
}

impl SlotLimit {
    fn remaining(&self, reserved_slots: u32) -> u32 {
        self.max_slots
            .saturating_sub(self.held_slots)
            .saturating_sub(reserved_slots)
    }
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
            reserved_slots: 0,
            limits: Vec::new(),
        }
    }

    /// How many slots a device may still reserve: KVM's free numbers, capped by every limit.
    pub fn available(&self) -> u32 {
        self.limits
            .iter()
            .map(|l| l.remaining(self.reserved_slots))
            .fold(self.kvm_available(), u32::min)
    }

    /// How many KVM slot numbers are still free.
    pub fn kvm_available(&self) -> u32 {
        self.total_slots - self.next_free
    }

    /// The limit that leaves the fewest slots, or `None` when KVM's own limit does.
    pub fn limited_by(&self) -> Option<&SlotLimit> {
        self.limits
            .iter()
            .filter(|l| l.remaining(self.reserved_slots) < self.kvm_available())
            .min_by_key(|l| l.remaining(self.reserved_slots))
    }

    /// Every limit added, in order.
    pub fn limits(&self) -> &[SlotLimit] {
        &self.limits
    }

    /// Adds a cap; refused (and not added) when what is already held or reserved exceeds it.
    pub fn add_limit(&mut self, limit: SlotLimit) -> Result<()> {
        let needed = limit.held_slots.saturating_add(self.reserved_slots);
        if needed > limit.max_slots {
            return Err(Error::SlotLimitExceeded {
                owner: "boot memory and memory devices".into(),
                needed,
                available: limit.max_slots,
                limited_by: limit.owner,
                limit: limit.max_slots,
            });
        }
        self.limits.push(limit);
        Ok(())
    }

    /// Reserves `count` slot numbers for `owner`, or says clearly why it cannot.
    pub fn reserve(&mut self, owner: &str, count: u32) -> Result<SlotIds> {
        if let Some(limit) = self.limited_by().filter(|_| count > self.available()) {
            return Err(Error::SlotLimitExceeded {
                owner: owner.to_string(),
                needed: count,
                available: self.available(),
                limited_by: limit.owner.clone(),
                limit: limit.max_slots,
            });
        }
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
        self.reserved_slots += count;
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

    #[test]
    fn limits_cap_what_devices_may_reserve_and_name_who_limits() {
        let mut b = SlotBudget::new(32764, 2);
        assert_eq!(b.limited_by(), None);
        b.add_limit(SlotLimit {
            owner: "vhost-user disk 'disk0'".into(),
            max_slots: 32,
            held_slots: 2,
        })
        .unwrap();
        b.add_limit(SlotLimit {
            owner: "vhost-user fs 'fs0'".into(),
            max_slots: 509,
            held_slots: 2,
        })
        .unwrap();
        assert_eq!(b.available(), 30);
        assert_eq!(b.kvm_available(), 32762);
        assert_eq!(b.limited_by().unwrap().owner, "vhost-user disk 'disk0'");
        b.reserve("mem0", 20).unwrap();
        assert_eq!(b.available(), 10);
        let err = b.reserve("mem1", 11).unwrap_err();
        assert!(
            err.to_string().contains("mem1 needs 11")
                && err.to_string().contains("vhost-user disk 'disk0'")
                && err.to_string().contains("32"),
            "{err}"
        );
        assert_eq!(b.available(), 10);
        b.reserve("mem1", 10).unwrap();
        assert_eq!(b.available(), 0);
    }

    #[test]
    fn a_limit_smaller_than_what_is_held_is_refused() {
        let mut b = SlotBudget::new(100, 2);
        b.reserve("mem0", 10).unwrap();
        let err = b
            .add_limit(SlotLimit {
                owner: "vhost-user disk 'd'".into(),
                max_slots: 8,
                held_slots: 2,
            })
            .unwrap_err();
        assert!(err.to_string().contains("'d'"), "{err}");
        assert!(b.limits().is_empty());
        assert_eq!(b.available(), 88);
    }
}
