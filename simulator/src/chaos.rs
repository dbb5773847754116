//! Deliberate faults a fleet injects ([`Chaos`]): malformed payloads,
//! duplicates, late and out-of-order points, each at a given rate per
//! publish, as real phones and flaky networks produce them.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::SimError;

/// A kind of deliberate fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChaosKind {
    /// A payload fleetd must reject (bad bytes, bad coordinates, missing
    /// time). Sent instead of nothing: the vehicle's real position still goes.
    Malformed,
    /// A position sent a second time, identical.
    Duplicate,
    /// A position held back for a few seconds, so it arrives after newer
    /// ones, in a later micro-batch.
    Late,
    /// A position swapped with the next one (within the same second or so).
    OutOfOrder,
}

impl ChaosKind {
    /// Number of kinds (array length of per-kind counters).
    pub const COUNT: usize = 4;
    /// All kinds, in counter order.
    pub const ALL: [ChaosKind; Self::COUNT] = [
        ChaosKind::Malformed,
        ChaosKind::Duplicate,
        ChaosKind::Late,
        ChaosKind::OutOfOrder,
    ];

    /// The name used in `--chaos` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ChaosKind::Malformed => "malformed",
            ChaosKind::Duplicate => "duplicate",
            ChaosKind::Late => "late",
            ChaosKind::OutOfOrder => "out_of_order",
        }
    }
}

/// Rates of deliberate faults: for each publish of a position, the chance
/// that a fault of that kind comes with it. All zero by default.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Chaos {
    /// Chance of an extra malformed message.
    pub malformed: f64,
    /// Chance that the position is sent twice.
    pub duplicate: f64,
    /// Chance that the position is held back and sent late.
    pub late: f64,
    /// Chance that the position is swapped with the next one.
    pub out_of_order: f64,
}

impl Chaos {
    /// The rate of `kind`.
    pub fn rate(&self, kind: ChaosKind) -> f64 {
        match kind {
            ChaosKind::Malformed => self.malformed,
            ChaosKind::Duplicate => self.duplicate,
            ChaosKind::Late => self.late,
            ChaosKind::OutOfOrder => self.out_of_order,
        }
    }

    /// Whether any fault is enabled.
    pub fn is_active(&self) -> bool {
        ChaosKind::ALL.iter().any(|&k| self.rate(k) > 0.0)
    }

    pub(crate) fn validate(&self) -> Result<(), SimError> {
        for kind in ChaosKind::ALL {
            let rate = self.rate(kind);
            if !(rate.is_finite() && (0.0..=1.0).contains(&rate)) {
                return Err(SimError::InvalidConfig {
                    field: "chaos",
                    reason: format!("{} rate {rate} is not in [0, 1]", kind.name()),
                });
            }
        }
        Ok(())
    }
}

/// Parses `0.01` (every kind at 1 %) or `malformed=0.01,late=0.02,...`.
impl FromStr for Chaos {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| SimError::InvalidConfig {
            field: "chaos",
            reason,
        };
        let s = s.trim();
        let mut chaos = Chaos::default();
        if let Ok(all) = s.parse::<f64>() {
            chaos = Chaos {
                malformed: all,
                duplicate: all,
                late: all,
                out_of_order: all,
            };
        } else {
            for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (name, rate) = part
                    .split_once('=')
                    .ok_or_else(|| bad(format!("{part:?} is not kind=rate")))?;
                let rate: f64 = rate
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("{rate:?} is not a number")))?;
                match name.trim() {
                    "malformed" => chaos.malformed = rate,
                    "duplicate" => chaos.duplicate = rate,
                    "late" => chaos.late = rate,
                    "out_of_order" => chaos.out_of_order = rate,
                    other => {
                        return Err(bad(format!(
                            "unknown kind {other:?} (malformed, duplicate, late, out_of_order)"
                        )));
                    }
                }
            }
        }
        chaos.validate()?;
        Ok(chaos)
    }
}

impl fmt::Display for Chaos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed={},duplicate={},late={},out_of_order={}",
            self.malformed, self.duplicate, self.late, self.out_of_order
        )
    }
}

/// The malformed payloads a phone cycles through; each must be rejected by
/// fleetd (undecodable, bad coordinates, no time, wrong type).
pub(crate) fn malformed_payload(variant: u64, ts_ms: i64) -> Vec<u8> {
    match variant % 5 {
        // Wire type 7 does not exist: undecodable protobuf.
        0 => vec![0xff, 0xff, 0xff, 0x0f],
        1 => format!("{{\"ts_ms\": {ts_ms}, \"lat\": 123.5, \"lon\": 24.9}}").into_bytes(),
        2 => b"{\"lat\": 60.17, \"lon\": 24.94}".to_vec(),
        3 => format!("{{\"ts_ms\": {ts_ms}, \"lat\": \"north\", \"lon\": 24.9}}").into_bytes(),
        _ => b"{\"ts_ms\": 17".to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_rate_or_named_rates() {
        let all: Chaos = "0.05".parse().expect("valid");
        assert!(ChaosKind::ALL.iter().all(|&k| all.rate(k) == 0.05));
        let some: Chaos = "late=0.1, duplicate=0.2".parse().expect("valid");
        assert_eq!((some.late, some.duplicate, some.malformed), (0.1, 0.2, 0.0));
        assert!(some.is_active() && !Chaos::default().is_active());
        for bad in ["1.5", "late", "late=x", "typo=0.1", "late=-0.1"] {
            assert!(bad.parse::<Chaos>().is_err(), "{bad} accepted");
        }
        let round: Chaos = some.to_string().parse().expect("round trip");
        assert_eq!(round, some);
    }
}
