//! Boot a Linux bzImage on the machine: `boot --kernel K [--initramfs I] [--cmdline C]
//! [--cpus N] [--mem-mib M] [--max-boots B]`.
//!
//! Appends `hotmem_boot=<n>` (0 for the first boot) to the command line so a guest can tell
//! a reboot from the first boot. Exits 0 on guest power-off, 2 when the guest rebooted more
//! than `--max-boots - 1` times, 1 on errors. Includes a PCI conf1 stub with only a host
//! bridge at 00:00.0 so the guest's ACPI PCI root bridge has something to enumerate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use boot::LinuxBootSpec;
use machine::{BusDevice, ExitReason, Machine, MachineConfig, SerialOutput};

struct Args {
    kernel: PathBuf,
    initramfs: Option<PathBuf>,
    cmdline: String,
    cpus: u8,
    mem_mib: u64,
    max_boots: u32,
    watchdog_secs: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        kernel: PathBuf::new(),
        initramfs: None,
        cmdline: "console=ttyS0".into(),
        cpus: 1,
        mem_mib: 512,
        max_boots: 2,
        watchdog_secs: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--kernel" => a.kernel = value()?.into(),
            "--initramfs" => a.initramfs = Some(value()?.into()),
            "--cmdline" => a.cmdline = value()?,
            "--cpus" => a.cpus = value()?.parse().map_err(|e| format!("--cpus: {e}"))?,
            "--mem-mib" => a.mem_mib = value()?.parse().map_err(|e| format!("--mem-mib: {e}"))?,
            "--max-boots" => {
                a.max_boots = value()?.parse().map_err(|e| format!("--max-boots: {e}"))?
            }
            "--watchdog-secs" => {
                a.watchdog_secs = value()?
                    .parse()
                    .map_err(|e| format!("--watchdog-secs: {e}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.kernel.as_os_str().is_empty() {
        return Err("--kernel is required".into());
    }
    Ok(a)
}

/// PCI configuration mechanism 1 with a single host bridge at 00:00.0.
#[derive(Default)]
struct HostBridgeOnly {
    address: u32,
}

impl HostBridgeOnly {
    fn config_dword(&self) -> u32 {
        let enabled = self.address & 0x8000_0000 != 0;
        let bdf = (self.address >> 8) & 0xFFFF;
        if !enabled || bdf != 0 {
            return 0xFFFF_FFFF;
        }
        match (self.address >> 2) & 0x3F {
            0 => 0x0008_1B36, // Red Hat QEMU PCIe host bridge ids
            2 => 0x0600_0000, // class: host bridge
            _ => 0,
        }
    }
}

impl BusDevice for HostBridgeOnly {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let value = if offset < 4 {
            self.address
        } else {
            self.config_dword() >> (8 * (offset - 4))
        };
        for (i, b) in data.iter_mut().enumerate() {
            *b = (value >> (8 * i)) as u8;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 4 {
            self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, machine::Error> {
    let t0 = Instant::now();
    let mut m = Machine::new(MachineConfig {
        num_cpus: args.cpus,
        ram_size_bytes: args.mem_mib << 20,
        serial: SerialOutput::Stdout,
    })?;
    m.pio_bus()
        .insert(Arc::new(Mutex::new(HostBridgeOnly::default())), 0xCF8, 8)?;
    eprintln!(
        "[boot] machine ready in {:?}: {} vCPUs, {} MiB, boot memslots {:?} of {}",
        t0.elapsed(),
        args.cpus,
        args.mem_mib,
        m.boot_memslots(),
        m.nr_memslots()
    );
    for n in 0..args.max_boots {
        let t = Instant::now();
        let info = m.load_linux(&LinuxBootSpec {
            kernel: args.kernel.clone(),
            initramfs: args.initramfs.clone(),
            cmdline: format!("{} hotmem_boot={n}", args.cmdline),
            num_cpus: args.cpus,
            pci_mmio64: m.layout().device_area_start().raw()
                ..m.layout().device_area_start().raw() + (1 << 30),
            numa: None,
        })?;
        if args.watchdog_secs > 0 {
            let signal = m.exit_signal().clone();
            let secs = args.watchdog_secs;
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(secs));
                signal.request(machine::StopRequest::Host);
            });
        }
        let reason = match m.run(&info) {
            Ok(r) => r,
            Err(e) => {
                for i in 0..args.cpus {
                    if let Ok(r) = m.vcpu_regs(i) {
                        eprintln!(
                            "[boot] vcpu{i}: rip={:#x} rsp={:#x} rflags={:#x}",
                            r.rip, r.rsp, r.rflags
                        );
                    }
                }
                return Err(e);
            }
        };
        eprintln!(
            "[boot] boot {n} ended with {reason:?} after {:?}",
            t.elapsed()
        );
        if reason == ExitReason::Poweroff {
            return Ok(ExitCode::SUCCESS);
        }
    }
    eprintln!("[boot] too many reboots");
    Ok(ExitCode::from(2))
}

fn main() -> ExitCode {
    env_logger::init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("boot: {e}");
            return ExitCode::from(1);
        }
    };
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("boot: {e}");
            ExitCode::from(1)
        }
    }
}
