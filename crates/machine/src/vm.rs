//! The KVM VM: in-kernel irqchip and PIT, boot RAM memslots, and the interrupt / ioeventfd
//! plumbing devices need.

use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
    KvmIrqRouting, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::Error;
use crate::gsi::{Gsi, GsiRoutes, MsiMessage};
use crate::state::GsiRoutingState;

/// KVM's real-mode TSS (3 pages), in the 32-bit hole above the PCI window.
const TSS_ADDR: u64 = 0xFFFB_D000;
/// KVM's identity-map page (for real mode on Intel), just below the TSS.
const IDENTITY_MAP_ADDR: u64 = 0xFFFB_C000;

/// The VM file descriptor plus the state we need to reset it.
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    routes: Mutex<GsiRoutes>,
    initial_irqchips: Vec<kvm_irqchip>,
    initial_pit: kvm_pit_state2,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").finish_non_exhaustive()
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

impl Vm {
    /// Open /dev/kvm and create a VM with in-kernel IOAPIC/PIC/LAPIC and PIT.
    pub fn new() -> Result<Self, Error> {
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(TSS_ADDR as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(IDENTITY_MAP_ADDR)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        fd.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("KVM_CREATE_PIT2"))?;
        let mut initial_irqchips = Vec::new();
        for chip_id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            fd.get_irqchip(&mut chip)
                .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
            initial_irqchips.push(chip);
        }
        let initial_pit = fd.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?;
        let vm = Self {
            kvm,
            fd: Arc::new(fd),
            routes: Mutex::new(GsiRoutes::default()),
            initial_irqchips,
            initial_pit,
        };
        vm.push_routes(&vm.routes())?;
        Ok(vm)
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM fd, for memslot management and anything else done directly with KVM.
    pub fn fd(&self) -> &Arc<VmFd> {
        &self.fd
    }

    /// KVM_CAP_NR_MEMSLOTS.
    pub fn nr_memslots(&self) -> usize {
        self.kvm.get_nr_memslots()
    }

    /// Register every region of `mem` as a memslot, slot ids `first_slot..`; returns the ids.
    pub fn register_memory(
        &self,
        mem: &GuestMemoryMmap,
        first_slot: u32,
    ) -> Result<Vec<u32>, Error> {
        let mut slots = Vec::new();
        for (i, r) in mem.iter().enumerate() {
            let slot = first_slot + i as u32;
            let region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: r.start_addr().raw_value(),
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
            };
            // SAFETY: the region is a live anonymous mapping of `memory_size` bytes owned by
            // `mem`, which the Machine keeps alive as long as the VM; KVM only accesses it on
            // guest behalf and never hands it back to us as a Rust reference.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
            slots.push(slot);
        }
        Ok(slots)
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, GsiRoutes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_routes(&self, routes: &GsiRoutes) -> Result<(), Error> {
        let table =
            KvmIrqRouting::from_entries(&routes.entries()).map_err(|_| Error::GsiExhausted)?;
        self.fd
            .set_gsi_routing(&table)
            .map_err(kvm_err("KVM_SET_GSI_ROUTING"))
    }

    /// GSI allocator and MSI routes, for a snapshot.
    pub fn routing_state(&self) -> GsiRoutingState {
        self.routes().state()
    }

    /// Replaces allocator and MSI routes with `state` and hands the table to KVM.
    pub fn restore_routing(&self, state: &GsiRoutingState) -> Result<(), Error> {
        let restored = GsiRoutes::from_state(state)?;
        let mut r = self.routes();
        self.push_routes(&restored)?;
        *r = restored;
        Ok(())
    }

    /// Reserve a GSI for an MSI(-X) vector.
    pub fn allocate_gsi(&self) -> Result<Gsi, Error> {
        self.routes().allocate()
    }

    /// Release a GSI and its route.
    pub fn free_gsi(&self, gsi: Gsi) -> Result<(), Error> {
        let mut r = self.routes();
        r.free(gsi);
        self.push_routes(&r)
    }

    /// Route an allocated GSI to an MSI message (call again when the guest reprograms the
    /// MSI-X entry). An irqfd registered on `gsi` then delivers that message.
    pub fn set_msi_route(&self, gsi: Gsi, msg: MsiMessage) -> Result<(), Error> {
        let mut r = self.routes();
        r.set_msi(gsi, msg)?;
        self.push_routes(&r)
    }

    /// Remove the MSI route of `gsi` (e.g. vector masked or disabled).
    pub fn clear_msi_route(&self, gsi: Gsi) -> Result<(), Error> {
        let mut r = self.routes();
        r.clear_msi(gsi);
        self.push_routes(&r)
    }

    /// Make writes to `evt` raise `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: Gsi) -> Result<(), Error> {
        self.fd
            .register_irqfd(evt, gsi.0)
            .map_err(kvm_err("KVM_IRQFD"))
    }

    /// Undo [`Vm::register_irqfd`].
    pub fn unregister_irqfd(&self, evt: &EventFd, gsi: Gsi) -> Result<(), Error> {
        self.fd
            .unregister_irqfd(evt, gsi.0)
            .map_err(kvm_err("KVM_IRQFD deassign"))
    }

    /// Signal `evt` on guest writes to MMIO `addr` (any value, any width) instead of exiting.
    pub fn register_mmio_ioeventfd(&self, evt: &EventFd, addr: u64) -> Result<(), Error> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(kvm_err("KVM_IOEVENTFD"))
    }

    /// Undo [`Vm::register_mmio_ioeventfd`].
    pub fn unregister_mmio_ioeventfd(&self, evt: &EventFd, addr: u64) -> Result<(), Error> {
        self.fd
            .unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(kvm_err("KVM_IOEVENTFD deassign"))
    }

    /// Put PIC, IOAPIC and PIT back to their power-on state (before a reboot).
    pub fn reset_irqchip(&self) -> Result<(), Error> {
        for chip in &self.initial_irqchips {
            self.fd
                .set_irqchip(chip)
                .map_err(kvm_err("KVM_SET_IRQCHIP"))?;
        }
        self.fd
            .set_pit2(&self.initial_pit)
            .map_err(kvm_err("KVM_SET_PIT2"))
    }
}
