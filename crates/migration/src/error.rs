//! The crate's one error type.

use crate::protocol::Refusal;

/// What can go wrong in a migration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stream failed (peer gone, reset, closed early).
    #[error("migration stream: {0}")]
    Io(#[from] std::io::Error),
    /// A frame that is not a migration message of this protocol.
    #[error("migration protocol: {0}")]
    Protocol(String),
    /// The destination refused the handshake.
    #[error("the destination refused the migration: {0}")]
    Refused(Refusal),
    /// The peer abandoned the migration.
    #[error("the peer aborted the migration: {0}")]
    Aborted(String),
    /// The migration was cancelled on this side.
    #[error("the migration was cancelled")]
    Cancelled,
    /// Pre-copy did not converge within the allowed rounds.
    #[error(
        "the migration did not converge after {rounds} rounds: {}",
        not_converging_reason(*remaining_bytes, *expected_downtime_ms, *switchover_ms, *max_downtime_ms)
    )]
    NotConverging {
        /// Rounds run.
        rounds: u32,
        /// Dirty bytes left after the last round.
        remaining_bytes: u64,
        /// What the pause would take: the final pass at the measured bandwidth plus the
        /// switchover.
        expected_downtime_ms: u64,
        /// The switchover part of it.
        switchover_ms: u64,
        /// The limit.
        max_downtime_ms: u64,
    },
    /// The VM side (memory, dirty log, pause, device state) failed.
    #[error("{0}")]
    Vm(String),
}

fn not_converging_reason(
    remaining_bytes: u64,
    expected_downtime_ms: u64,
    switchover_ms: u64,
    max_downtime_ms: u64,
) -> String {
    if switchover_ms > max_downtime_ms {
        format!(
            "the switchover alone (pausing, device state, round trip, restore on the \
             destination) takes ~{switchover_ms} ms, more than max_downtime_ms={max_downtime_ms}; \
             ask for at least {switchover_ms} ms ({remaining_bytes} bytes still dirty)"
        )
    } else {
        format!(
            "{remaining_bytes} bytes still dirty, expected downtime {expected_downtime_ms} ms \
             (switchover ~{switchover_ms} ms of it) > max_downtime_ms {max_downtime_ms}"
        )
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
