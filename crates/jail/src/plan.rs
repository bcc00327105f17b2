//! What the jailed VMM needs inside its empty root, read from hotmem's own arguments: each host
//! path is bound at the same path inside, so hotmem's arguments need no rewriting.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::Bind;
use crate::{Error, error::Result};

/// Whether a bound path is a file or a folder (the mount point is made to match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// Read-only or writable inside the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    Writable,
}

/// One host path bound into the jail at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub path: PathBuf,
    pub kind: Kind,
    pub access: Access,
}

impl Mount {
    fn file(path: impl Into<PathBuf>, access: Access) -> Self {
        Mount {
            path: path.into(),
            kind: Kind::File,
            access,
        }
    }

    fn dir(path: impl Into<PathBuf>, access: Access) -> Self {
        Mount {
            path: path.into(),
            kind: Kind::Dir,
            access,
        }
    }
}

/// hotmem's value of `--name` in `args` (both `--name V` and `--name=V`), every occurrence.
fn values<'a>(args: &'a [String], name: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == name {
            if let Some(v) = args.get(i + 1) {
                found.push(v.as_str());
            }
            i += 2;
            continue;
        }
        if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            found.push(v);
        }
        i += 1;
    }
    found
}

fn absolute(option: &str, value: &str) -> Result<PathBuf> {
    let path = PathBuf::from(value);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(Error::Config(format!(
            "hotmem {option} {value}: the jail needs absolute paths"
        )))
    }
}

/// The mounts the VMM started with `vmm_args` needs, plus `binds`, plus the VMM binary and the
/// libraries it loads.
pub fn plan(vmm_args: &[String], exec: &Path, binds: &[Bind]) -> Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    for option in ["--kernel", "--initramfs"] {
        for v in values(vmm_args, option) {
            mounts.push(Mount::file(absolute(option, v)?, Access::ReadOnly));
        }
    }
    for v in values(vmm_args, "--api-socket") {
        let socket = absolute("--api-socket", v)?;
        let folder = socket
            .parent()
            .filter(|p| *p != Path::new("/"))
            .ok_or_else(|| {
                Error::Config(format!(
                    "hotmem --api-socket {v}: put the socket in a folder of its own (it is bound \
                     writable into the jail)"
                ))
            })?;
        mounts.push(Mount::dir(folder, Access::Writable));
    }
    for v in values(vmm_args, "--serial") {
        if let Some(file) = v.strip_prefix("file=") {
            mounts.push(Mount::file(absolute("--serial", file)?, Access::Writable));
        }
    }
    for v in values(vmm_args, "--mem-device") {
        for part in v.split(',') {
            if let Some(dir) = part.strip_prefix("hugetlbfs=") {
                mounts.push(Mount::dir(
                    absolute("--mem-device hugetlbfs", dir)?,
                    Access::Writable,
                ));
            }
        }
    }
    // vhost-user backends' sockets: hotmem connects to them (the backend must let the jail's
    // uid connect, i.e. write the socket).
    for option in ["--disk", "--fs"] {
        for v in values(vmm_args, option) {
            for part in v.split(',') {
                if let Some(socket) = part.strip_prefix("socket=") {
                    let what = format!("{option} socket");
                    mounts.push(Mount::file(absolute(&what, socket)?, Access::Writable));
                }
            }
        }
    }
    for v in values(vmm_args, "--restore") {
        mounts.push(Mount::dir(absolute("--restore", v)?, Access::ReadOnly));
    }
    for b in binds {
        let access = if b.writable {
            Access::Writable
        } else {
            Access::ReadOnly
        };
        mounts.push(Mount::dir(&b.path, access));
    }
    mounts.push(Mount::file(exec, Access::ReadOnly));
    for lib in shared_libraries(exec)? {
        mounts.push(Mount::file(lib, Access::ReadOnly));
    }
    mounts.dedup();
    Ok(mounts)
}

/// The shared libraries (and loader) `exec` needs; none for a static binary (no ELF
/// interpreter), so `ldd` is only needed for dynamic ones.
fn shared_libraries(exec: &Path) -> Result<Vec<PathBuf>> {
    let bytes = std::fs::read(exec).map_err(|source| Error::Sys {
        what: format!("reading {}", exec.display()),
        source,
    })?;
    if !has_interpreter(&bytes) {
        return Ok(Vec::new());
    }
    let out = Command::new("ldd")
        .arg(exec)
        .output()
        .map_err(|source| Error::Sys {
            what: "running ldd".into(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(parse_ldd(&text))
}

/// Whether an ELF64 file names a program interpreter (PT_INTERP): it is dynamically linked.
pub fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).any(|i| {
        usize::try_from(phoff)
            .ok()
            .and_then(|off| off.checked_add(i * usize::from(phentsize)))
            .and_then(u32_at)
            == Some(PT_INTERP)
    })
}

/// Library paths in `ldd` output ("name => /path (0x…)" or "/path (0x…)").
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn every_path_hotmem_opens_is_planned_with_its_access() {
        let a = args(
            "--kernel /k/vmlinuz --initramfs=/k/initrd --api-socket /run/hm/api.sock \
             --serial file=/var/log/hm.log --mem-device id=m,size=4G,backing=hugetlbfs,hugetlbfs=/dev/hugepages \
             --restore /snap/one --disk socket=/run/qsd/disk.sock,id=disk0 \
             --fs=tag=share,socket=/run/vfsd/fs.sock",
        );
        let m = plan(&a, Path::new("/bin/true"), &[]).unwrap();
        let find = |p: &str| m.iter().find(|x| x.path == Path::new(p)).cloned();
        assert_eq!(
            find("/k/vmlinuz"),
            Some(Mount::file("/k/vmlinuz", Access::ReadOnly))
        );
        assert_eq!(
            find("/k/initrd"),
            Some(Mount::file("/k/initrd", Access::ReadOnly))
        );
        assert_eq!(
            find("/run/hm"),
            Some(Mount::dir("/run/hm", Access::Writable))
        );
        assert_eq!(
            find("/var/log/hm.log"),
            Some(Mount::file("/var/log/hm.log", Access::Writable))
        );
        assert_eq!(
            find("/dev/hugepages"),
            Some(Mount::dir("/dev/hugepages", Access::Writable))
        );
        assert_eq!(
            find("/snap/one"),
            Some(Mount::dir("/snap/one", Access::ReadOnly))
        );
        assert_eq!(
            find("/run/qsd/disk.sock"),
            Some(Mount::file("/run/qsd/disk.sock", Access::Writable))
        );
        assert_eq!(
            find("/run/vfsd/fs.sock"),
            Some(Mount::file("/run/vfsd/fs.sock", Access::Writable))
        );
        assert_eq!(
            find("/bin/true"),
            Some(Mount::file("/bin/true", Access::ReadOnly))
        );
    }

    #[test]
    fn relative_paths_and_a_socket_in_the_root_are_refused() {
        assert!(plan(&args("--kernel vmlinuz"), Path::new("/bin/true"), &[]).is_err());
        let e = plan(&args("--api-socket /api.sock"), Path::new("/bin/true"), &[]).unwrap_err();
        assert!(e.to_string().contains("folder of its own"), "{e}");
    }

    #[test]
    fn dynamic_binaries_have_an_interpreter_and_static_data_has_none() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me), "test binaries are dynamically linked");
        assert!(!has_interpreter(b"\x7fELF\x02 short"));
        assert!(!has_interpreter(b"not an elf at all"));
    }

    #[test]
    fn ldd_output_gives_library_paths_only() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tstatically linked\n").is_empty());
    }
}
