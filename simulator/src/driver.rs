//! The movement model on a real road network: a [`RoadVehicle`] drives
//! shortest-time routes between random destinations of a [`RoadMap`], at
//! the street's legal speed (each driver a little under or over it),
//! slowing for turns, stopping at red lights and stop signs, and parking at
//! each destination before setting off again.
//!
//! Pure like the grid model: no I/O, no clock; the same seed and steps give
//! the same track.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::gps::GpsNoise;
use crate::roads::RoadMap;
use crate::vehicle::{Fix, Motion};

/// Gentle acceleration, in m/s².
const ACCEL_MPS2: f64 = 1.5;
/// Deceleration drivers plan with when approaching a stop or a turn.
const PLAN_BRAKE_MPS2: f64 = 2.0;
/// Hardest deceleration applied; above the planned one so plans hold.
const MAX_BRAKE_MPS2: f64 = 3.5;
/// Speed through a right-angle turn; gentler bends allow more.
const TURN_MPS: f64 = 4.5;
/// Chance that traffic lights are red on arrival, and for how long.
const P_RED: f64 = 0.45;
const RED_S: std::ops::Range<f64> = 5.0..40.0;
/// A stop or give-way sign: a short full stop.
const YIELD_S: std::ops::Range<f64> = 1.0..4.0;
/// Chance of a brief stop at an unsigned intersection (yielding to traffic).
const P_YIELD_UNSIGNED: f64 = 0.15;
/// Parking time at each destination.
const PARK_S: std::ops::Range<f64> = 30.0..600.0;
/// Each driver's speed relative to the legal one.
const DRIVER_FACTOR: std::ops::Range<f64> = 0.8..1.1;
/// Battery drain while moving or idling, charge while parked (%/s).
const DRAIN_PCT_S: f64 = 0.003;
const CHARGE_PCT_S: f64 = 0.02;
/// Longest integration step; larger steps are split.
const SUBSTEP_S: f64 = 0.2;
/// Mixed into the seed so a road vehicle never shares a random stream with
/// a grid vehicle of the same index.
const ROAD_SEED: u64 = 0x3c6e_f372_fe94_f82b;

/// What waits at a node of the route.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stop {
    /// Seconds to stand still there (0: drive through).
    wait_s: f64,
    /// Highest speed at which to pass the node, m/s.
    pass_mps: f64,
}

/// One vehicle on a [`RoadMap`]. Create with [`RoadVehicle::new`], then call
/// [`RoadVehicle::advance`] and [`RoadVehicle::fix`], as with the grid
/// [`Vehicle`](crate::Vehicle).
#[derive(Debug, Clone)]
pub struct RoadVehicle {
    map: Arc<RoadMap>,
    rng: SmallRng,
    /// Node indices from the current origin to the destination.
    route: Vec<usize>,
    /// What happens at each node of `route` (same length).
    stops: Vec<Stop>,
    /// The vehicle is on the segment `route[leg] → route[leg + 1]`.
    leg: usize,
    along_m: f64,
    speed_mps: f64,
    factor: f64,
    motion: Motion,
    /// Seconds left standing (at a stop or parked).
    wait_s: f64,
    noise: GpsNoise,
    battery_pct: f64,
    odometer_m: f64,
}

