//! `hotmem-jail`: starts hotmem the way a host that runs untrusted guests should.
//!
//! - [`config`]: the jail's command line, validated.
//! - [`plan`]: what the jailed VMM needs inside its empty root, read from hotmem's own
//!   arguments (kernel, initramfs, API socket folder, serial file, hugetlbfs, snapshots).
//! - [`root`]: the new root: bind mounts, a private `/dev` with only `kvm`, `urandom`, `null`,
//!   then `pivot_root` into it.
//! - [`identity`]: namespaces, capabilities, `no_new_privs`, the unprivileged uid/gid.
//! - [`cgroup`]: optional cgroup v2 limits.
//! - [`run`]: the whole sequence, ending in `execve` of the VMM.

pub mod cgroup;
pub mod config;
mod error;
pub mod identity;
pub mod plan;
pub mod root;
pub mod run;

pub use config::JailConfig;
pub use error::Error;
