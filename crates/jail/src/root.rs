//! The jail's root: an empty folder that gets the planned bind mounts and a private `/dev`, then
//! becomes `/` (`pivot_root`), read-only except for what the plan marks writable.
//! Call [`build`] inside a new mount namespace.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::config::{Gid, Uid};
use crate::plan::{Access, Kind, Mount};
use crate::{Error, error::Result};

/// The device nodes the VMM gets: KVM, randomness for its hash maps, and a sink.
const DEVICES: [(&str, u32, u32, u32); 3] = [
    ("kvm", 10, 232, 0o600),
    ("urandom", 1, 9, 0o444),
    ("null", 1, 3, 0o666),
];

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Path {
        path: path.to_path_buf(),
        what: "contains a NUL byte".into(),
    })
}

fn check(ret: libc::c_int, what: impl FnOnce() -> String) -> Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(Error::last_os(what()))
    }
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> Result<()> {
    let source_c = source.map(cstring).transpose()?;
    let target_c = cstring(target)?;
    let fstype_c = fstype.map(|f| CString::new(f).expect("static fs name"));
    // SAFETY: every pointer is a NUL-terminated string that lives across the call, or null where
    // mount(2) allows it; no data argument is passed.
    let ret = unsafe {
        libc::mount(
            source_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            fstype_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    check(ret, || {
        format!(
            "mount {} on {}",
            source.map_or("-".into(), |s| s.display().to_string()),
            target.display()
        )
    })
}

/// Where `host_path` appears under `root`.
fn inside(root: &Path, host_path: &Path) -> PathBuf {
    root.join(host_path.strip_prefix("/").unwrap_or(host_path))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Sys { what, source }
}

/// Makes `root` an empty folder owned by root (created when missing).
pub fn prepare_dir(root: &Path) -> Result<()> {
    std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
    let mut entries = std::fs::read_dir(root).map_err(io(format!("reading {}", root.display())))?;
    if entries.next().is_some() {
        return Err(Error::Path {
            path: root.to_path_buf(),
            what: "the jail folder must be empty".into(),
        });
    }
    Ok(())
}

/// Binds each planned path, makes `/dev`, pivots into `root` and seals it read-only.
pub fn build(root: &Path, mounts: &[Mount], owner: (Uid, Gid)) -> Result<()> {
    // Nothing done here may propagate back to the host's mounts.
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE)?;
    mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC)?;
    for m in mounts {
        bind(root, m)?;
    }
    make_dev(root, owner)?;
    pivot(root)?;
    // The root folder itself is read-only; writable binds stay writable.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
    )
}

fn bind(root: &Path, m: &Mount) -> Result<()> {
    let target = inside(root, &m.path);
    let parent = target.parent().unwrap_or(root);
    std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    match m.kind {
        Kind::Dir => std::fs::create_dir_all(&target),
        Kind::File => std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&target)
            .map(drop),
    }
    .map_err(io(format!("creating mount point {}", target.display())))?;
    mount(Some(&m.path), &target, None, libc::MS_BIND)?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    if m.access == Access::ReadOnly {
        flags |= libc::MS_RDONLY;
    }
    mount(None, &target, None, flags)
}

fn make_dev(root: &Path, (uid, gid): (Uid, Gid)) -> Result<()> {
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev).map_err(io(format!("creating {}", dev.display())))?;
    mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
    )?;
    for (name, major, minor, mode) in DEVICES {
        let node = dev.join(name);
        let node_c = cstring(&node)?;
        // SAFETY: `node_c` is a NUL-terminated path living across the call.
        let ret = unsafe {
            libc::mknod(
                node_c.as_ptr(),
                libc::S_IFCHR | mode,
                libc::makedev(major, minor),
            )
        };
        check(ret, || format!("mknod {}", node.display()))?;
        // SAFETY: as above; chmod undoes the umask, chown hands the node to the VMM's user.
        let ret = unsafe { libc::chmod(node_c.as_ptr(), mode) };
        check(ret, || format!("chmod {}", node.display()))?;
        if name == "kvm" {
            // SAFETY: as above.
            let ret = unsafe { libc::chown(node_c.as_ptr(), uid.0, gid.0) };
            check(ret, || format!("chown {}", node.display()))?;
        }
    }
    mount(
        None,
        &dev,
        None,
        libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_RDONLY,
    )
}

fn pivot(root: &Path) -> Result<()> {
    let old = root.join(".old-root");
    std::fs::create_dir_all(&old).map_err(io(format!("creating {}", old.display())))?;
    let root_c = cstring(root)?;
    let old_c = cstring(&old)?;
    // SAFETY: both paths are NUL-terminated strings living across the call; pivot_root has no
    // libc wrapper, so it goes through syscall(2) with its two path arguments.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, root_c.as_ptr(), old_c.as_ptr()) };
    if ret != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // The current root is the initramfs (rootfs), which pivot_root cannot move away from:
        // move the jail onto / instead and chroot into it (what switch_root does). The host's
        // tree stays underneath, out of reach without the capabilities dropped next.
        std::fs::remove_dir(&old).map_err(io(format!("removing {}", old.display())))?;
        return move_root(root);
    }
    check(ret as libc::c_int, || {
        format!("pivot_root into {}", root.display())
    })?;
    std::env::set_current_dir("/").map_err(io("chdir /".into()))?;
    let old_inside = CString::new("/.old-root").expect("static path");
    // SAFETY: a NUL-terminated path; MNT_DETACH unmounts the host's tree lazily.
    let ret = unsafe { libc::umount2(old_inside.as_ptr(), libc::MNT_DETACH) };
    check(ret, || "detaching the host's root".into())?;
    std::fs::remove_dir("/.old-root").map_err(io("removing /.old-root".into()))
}

fn move_root(root: &Path) -> Result<()> {
    std::env::set_current_dir(root).map_err(io(format!("chdir {}", root.display())))?;
    mount(Some(root), Path::new("/"), None, libc::MS_MOVE)?;
    let dot = CString::new(".").expect("static path");
    // SAFETY: a NUL-terminated path living across the call.
    check(unsafe { libc::chroot(dot.as_ptr()) }, || {
        "chroot into the jail".into()
    })?;
    std::env::set_current_dir("/").map_err(io("chdir /".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_land_at_the_same_path_under_the_root() {
        assert_eq!(
            inside(Path::new("/srv/jail"), Path::new("/run/hm")),
            PathBuf::from("/srv/jail/run/hm")
        );
    }

    #[test]
    fn a_jail_folder_with_files_is_refused() {
        let dir = std::env::temp_dir().join(format!("hotmem-jail-prep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        prepare_dir(&dir).unwrap();
        std::fs::write(dir.join("left-over"), b"x").unwrap();
        let e = prepare_dir(&dir).unwrap_err();
        assert!(e.to_string().contains("must be empty"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
