//! Overspeed episodes: one alert per episode, after the limit has been
//! exceeded for the grace time, ended by a sustained return below it.

use fleetd_schemas::{Alert, AlertDetail, AlertKind, DeviceId, Fix, Overspeed};

use crate::settings::VehicleSettings;

/// Speed unit conversion.
const MPS_PER_KMH: f64 = 1000.0 / 3600.0;

/// Updates `episode` with a moving fix at `speed_mps` under `limit_kmh`
/// and returns the alert when one fires.
pub(crate) fn update(
    episode: &mut Option<Box<Overspeed>>,
    device: &DeviceId,
    fix: Fix,
    speed_mps: f64,
    limit_kmh: Option<f64>,
    device_name: Option<&str>,
    settings: &VehicleSettings,
) -> Option<Alert> {
    let Some(limit_kmh) = limit_kmh else {
        *episode = None;
        return None;
    };
    if speed_mps > limit_kmh * MPS_PER_KMH {
        let e = episode.get_or_insert_with(|| {
            Box::new(Overspeed {
                since_ms: fix.ts_ms,
                ..Overspeed::default()
            })
        });
        e.below_since_ms = None;
        e.max_speed_mps = e.max_speed_mps.max(speed_mps);
        let over_ms = fix.ts_ms - e.since_ms;
        if !e.alerted && over_ms >= settings.overspeed_grace_ms {
            e.alerted = true;
            return Some(Alert::new(
                AlertKind::Overspeed,
                device.clone(),
                None,
                fix.ts_ms,
                (fix.lat, fix.lon),
                AlertDetail {
                    speed_kmh: Some(round1(e.max_speed_mps / MPS_PER_KMH)),
                    limit_kmh: Some(limit_kmh),
                    over_s: Some(over_ms as f64 / 1000.0),
                    device_name: device_name.map(str::to_owned),
                    ..AlertDetail::default()
                },
            ));
        }
        return None;
    }
    if let Some(e) = episode {
        // Before the alert, the limit must be exceeded without a break;
        // after it, the episode ends only once the speed stays down.
        if !e.alerted {
            *episode = None;
            return None;
        }
        let below = *e.below_since_ms.get_or_insert(fix.ts_ms);
        if fix.ts_ms - below >= settings.overspeed_clear_ms {
            *episode = None;
        }
    }
    None
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alert_per_episode() {
        let s = VehicleSettings::default();
        let dev = DeviceId::parse("car").expect("id");
        let mut e = None;
        let mut alerts = 0;
        // km/h per second: 60 s at 100, 30 s at 70, 60 s at 100, under a
        // limit of 80, with one dip to 79 inside the first episode.
        let profile: Vec<f64> = (0..60)
            .map(|t| if t == 30 { 79.0 } else { 100.0 })
            .chain((0..30).map(|_| 70.0))
            .chain((0..60).map(|_| 100.0))
            .collect();
        for (t, kmh) in profile.iter().enumerate() {
            let fix = Fix {
                ts_ms: t as i64 * 1000,
                lat: 0.0,
                lon: 0.0,
            };
            if update(&mut e, &dev, fix, kmh * MPS_PER_KMH, Some(80.0), None, &s).is_some() {
                alerts += 1;
            }
        }
        assert_eq!(alerts, 2);
        // A spike shorter than the grace time never fires.
        let mut e = None;
        for t in 0..100 {
            let kmh = if t % 5 == 0 { 120.0 } else { 60.0 };
            let fix = Fix {
                ts_ms: t * 1000,
                lat: 0.0,
                lon: 0.0,
            };
            assert!(update(&mut e, &dev, fix, kmh * MPS_PER_KMH, Some(80.0), None, &s).is_none());
        }
    }
}
