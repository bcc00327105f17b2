//! The command line, validated up front: every mistake gets a message saying what is wrong and
//! what would be right, before anything is created.

use std::path::PathBuf;

use api::size::{format_size, parse_size};
use boot::numa::{NodeId, NumaTopology};
use clap::Parser;
use hostmem::BackingKind;
use memslots::SlotPolicy;

use crate::Error;

/// hotmem: a KVM VMM with elastic memory (virtio-mem over dynamic memslots).
#[derive(Debug, Parser)]
#[command(name = "hotmem", version)]
pub struct Cli {
    /// Linux kernel (bzImage) to boot (not with --restore or --incoming).
    #[arg(long, required_unless_present_any = ["restore", "incoming"])]
    pub kernel: Option<PathBuf>,
    /// Initramfs to load.
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0")]
    pub cmdline: String,
    /// Boot memory: SIZE[,shared=on|off] (e.g. 512M; default 512M, or with --numa the sum of
    /// the nodes' memory; shared=on puts all guest memory in shared memfds, as vhost-user
    /// backends need).
    #[arg(long)]
    pub memory: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// A virtio-mem device (repeatable):
    /// id=ID,size=SIZE[,requested=SIZE][,block=SIZE][,slots=adaptive|fixed|single][,prealloc=on|off][,backing=anon|memfd|hugetlbfs][,hugetlbfs=DIR][,node=N]
    #[arg(long = "mem-device")]
    pub mem_devices: Vec<String>,
    /// A NUMA node (repeatable): node=N[,cpus=LIST][,memory=SIZE][,distances=M:D;...],
    /// LIST as 0-3;6. Boot memory is the sum of the nodes' memory.
    #[arg(long = "numa")]
    pub numa: Vec<String>,
    /// A vhost-user disk (repeatable): socket=PATH[,id=ID][,readonly=on][,queue_size=N].
    /// Guest memory is then shared (memfd) with the backend.
    #[arg(long = "disk")]
    pub disks: Vec<String>,
    /// A vhost-user shared folder, virtio-fs (repeatable): tag=TAG,socket=PATH[,queue_size=N][,id=ID].
    #[arg(long = "fs")]
    pub shared_folders: Vec<String>,
    /// Where the guest's serial console goes: stdio or file=PATH.
    #[arg(long, default_value = "stdio")]
    pub serial: String,
    /// Unix socket for the HTTP API.
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// Report "guest not following" when requested and plugged sizes differ without progress
    /// for this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub not_following_ms: u64,
    /// Start from the snapshot in this directory instead of booting (`hotmem-ctl snapshot`).
    /// Boot memory, vCPUs, kernel and devices come from the snapshot; `--mem-device
    /// id=ID,slots=POLICY` may pick another slot policy.
    #[arg(long, conflicts_with_all = ["kernel", "initramfs", "memory", "cpus"])]
    pub restore: Option<PathBuf>,
    /// With --restore: run the VM at once instead of leaving it paused.
    #[arg(long, requires = "restore")]
    pub resume: bool,
    /// With --restore: `lazy` (the default) maps the data of anonymous device memory
    /// copy-on-write from the memory files (ready at once, pages read on first touch; the
    /// files must not change while the VM runs); `eager` reads the memory files into fresh
    /// memory before the VM runs (start time grows with the data; the files may go at once).
    #[arg(long, default_value = "lazy", requires = "restore")]
    pub restore_memory: String,
    /// Wait for one live migration on tcp:HOST:PORT or unix:PATH (`PUT /v1/vm/migrate` on the
    /// source), then run the VM. Everything comes from the source; `--mem-device
    /// id=ID,slots=POLICY` may pick another slot policy.
    #[arg(long, conflicts_with_all = ["kernel", "initramfs", "memory", "cpus", "restore"])]
    pub incoming: Option<String>,
    /// What a thread's call outside its seccomp allow list does: `kill` ends the process
    /// (SIGSYS); `log` lets it through and the kernel logs it (`dmesg`, audit type 1326), to
    /// find a missing entry; `off` installs no filters. See docs/HARDENING.md.
    #[arg(long, default_value = "kill", value_name = "kill|log|off")]
    pub seccomp: sandbox::Mode,
}