impl RoadVehicle {
    /// Vehicle number `index` of a fleet seeded with `seed`, parked at a
    /// random node of `map` and about to leave for a random destination.
    pub fn new(map: Arc<RoadMap>, seed: u64, index: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ index ^ ROAD_SEED);
        let start = rng.random_range(0..map.node_count());
        let noise = GpsNoise::new(&mut rng);
        let mut vehicle = Self {
            factor: rng.random_range(DRIVER_FACTOR),
            battery_pct: rng.random_range(35.0..100.0),
            map,
            rng,
            route: vec![start],
            stops: vec![Stop {
                wait_s: 0.0,
                pass_mps: 0.0,
            }],
            leg: 0,
            along_m: 0.0,
            speed_mps: 0.0,
            motion: Motion::Parked,
            // A fleet does not all set off in the same second.
            wait_s: 0.0,
            noise,
            odometer_m: 0.0,
        };
        vehicle.wait_s = vehicle.rng.random_range(0.0..20.0);
        vehicle
    }

    /// Moves the vehicle forward in time by `dt`.
    pub fn advance(&mut self, dt: Duration) {
        let total = dt.as_secs_f64();
        if total <= 0.0 {
            return;
        }
        let steps = (total / SUBSTEP_S).ceil().max(1.0);
        let h = total / steps;
        for _ in 0..steps as u64 {
            self.step(h);
        }
    }

    /// What the GPS reports now.
    pub fn fix(&self) -> Fix {
        let (x, y, heading) = self.true_xy_heading();
        let (ex, ey) = self.noise.offset();
        let (lat, lon) = self.to_lat_lon(x + ex, y + ey);
        Fix {
            lat,
            lon,
            speed_mps: self.speed_mps as f32,
            heading_deg: heading as f32,
            accuracy_m: self.noise.accuracy_m() as f32,
            battery_pct: self.battery_pct as f32,
            motion: self.motion,
        }
    }

    /// The true position, without GPS error, WGS84 (lat, lon).
    pub fn true_lat_lon(&self) -> (f64, f64) {
        let (x, y, _) = self.true_xy_heading();
        self.to_lat_lon(x, y)
    }

    /// What the vehicle is doing.
    pub fn motion(&self) -> Motion {
        self.motion
    }

    /// Distance driven since creation, in metres.
    pub fn odometer_m(&self) -> f64 {
        self.odometer_m
    }

    /// The road segment the vehicle is on, as node indices (from, to);
    /// `None` while parked between routes.
    pub fn segment(&self) -> Option<(usize, usize)> {
        (self.leg + 1 < self.route.len()).then(|| (self.route[self.leg], self.route[self.leg + 1]))
    }

    fn to_lat_lon(&self, x: f64, y: f64) -> (f64, f64) {
        let (lat0, lon0) = self.map.center();
        let (m_lat, m_lon) = crate::roads::metres_per_degree(lat0);
        (lat0 + y / m_lat, lon0 + x / m_lon)
    }

    fn true_xy_heading(&self) -> (f64, f64, f64) {
        let here = self.map.node(self.route[self.leg]);
        let Some((_, to)) = self.segment() else {
            return (here.x, here.y, self.last_heading());
        };
        let there = self.map.node(to);
        let (dx, dy) = (there.x - here.x, there.y - here.y);
        let len = dx.hypot(dy).max(1e-9);
        let t = (self.along_m / len).min(1.0);
        (here.x + dx * t, here.y + dy * t, heading_deg(dx, dy))
    }

    /// Heading of the last segment driven (parked vehicles keep it).
    fn last_heading(&self) -> f64 {
        if self.leg == 0 {
            return 0.0;
        }
        let (a, b) = (
            self.map.node(self.route[self.leg - 1]),
            self.map.node(self.route[self.leg]),
        );
        heading_deg(b.x - a.x, b.y - a.y)
    }

    fn segment_length(&self) -> f64 {
        self.segment()
            .and_then(|(a, b)| self.map.edge(a, b))
            .map_or(0.0, |e| e.length_m)
    }

    fn cruise_mps(&self) -> f64 {
        self.segment()
            .and_then(|(a, b)| self.map.edge(a, b))
            .map_or(0.0, |e| e.speed_mps * self.factor)
    }

    /// Picks a destination and plans the route and its stops.
    fn plan_trip(&mut self) {
        let origin = self.route[self.leg];
        let n = self.map.node_count();
        let route = (0..8).find_map(|_| {
            let to = self.rng.random_range(0..n);
            self.map.route(origin, to)
        });
        let Some(route) = route else {
            // A one-node map or bad luck: stay parked a little longer.
            self.motion = Motion::Parked;
            self.wait_s = 10.0;
            return;
        };
        let last = route.len() - 1;
        let stops = (0..route.len())
            .map(|i| {
                if i == last {
                    return Stop {
                        wait_s: self.rng.random_range(PARK_S),
                        pass_mps: 0.0,
                    };
                }
                if i == 0 {
                    return Stop {
                        wait_s: 0.0,
                        pass_mps: f64::INFINITY,
                    };
                }
                let node = self.map.node(route[i]);
                let turn = turn_speed(&self.map, route[i - 1], route[i], route[i + 1]);
                let wait_s = if node.signals && self.rng.random_bool(P_RED) {
                    self.rng.random_range(RED_S)
                } else if node.yield_sign
                    || (node.intersection
                        && !node.signals
                        && self.rng.random_bool(P_YIELD_UNSIGNED))
                {
                    self.rng.random_range(YIELD_S)
                } else {
                    0.0
                };
                Stop {
                    wait_s,
                    pass_mps: if wait_s > 0.0 { 0.0 } else { turn },
                }
            })
            .collect();
        self.route = route;
        self.stops = stops;
        self.leg = 0;
        self.along_m = 0.0;
        self.motion = Motion::Driving;
    }

    /// The fastest speed now from which every coming stop or turn can still
    /// be met braking at the planned rate.
    fn allowed_speed(&self) -> f64 {
        let mut allowed = f64::INFINITY;
        let mut ahead = self.segment_length() - self.along_m;
        let reach = self.cruise_mps().powi(2) / (2.0 * PLAN_BRAKE_MPS2) + 30.0;
        for i in self.leg + 1..self.route.len() {
            let stop = self.stops[i];
            let v = (stop.pass_mps.powi(2) + 2.0 * PLAN_BRAKE_MPS2 * ahead.max(0.0)).sqrt();
            allowed = allowed.min(v);
            if ahead > reach || i + 1 >= self.route.len() {
                break;
            }
            ahead += self
                .map
                .edge(self.route[i], self.route[i + 1])
                .map_or(0.0, |e| e.length_m);
        }
        allowed
    }

    fn step(&mut self, h: f64) {
        self.noise.advance(h);
        let rate = if self.motion == Motion::Parked {
            CHARGE_PCT_S
        } else {
            -DRAIN_PCT_S
        };
        self.battery_pct = (self.battery_pct + rate * h).clamp(0.0, 100.0);

        if self.motion != Motion::Driving {
            self.wait_s -= h;
            if self.wait_s > 0.0 {
                return;
            }
            if self.segment().is_none() {
                self.plan_trip();
                return;
            }
            self.motion = Motion::Driving;
        }

        let target = self.cruise_mps().min(self.allowed_speed());
        self.speed_mps = if self.speed_mps < target {
            (self.speed_mps + ACCEL_MPS2 * h).min(target)
        } else {
            (self.speed_mps - MAX_BRAKE_MPS2 * h).max(target)
        };
        let mut distance = self.speed_mps * h;
        // A step can cross several short segments.
        while distance > 0.0 {
            let remaining = self.segment_length() - self.along_m;
            if distance < remaining {
                self.along_m += distance;
                self.odometer_m += distance;
                return;
            }
            self.odometer_m += remaining.max(0.0);
            distance -= remaining.max(0.0);
            self.leg += 1;
            self.along_m = 0.0;
            let stop = self.stops[self.leg];
            if self.segment().is_none() {
                self.park(stop.wait_s);
                return;
            }
            if stop.wait_s > 0.0 {
                self.speed_mps = 0.0;
                self.wait_s = stop.wait_s;
                self.motion = Motion::Waiting;
                return;
            }
        }
    }

    fn park(&mut self, wait_s: f64) {
        self.speed_mps = 0.0;
        self.motion = Motion::Parked;
        self.wait_s = wait_s;
        // The destination becomes the origin of the next trip.
        let here = self.route[self.leg];
        let heading_from = self.leg.checked_sub(1).map(|i| self.route[i]);
        self.route = heading_from.into_iter().chain([here]).collect();
        self.leg = self.route.len() - 1;
        self.stops = vec![
            Stop {
                wait_s: 0.0,
                pass_mps: 0.0,
            };
            self.route.len()
        ];
    }
}

