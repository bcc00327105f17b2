//! Legacy PC devices that live in userspace: COM1, the i8042 reset line, a minimal CMOS,
//! the ACPI power/reset ports, and sinks for ports Linux probes.

use std::io::Write;

use boot::acpi::{RESET_VALUE, SleepRequest, decode_sleep_control};
use vm_superio::{I8042Device, Serial, SerialState, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal, StopRequest};

/// COM1 base port.
pub const COM1_PORT: u16 = 0x3F8;
/// COM1 ISA IRQ (= GSI).
pub const COM1_IRQ: u32 = 4;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// CMOS index port (data port follows).
pub const CMOS_PORT: u16 = 0x70;
/// First ACPI power-management port (sleep control, sleep status, reset).
pub const ACPI_PM_PORT: u16 = boot::acpi::SLEEP_CONTROL_PORT;

/// Raises an interrupt by writing an eventfd that is registered as an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Posts a stop request.
pub struct StopTrigger {
    signal: ExitSignal,
    reason: ExitReason,
}

impl Trigger for StopTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.signal.request(StopRequest::Guest(self.reason));
        Ok(())
    }
}

fn first_byte(data: &[u8]) -> u8 {
    data.first().copied().unwrap_or(0)
}

fn offset_u8(offset: u64) -> u8 {
    u8::try_from(offset).unwrap_or(u8::MAX)
}

/// 8250 UART (vm-superio) writing guest output to any `Write`.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// UART whose interrupt is `irq` (an eventfd registered as irqfd) and output `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            serial: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Registers and pending input, for a snapshot.
    pub fn state(&self) -> SerialState {
        self.serial.state()
    }

    /// Replaces registers and pending input with `state` (same output and interrupt). Raises
    /// the interrupt again if the restored registers have one pending and enabled. Errors
    /// when the input FIFO in `state` is larger than the UART's.
    pub fn restore_state(&mut self, state: &SerialState) -> Result<(), std::io::Error> {
        let irq = self.serial.interrupt_evt().0.try_clone()?;
        let placeholder = Serial::new(
            IrqTrigger(irq),
            Box::new(std::io::sink()) as Box<dyn Write + Send>,
        );
        let old = std::mem::replace(&mut self.serial, placeholder);
        let trigger = IrqTrigger(old.interrupt_evt().0.try_clone()?);
        let out = old.into_writer();
        self.serial = Serial::from_state(state, trigger, vm_superio::serial::NoEvents, out)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        Ok(())
    }

    /// Feed guest input (e.g. from stdin); returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.serial.read(offset_u8(offset));
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Err(e) = self.serial.write(offset_u8(offset), first_byte(data)) {
            log::warn!("serial write: {e:?}");
        }
    }
}

/// i8042 controller: only the CPU reset command (0xFE on port 0x64) does anything.
/// Mapped over 0x60..=0x64; the base tells the two ports apart.
pub struct I8042 {
    dev: I8042Device<StopTrigger>,
}

impl I8042 {
    /// Controller whose reset command requests a reboot on `signal`.
    pub fn new(signal: ExitSignal) -> Self {
        Self {
            dev: I8042Device::new(StopTrigger {
                signal,
                reason: ExitReason::Reboot,
            }),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.dev.read(offset_u8(offset));
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        // vm-superio's command offset is 4 (0x64 - 0x60); the trigger is infallible.
        let _ = self.dev.write(offset_u8(offset), first_byte(data));
    }
}

/// CMOS/RTC at 0x70/0x71: index register plus a tiny register file that reads as a valid,
/// idle clock at 2000-01-01 00:00:00 (BCD, 24-hour).
#[derive(Debug, Default)]
pub struct Cmos {
    index: u8,
}

impl Cmos {
    /// The index register (last value written to port 0x70).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Sets the index register (restore).
    pub fn set_index(&mut self, index: u8) {
        self.index = index;
    }

