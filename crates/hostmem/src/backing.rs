//! Which kind of host memory backs a region.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kind of host memory, as chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackingKind {
    /// Private anonymous memory with `MAP_NORESERVE` (the default).
    #[default]
    Anon,
    /// A shared memfd (needed by vhost-user back ends).
    Memfd,
    /// A file on hugetlbfs.
    Hugetlbfs,
}

impl FromStr for BackingKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "anon" => Ok(BackingKind::Anon),
            "memfd" => Ok(BackingKind::Memfd),
            "hugetlbfs" => Ok(BackingKind::Hugetlbfs),
            other => Err(format!(
                "unknown backing '{other}': expected anon, memfd or hugetlbfs"
            )),
        }
    }
}

/// A complete backing description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    /// The kind of memory.
    pub kind: BackingKind,
    /// Size of the region.
    pub size_bytes: u64,
    /// For hugetlbfs: the mount point to create the (unlinked) file in.
    pub hugetlbfs_dir: Option<PathBuf>,
}

impl Backing {
    /// Private anonymous memory of `size_bytes`.
    pub fn anon(size_bytes: u64) -> Self {
        Backing {
            kind: BackingKind::Anon,
            size_bytes,
            hugetlbfs_dir: None,
        }
    }
}
