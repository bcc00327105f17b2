//! `cargo xtask guest-image`: the kernels, initramfs images and host tools the nested
//! end-to-end harness boots (L0 QEMU → L1 Linux with KVM and the VMM → L2 Linux guest).

pub mod apt;
#[cfg(test)]
mod apt_fresh_tests;
pub mod initramfs;
pub mod modules;
pub mod virtiofsd;
pub mod vmm;

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;

use crate::test::run_step;
use initramfs::Staging;
pub use vmm::Vmm;

/// The L2 kernel used unless told otherwise (bookworm's current 6.1 ABI).
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-6.1.0-*-amd64";
/// The kernel of the `legacy-guest` scenario (Linux 5.10: no UNPLUGGED_INACCESSIBLE).
pub const LEGACY_KERNEL_PACKAGE: &str = "linux-image-5.10.0-*-amd64";
/// Modules L1 loads to get /dev/kvm, and loop + ext4 to check a guest's disk image from the
/// host side (dependencies come from modules.dep; crc32c_generic is ext4's soft dependency,
/// which modules.dep does not list).
const L1_MODULES: [&str; 4] = ["kvm_amd", "loop", "crc32c_generic", "ext4"];
/// Modules L2 loads to see the virtio-mem device, a vhost-user disk with an ext2 file system
/// (ext4 serves ext2) and a virtio-fs shared folder.
const L2_MODULES: [&str; 7] = [
    "virtio_pci",
    "virtio_mem",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    "fuse",
    "virtiofs",
];
/// QEMU's firmware and option ROMs that an L2 boot with `-kernel` reads.
const QEMU_DATA_FILES: [&str; 4] = [
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/linuxboot.bin",
    "/usr/share/seabios/bios-256k.bin",
];

const L1_INIT: &str = include_str!("scripts/l1-init.sh");
const L1_LIB: &str = include_str!("scripts/lib.sh");
const L1_SCENARIOS: &str = include_str!("scripts/scenarios.sh");
const L1_SCENARIOS_MIGRATE: &str = include_str!("scripts/scenarios-migrate.sh");
const L1_VMM_QEMU: &str = include_str!("scripts/vmm-qemu.sh");
const L1_VMM_HOTMEM: &str = include_str!("scripts/vmm-hotmem.sh");
const L2_INIT: &str = include_str!("scripts/l2-init.sh");

#[derive(Args, Clone)]
pub struct GuestImageArgs {
    /// Debian kernel package for the L2 guest (`*` picks the newest match).
    #[arg(long, default_value = DEFAULT_KERNEL_PACKAGE)]
    pub kernel_package: String,
}

/// Where the harness keeps downloads and images: `<workspace>/target/guest`.
pub struct GuestPaths {
    pub root: PathBuf,
}

impl GuestPaths {
    pub fn new() -> Self {
        let workspace = crate::workspace::root();
        GuestPaths {
            root: workspace.join("target/guest"),
        }
    }

    pub fn workspace(&self) -> PathBuf {
        self.root
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
            .to_path_buf()
    }

    fn debs(&self) -> PathBuf {
        self.root.join("debs")
    }
}

impl Default for GuestPaths {
    fn default() -> Self {
        Self::new()
    }
}

/// An extracted Debian kernel package.
pub struct Kernel {
    pub package: String,
    pub version: String,
    pub vmlinuz: PathBuf,
    pub modules_root: PathBuf,
}

/// Downloads (once) and extracts the newest package matching `pattern`.
pub fn prepare_kernel(paths: &GuestPaths, pattern: &str) -> Result<Kernel, String> {
    let fetch = || -> Result<(String, PathBuf), String> {
        let package = apt::resolve_package(pattern)?;
        let deb = apt::download(&package, &paths.debs())?;
        Ok((package, deb))
    };
    // Stale package lists can name a kernel the archive no longer has: refresh, resolve again.
    let (package, deb) = fetch().or_else(|first| {
        eprintln!("== {first}; refreshing package lists");
        apt::refresh()?;
        fetch()
    })?;
    let extracted = paths.root.join("kernels").join(&package);
    extract_once(&deb, &extracted, |dir| modules::modules_root(dir).map(drop))?;
    let (modules_root, version) = modules::modules_root(&extracted)?;
    let vmlinuz = extracted.join(format!("boot/vmlinuz-{version}"));
    if !vmlinuz.exists() {
        return Err(format!("{package} has no {}", vmlinuz.display()));
    }
    Ok(Kernel {
        package,
        version,
        vmlinuz,
        modules_root,
    })
}

