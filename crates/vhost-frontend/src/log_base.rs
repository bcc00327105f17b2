//! SET_LOG_BASE, sent on the connection's socket by hand.
//!
//! The `vhost` crate 0.18's `Frontend::set_log_base` (with LOG_SHMFD) waits for a 16-byte
//! `VhostUserLog` reply. The backends answer differently:
//!
//! - libvhost-user (qemu-storage-daemon 10.0.2's vhost-user-blk export) answers with an
//!   8-byte u64 payload (`vu_set_log_base_exec` sets `size = sizeof(u64)`; seen: flags 0x5,
//!   size 8, the value being the request's `mmap_size` echoed back). The crate then
//!   reads the 12-byte header and the 8 bytes and waits for 8 more: the socket's receive timeout
//!   only makes `recvmsg` fail with EAGAIN, which the crate retries, so the call never returns
//!   (seen with qemu-storage-daemon: blocked in `recv_body::<VhostUserLog>` for minutes),
//!   holding the connection's lock, so every later request on the connection (memory table
//!   updates included) blocks as well. Were more bytes to come, it would take 8 bytes of the
//!   next reply and the connection would be out of step.
//! - rust-vmm backends (the Rust virtiofsd 1.14.0) echo the 16-byte `VhostUserLog` (seen:
//!   flags 0x5, size 16), so the crate's call would work with them.
//!
//! QEMU reads the reply header and whatever payload size it announces. So does this: the
//! request goes out as QEMU sends it (no NEED_REPLY: both backends answer SET_LOG_BASE anyway),
//! and the reply is accepted with any payload up to 16 bytes. The socket's timeouts (set by
//! [`crate::negotiate`]) bound the wait.

use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;

use vhost::vhost_user::Frontend;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::dirty_log::BackendDirtyLog;

/// `VHOST_USER_SET_LOG_BASE`.
const SET_LOG_BASE: u32 = 6;
/// Header flags: protocol version 1.
const FLAG_VERSION: u32 = 0x1;
/// Header flags: a reply.
const FLAG_REPLY: u32 = 0x4;
/// The largest SET_LOG_BASE reply payload accepted (a `VhostUserLog`).
const MAX_REPLY_BYTES: u32 = 16;

/// Sends SET_LOG_BASE with `log`'s memfd (offset 0, the whole log) and reads the reply.
/// Returns the reply's payload size (8 from libvhost-user, 16 from rust-vmm backends).
///
/// Nothing else may use the connection meanwhile: the reply is read without the `vhost`
/// crate's lock (the caller holds the device; the memory table must not change during it).
pub(crate) fn set_log_base(
    frontend: &Frontend,
    log: &BackendDirtyLog,
) -> std::result::Result<u32, String> {
    // SAFETY: a second handle to the frontend's socket fd that is never closed (ManuallyDrop):
    // the frontend keeps owning the fd, which stays open while `frontend` is borrowed.
    let sock = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(frontend.as_raw_fd()) });
    let mut msg = Vec::with_capacity(28);
    msg.extend_from_slice(&SET_LOG_BASE.to_ne_bytes());
    msg.extend_from_slice(&FLAG_VERSION.to_ne_bytes());
    msg.extend_from_slice(&16u32.to_ne_bytes());
    msg.extend_from_slice(&log.size_bytes().to_ne_bytes()); // mmap_size
    msg.extend_from_slice(&0u64.to_ne_bytes()); // mmap_offset
    let sent = sock
        .send_with_fd(&msg[..], log.as_fd().as_raw_fd())
        .map_err(|e| format!("sending: {e}"))?;
    if sent < msg.len() {
        (&*sock)
            .write_all(&msg[sent..])
            .map_err(|e| format!("sending: {e}"))?;
    }
    let mut header = [0u8; 12];
    (&*sock)
        .read_exact(&mut header)
        .map_err(|e| format!("reading the reply header: {e}"))?;
    let word =
        |i: usize| u32::from_ne_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (request, flags, size) = (word(0), word(4), word(8));
    if request != SET_LOG_BASE || flags & FLAG_REPLY == 0 || size > MAX_REPLY_BYTES {
        return Err(format!(
            "unexpected reply: request {request}, flags {flags:#x}, {size} bytes"
        ));
    }
    let mut payload = [0u8; MAX_REPLY_BYTES as usize];
    (&*sock)
        .read_exact(&mut payload[..size as usize])
        .map_err(|e| format!("reading the {size}-byte reply: {e}"))?;
    log::debug!("SET_LOG_BASE answered with flags {flags:#x} and {size} payload bytes");
    Ok(size)
}
