//! The guest's serial console input: the VMM's stdin feeds COM1.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use machine::legacy::SerialDevice;

/// Feeds everything read from stdin to the guest's COM1, waiting while its FIFO is full.
/// Ends quietly at end of input.
pub fn spawn_stdin_pump(serial: Arc<Mutex<SerialDevice>>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            sandbox::enter_or_abort(sandbox::ThreadKind::Console);
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut pending = &buf[..n];
                while !pending.is_empty() {
                    let taken = crate::shared_device::lock_or_recover(&serial, "serial port")
                        .enqueue_input(pending);
                    pending = &pending[taken..];
                    if !pending.is_empty() {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
        })
        .map(|_| ())
}
