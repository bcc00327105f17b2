//! `--memory SIZE[,shared=on|off]` and the rule that vhost-user backends need guest memory
//! they can map: memfd (or hugetlbfs) `MAP_SHARED`, never private anonymous memory.

use api::size::parse_size;
use hostmem::BackingKind;

use crate::config::MemDeviceConfig;

/// A parsed `--memory` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryArg {
    /// Boot memory size.
    pub size_bytes: u64,
    /// `shared=on|off`, if given.
    pub shared: Option<bool>,
}

/// Parses `512M` or `512M,shared=on`.
pub fn parse_memory_arg(spec: &str) -> Result<MemoryArg, String> {
    let mut parts = spec.split(',');
    let size_bytes = parse_size(parts.next().unwrap_or_default())?;
    let mut shared = None;
    for part in parts {
        shared = Some(match part {
            "shared=on" => true,
            "shared=off" => false,
            other => {
                return Err(format!(
                    "'{other}': expected shared=on or shared=off after the size"
                ));
            }
        });
    }
    Ok(MemoryArg { size_bytes, shared })
}

/// A memory device as given on the command line, for the sharing rule.
#[derive(Debug)]
pub struct MemDeviceSharing<'a> {
    /// The validated device (its backing may be changed to memfd).
    pub device: &'a mut MemDeviceConfig,
    /// Whether the command line said `backing=...` itself.
    pub backing_explicit: bool,
}

/// Decides whether guest memory is shared: on when asked or when any vhost-user device is
/// present. Shared memory turns default-backed memory devices into memfd; an explicit
/// `shared=off` or `backing=anon` next to a vhost-user device (or `shared=on`) is refused.
pub fn plan_sharing(
    memory_shared: Option<bool>,
    vhost_user_devices: &[String],
    mem_devices: Vec<MemDeviceSharing<'_>>,
) -> Result<bool, String> {
    let needs = vhost_user_devices.first();
    if let (Some(false), Some(dev)) = (memory_shared, needs) {
        return Err(format!(
            "--memory shared=off: vhost-user device '{dev}' needs guest memory shared with its \
             backend (memfd, MAP_SHARED); drop shared=off"
        ));
    }
    let shared = memory_shared.unwrap_or(needs.is_some());
    if !shared {
        return Ok(false);
    }
    let why = needs.map_or("--memory shared=on".to_string(), |d| {
        format!("vhost-user device '{d}'")
    });
    for m in mem_devices {
        if m.device.backing != BackingKind::Anon {
            continue;
        }
        if m.backing_explicit {
            return Err(format!(
                "--mem-device id={}: backing=anon is private memory, which {why} cannot use; \
                 use backing=memfd or backing=hugetlbfs",
                m.device.id
            ));
        }
        m.device.backing = BackingKind::Memfd;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(spec: &str) -> MemDeviceConfig {
        MemDeviceConfig::parse(spec).unwrap()
    }

    #[test]
    fn memory_arg_takes_an_optional_shared_flag() {
        assert_eq!(
            parse_memory_arg("512M").unwrap(),
            MemoryArg {
                size_bytes: 512 << 20,
                shared: None
            }
        );
        assert_eq!(parse_memory_arg("1G,shared=on").unwrap().shared, Some(true));
        assert_eq!(
            parse_memory_arg("1G,shared=off").unwrap().shared,
            Some(false)
        );
        assert!(
            parse_memory_arg("1G,shared=yes")
                .unwrap_err()
                .contains("shared=on")
        );
        assert!(parse_memory_arg("lots").is_err());
    }

    #[test]
    fn shared_memory_makes_default_devices_memfd_and_keeps_hugetlbfs() {
        let mut a = device("id=a,size=4G");
        let mut h = device("id=h,size=4G,backing=hugetlbfs,hugetlbfs=/dev/hugepages");
        let shared = plan_sharing(
            Some(true),
            &[],
            vec![
                MemDeviceSharing {
                    device: &mut a,
                    backing_explicit: false,
                },
                MemDeviceSharing {
                    device: &mut h,
                    backing_explicit: true,
                },
            ],
        )
        .unwrap();
        assert!(shared);
        assert_eq!(
            (a.backing, h.backing),
            (BackingKind::Memfd, BackingKind::Hugetlbfs)
        );
    }

    #[test]
    fn vhost_user_devices_turn_sharing_on_and_refuse_private_memory() {
        let mut a = device("id=a,size=4G");
        assert!(plan_sharing(None, &["disk0".into()], vec![]).unwrap());
        let err = plan_sharing(Some(false), &["disk0".into()], vec![]).unwrap_err();
        assert!(
            err.contains("'disk0'") && err.contains("shared=off"),
            "{err}"
        );
        let err = plan_sharing(
            None,
            &["fs0".into()],
            vec![MemDeviceSharing {
                device: &mut a,
                backing_explicit: true,
            }],
        )
        .unwrap_err();
        assert!(err.contains("id=a") && err.contains("'fs0'"), "{err}");
    }

    #[test]
    fn without_vhost_user_or_shared_on_nothing_changes() {
        let mut a = device("id=a,size=4G");
        let shared = plan_sharing(
            None,
            &[],
            vec![MemDeviceSharing {
                device: &mut a,
                backing_explicit: false,
            }],
        )
        .unwrap();
        assert!(!shared);
        assert_eq!(a.backing, BackingKind::Anon);
    }
}