/// A validated `--mem-device`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemDeviceConfig {
    /// Device id (API name).
    pub id: String,
    /// Region size.
    pub size_bytes: u64,
    /// Requested size at start.
    pub requested_bytes: u64,
    /// Block size; `None` picks the default for the backing.
    pub block_size_bytes: Option<u64>,
    /// Slot policy.
    pub slots: SlotPolicy,
    /// Preallocate on plug.
    pub prealloc: bool,
    /// Host memory kind.
    pub backing: BackingKind,
    /// hugetlbfs mount for `backing=hugetlbfs`.
    pub hugetlbfs_dir: Option<PathBuf>,
    /// `node=`: the NUMA node of the device's memory (needs `--numa`). After validation: set
    /// (node 0 if not given) exactly when the VM has `--numa` nodes.
    pub node: Option<NodeId>,
}

/// Where serial output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialTarget {
    /// The VMM's stdout.
    Stdio,
    /// A file.
    File(PathBuf),
}

/// Everything the VMM needs, validated.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initramfs: Option<PathBuf>,
    /// Command line.
    pub cmdline: String,
    /// Boot memory.
    pub boot_memory_bytes: u64,
    /// Guest memory (boot RAM and memory devices) lives in shared memfds.
    pub shared_memory: bool,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory devices.
    pub mem_devices: Vec<MemDeviceConfig>,
    /// vhost-user disks and shared folders.
    pub vhost_user: Vec<crate::vhost_user::VhostUserSpec>,
    /// Serial console target.
    pub serial: SerialTarget,
    /// API socket.
    pub api_socket: Option<PathBuf>,
    /// When a guest that does not follow a resize is reported.
    pub not_following_after: std::time::Duration,
    /// NUMA nodes (`--numa`), without the device ranges.
    pub numa: Option<NumaTopology>,
    /// Start from this snapshot instead of booting.
    pub restore: Option<std::sync::Arc<crate::snapshot::RestorePlan>>,
    /// After a restore, run at once (otherwise the VM stays paused).
    pub resume_after_restore: bool,
    /// Receive the VM from a live migration instead of booting.
    pub incoming: Option<std::sync::Arc<crate::migration::incoming::IncomingMigration>>,
}

const MIB: u64 = 1 << 20;

