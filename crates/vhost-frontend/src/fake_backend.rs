//! An in-process vhost-user backend for tests: speaks the memory-table part of the protocol
//! over one end of a socket pair, checks each request the way real backends do, and can fail
//! the way they do (nack like rust-vmm, ack 0 then disconnect like libvhost-user).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_LOG_BASE: u32 = 6;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const SET_VRING_ENABLE: u32 = 18;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_CONFIG: u32 = 24;
const GET_MAX_MEM_SLOTS: u32 = 36;
const ADD_MEM_REG: u32 = 37;
const REM_MEM_REG: u32 = 38;

const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const PROTOCOL_REPLY_ACK: u64 = 1 << 3;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const VIRTIO_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VHOST_USER_PROTOCOL_F_REPLY_ACK | VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS`.
pub const PROTOCOL_ACK_AND_SLOTS: u64 = PROTOCOL_REPLY_ACK | (1 << 15);
/// `VHOST_F_LOG_ALL`.
pub const VIRTIO_LOG_ALL: u64 = 1 << 26;
/// `VHOST_USER_PROTOCOL_F_LOG_SHMFD`.
pub const PROTOCOL_LOG_SHMFD: u64 = 1 << 1;
/// `VHOST_USER_PROTOCOL_F_CONFIG`.
pub const PROTOCOL_CONFIG: u64 = 1 << 9;

/// How a fake misbehaves on its `nth` memory request (ADD/REM/SET_MEM_TABLE, counted from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeFailure {
    /// Answers the ack with 1 and keeps its table (rust-vmm backends).
    Nack {
        /// Which memory request.
        nth: usize,
    },
    /// Answers the ack with 0 without applying it, then closes the socket (libvhost-user's
    /// `vu_panic`).
    AckThenDisconnect {
        /// Which memory request.
        nth: usize,
    },
}

/// What a fake offers.
#[derive(Debug, Clone, Copy)]
pub struct FakeBackendConfig {
    /// Virtio features answered to GET_FEATURES.
    pub features: u64,
    /// Protocol features answered to GET_PROTOCOL_FEATURES.
    pub protocol_features: u64,
    /// Answer to GET_MAX_MEM_SLOTS, and the table size it enforces.
    pub max_mem_slots: u64,
    /// A scripted failure.
    pub failure: Option<FakeFailure>,
    /// First 8 bytes of the config space GET_CONFIG answers (a virtio-blk capacity).
    pub config_capacity: u64,
    /// Payload bytes of the SET_LOG_BASE reply: 8 like libvhost-user, 16 like rust-vmm.
    pub log_base_reply_bytes: usize,
    /// A guest address whose page the fake marks dirty in the log SET_LOG_BASE hands it.
    pub dirty_gpa_on_log_base: Option<u64>,
    /// Requests served per ring: GET_VRING_BASE answers the SET_VRING_BASE value plus this.
    pub served_per_ring: u16,
}

impl Default for FakeBackendConfig {
    fn default() -> Self {
        FakeBackendConfig {
            features: VIRTIO_PROTOCOL_FEATURES,
            protocol_features: PROTOCOL_ACK_AND_SLOTS,
            max_mem_slots: 509,
            failure: None,
            config_capacity: 0,
            log_base_reply_bytes: 8,
            dirty_gpa_on_log_base: None,
            served_per_ring: 0,
        }
    }
}

/// One region the fake holds.
#[derive(Debug)]
pub struct FakeRegion {
    /// Guest address.
    pub guest_addr: u64,
    /// Size.
    pub size_bytes: u64,
    /// Frontend address.
    pub user_addr: u64,
    /// Offset in `file`.
    pub mmap_offset: u64,
    /// The memory's file, as received.
    pub file: File,
}

#[derive(Debug, Default)]
struct State {
    table: BTreeMap<u64, FakeRegion>,
    violations: Vec<String>,
    requests: Vec<u32>,
    memory_requests: usize,
    acked_protocol: u64,
    disconnected: bool,
    max_regions_seen: usize,
    log: FakeLog,
}

/// What a fake saw of rings and logging.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FakeLog {
    /// SET_LOG_BASE: (mmap_size, mmap_offset, fds received).
    pub log_bases: Vec<(u64, u64, usize)>,
    /// SET_FEATURES values.
    pub features_set: Vec<u64>,
    /// SET_VRING_ADDR: (queue, flags, log guest address).
    pub vring_addrs: Vec<(u32, u32, u64)>,
    /// SET_VRING_BASE: (queue, next available index).
    pub vring_bases: Vec<(u32, u32)>,
    /// GET_VRING_BASE: (queue, answer).
    pub vring_bases_got: Vec<(u32, u32)>,
}

/// Handle to a running fake backend thread.
#[derive(Debug)]
pub struct FakeBackend {
    state: Arc<Mutex<State>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeBackend {
    /// Starts a fake; returns it and the frontend's end of the socket.
    pub fn spawn(config: FakeBackendConfig) -> (FakeBackend, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        (FakeBackend::serve(ours, config), theirs)
    }

    /// Serves a connection accepted elsewhere (e.g. on a listening socket).
    pub fn serve(stream: UnixStream, config: FakeBackendConfig) -> FakeBackend {
        let state = Arc::new(Mutex::new(State::default()));
        let thread_state = state.clone();
        let thread = std::thread::spawn(move || serve(stream, config, &thread_state));
        FakeBackend {
            state,
            thread: Some(thread),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// (guest address, size, user address) of every region held, by guest address.
    pub fn table(&self) -> Vec<(u64, u64, u64)> {
        self.state()
            .table
            .values()
            .map(|r| (r.guest_addr, r.size_bytes, r.user_addr))
            .collect()
    }

    /// Reads `len` bytes at `guest_addr` through the received file, as a backend would.
    pub fn read_guest(&self, guest_addr: u64, len: usize) -> Option<Vec<u8>> {
        let state = self.state();
        let region = state.table.values().find(|r| {
            r.guest_addr <= guest_addr && guest_addr + len as u64 <= r.guest_addr + r.size_bytes
        })?;
        let mut buf = vec![0; len];
        region
            .file
            .read_exact_at(
                &mut buf,
                region.mmap_offset + (guest_addr - region.guest_addr),
            )
            .ok()?;
        Some(buf)
    }

    /// Protocol violations seen (unknown removals, overlaps, exceeding its limit …).
    pub fn violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }

    /// Request ids received, in order.
    pub fn requests(&self) -> Vec<u32> {
        self.state().requests.clone()
    }

    /// What it saw of rings and logging.
    pub fn log(&self) -> FakeLog {
        self.state().log.clone()
    }

    /// The largest table it ever held.
    pub fn max_regions_seen(&self) -> usize {
        self.state().max_regions_seen
    }

    /// Whether it closed the connection (or saw it closed).
    pub fn is_disconnected(&self) -> bool {
        self.state().disconnected
    }

    /// Waits until the frontend closed the connection.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Outcome {
    /// Ack with this value (if the frontend asked for an ack).
    Ack(u64),
    /// Send this u64 as the reply.
    Reply(u64),
    /// Send this body as the reply.
    ReplyBody(Vec<u8>),
    /// Ack with 0, then hang up.
    AckAndClose,
}

fn serve(mut sock: UnixStream, config: FakeBackendConfig, state: &Mutex<State>) {
    loop {
        let Some((request, flags, body, files)) = receive(&mut sock) else {
            break;
        };
        let mut st = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.requests.push(request);
        let outcome = handle(&mut st, &config, request, &body, files);
        let need_ack = flags & FLAG_NEED_REPLY != 0 && st.acked_protocol & PROTOCOL_REPLY_ACK != 0;
        let (value, close) = match outcome {
            Outcome::Reply(v) => (Some(v.to_ne_bytes().to_vec()), false),
            Outcome::ReplyBody(body) => (Some(body), false),
            Outcome::Ack(v) => (need_ack.then(|| v.to_ne_bytes().to_vec()), false),
            Outcome::AckAndClose => (need_ack.then(|| 0u64.to_ne_bytes().to_vec()), true),
        };
        if let Some(body) = value {
            let mut msg = Vec::with_capacity(12 + body.len());
            msg.extend_from_slice(&request.to_ne_bytes());
            msg.extend_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_ne_bytes());
            msg.extend_from_slice(&(body.len() as u32).to_ne_bytes());
            msg.extend_from_slice(&body);
            if sock.write_all(&msg).is_err() {
                break;
            }
        }
        if close {
            break;
        }
    }
    let mut st = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    st.disconnected = true;
    st.table.clear();
}

type Message = (u32, u32, Vec<u8>, Vec<File>);

fn receive(sock: &mut UnixStream) -> Option<Message> {
    let mut hdr = [0u8; 12];
    let mut fds: [RawFd; 8] = [-1; 8];
    let mut iov = [libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: hdr.len(),
    }];
    // SAFETY: the iovec points at `hdr`, which outlives the call and may take any bytes.
    let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut fds) }.ok()?;
    let files = fds[..nfds]
        .iter()
        // SAFETY: each of the first `nfds` entries is a fresh fd received just now, owned here.
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return None;
    }
    if n < hdr.len() {
        sock.read_exact(&mut hdr[n..]).ok()?;
    }
    let word = |i: usize| u32::from_ne_bytes(hdr[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    let size = word(2) as usize;
    if size > 0x1000 {
        return None;
    }
    let mut body = vec![0; size];
    sock.read_exact(&mut body).ok()?;
    Some((word(0), word(1), body, files))
}

fn u64_at(body: &[u8], index: usize) -> u64 {
    body.get(index * 8..index * 8 + 8)
        .map_or(0, |b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
}

fn handle(
    st: &mut State,
    config: &FakeBackendConfig,
    request: u32,
    body: &[u8],
    mut files: Vec<File>,
) -> Outcome {
    match request {
        GET_FEATURES => return Outcome::Reply(config.features),
        GET_PROTOCOL_FEATURES => return Outcome::Reply(config.protocol_features),
        GET_MAX_MEM_SLOTS => return Outcome::Reply(config.max_mem_slots),
        GET_CONFIG => {
            // Echo offset, size and flags; the payload is zeros but for the capacity.
            let mut reply = body.to_vec();
            if reply.len() >= 20 && body[..4] == [0; 4] {
                reply[12..20].copy_from_slice(&config.config_capacity.to_le_bytes());
            }
            return Outcome::ReplyBody(reply);
        }
        SET_PROTOCOL_FEATURES => {
            let wanted = u64_at(body, 0);
            if wanted & !config.protocol_features != 0 {
                st.violations
                    .push(format!("acked unoffered protocol features {wanted:#x}"));
            }
            st.acked_protocol = wanted;
            return Outcome::Ack(0);
        }
        SET_OWNER => return Outcome::Ack(0),
        SET_FEATURES => {
            st.log.features_set.push(u64_at(body, 0));
            return Outcome::Ack(0);
        }
        SET_LOG_BASE => return log_base(st, config, body, &files),
        SET_VRING_NUM | SET_VRING_ADDR | SET_VRING_BASE | GET_VRING_BASE | SET_VRING_KICK
        | SET_VRING_CALL | SET_VRING_ENABLE => return ring_request(st, config, request, body),
        SET_MEM_TABLE | ADD_MEM_REG | REM_MEM_REG => {}
        other => {
            st.violations.push(format!("unexpected request {other}"));
            return Outcome::Ack(1);
        }
    }
    let nth = st.memory_requests;
    st.memory_requests += 1;
    match config.failure {
        Some(FakeFailure::Nack { nth: n }) if n == nth => return Outcome::Ack(1),
        Some(FakeFailure::AckThenDisconnect { nth: n }) if n == nth => return Outcome::AckAndClose,
        _ => {}
    }
    let region = |i: usize, file| FakeRegion {
        guest_addr: u64_at(body, i),
        size_bytes: u64_at(body, i + 1),
        user_addr: u64_at(body, i + 2),
        mmap_offset: u64_at(body, i + 3),
        file,
    };
    match request {
        ADD_MEM_REG => {
            if files.len() != 1 {
                st.violations
                    .push(format!("ADD_MEM_REG with {} fds", files.len()));
                return Outcome::Ack(1);
            }
            let r = region(1, files.remove(0));
            if st.table.len() as u64 >= config.max_mem_slots {
                st.violations
                    .push("ADD_MEM_REG beyond GET_MAX_MEM_SLOTS".into());
                return Outcome::AckAndClose;
            }
            if st.table.values().any(|t| {
                t.guest_addr < r.guest_addr + r.size_bytes
                    && r.guest_addr < t.guest_addr + t.size_bytes
            }) {
                st.violations
                    .push(format!("ADD_MEM_REG overlapping at {:#x}", r.guest_addr));
                return Outcome::Ack(1);
            }
            st.table.insert(r.guest_addr, r);
        }
        REM_MEM_REG => {
            let (gpa, size, uaddr) = (u64_at(body, 1), u64_at(body, 2), u64_at(body, 3));
            match st.table.get(&gpa) {
                Some(t) if t.size_bytes == size && t.user_addr == uaddr => {
                    st.table.remove(&gpa);
                }
                _ => {
                    st.violations
                        .push(format!("REM_MEM_REG of unknown region {gpa:#x}+{size:#x}"));
                    return Outcome::AckAndClose;
                }
            }
        }
        _ => {
            let count = u64_at(body, 0) as usize & 0xffff_ffff;
            if count == 0 || count > 8 || count != files.len() {
                st.violations.push(format!(
                    "SET_MEM_TABLE with {count} regions, {} fds",
                    files.len()
                ));
                return Outcome::Ack(1);
            }
            st.table.clear();
            for (i, file) in files.into_iter().enumerate() {
                let r = region(1 + i * 4, file);
                st.table.insert(r.guest_addr, r);
            }
        }
    }
    st.max_regions_seen = st.max_regions_seen.max(st.table.len());
    Outcome::Ack(0)
}

fn u32_at(body: &[u8], index: usize) -> u32 {
    body.get(index * 4..index * 4 + 4)
        .map_or(0, |b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

fn log_base(st: &mut State, config: &FakeBackendConfig, body: &[u8], files: &[File]) -> Outcome {
    let (size, offset) = (u64_at(body, 0), u64_at(body, 1));
    st.log.log_bases.push((size, offset, files.len()));
    if body.len() != 16 || files.len() != 1 {
        st.violations.push(format!(
            "SET_LOG_BASE with {} bytes and {} fds",
            body.len(),
            files.len()
        ));
    }
    if let (Some(gpa), Some(file)) = (config.dirty_gpa_on_log_base, files.first()) {
        // Marks the page the way backends do: bit page % 8 of byte page / 8.
        let page = gpa / 4096;
        let mut byte = [0u8];
        let at = offset + page / 8;
        if file.read_exact_at(&mut byte, at).is_err()
            || file.write_all_at(&[byte[0] | 1 << (page % 8)], at).is_err()
        {
            st.violations.push(format!("log too small for {gpa:#x}"));
        }
    }
    // libvhost-user answers a u64 (8 bytes), rust-vmm echoes the 16-byte VhostUserLog.
    let mut reply = body.to_vec();
    reply.resize(config.log_base_reply_bytes, 0);
    Outcome::ReplyBody(reply)
}

fn ring_request(st: &mut State, config: &FakeBackendConfig, request: u32, body: &[u8]) -> Outcome {
    let (queue, value) = (u32_at(body, 0), u32_at(body, 1));
    match request {
        SET_VRING_ADDR => st.log.vring_addrs.push((queue, value, u64_at(body, 4))),
        SET_VRING_BASE => st.log.vring_bases.push((queue, value)),
        GET_VRING_BASE => {
            let base = st
                .log
                .vring_bases
                .iter()
                .rev()
                .find(|(q, _)| *q == queue)
                .map_or(0, |(_, b)| *b);
            let answer = base + u32::from(config.served_per_ring);
            st.log.vring_bases_got.push((queue, answer));
            let mut reply = queue.to_ne_bytes().to_vec();
            reply.extend_from_slice(&answer.to_ne_bytes());
            return Outcome::ReplyBody(reply);
        }
        _ => {}
    }
    Outcome::Ack(0)
}
