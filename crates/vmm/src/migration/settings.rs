//! What `PUT /v1/vm/migrate` asks of the driver beyond the destination: auto-converge.

use api::ApiError;
use api::model::MigrateBody;
use migration::source::AutoConverge;

/// The auto-converge settings the body asks for (`None`: off), or a 400 naming what cannot
/// work.
pub fn auto_converge(body: &MigrateBody) -> Result<Option<AutoConverge>, ApiError> {
    match (body.auto_converge, body.max_throttle_percent) {
        (Some(true), max) => {
            let mut ac = AutoConverge::default();
            if let Some(max) = max {
                ac.max_percent = max;
                ac.initial_percent = ac.initial_percent.min(max);
            }
            ac.check()
                .map_err(|e| ApiError::bad_request(format!("auto-converge: {e}")))?;
            Ok(Some(ac))
        }
        (_, Some(_)) => Err(ApiError::bad_request(
            "max_throttle_percent needs \"auto_converge\": true",
        )),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(auto_converge: Option<bool>, max_throttle_percent: Option<u8>) -> MigrateBody {
        MigrateBody {
            destination: "tcp:127.0.0.1:1".into(),
            max_downtime_ms: None,
            max_bandwidth_bytes_per_s: None,
            auto_converge,
            max_throttle_percent,
        }
    }

    #[test]
    fn auto_converge_is_off_unless_asked() {
        assert_eq!(auto_converge(&body(None, None)).unwrap(), None);
        assert_eq!(auto_converge(&body(Some(false), None)).unwrap(), None);
        assert_eq!(
            auto_converge(&body(Some(true), None)).unwrap(),
            Some(AutoConverge::default())
        );
    }

    #[test]
    fn a_low_max_throttle_also_lowers_the_first_step() {
        let ac = auto_converge(&body(Some(true), Some(10))).unwrap().unwrap();
        assert_eq!((ac.initial_percent, ac.max_percent), (10, 10));
    }

    #[test]
    fn impossible_throttles_are_refused_with_400_naming_them() {
        for (on, max, named) in [
            (Some(true), Some(100), "max_percent"),
            (Some(true), Some(0), "max_percent"),
            (None, Some(50), "auto_converge"),
            (Some(false), Some(50), "auto_converge"),
        ] {
            let e = auto_converge(&body(on, max)).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(named), "{}", e.message);
        }
    }
}
