//! The VMM's error type.

/// What can stop the VMM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is wrong.
    #[error("{0}")]
    Config(String),
}