/// Extracts `deb` into `dest` unless an earlier run did; `finish` runs on the fresh tree
/// before it is moved into place, so concurrent runs never see a half-made tree.
fn extract_once(
    deb: &Path,
    dest: &Path,
    finish: impl Fn(&Path) -> Result<(), String>,
) -> Result<(), String> {
    if dest.exists() {
        return Ok(());
    }
    let temporary = unique_sibling(dest);
    std::fs::create_dir_all(&temporary).map_err(|e| format!("{}: {e}", temporary.display()))?;
    run_step(
        &format!("extract {}", deb.display()),
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(&temporary),
    )?;
    finish(&temporary)?;
    if std::fs::rename(&temporary, dest).is_err() {
        // Another run won the race; its tree is as good as ours.
        let _ = std::fs::remove_dir_all(&temporary);
    }
    Ok(())
}

/// `path` with a suffix unique to this process, in the same directory.
pub fn unique_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

fn busybox(paths: &GuestPaths) -> Result<PathBuf, String> {
    let deb = apt::download("busybox-static", &paths.debs())?;
    let extracted = paths.root.join("busybox-static");
    extract_once(&deb, &extracted, |_| Ok(()))?;
    Ok(extracted.join("bin/busybox"))
}

fn add_modules(staging: &Staging, kernel: &Kernel, wanted: &[&str]) -> Result<(), String> {
    let dest = staging.path("lib/modules/.keep")?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let order = modules::install_modules(&kernel.modules_root, wanted, dir)?;
    staging.add_bytes(
        "etc/modules.order",
        (order.join("\n") + "\n").as_bytes(),
        0o644,
    )
}

/// Builds the L2 initramfs for `kernel`: busybox, the virtio modules and the guest agent.
pub fn build_l2_initramfs(paths: &GuestPaths, kernel: &Kernel) -> Result<PathBuf, String> {
    let staging = Staging::new(&unique_sibling(
        &paths.root.join(format!("stage-l2-{}", kernel.version)),
    ))?;
    staging.add_file(&busybox(paths)?, "bin/busybox")?;
    add_modules(&staging, kernel, &L2_MODULES)?;
    staging.add_bytes("init", L2_INIT.as_bytes(), 0o755)?;
    let archive = paths.root.join(format!("l2-{}.cpio", kernel.version));
    staging.pack(&archive)?;
    Ok(archive)
}

/// What one L0 boot needs: the L1 kernel and the L1 initramfs holding everything else.
pub struct L1Image {
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
}

/// The inputs of one L1 image.
pub struct L1Spec<'a> {
    pub l1_kernel: &'a Kernel,
    pub l2_kernel: &'a Kernel,
    pub l2_initramfs: &'a Path,
    pub vmm: Vmm,
}

/// Builds the L1 initramfs: busybox, KVM modules, the VMM, the L2 guest and the scenarios.
pub fn build_l1_image(paths: &GuestPaths, spec: &L1Spec) -> Result<L1Image, String> {
    let name = format!("l1-{}-{}", spec.vmm.name(), spec.l2_kernel.version);
    let staging = Staging::new(&unique_sibling(&paths.root.join(format!("stage-{name}"))))?;
    staging.add_file(&busybox(paths)?, "bin/busybox")?;
    add_modules(&staging, spec.l1_kernel, &L1_MODULES)?;
    staging.add_bytes("init", L1_INIT.as_bytes(), 0o755)?;
    staging.add_bytes("hm/lib.sh", L1_LIB.as_bytes(), 0o644)?;
    staging.add_bytes("hm/scenarios.sh", L1_SCENARIOS.as_bytes(), 0o644)?;
    staging.add_bytes(
        "hm/scenarios-migrate.sh",
        L1_SCENARIOS_MIGRATE.as_bytes(),
        0o644,
    )?;
    staging.add_file(&spec.l2_kernel.vmlinuz, "l2/vmlinuz")?;
    staging.add_file(spec.l2_initramfs, "l2/initramfs.cpio")?;
    match spec.vmm {
        Vmm::Qemu => {
            staging.add_bytes("hm/vmm-qemu.sh", L1_VMM_QEMU.as_bytes(), 0o644)?;
            staging.add_program(Path::new("/usr/bin/qemu-system-x86_64"))?;
            for file in QEMU_DATA_FILES {
                staging.add_file(Path::new(file), file)?;
            }
            add_vhost_user_backends(paths, &staging)?;
        }
        Vmm::Hotmem => {
            staging.add_bytes("hm/vmm-hotmem.sh", L1_VMM_HOTMEM.as_bytes(), 0o644)?;
            add_vhost_user_backends(paths, &staging)?;
            for binary in vmm::build_hotmem(&paths.workspace())? {
                let file_name = binary.file_name().unwrap_or_default().to_string_lossy();
                staging.add_file(&binary, &format!("usr/bin/{file_name}"))?;
            }
        }
    }
    let initramfs = paths.root.join(format!("{name}.cpio"));
    staging.pack(&initramfs)?;
    Ok(L1Image {
        vmlinuz: spec.l1_kernel.vmlinuz.clone(),
        initramfs,
    })
}

