//! The request/response wire format, decoded into typed values at the edge.
//!
//! Request (24 bytes): `le16 type; le16 pad[3]; le64 addr; le16 nb_blocks; le16 pad[3]`.
//! Response (10 bytes): `le16 type; le16 pad[3]; le16 state`.

use vm_memory::GuestAddress;

use crate::{Error, Result};

/// Size of a request on the wire.
pub const REQUEST_BYTES: usize = 24;
/// Size of a response on the wire (also the used length reported to the driver).
pub const RESPONSE_BYTES: usize = 10;

const REQ_PLUG: u16 = 0;
const REQ_UNPLUG: u16 = 1;
const REQ_UNPLUG_ALL: u16 = 2;
const REQ_STATE: u16 = 3;

const RESP_ACK: u16 = 0;
const RESP_NACK: u16 = 1;
const RESP_BUSY: u16 = 2;
const RESP_ERROR: u16 = 3;

/// A range of blocks named by a request: `nb_blocks` blocks from `guest_addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRange {
    /// Guest physical address of the first block.
    pub guest_addr: GuestAddress,
    /// Number of blocks.
    pub nb_blocks: u16,
}

/// A decoded guest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `VIRTIO_MEM_REQ_PLUG`.
    Plug(BlockRange),
    /// `VIRTIO_MEM_REQ_UNPLUG`.
    Unplug(BlockRange),
    /// `VIRTIO_MEM_REQ_UNPLUG_ALL`.
    UnplugAll,
    /// `VIRTIO_MEM_REQ_STATE`.
    State(BlockRange),
}

/// Which request a counter or log line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// PLUG.
    Plug,
    /// UNPLUG.
    Unplug,
    /// UNPLUG_ALL.
    UnplugAll,
    /// STATE.
    State,
}

/// The state of a block range, as answered to STATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeState {
    /// Every block is plugged (`VIRTIO_MEM_STATE_PLUGGED` = 0).
    Plugged,
    /// No block is plugged (`VIRTIO_MEM_STATE_UNPLUGGED` = 1).
    Unplugged,
    /// Some are, some are not (`VIRTIO_MEM_STATE_MIXED` = 2).
    Mixed,
}

/// A response to the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// The request was carried out.
    Ack,
    /// A STATE request was answered.
    AckState(RangeState),
    /// PLUG refused because it would exceed the requested size; the driver re-reads the config.
    Nack,
    /// A transient failure; the driver retries later.
    Busy,
    /// The request is invalid; the Linux driver stops using the device.
    Error,
}

/// The outcome class of a response, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseKind {
    /// ACK (including a STATE answer).
    Ack,
    /// NACK.
    Nack,
    /// BUSY.
    Busy,
    /// ERROR.
    Error,
}

impl Request {
    /// Decodes a request; padding is ignored.
    pub fn parse(bytes: &[u8; REQUEST_BYTES]) -> Result<Request> {
        let kind = u16::from_le_bytes([bytes[0], bytes[1]]);
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&bytes[8..16]);
        let range = BlockRange {
            guest_addr: GuestAddress(u64::from_le_bytes(addr)),
            nb_blocks: u16::from_le_bytes([bytes[16], bytes[17]]),
        };
        match kind {
            REQ_PLUG => Ok(Request::Plug(range)),
            REQ_UNPLUG => Ok(Request::Unplug(range)),
            REQ_UNPLUG_ALL => Ok(Request::UnplugAll),
            REQ_STATE => Ok(Request::State(range)),
            other => Err(Error::UnknownRequestType(other)),
        }
    }

    /// Encodes the request (what a driver would send; used by tests and tools).
    pub fn to_bytes(&self) -> [u8; REQUEST_BYTES] {
        let (kind, range) = match *self {
            Request::Plug(r) => (REQ_PLUG, Some(r)),
            Request::Unplug(r) => (REQ_UNPLUG, Some(r)),
            Request::UnplugAll => (REQ_UNPLUG_ALL, None),
            Request::State(r) => (REQ_STATE, Some(r)),
        };
        let mut bytes = [0u8; REQUEST_BYTES];
        bytes[0..2].copy_from_slice(&kind.to_le_bytes());
        if let Some(r) = range {
            bytes[8..16].copy_from_slice(&r.guest_addr.0.to_le_bytes());
            bytes[16..18].copy_from_slice(&r.nb_blocks.to_le_bytes());
        }
        bytes
    }

    /// Which kind of request this is.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Plug(_) => RequestKind::Plug,
            Request::Unplug(_) => RequestKind::Unplug,
            Request::UnplugAll => RequestKind::UnplugAll,
            Request::State(_) => RequestKind::State,
        }
    }
}

