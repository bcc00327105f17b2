//! MSI messages and the sink through which devices deliver them.

/// An MSI-X vector number (index into a device's MSI-X table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsixVector(pub u16);

/// An MSI message: a 32-bit write of `data` to guest-physical `address`.
///
/// On x86 `address` is 0xFEEx_xxxx (destination APIC id in bits 19:12) and `data` holds the
/// vector and delivery mode; the VMM hands both to KVM unchanged (GSI routing or
/// `KVM_SIGNAL_MSI`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct MsiMessage {
    /// Message address (64-bit).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// Where a device's MSI-X messages go.
///
/// The VMM implements this with KVM: either signal the irqfd registered for `vector` (whose
/// GSI route it keeps equal to the latest message, see
/// [`DeviceEvent::MsixMessageChanged`](crate::DeviceEvent::MsixMessageChanged)) or inject
/// `message` directly with `KVM_SIGNAL_MSI`. Tests use a recording fake.
///
/// Masking and pending bits are handled before this is called: `send` is only invoked for an
/// enabled, unmasked vector.
pub trait MsiSink: Send + Sync {
    /// Delivers one interrupt.
    fn send(&self, vector: MsixVector, message: MsiMessage);
}
