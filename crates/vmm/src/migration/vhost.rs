//! Live migration of vhost-user devices: the destination's `--disk`/`--fs` must be the
//! source's devices.

use crate::snapshot::vm_config::SavedVhostDevice;
use crate::vhost_user::VhostUserSpec;

/// The source's vhost-user devices, for a refusal.
pub fn describe(saved: &[SavedVhostDevice]) -> String {
    if saved.is_empty() {
        return "no vhost-user devices".into();
    }
    saved
        .iter()
        .map(|d| format!("{} ({:?}, queue size {})", d.id, d.kind, d.queue_size))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The destination's `--disk`/`--fs` devices must be the source's, in the same order and of
/// the same kind (their backends' sockets are the destination's own).
pub fn match_devices(saved: &[SavedVhostDevice], here: &[VhostUserSpec]) -> Result<(), String> {
    for (i, spec) in here.iter().enumerate() {
        let mine = SavedVhostDevice::from(spec);
        match saved.get(i) {
            Some(theirs) if *theirs == mine => {}
            Some(theirs) => {
                return Err(format!(
                    "vhost-user device {} here is {} ({:?}, queue size {}), the VM's is {} \
                     ({:?}, queue size {})",
                    i + 1,
                    mine.id,
                    mine.kind,
                    mine.queue_size,
                    theirs.id,
                    theirs.kind,
                    theirs.queue_size
                ));
            }
            None => {
                return Err(format!(
                    "vhost-user device '{}' is not in the incoming VM",
                    spec.id
                ));
            }
        }
    }
    if let Some(missing) = saved.get(here.len()) {
        return Err(format!(
            "the incoming VM has vhost-user device '{}': give it a backend with --disk or --fs",
            missing.id
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(spec: &str) -> VhostUserSpec {
        VhostUserSpec::parse_disk(spec, 0).unwrap()
    }

    #[test]
    fn the_same_devices_in_the_same_order_match() {
        let here = [
            disk("socket=/b.sock,id=disk0"),
            disk("socket=/c.sock,id=disk1"),
        ];
        let saved: Vec<SavedVhostDevice> =
            [disk("socket=/a.sock,id=disk0"), disk("socket=/x,id=disk1")]
                .iter()
                .map(SavedVhostDevice::from)
                .collect();
        assert_eq!(match_devices(&saved, &here), Ok(()));
        assert_eq!(match_devices(&[], &[]), Ok(()));
    }

    #[test]
    fn a_missing_extra_or_different_device_is_named() {
        let saved = vec![SavedVhostDevice::from(&disk("socket=/a,id=disk0"))];
        let e = match_devices(&saved, &[]).unwrap_err();
        assert!(e.contains("has vhost-user device 'disk0'"), "{e}");
        let e = match_devices(&[], &[disk("socket=/a,id=disk0")]).unwrap_err();
        assert!(e.contains("'disk0' is not in the incoming VM"), "{e}");
        let e = match_devices(&saved, &[disk("socket=/a,id=disk0,readonly=on")]).unwrap_err();
        assert!(e.contains("read_only: true"), "{e}");
        let e = match_devices(&saved, &[disk("socket=/a,id=disk0,queue_size=256")]).unwrap_err();
        assert!(e.contains("queue size 256"), "{e}");
        assert!(
            describe(&saved).starts_with("disk0"),
            "{}",
            describe(&saved)
        );
        assert_eq!(describe(&[]), "no vhost-user devices");
    }
}