impl RangeState {
    fn wire(self) -> u16 {
        match self {
            RangeState::Plugged => 0,
            RangeState::Unplugged => 1,
            RangeState::Mixed => 2,
        }
    }
}

impl Response {
    /// Encodes the response.
    pub fn to_bytes(&self) -> [u8; RESPONSE_BYTES] {
        let (kind, state) = match *self {
            Response::Ack => (RESP_ACK, 0),
            Response::AckState(s) => (RESP_ACK, s.wire()),
            Response::Nack => (RESP_NACK, 0),
            Response::Busy => (RESP_BUSY, 0),
            Response::Error => (RESP_ERROR, 0),
        };
        let mut bytes = [0u8; RESPONSE_BYTES];
        bytes[0..2].copy_from_slice(&kind.to_le_bytes());
        bytes[8..10].copy_from_slice(&state.to_le_bytes());
        bytes
    }

    /// The outcome class.
    pub fn kind(&self) -> ResponseKind {
        match self {
            Response::Ack | Response::AckState(_) => ResponseKind::Ack,
            Response::Nack => ResponseKind::Nack,
            Response::Busy => ResponseKind::Busy,
            Response::Error => ResponseKind::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plug_request_decodes_type_addr_and_block_count() {
        let mut b = [0xeeu8; REQUEST_BYTES];
        b[0..2].copy_from_slice(&0u16.to_le_bytes());
        b[8..16].copy_from_slice(&0x1_2340_0000u64.to_le_bytes());
        b[16..18].copy_from_slice(&7u16.to_le_bytes());
        assert_eq!(
            Request::parse(&b).unwrap(),
            Request::Plug(BlockRange {
                guest_addr: GuestAddress(0x1_2340_0000),
                nb_blocks: 7
            })
        );
    }

    #[test]
    fn every_request_type_round_trips() {
        let r = BlockRange {
            guest_addr: GuestAddress(0x4000_0000),
            nb_blocks: 3,
        };
        for req in [
            Request::Plug(r),
            Request::Unplug(r),
            Request::UnplugAll,
            Request::State(r),
        ] {
            assert_eq!(Request::parse(&req.to_bytes()).unwrap(), req);
        }
    }

    #[test]
    fn unknown_request_type_is_an_error() {
        let mut b = [0u8; REQUEST_BYTES];
        b[0] = 4;
        assert!(matches!(
            Request::parse(&b),
            Err(Error::UnknownRequestType(4))
        ));
        b[0] = 0;
        b[1] = 1;
        assert!(matches!(
            Request::parse(&b),
            Err(Error::UnknownRequestType(256))
        ));
    }

    #[test]
    fn responses_encode_type_and_state() {
        assert_eq!(Response::Ack.to_bytes(), [0; 10]);
        assert_eq!(Response::Nack.to_bytes()[0..2], [1, 0]);
        assert_eq!(Response::Busy.to_bytes()[0..2], [2, 0]);
        assert_eq!(Response::Error.to_bytes()[0..2], [3, 0]);
        let mixed = Response::AckState(RangeState::Mixed).to_bytes();
        assert_eq!(mixed, [0, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
        assert_eq!(Response::AckState(RangeState::Unplugged).to_bytes()[8], 1);
        assert_eq!(Response::AckState(RangeState::Plugged).to_bytes()[8], 0);
    }
}
