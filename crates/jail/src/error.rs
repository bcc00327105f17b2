//! Everything that can stop the jail from starting the VMM.

use std::path::PathBuf;

/// Why the jail could not start the VMM. Nothing of the VMM ran when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is wrong.
    #[error("{0}")]
    Config(String),
    /// A file the VMM needs is missing or of the wrong kind.
    #[error("{path}: {what}")]
    Path { path: PathBuf, what: String },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A failed call, with the error `errno` holds now.
    pub fn last_os(what: impl Into<String>) -> Self {
        Error::Sys {
            what: what.into(),
            source: std::io::Error::last_os_error(),
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