    fn register(&self) -> u8 {
        match self.index & 0x7F {
            0x04 => 0x00,        // hours
            0x07 | 0x08 => 0x01, // day of month, month
            0x09 => 0x00,        // year (2000)
            0x0A => 0x26,        // register A: 32 kHz base, 1024 Hz, no update in progress
            0x0B => 0x02,        // register B: 24-hour mode, BCD
            0x0D => 0x80,        // register D: valid RAM and time
            0x32 => 0x20,        // century
            _ => 0x00,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = if offset == 1 {
                self.register()
            } else {
                self.index
            };
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset == 0 {
            self.index = first_byte(data);
        }
    }
}

/// The FADT's hardware-reduced sleep control/status and reset registers.
pub struct AcpiPowerDevice {
    signal: ExitSignal,
}

impl AcpiPowerDevice {
    /// Power device posting to `signal`.
    pub fn new(signal: ExitSignal) -> Self {
        Self { signal }
    }
}

impl BusDevice for AcpiPowerDevice {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let value = first_byte(data);
        let control = u64::from(boot::acpi::SLEEP_CONTROL_PORT - ACPI_PM_PORT);
        let reset = u64::from(boot::acpi::RESET_PORT - ACPI_PM_PORT);
        match offset {
            o if o == control => match decode_sleep_control(value) {
                Some(SleepRequest::SoftOff) => self
                    .signal
                    .request(StopRequest::Guest(ExitReason::Poweroff)),
                Some(SleepRequest::Unsupported { sleep_type }) => {
                    log::warn!("guest asked for unsupported sleep type {sleep_type}")
                }
                None => {}
            },
            o if o == reset && value == RESET_VALUE => {
                self.signal.request(StopRequest::Guest(ExitReason::Reboot))
            }
            _ => {}
        }
    }
}

/// Reads as all-ones (nothing there), swallows writes. For ports Linux probes or pokes.
#[derive(Debug, Default)]
pub struct IgnoredPorts;

impl BusDevice for IgnoredPorts {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }

    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
}

/// Port ranges (base, length) that get [`IgnoredPorts`]: POST/DMA page registers, the
/// other COM ports, LPT, VGA, IDE, fast A20 and the delay port.
pub const IGNORED_PORT_RANGES: &[(u16, u16)] = &[
    (0x80, 0x10),
    (0x92, 1),
    (0xED, 1),
    (0x170, 8),
    (0x1F0, 8),
    (0x278, 3),
    (0x2E8, 8),
    (0x2F8, 8),
    (0x376, 1),
    (0x378, 3),
    (0x3C0, 0x20),
    (0x3E8, 8),
    (0x3F6, 1),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acpi_s5_write_requests_poweroff() {
        let s = ExitSignal::new().unwrap();
        let mut d = AcpiPowerDevice::new(s.clone());
        d.write(0, 0, &[(5 << 2)]); // no SLP_EN
        assert_eq!(s.pending(), None);
        d.write(0, 0, &[(5 << 2) | (1 << 5)]);
        assert_eq!(s.pending(), Some(StopRequest::Guest(ExitReason::Poweroff)));
    }

    #[test]
    fn acpi_reset_register_requests_reboot() {
        let s = ExitSignal::new().unwrap();
        let mut d = AcpiPowerDevice::new(s.clone());
        d.write(0, 2, &[RESET_VALUE + 1]);
        assert_eq!(s.pending(), None);
        d.write(0, 2, &[RESET_VALUE]);
        assert_eq!(s.pending(), Some(StopRequest::Guest(ExitReason::Reboot)));
    }

    #[test]
    fn i8042_reset_command_requests_reboot() {
        let s = ExitSignal::new().unwrap();
        let mut d = I8042::new(s.clone());
        d.write(0x60, 0, &[0xFE]); // data port: ignored
        assert_eq!(s.pending(), None);
        d.write(0x60, 4, &[0xFE]);
        assert_eq!(s.pending(), Some(StopRequest::Guest(ExitReason::Reboot)));
    }

    #[test]
    fn cmos_reports_idle_valid_clock() {
        let mut c = Cmos::default();
        let mut b = [0u8];
        c.write(0x70, 0, &[0x0A]);
        c.read(0x70, 1, &mut b);
        assert_eq!(b[0] & 0x80, 0, "update-in-progress must be clear");
        c.write(0x70, 0, &[0x8D]); // NMI-disable bit set
        c.read(0x70, 1, &mut b);
        assert_eq!(b[0], 0x80);
    }

    #[test]
    fn serial_state_is_restored_with_its_pending_input_and_interrupt() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut a = SerialDevice::new(irq.try_clone().unwrap(), Box::new(std::io::sink()));
        a.write(0x3F8, 7, &[0x5A]); // scratch
        a.write(0x3F8, 1, &[0x01]); // IER: received data interrupt
        assert_eq!(a.enqueue_input(b"hi"), 2);
        let saved = a.state();
        assert_eq!(saved.in_buffer, b"hi");

        let irq_b = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut b = SerialDevice::new(irq_b.try_clone().unwrap(), Box::new(std::io::sink()));
        b.restore_state(&saved).unwrap();
        assert_eq!(b.state(), saved);
        assert!(
            irq_b.read().unwrap() >= 1,
            "pending RX interrupt raised again"
        );
        let mut byte = [0u8];
        b.read(0x3F8, 0, &mut byte);
        assert_eq!(byte[0], b'h');

        let mut too_much = saved;
        too_much.in_buffer = vec![0; 1 << 16];
        assert!(b.restore_state(&too_much).is_err());
    }

    #[test]
    fn serial_output_reaches_writer_and_raises_irq() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        s.write(0x3F8, 1, &[0x02]); // IER: THR empty interrupt
        s.write(0x3F8, 0, b"A");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"A");
        assert!(irq.read().unwrap() >= 1);
    }
}
