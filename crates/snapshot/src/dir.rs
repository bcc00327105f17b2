//! The snapshot directory: `state.bin` plus one memory file per region.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::format::{self, Decoded, MAX_PAYLOAD_BYTES, MAX_VERSION_STRING_BYTES};
use crate::model::VmSnapshot;
use crate::{Error, Result};

/// Name of the state file inside a snapshot directory.
pub const STATE_FILE_NAME: &str = "state.bin";

/// A snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDir {
    path: PathBuf,
}

impl SnapshotDir {
    /// The directory at `path` (not checked yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SnapshotDir { path: path.into() }
    }

    /// Creates the directory (and parents) for writing a snapshot.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self> {
        let dir = Self::new(path);
        fs::create_dir_all(&dir.path).map_err(|e| Error::io(&dir.path, e))?;
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of the state file.
    pub fn state_path(&self) -> PathBuf {
        self.path.join(STATE_FILE_NAME)
    }

    /// Path of the memory file `file_name`, which must be a plain file name (it comes from the
    /// untrusted state file).
    pub fn file_path(&self, file_name: &str) -> Result<PathBuf> {
        let plain = !file_name.is_empty()
            && file_name != "."
            && file_name != ".."
            && file_name != STATE_FILE_NAME
            && !file_name.contains(['/', '\\', '\0']);
        if !plain {
            return Err(Error::BadFileName(file_name.to_owned()));
        }
        Ok(self.path.join(file_name))
    }

    /// Writes the state file (to a temporary name, then renamed into place, so a crash never
    /// leaves a half-written `state.bin`).
    pub fn write_state(&self, snapshot: &VmSnapshot, hotmem_version: &str) -> Result<()> {
        let bytes = format::encode(snapshot, hotmem_version)?;
        let tmp = self.path.join(format!("{STATE_FILE_NAME}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()
        };
        write().map_err(|e| Error::io(&tmp, e))?;
        let state = self.state_path();
        fs::rename(&tmp, &state).map_err(|e| Error::io(&state, e))
    }

    /// Reads and checks the state file; refuses files too large to be one before reading them.
    pub fn read_state(&self) -> Result<Decoded> {
        let path = self.state_path();
        let len = fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
        let limit = MAX_PAYLOAD_BYTES + 26 + MAX_VERSION_STRING_BYTES as u64;
        if len > limit {
            return Err(Error::TooLarge {
                size_bytes: len,
                limit_bytes: limit,
            });
        }
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        format::decode(&bytes)
    }
}