impl Cli {
    /// Validates the command line into a [`VmConfig`].
    pub fn validate(self) -> Result<VmConfig, Error> {
        let bad = |msg: String| Error::Config(msg);
        if self.restore.is_some() {
            return crate::snapshot::restore::restored_config(self);
        }
        if self.incoming.is_some() {
            return crate::migration::incoming::incoming_config(self);
        }
        let Some(kernel) = self.kernel.clone() else {
            return Err(bad("--kernel is required (or --restore DIR)".into()));
        };
        let memory_arg = match &self.memory {
            Some(m) => Some(
                crate::shared_memory::parse_memory_arg(m)
                    .map_err(|e| bad(format!("--memory {m}: {e}")))?,
            ),
            None => None,
        };
        let given_memory_bytes = memory_arg.map(|a| a.size_bytes);
        if !(1..=64).contains(&self.cpus) {
            return Err(bad(format!("--cpus {}: expected 1 to 64", self.cpus)));
        }
        if !kernel.is_file() {
            return Err(bad(format!("--kernel {}: no such file", kernel.display())));
        }
        if let Some(initramfs) = &self.initramfs
            && !initramfs.is_file()
        {
            return Err(bad(format!(
                "--initramfs {}: no such file",
                initramfs.display()
            )));
        }
        let mut mem_devices: Vec<MemDeviceConfig> = Vec::new();
        for spec in &self.mem_devices {
            let dev = MemDeviceConfig::parse(spec)
                .map_err(|e| bad(format!("--mem-device {spec}: {e}")))?;
            if mem_devices.iter().any(|d| d.id == dev.id) {
                return Err(bad(format!(
                    "--mem-device {spec}: id '{}' is used twice",
                    dev.id
                )));
            }
            mem_devices.push(dev);
        }
        let numa = crate::numa::from_cli(&self.numa, self.cpus, given_memory_bytes, &mem_devices)
            .map_err(|e| bad(format!("--numa: {e}")))?;
        if numa.is_some() {
            for d in &mut mem_devices {
                d.node = Some(d.node.unwrap_or_default());
            }
        }
        let boot_memory_bytes = match &numa {
            Some(t) => t.nodes.iter().map(|n| n.boot_memory_bytes).sum(),
            None => given_memory_bytes.unwrap_or(512 * MIB),
        };
        if boot_memory_bytes < 64 * MIB || boot_memory_bytes % (2 * MIB) != 0 {
            return Err(bad(format!(
                "--memory {}: boot memory must be at least 64M and a multiple of 2M",
                format_size(boot_memory_bytes)
            )));
        }
        let vhost_user = self.vhost_user_specs()?;
        let vhost_ids: Vec<String> = vhost_user.iter().map(|v| v.id.clone()).collect();
        let backing_explicit: Vec<bool> = self
            .mem_devices
            .iter()
            .map(|spec| spec.split(',').any(|p| p.starts_with("backing=")))
            .collect();
        let shared_memory = crate::shared_memory::plan_sharing(
            memory_arg.and_then(|a| a.shared),
            &vhost_ids,
            mem_devices
                .iter_mut()
                .zip(backing_explicit)
                .map(
                    |(device, backing_explicit)| crate::shared_memory::MemDeviceSharing {
                        device,
                        backing_explicit,
                    },
                )
                .collect(),
        )
        .map_err(bad)?;
        let serial = parse_serial(&self.serial)?;
        Ok(VmConfig {
            kernel,
            initramfs: self.initramfs,
            cmdline: self.cmdline,
            boot_memory_bytes,
            shared_memory,
            vcpus: self.cpus,
            mem_devices,
            vhost_user,
            serial,
            api_socket: self.api_socket,
            not_following_after: std::time::Duration::from_millis(self.not_following_ms),
            numa,
            restore: None,
            resume_after_restore: false,
            incoming: None,
        })
    }
}

impl Cli {
    /// Parses `--disk` and `--fs`; ids must differ.
    pub(crate) fn vhost_user_specs(&self) -> Result<Vec<crate::vhost_user::VhostUserSpec>, Error> {
        use crate::vhost_user::VhostUserSpec;
        let mut specs: Vec<VhostUserSpec> = Vec::new();
        let disks =
            self.disks.iter().enumerate().map(|(i, s)| {
                VhostUserSpec::parse_disk(s, i).map_err(|e| format!("--disk {s}: {e}"))
            });
        let folders = self
            .shared_folders
            .iter()
            .enumerate()
            .map(|(i, s)| VhostUserSpec::parse_fs(s, i).map_err(|e| format!("--fs {s}: {e}")));
        for spec in disks.chain(folders) {
            let spec = spec.map_err(Error::Config)?;
            if specs.iter().any(|s| s.id == spec.id) {
                return Err(Error::Config(format!(
                    "vhost-user device id '{}' is used twice",
                    spec.id
                )));
            }
            specs.push(spec);
        }
        Ok(specs)
    }
}

/// `--serial stdio|file=PATH`.
pub fn parse_serial(serial: &str) -> Result<SerialTarget, Error> {
    match serial {
        "stdio" => Ok(SerialTarget::Stdio),
        other => match other.strip_prefix("file=") {
            Some(path) if !path.is_empty() => Ok(SerialTarget::File(path.into())),
            _ => Err(Error::Config(format!(
                "--serial {other}: expected stdio or file=PATH"
            ))),
        },
    }
}