/// The vhost-user backends of the `vhost-user` scenarios: qemu-storage-daemon (disks), the
/// Rust virtiofsd (shared folders, built by the harness when missing) and bookworm's own
/// qemu-storage-daemon 7.2 (32 memory slots) as `qemu-storage-daemon-7.2`.
fn add_vhost_user_backends(paths: &GuestPaths, staging: &Staging) -> Result<(), String> {
    apt::ensure_test_tools()?;
    staging.add_program(Path::new("/usr/bin/qemu-storage-daemon"))?;
    let virtiofsd = virtiofsd::ensure(&paths.workspace())?;
    staging.add_program_as(&virtiofsd, "usr/bin/virtiofsd")?;
    staging.add_program_as(
        &old_storage_daemon(paths)?,
        "usr/bin/qemu-storage-daemon-7.2",
    )
}

/// bookworm's qemu-storage-daemon 7.2 (libvhost-user with 32 slots). Its package,
/// qemu-system-common, conflicts with the backports QEMU the harness installs, so it is only
/// downloaded (`apt-get download qemu-system-common/bookworm`) and unpacked.
fn old_storage_daemon(paths: &GuestPaths) -> Result<PathBuf, String> {
    const PACKAGE: &str = "qemu-system-common";
    const RELEASE: &str = "bookworm";
    let debs = paths.debs();
    let is_old = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{PACKAGE}_1%3a7.2")) && n.ends_with(".deb"))
    };
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(&debs)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| is_old(p))
            .max()
    };
    let deb = match find() {
        Some(deb) => deb,
        None => {
            std::fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
            run_step(
                &format!("apt-get download {PACKAGE}/{RELEASE}"),
                apt::Apt::host().apt_get().current_dir(&debs).args([
                    "-q",
                    "download",
                    &format!("{PACKAGE}/{RELEASE}"),
                ]),
            )?;
            find().ok_or_else(|| format!("apt-get download left no {PACKAGE} 7.2 .deb"))?
        }
    };
    let extracted = paths.root.join("qemu-system-common-7.2");
    extract_once(&deb, &extracted, |_| Ok(()))?;
    Ok(extracted.join("usr/bin/qemu-storage-daemon"))
}

/// Everything `e2e` needs for one VMM and one L2 kernel.
pub fn build_images(paths: &GuestPaths, l2_pattern: &str, vmm: Vmm) -> Result<L1Image, String> {
    apt::ensure_host_tools()?;
    let l1_kernel = prepare_kernel(paths, DEFAULT_KERNEL_PACKAGE)?;
    let l2_kernel = prepare_kernel(paths, l2_pattern)?;
    let l2_initramfs = build_l2_initramfs(paths, &l2_kernel)?;
    eprintln!(
        "== L1 kernel {}, L2 kernel {}",
        l1_kernel.package, l2_kernel.package
    );
    build_l1_image(
        paths,
        &L1Spec {
            l1_kernel: &l1_kernel,
            l2_kernel: &l2_kernel,
            l2_initramfs: &l2_initramfs,
            vmm,
        },
    )
}

pub fn run(args: &GuestImageArgs) -> Result<(), String> {
    let paths = GuestPaths::new();
    for vmm in [Vmm::Qemu, Vmm::Hotmem] {
        let image = build_images(&paths, &args.kernel_package, vmm)?;
        println!(
            "{}: kernel {} initramfs {}",
            vmm.name(),
            image.vmlinuz.display(),
            image.initramfs.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_parses_as_posix_shell() {
        let dir = std::env::temp_dir().join(format!("hotmem-scripts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let scripts = [
            ("l1-init.sh", L1_INIT),
            ("lib.sh", L1_LIB),
            ("scenarios.sh", L1_SCENARIOS),
            ("scenarios-migrate.sh", L1_SCENARIOS_MIGRATE),
            ("vmm-qemu.sh", L1_VMM_QEMU),
            ("vmm-hotmem.sh", L1_VMM_HOTMEM),
            ("l2-init.sh", L2_INIT),
        ];
        for (name, text) in scripts {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            let status = Command::new("sh").arg("-n").arg(&path).status().unwrap();
            assert!(status.success(), "{name} has a syntax error");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_vmm_driver_defines_the_functions_lib_sh_calls() {
        for driver in [L1_VMM_QEMU, L1_VMM_HOTMEM] {
            for function in ["vmm_launch()", "vmm_pid()", "vmm_resize()", "vmm_status()"] {
                assert!(driver.contains(function), "a VMM driver lacks {function}");
            }
        }
    }

    #[test]
    fn every_scenario_has_a_host_side_function() {
        for scenario in crate::e2e::scenario::SCENARIOS {
            let function = format!("scenario_{}()", scenario.replace('-', "_"));
            assert!(
                L1_SCENARIOS.contains(&function) || L1_SCENARIOS_MIGRATE.contains(&function),
                "no {function} in scenarios.sh or scenarios-migrate.sh"
            );
        }
    }
}