/// Speed for passing node `b` coming from `a` and going on to `c`: the
/// cruise speed straight on, [`TURN_MPS`] at a right angle, a crawl for a
/// U-turn.
fn turn_speed(map: &RoadMap, a: usize, b: usize, c: usize) -> f64 {
    let (pa, pb, pc) = (map.node(a), map.node(b), map.node(c));
    let (ux, uy) = (pb.x - pa.x, pb.y - pa.y);
    let (vx, vy) = (pc.x - pb.x, pc.y - pb.y);
    let norm = ux.hypot(uy) * vx.hypot(vy);
    if norm <= 0.0 {
        return TURN_MPS;
    }
    let cos = ((ux * vx + uy * vy) / norm).clamp(-1.0, 1.0);
    let angle = cos.acos().to_degrees();
    if angle < 20.0 {
        f64::INFINITY
    } else {
        // 20° → ~11 m/s, 90° → TURN_MPS, 180° → 1.5 m/s.
        (TURN_MPS * (90.0 / angle).powf(0.9)).clamp(1.5, 12.0)
    }
}

/// Compass heading of the vector (east, north), degrees in `[0, 360)`.
fn heading_deg(dx: f64, dy: f64) -> f64 {
    dx.atan2(dy).to_degrees().rem_euclid(360.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::city::haversine_m;
    use crate::roads::EMBEDDED_MAP;

    fn map() -> Arc<RoadMap> {
        Arc::new(RoadMap::named(EMBEDDED_MAP).expect("embedded map"))
    }

    #[test]
    fn drives_the_streets_at_city_speeds_with_stops_and_parking() {
        let map = map();
        let (mut fastest, mut waited, mut parked, mut total_m) = (0.0f64, 0, 0, 0.0);
        for i in 0..40 {
            let mut v = RoadVehicle::new(map.clone(), 5, i);
            let mut prev = v.fix();
            let mut saw = (false, false);
            for _ in 0..1_800 {
                v.advance(Duration::from_secs(1));
                let fix = v.fix();
                let implied = haversine_m(prev.lat, prev.lon, fix.lat, fix.lon);
                fastest = fastest.max(implied);
                assert!(f64::from(fix.speed_mps) <= 70.0 / 3.6 * 1.1 + 1e-6);
                if let Some((a, b)) = v.segment() {
                    assert!(map.edge(a, b).is_some(), "off the road network");
                }
                saw.0 |= fix.motion == Motion::Waiting;
                saw.1 |= fix.motion == Motion::Parked && v.odometer_m() > 0.0;
                prev = fix;
            }
            waited += usize::from(saw.0);
            parked += usize::from(saw.1);
            total_m += v.odometer_m();
        }
        // Central Helsinki is 30–50 km/h; GPS error moves under 2 m/s.
        assert!(fastest < 19.0, "implied speed {fastest} m/s");
        let mean_km = total_m / 40.0 / 1000.0;
        assert!(mean_km > 1.0, "mean {mean_km} km in 30 min");
        assert!(
            waited >= 30,
            "{waited}/40 vehicles ever stopped at lights or signs"
        );
        assert!(
            parked >= 20,
            "{parked}/40 vehicles reached a destination and parked"
        );
    }

    #[test]
    fn same_seed_same_track() {
        let map = map();
        let track = |seed, index| {
            let mut v = RoadVehicle::new(map.clone(), seed, index);
            (0..600)
                .map(|_| {
                    v.advance(Duration::from_millis(500));
                    v.fix()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(track(1, 2), track(1, 2));
        assert_ne!(track(1, 2), track(1, 3));
    }

    #[test]
    fn turn_speeds() {
        assert_eq!(heading_deg(0.0, 1.0), 0.0);
        assert_eq!(heading_deg(1.0, 0.0), 90.0);
        assert_eq!(heading_deg(-1.0, 0.0), 270.0);
    }
}
