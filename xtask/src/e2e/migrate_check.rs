//! What the `migrate*` scenarios claim: the migration completed and the source exited with
//! status 0, the guest kept running (one boot, uptime grew), its files and the writer's log
//! (written during the migration) are intact on the destination.

use super::serial::Source;
use super::timeline::Timeline;

/// The claims common to every migration scenario.
pub fn check_migrate(failures: &mut Vec<String>, t: &Timeline) {
    let mut expect = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    let ok = t.first(Source::L1, "migrate_ok");
    expect(ok.is_some(), "no migration completed".into());
    let rc = t
        .first(Source::L1, "source_rc")
        .map(|e| e.rest.trim().to_string());
    expect(
        rc.as_deref() == Some("0"),
        format!("the source hotmem exited with {rc:?}, wanted 0"),
    );
    expect(
        t.first(Source::L1, "vmm_migrated").is_some(),
        "the destination's API never came up".into(),
    );
    let completed = t.vmm_log.iter().any(|l| l.contains("migration completed:"));
    expect(
        completed,
        "the source never logged 'migration completed'".into(),
    );
    let verdicts: Vec<String> = t
        .all(Source::L2, "verify")
        .map(|e| e.rest.clone())
        .collect();
    expect(
        verdicts.len() == 2 && verdicts.iter().all(|v| v.starts_with("ok")),
        format!("checksums on the destination: {verdicts:?}"),
    );
    if t.first(Source::L2, "writer_started").is_some() {
        let writer = t.first(Source::L2, "writer").map(|e| e.rest.clone());
        expect(
            writer.as_deref().is_some_and(|w| w.starts_with("ok")),
            format!("the writer's log on the destination: {writer:?}"),
        );
    }
    let uptimes: Vec<f64> = t
        .all(Source::L2, "uptime")
        .filter_map(|e| e.word(0)?.parse().ok())
        .collect();
    expect(
        uptimes.len() >= 2 && uptimes.windows(2).all(|w| w[1] > w[0]),
        format!("guest uptime across the migration: {uptimes:?}"),
    );
    let boots = t.all(Source::L2, "boot").count();
    expect(boots == 1, format!("the guest booted {boots} times"));
}
