//! Who the VMM is: new namespaces, no capabilities (bounding, ambient, inheritable, permitted,
//! effective), `no_new_privs`, and an unprivileged uid/gid with no supplementary groups.

use crate::config::{Gid, Uid};
use crate::{Error, error::Result};

/// The namespaces the jail enters: the VMM sees its own mounts, process tree, IPC, host name
/// and a network with nothing in it.
pub const NAMESPACES: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWNET;

fn check(ret: libc::c_int, what: &str) -> Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(Error::last_os(what))
    }
}

/// Enters new namespaces; the next child this process forks is PID 1 of the new PID namespace.
pub fn unshare_namespaces() -> Result<()> {
    // SAFETY: unshare takes flags only.
    check(
        unsafe { libc::unshare(NAMESPACES) },
        "unshare (mount, PID, IPC, UTS, network)",
    )
}

/// Names the jail's UTS namespace.
pub fn set_hostname(name: &str) -> Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which live across the call.
    let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    check(ret, "sethostname")
}

/// Linux's capability version 3 header and data (two 32-bit halves).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The capability sets of the calling thread: (effective, permitted, inheritable), 64 bits each.
pub fn current_capabilities() -> Result<(u64, u64, u64)> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and `data` have the layout capget(2) expects for version 3 (two data
    // elements) and live across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    check(ret as libc::c_int, "capget")?;
    let join = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | (u64::from(f(&data[1])) << 32);
    Ok((
        join(|d| d.effective),
        join(|d| d.permitted),
        join(|d| d.inheritable),
    ))
}

fn clear_capability_sets() -> Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: as in `current_capabilities`; capset only reads `data`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    check(ret as libc::c_int, "capset (clear)")
}

/// Drops every capability from the bounding set (so no later exec can regain one).
fn drop_bounding_set() -> Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if ret != 0 {
            // EINVAL: past the last capability this kernel knows.
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                return Ok(());
            }
            return Err(Error::last_os(format!(
                "dropping capability {cap} from the bounding set"
            )));
        }
    }
    Ok(())
}

/// Becomes `uid`:`gid` with no supplementary groups and no capabilities of any kind, with
/// `no_new_privs` set; verifies the result and fails if anything is left.
pub fn drop_to(uid: Uid, gid: Gid) -> Result<()> {
    drop_bounding_set()?;
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(ret, "clearing ambient capabilities")?;
    // SAFETY: an empty list: the pointer is not read when the count is 0.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }, "setgroups")?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(gid.0, gid.0, gid.0) }, "setresgid")?;
    // SAFETY: integer arguments only. Leaving uid 0 clears the permitted and effective sets.
    check(unsafe { libc::setresuid(uid.0, uid.0, uid.0) }, "setresuid")?;
    clear_capability_sets()?;
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(ret, "PR_SET_NO_NEW_PRIVS")?;
    let (effective, permitted, inheritable) = current_capabilities()?;
    if effective | permitted | inheritable != 0 {
        return Err(Error::Config(format!(
            "capabilities left after dropping: effective {effective:#x} permitted {permitted:#x} \
             inheritable {inheritable:#x}"
        )));
    }
    Ok(())
}
