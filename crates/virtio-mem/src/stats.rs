//! Counters for metrics: requests by type and response, and failures of the host-side steps.

use serde::Serialize;

use crate::request::{RequestKind, ResponseKind};

/// How often one request type was answered each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ResponseCounters {
    /// ACK responses.
    pub ack: u64,
    /// NACK responses.
    pub nack: u64,
    /// BUSY responses.
    pub busy: u64,
    /// ERROR responses.
    pub error: u64,
}

/// Device counters; all monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// PLUG requests.
    pub plug: ResponseCounters,
    /// UNPLUG requests.
    pub unplug: ResponseCounters,
    /// UNPLUG_ALL requests.
    pub unplug_all: ResponseCounters,
    /// STATE requests.
    pub state: ResponseCounters,
    /// Bytes acknowledged as plugged.
    pub plugged_bytes_total: u64,
    /// Bytes acknowledged as unplugged (UNPLUG, UNPLUG_ALL and system reset).
    pub unplugged_bytes_total: u64,
    /// Failed discards of host memory.
    pub discard_failures: u64,
    /// Failed preallocations (populate) on plug.
    pub prealloc_failures: u64,
    /// Failed memslot maps.
    pub map_failures: u64,
    /// Failed memslot unmaps (the slot stays mapped and is retried later).
    pub unmap_failures: u64,
    /// Malformed descriptor chains (each one marks the device as needing reset).
    pub malformed_chains: u64,
}

impl Stats {
    /// Counts one answered request.
    pub fn record(&mut self, request: RequestKind, response: ResponseKind) {
        let counters = match request {
            RequestKind::Plug => &mut self.plug,
            RequestKind::Unplug => &mut self.unplug,
            RequestKind::UnplugAll => &mut self.unplug_all,
            RequestKind::State => &mut self.state,
        };
        let counter = match response {
            ResponseKind::Ack => &mut counters.ack,
            ResponseKind::Nack => &mut counters.nack,
            ResponseKind::Busy => &mut counters.busy,
            ResponseKind::Error => &mut counters.error,
        };
        *counter += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_counts_by_request_and_response() {
        let mut s = Stats::default();
        s.record(RequestKind::Plug, ResponseKind::Ack);
        s.record(RequestKind::Plug, ResponseKind::Nack);
        s.record(RequestKind::Plug, ResponseKind::Nack);
        s.record(RequestKind::State, ResponseKind::Error);
        s.record(RequestKind::UnplugAll, ResponseKind::Busy);
        assert_eq!(
            s.plug,
            ResponseCounters {
                ack: 1,
                nack: 2,
                busy: 0,
                error: 0
            }
        );
        assert_eq!(s.state.error, 1);
        assert_eq!(s.unplug_all.busy, 1);
        assert_eq!(s.unplug, ResponseCounters::default());
    }
}
