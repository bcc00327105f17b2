//! The destination's switchover steps: from the source's `done` to `running`, each step
//! timed until the next mark, logged and sent back to the source in `running`.

use std::sync::Mutex;
use std::time::Instant;

use migration::Step;

use crate::shared_device::lock_or_recover;

/// Consecutive timed steps.
#[derive(Debug, Default)]
pub struct StepClock(Mutex<Option<(Instant, Vec<Step>)>>);

impl StepClock {
    /// Starts timing at `at` (when `done` arrived).
    pub fn start(&self, at: Instant) {
        *lock_or_recover(&self.0, "switchover clock") = Some((at, Vec::new()));
    }

    /// Ends step `name` now (ignored before [`StepClock::start`]).
    pub fn mark(&self, name: &str) {
        if let Some((last, steps)) = lock_or_recover(&self.0, "switchover clock").as_mut() {
            let now = Instant::now();
            steps.push(Step {
                name: name.into(),
                micros: (now - *last).as_micros() as u64,
            });
            *last = now;
        }
    }

    /// The steps so far.
    pub fn steps(&self) -> Vec<Step> {
        lock_or_recover(&self.0, "switchover clock")
            .as_ref()
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }
}

/// `name 1.2 ms, name 3.4 ms, ... (total N ms)` for the logs.
pub fn describe(steps: &[Step]) -> String {
    let total: u64 = steps.iter().map(|s| s.micros).sum();
    let parts: Vec<String> = steps
        .iter()
        .map(|s| format!("{} {:.1} ms", s.name, s.micros as f64 / 1000.0))
        .collect();
    format!(
        "{} (total {:.1} ms)",
        parts.join(", "),
        total as f64 / 1000.0
    )
}
