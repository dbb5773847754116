//! [`VehicleState`] ⇄ `StoredVehicleState`, the embedded store's encoding
//! of vehicle state (see `proto/storage.proto`).

use thin_vec::ThinVec;

use crate::storage::{
    StoredAnchor, StoredFix, StoredMembership, StoredOverspeed, StoredPoint, StoredSuspect,
    StoredTrip, StoredVehicleState,
};
use crate::{
    Anchor, DeviceFences, Fix, GeofenceId, InvalidId, Membership, Motion, Overspeed, Suspect, Trip,
    VehicleState,
};

impl From<&VehicleState> for StoredVehicleState {
    fn from(s: &VehicleState) -> Self {
        Self {
            ts_ms: s.ts_ms,
            motion: match s.motion {
                Motion::Unknown => 0,
                Motion::Moving => 1,
                Motion::Stopped => 2,
            },
            motion_since_ms: s.motion_since_ms,
            odometer_m: s.odometer_m,
            trip: s.trip.as_deref().map(StoredTrip::from),
            last_fix: s.last_fix.map(StoredFix::from),
            anchor: s.anchor.as_ref().map(StoredAnchor::from),
            departing: s.departing,
            departing_m: s.departing_m,
            overspeed: s.overspeed.as_deref().map(|o| StoredOverspeed {
                since_ms: o.since_ms,
                max_speed_mps: o.max_speed_mps,
                alerted: o.alerted,
                below_since_ms: o.below_since_ms,
            }),
            suspect: s.suspect.as_deref().map(|x| StoredSuspect {
                fix: Some(x.fix.into()),
                count: x.count,
            }),
            last_seen_ms: s.last_seen_ms,
            fences_last_ts_ms: s.fences.last_ts_ms,
            fences: s
                .fences
                .members
                .iter()
                .map(|m| StoredMembership {
                    fence: m.fence.as_str().to_owned(),
                    entered_ms: m.entered_ms,
                    outside_since_ms: m.outside_since_ms,
                    dwell_fired: m.dwell_fired,
                })
                .collect(),
        }
    }
}

impl TryFrom<StoredVehicleState> for VehicleState {
    /// A membership's fence id that is no longer valid.
    type Error = InvalidId;

    fn try_from(s: StoredVehicleState) -> Result<Self, Self::Error> {
        let members = s
            .fences
            .into_iter()
            .map(|m| {
                Ok(Membership {
                    fence: GeofenceId::parse(&m.fence)?,
                    entered_ms: m.entered_ms,
                    outside_since_ms: m.outside_since_ms,
                    dwell_fired: m.dwell_fired,
                })
            })
            .collect::<Result<ThinVec<_>, InvalidId>>()?;
        Ok(Self {
            ts_ms: s.ts_ms,
            motion: match s.motion {
                1 => Motion::Moving,
                2 => Motion::Stopped,
                // Unknown codes (a newer fleetd's) read as not yet known:
                // the state machine settles it from the next fixes.
                _ => Motion::Unknown,
            },
            motion_since_ms: s.motion_since_ms,
            odometer_m: s.odometer_m,
            trip: s.trip.map(|t| Box::new(Trip::from(t))),
            last_fix: s.last_fix.map(Fix::from),
            anchor: s.anchor.map(Anchor::from),
            departing: s.departing,
            departing_m: s.departing_m,
            overspeed: s.overspeed.map(|o| {
                Box::new(Overspeed {
                    since_ms: o.since_ms,
                    max_speed_mps: o.max_speed_mps,
                    alerted: o.alerted,
                    below_since_ms: o.below_since_ms,
                })
            }),
            suspect: s.suspect.map(|x| {
                Box::new(Suspect {
                    fix: x.fix.map(Fix::from).unwrap_or_default(),
                    count: x.count,
                })
            }),
            last_seen_ms: s.last_seen_ms,
            fences: DeviceFences {
                last_ts_ms: s.fences_last_ts_ms,
                members,
            },
        })
    }
}

impl From<Fix> for StoredFix {
    fn from(f: Fix) -> Self {
        Self {
            ts_ms: f.ts_ms,
            lat: f.lat,
            lon: f.lon,
        }
    }
}

impl From<StoredFix> for Fix {
    fn from(f: StoredFix) -> Self {
        Self {
            ts_ms: f.ts_ms,
            lat: f.lat,
            lon: f.lon,
        }
    }
}

fn point((lat, lon): (f64, f64)) -> StoredPoint {
    StoredPoint { lat, lon }
}

fn lat_lon(p: StoredPoint) -> (f64, f64) {
    (p.lat, p.lon)
}

