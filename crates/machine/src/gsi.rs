//! The KVM GSI routing table we own.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so every update sends the default
//! irqchip routes (GSI 0..16 → PIC + IOAPIC, 16..24 → IOAPIC, like KVM's default) together
//! with all MSI routes.

use std::collections::BTreeMap;

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, kvm_irq_routing_entry,
};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::state::{GsiRoutingState, MsiRoute};

/// Number of IOAPIC pins (GSIs 0..24 are wired to the irqchip).
pub const IOAPIC_PINS: u32 = 24;
/// Highest GSI + 1 we hand out for MSI routes.
pub const MAX_GSI: u32 = 4096;

/// A global system interrupt number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Gsi(pub u32);

/// An MSI message as programmed into an MSI-X table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsiMessage {
    /// Message address (low 32 bits in `address_lo`, high in `address_hi` of KVM's entry).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// Routes and a GSI allocator for MSI.
#[derive(Debug, Default)]
pub struct GsiRoutes {
    msi: BTreeMap<u32, MsiMessage>,
    allocated: std::collections::BTreeSet<u32>,
}

impl GsiRoutes {
    /// Reserve a free GSI above the IOAPIC pins.
    pub fn allocate(&mut self) -> Result<Gsi, Error> {
        let gsi = (IOAPIC_PINS..MAX_GSI)
            .find(|g| !self.allocated.contains(g))
            .ok_or(Error::GsiExhausted)?;
        self.allocated.insert(gsi);
        Ok(Gsi(gsi))
    }

    /// Return a GSI (and drop its route).
    pub fn free(&mut self, gsi: Gsi) {
        self.allocated.remove(&gsi.0);
        self.msi.remove(&gsi.0);
    }

    /// Route `gsi` to an MSI message. The GSI must have been allocated.
    pub fn set_msi(&mut self, gsi: Gsi, msg: MsiMessage) -> Result<(), Error> {
        if !self.allocated.contains(&gsi.0) {
            return Err(Error::GsiNotAllocated { gsi: gsi.0 });
        }
        self.msi.insert(gsi.0, msg);
        Ok(())
    }

    /// Remove the MSI route of `gsi` (the GSI stays allocated).
    pub fn clear_msi(&mut self, gsi: Gsi) {
        self.msi.remove(&gsi.0);
    }

    /// Allocator and routes, for a snapshot.
    pub fn state(&self) -> GsiRoutingState {
        GsiRoutingState {
            allocated: self.allocated.iter().map(|g| Gsi(*g)).collect(),
            msi_routes: self
                .msi
                .iter()
                .map(|(gsi, message)| MsiRoute {
                    gsi: Gsi(*gsi),
                    message: *message,
                })
                .collect(),
        }
    }

    /// Allocator and routes from a snapshot. Refuses GSIs outside the MSI range and routes
    /// on GSIs that are not allocated.
    pub fn from_state(state: &GsiRoutingState) -> Result<Self, Error> {
        let mut routes = Self::default();
        for gsi in &state.allocated {
            if !(IOAPIC_PINS..MAX_GSI).contains(&gsi.0) {
                return Err(Error::StateMismatch {
                    field: "gsi.allocated",
                    saved: gsi.0.to_string(),
                    here: format!("{IOAPIC_PINS}..{MAX_GSI}"),
                });
            }
            routes.allocated.insert(gsi.0);
        }
        for route in &state.msi_routes {
            routes.set_msi(route.gsi, route.message)?;
        }
        Ok(routes)
    }

    /// The full table to hand to KVM.
    pub fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        let mut out = Vec::new();
        for gsi in 0..16u32 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            out.push(irqchip_entry(gsi, chip, gsi % 8));
        }
        for gsi in 0..IOAPIC_PINS {
            out.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for (gsi, msg) in &self.msi {
            let mut e = kvm_irq_routing_entry {
                gsi: *gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = msg.address as u32;
            e.u.msi.address_hi = (msg.address >> 32) as u32;
            e.u.msi.data = msg.data;
            out.push(e);
        }
        out
    }
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = irqchip;
    e.u.irqchip.pin = pin;
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_has_pic_and_ioapic_routes() {
        let r = GsiRoutes::default();
        let e = r.entries();
        assert_eq!(e.len(), 16 + 24);
        let ioapic4 = e.iter().find(|x| {
            x.gsi == 4 && x.type_ == KVM_IRQ_ROUTING_IRQCHIP
                // SAFETY: irqchip entries have the irqchip member active.
                && unsafe { x.u.irqchip.irqchip } == KVM_IRQCHIP_IOAPIC
        });
        assert!(ioapic4.is_some());
    }

    #[test]
    fn msi_routes_are_added_and_removed() {
        let mut r = GsiRoutes::default();
        let g = r.allocate().unwrap();
        assert_eq!(g, Gsi(24));
        assert_eq!(r.allocate().unwrap(), Gsi(25));
        r.set_msi(
            g,
            MsiMessage {
                address: 0x1_FEE0_0000,
                data: 0x41,
            },
        )
        .unwrap();
        let e = r.entries();
        let m = e.iter().find(|x| x.type_ == KVM_IRQ_ROUTING_MSI).unwrap();
        assert_eq!(m.gsi, 24);
        // SAFETY: MSI entries have the msi member active.
        let (lo, hi, data) = unsafe { (m.u.msi.address_lo, m.u.msi.address_hi, m.u.msi.data) };
        assert_eq!((lo, hi, data), (0xFEE0_0000, 1, 0x41));
        r.clear_msi(g);
        assert_eq!(r.entries().len(), 40);
    }

    #[test]
    fn state_round_trips_and_bad_gsis_are_refused() {
        let mut r = GsiRoutes::default();
        let a = r.allocate().unwrap();
        let b = r.allocate().unwrap();
        let msg = MsiMessage {
            address: 0xFEE0_1000,
            data: 0x22,
        };
        r.set_msi(b, msg).unwrap();
        let s = r.state();
        assert_eq!(s.allocated, vec![a, b]);
        let back = GsiRoutes::from_state(&s).unwrap();
        assert_eq!(back.entries().len(), r.entries().len());
        assert_eq!(back.state(), s);
        let mut low = s.clone();
        low.allocated.push(Gsi(3));
        assert!(GsiRoutes::from_state(&low).is_err());
        let mut unrouted = s;
        unrouted.allocated.clear();
        assert!(matches!(
            GsiRoutes::from_state(&unrouted),
            Err(Error::GsiNotAllocated { gsi: 25 })
        ));
    }

    #[test]
    fn unallocated_gsi_cannot_be_routed_and_freed_gsi_is_reused() {
        let mut r = GsiRoutes::default();
        let msg = MsiMessage {
            address: 0xFEE0_0000,
            data: 0,
        };
        assert!(r.set_msi(Gsi(30), msg).is_err());
        let a = r.allocate().unwrap();
        let _b = r.allocate().unwrap();
        r.free(a);
        assert_eq!(r.allocate().unwrap(), a);
    }
}
