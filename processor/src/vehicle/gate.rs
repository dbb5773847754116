//! The plausibility gate: accuracy and teleport checks against the previous
//! accepted fix, with re-anchoring after a run of agreeing "teleports".

use fleetd_schemas::{Fix, RejectReason, Suspect};

use crate::kinematics::distance_m;
use crate::settings::VehicleSettings;

/// What the gate decided about one fix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    /// Plausible from the previous fix.
    Accept,
    /// Implausible from the previous fix, but the last few fixes agree with
    /// each other: the device is really here; jump without adding distance.
    Relocate,
    /// Filtered with this reason.
    Reject(RejectReason),
}

/// Checks `fix` against the previous accepted fix `last` and the pending
/// teleport run `suspect` (updated in place).
pub(crate) fn check(
    last: Option<Fix>,
    suspect: &mut Option<Box<Suspect>>,
    fix: Fix,
    accuracy_m: Option<f32>,
    settings: &VehicleSettings,
) -> Verdict {
    let accuracy = accuracy_m.map_or(0.0, f64::from);
    if settings.max_accuracy_m > 0.0 && accuracy > settings.max_accuracy_m {
        return Verdict::Reject(RejectReason::PoorAccuracy);
    }
    let Some(last) = last else {
        *suspect = None;
        return Verdict::Accept;
    };
    if plausible(last, fix, accuracy, settings) {
        *suspect = None;
        return Verdict::Accept;
    }
    let run = match suspect.take() {
        Some(mut s) if plausible(s.fix, fix, accuracy, settings) => {
            s.fix = fix;
            s.count += 1;
            s
        }
        _ => Box::new(Suspect { fix, count: 1 }),
    };
    if run.count >= settings.teleport_confirm.max(1) {
        Verdict::Relocate
    } else {
        *suspect = Some(run);
        Verdict::Reject(RejectReason::Teleport)
    }
}

/// Whether moving from `a` to `b` needs no more than the plausible speed,
/// allowing `slack + accuracy` metres of GPS error.
fn plausible(a: Fix, b: Fix, accuracy: f64, settings: &VehicleSettings) -> bool {
    let dt_s = (b.ts_ms - a.ts_ms).max(0) as f64 / 1000.0;
    let d = distance_m(a.lat, a.lon, b.lat, b.lon);
    d <= settings.max_speed_mps * dt_s + settings.teleport_slack_m + accuracy
}

/// The speed implied between two fixes, m/s (for rejection details).
pub(crate) fn implied_speed(a: Fix, b: Fix) -> f64 {
    let dt_s = (b.ts_ms - a.ts_ms).max(1) as f64 / 1000.0;
    distance_m(a.lat, a.lon, b.lat, b.lon) / dt_s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(ts_s: i64, lat: f64, lon: f64) -> Fix {
        Fix {
            ts_ms: ts_s * 1000,
            lat,
            lon,
        }
    }

    #[test]
    fn teleports_are_rejected_and_agreeing_runs_relocate() {
        let s = VehicleSettings::default();
        let mut suspect = None;
        let home = fix(0, 52.0, 13.0);
        // 11 km in 1 s.
        let far = |t| fix(t, 52.1, 13.0);
        assert_eq!(
            check(Some(home), &mut suspect, fix(1, 52.0001, 13.0), None, &s),
            Verdict::Accept
        );
        assert_eq!(
            check(Some(home), &mut suspect, far(1), None, &s),
            Verdict::Reject(RejectReason::Teleport)
        );
        assert_eq!(
            check(Some(home), &mut suspect, far(2), None, &s),
            Verdict::Reject(RejectReason::Teleport)
        );
        assert_eq!(
            check(Some(home), &mut suspect, far(3), None, &s),
            Verdict::Relocate
        );
        assert_eq!(suspect, None);
        assert_eq!(
            check(
                Some(home),
                &mut suspect,
                fix(1, 52.0, 13.0),
                Some(500.0),
                &s
            ),
            Verdict::Reject(RejectReason::PoorAccuracy)
        );
    }
}