impl From<&Trip> for StoredTrip {
    fn from(t: &Trip) -> Self {
        Self {
            start_ts_ms: t.start_ts_ms,
            start: Some(point(t.start)),
            end_ts_ms: t.end_ts_ms,
            end: t.end.map(point),
            last_ts_ms: t.last_ts_ms,
            last: Some(point(t.last)),
            distance_m: t.distance_m,
            max_speed_mps: t.max_speed_mps,
            points: t.points,
        }
    }
}

impl From<StoredTrip> for Trip {
    fn from(t: StoredTrip) -> Self {
        Self {
            start_ts_ms: t.start_ts_ms,
            start: t.start.map(lat_lon).unwrap_or_default(),
            end_ts_ms: t.end_ts_ms,
            end: t.end.map(lat_lon),
            last_ts_ms: t.last_ts_ms,
            last: t.last.map(lat_lon).unwrap_or_default(),
            distance_m: t.distance_m,
            max_speed_mps: t.max_speed_mps,
            points: t.points,
        }
    }
}

impl From<&Anchor> for StoredAnchor {
    fn from(a: &Anchor) -> Self {
        Self {
            fix: Some(a.fix.into()),
            last_ts_ms: a.last_ts_ms,
            run_m: a.run_m,
            points: a.points,
            mean: a.mean.map(point),
            last: a.last.map(point),
        }
    }
}

impl From<StoredAnchor> for Anchor {
    fn from(a: StoredAnchor) -> Self {
        Self {
            fix: a.fix.map(Fix::from).unwrap_or_default(),
            last_ts_ms: a.last_ts_ms,
            run_m: a.run_m,
            points: a.points,
            mean: a.mean.map(lat_lon),
            last: a.last.map(lat_lon),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(ts_ms: i64, lat: f64, lon: f64) -> Fix {
        Fix { ts_ms, lat, lon }
    }

    /// Every field set, and set to something other than its default, so a
    /// field the conversion forgets shows.
    fn full() -> VehicleState {
        let f = fix(1_764_662_400_123, 60.170_123_456_789, 24.938_765_432_1);
        VehicleState {
            ts_ms: f.ts_ms,
            motion: Motion::Stopped,
            motion_since_ms: f.ts_ms - 5_000,
            odometer_m: 123_456.789_012,
            trip: Some(Box::new(Trip {
                start_ts_ms: 1,
                start: (2.0, 3.0),
                end_ts_ms: Some(4),
                end: Some((5.0, 6.0)),
                last_ts_ms: 7,
                last: (8.0, 9.0),
                distance_m: 10.5,
                max_speed_mps: 11.5,
                points: 12,
            })),
            last_fix: Some(f),
            anchor: Some(Anchor {
                fix: fix(13, 14.0, 15.0),
                last_ts_ms: 16,
                run_m: 17.5,
                points: 18,
                mean: Some((19.0, 20.0)),
                last: Some((21.0, 22.0)),
            }),
            departing: 23,
            departing_m: 24.5,
            overspeed: Some(Box::new(Overspeed {
                since_ms: 25,
                max_speed_mps: 26.5,
                alerted: true,
                below_since_ms: Some(27),
            })),
            suspect: Some(Box::new(Suspect {
                fix: fix(28, -29.0, -30.0),
                count: 31,
            })),
            last_seen_ms: 32,
            fences: DeviceFences {
                last_ts_ms: Some(33),
                members: thin_vec::thin_vec![
                    Membership {
                        fence: GeofenceId::parse("depot").expect("valid id"),
                        entered_ms: 34,
                        outside_since_ms: Some(35),
                        dwell_fired: true,
                    },
                    Membership {
                        fence: GeofenceId::parse("zone-2").expect("valid id"),
                        entered_ms: 36,
                        outside_since_ms: None,
                        dwell_fired: false,
                    },
                ],
            },
        }
    }

    #[test]
    fn every_field_survives_the_round_trip() {
        for state in [full(), VehicleState::default()] {
            let stored = StoredVehicleState::from(&state);
            let back = VehicleState::try_from(stored).expect("decodes");
            assert_eq!(back, state);
        }
        for motion in [Motion::Unknown, Motion::Moving, Motion::Stopped] {
            let state = VehicleState { motion, ..full() };
            let back = VehicleState::try_from(StoredVehicleState::from(&state));
            assert_eq!(back.map(|s| s.motion), Ok(motion));
        }
    }

    #[test]
    fn an_invalid_fence_id_is_an_error() {
        let mut stored = StoredVehicleState::from(&full());
        stored.fences[0].fence = "no spaces".into();
        assert!(VehicleState::try_from(stored).is_err());
    }
}