impl MemDeviceConfig {
    /// Parses `id=mem0,size=64G,requested=1G,...`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut id = None;
        let mut size = None;
        let mut requested = 0;
        let mut block = None;
        let mut slots = SlotPolicy::default();
        let mut prealloc = false;
        let mut backing = BackingKind::default();
        let mut hugetlbfs_dir = None;
        let mut node = None;
        for part in spec.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not key=value"))?;
            let size_of = |v: &str| parse_size(v).map_err(|e| format!("{key}: {e}"));
            match key {
                "id" => {
                    if value.is_empty()
                        || !value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    {
                        return Err(format!("id '{value}': use letters, digits, '-' or '_'"));
                    }
                    id = Some(value.to_string());
                }
                "size" => size = Some(size_of(value)?),
                "requested" => requested = size_of(value)?,
                "block" => block = Some(size_of(value)?),
                "slots" => slots = value.parse()?,
                "prealloc" => {
                    prealloc = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(format!("prealloc={value}: expected on or off")),
                    }
                }
                "backing" => backing = value.parse()?,
                "hugetlbfs" => hugetlbfs_dir = Some(PathBuf::from(value)),
                "node" => {
                    node =
                        Some(NodeId(value.parse::<u16>().map_err(|_| {
                            format!("node={value}: expected a node number")
                        })?))
                }
                _ => {
                    return Err(format!(
                        "unknown key '{key}': expected id, size, requested, block, slots, prealloc, backing, hugetlbfs or node"
                    ));
                }
            }
        }
        let id = id.ok_or("missing id=NAME")?;
        let size_bytes = size.ok_or("missing size=SIZE (e.g. size=64G)")?;
        if let Some(b) = block
            && (!b.is_power_of_two() || b < MIB)
        {
            return Err(format!(
                "block={}: must be a power of two of at least 1M",
                format_size(b)
            ));
        }
        let granule = block.unwrap_or(2 * MIB);
        if size_bytes == 0 || size_bytes % granule.max(128 * MIB) != 0 {
            return Err(format!(
                "size={}: must be a non-zero multiple of {} (the block size and Linux's 128M memory block)",
                format_size(size_bytes),
                format_size(granule.max(128 * MIB))
            ));
        }
        if requested > size_bytes || requested % granule != 0 {
            return Err(format!(
                "requested={}: must be a multiple of the block size {} and at most size={}",
                format_size(requested),
                format_size(granule),
                format_size(size_bytes)
            ));
        }
        if (backing == BackingKind::Hugetlbfs) != hugetlbfs_dir.is_some() {
            return Err("backing=hugetlbfs and hugetlbfs=DIR go together".into());
        }
        Ok(MemDeviceConfig {
            id,
            size_bytes,
            requested_bytes: requested,
            block_size_bytes: block,
            slots,
            prealloc,
            backing,
            hugetlbfs_dir,
            node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_mem_device_spec_parses() {
        let d = MemDeviceConfig::parse(
            "id=mem0,size=64G,requested=1G,block=4M,slots=fixed,prealloc=on,backing=memfd",
        )
        .unwrap();
        assert_eq!(d.id, "mem0");
        assert_eq!(d.size_bytes, 64 << 30);
        assert_eq!(d.requested_bytes, 1 << 30);
        assert_eq!(d.block_size_bytes, Some(4 << 20));
        assert_eq!(d.slots, SlotPolicy::Fixed);
        assert!(d.prealloc);
        assert_eq!(d.backing, BackingKind::Memfd);
    }

    #[test]
    fn defaults_are_adaptive_anon_nothing_requested() {
        let d = MemDeviceConfig::parse("id=m,size=1T").unwrap();
        assert_eq!(
            (d.slots, d.backing, d.requested_bytes, d.prealloc),
            (SlotPolicy::Adaptive, BackingKind::Anon, 0, false)
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("size=64G", "missing id"),
            ("id=m", "missing size"),
            ("id=m,size=64G,requested=65G", "at most size"),
            ("id=m,size=64G,requested=3M", "multiple of the block size"),
            ("id=m,size=64G,block=3M", "power of two"),
            ("id=m,size=100M", "multiple of 128M"),
            ("id=m,size=64G,slots=many", "unknown slot policy"),
            ("id=m,size=64G,colour=blue", "unknown key 'colour'"),
            ("id=m,size=64G,backing=hugetlbfs", "go together"),
            ("id=m,size=64G,prealloc=yes", "expected on or off"),
            ("id=a b,size=64G", "use letters"),
            ("id=m,size", "not key=value"),
        ] {
            let err = MemDeviceConfig::parse(spec).unwrap_err();
            assert!(err.contains(says), "{spec}: {err}");
        }
    }
}
