//! The movement model: one vehicle driving the streets of a [`CityGrid`].
//!
//! Pure by design: no I/O and no clock. [`Vehicle::advance`] moves it by a
//! given time step and [`Vehicle::fix`] reads what its GPS would report, so
//! the same seed and the same steps always give the same track.

use std::time::Duration;

use fleetd_schemas::proto::Position;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::city::{CityGrid, Direction, Node};
use crate::gps::GpsNoise;

/// Cruise speed range, drawn per street segment, in m/s (29–58 km/h).
const MIN_CRUISE_MPS: f64 = 8.0;
const MAX_CRUISE_MPS: f64 = 16.0;
/// Gentle acceleration, in m/s².
const ACCEL_MPS2: f64 = 1.2;
/// Deceleration the driver plans with when approaching a stop or a turn.
const PLAN_BRAKE_MPS2: f64 = 2.0;
/// Hardest deceleration used; above the planned one so the plan is always
/// reachable within a step.
const MAX_BRAKE_MPS2: f64 = 3.0;
/// Speed taken through a turn.
const TURN_MPS: f64 = 5.0;
/// Chance that the light at the end of a segment is red, and how long it stays red.
const P_RED_LIGHT: f64 = 0.25;
const RED_LIGHT_S: std::ops::Range<f64> = 3.0..20.0;
/// Chance of parking at the end of a segment, and for how long.
const P_PARK: f64 = 0.01;
const PARK_S: std::ops::Range<f64> = 60.0..300.0;
/// Relative weight of going straight on against each possible turn.
const STRAIGHT_WEIGHT: u32 = 2;
/// Battery drain while driving and while idling, and charge rate while
/// parked, in percent per second; below the floor the driver parks to charge.
const DRAIN_DRIVING_PCT_S: f64 = 0.004;
const DRAIN_IDLE_PCT_S: f64 = 0.001;
const CHARGE_PCT_S: f64 = 0.02;
const LOW_BATTERY_PCT: f64 = 10.0;
/// Longest internal integration step; larger steps are split.
const SUBSTEP_S: f64 = 0.2;

/// What a vehicle is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Motion {
    /// Moving along a street (possibly slowly, accelerating or braking).
    Driving,
    /// Standing at a red light.
    Waiting,
    /// Parked for a while (and charging).
    Parked,
}

/// What happens at the end of the current street segment.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Halt {
    /// Drive through (straight on or turning).
    None,
    /// Stop at a red light for this many seconds.
    RedLight(f64),
    /// Park for this many seconds.
    Park(f64),
}

/// One simulated vehicle: where it is on the grid, how fast it goes, what it
/// plans at the next intersection, and its GPS receiver and battery.
///
/// Reusable outside the MQTT simulator (e.g. by a multiplexed benchmark
/// publisher): create with [`Vehicle::new`], call [`Vehicle::advance`] with
/// the time since the last fix, then [`Vehicle::fix`].
#[derive(Debug, Clone)]
pub struct Vehicle {
    grid: CityGrid,
    rng: SmallRng,
    /// Segment being driven: from `from` towards `to` in direction `dir`.
    from: Node,
    to: Node,
    dir: Direction,
    /// Distance travelled along the segment, in metres.
    along_m: f64,
    speed_mps: f64,
    cruise_mps: f64,
    /// Direction taken at `to`, chosen on entering the segment so the driver
    /// can slow down for a turn in time.
    next_dir: Direction,
    halt: Halt,
    motion: Motion,
    /// Seconds left standing while waiting or parked.
    wait_s: f64,
    noise: GpsNoise,
    battery_pct: f64,
    odometer_m: f64,
}

/// What the vehicle's GPS reports at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    /// Latitude in WGS84 degrees, GPS error included.
    pub lat: f64,
    /// Longitude in WGS84 degrees, GPS error included.
    pub lon: f64,
    /// Ground speed in m/s.
    pub speed_mps: f32,
    /// Course over ground, degrees clockwise from north, in `[0, 360)`.
    pub heading_deg: f32,
    /// 68 % horizontal accuracy radius, in metres, matching the error applied.
    pub accuracy_m: f32,
    /// Battery level in percent.
    pub battery_pct: f32,
    /// What the vehicle is doing.
    pub motion: Motion,
}

impl Fix {
    /// The fix as a `fleet.v1.Position` for `device_id` at device time
    /// `ts_ms` (Unix ms), with per-device counter `seq`.
    pub fn to_position(&self, device_id: &str, ts_ms: i64, seq: u64) -> Position {
        Position {
            device_id: device_id.to_owned(),
            ts_ms,
            lat: self.lat,
            lon: self.lon,
            accuracy_m: Some(self.accuracy_m),
            altitude_m: None,
            speed_mps: Some(self.speed_mps),
            heading_deg: Some(self.heading_deg),
            battery_pct: Some(self.battery_pct),
            seq: Some(seq),
        }
    }
}

impl Vehicle {
    /// Vehicle number `index` of a fleet seeded with `seed`: it starts at
    /// rest at a random intersection of `grid`, using
    /// `SmallRng::seed_from_u64(seed ^ index)` for every random choice.
    pub fn new(grid: CityGrid, seed: u64, index: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ index);
        let from = Node {
            col: rng.random_range(0..=grid.blocks()),
            row: rng.random_range(0..=grid.blocks()),
        };
        let noise = GpsNoise::new(&mut rng);
        let battery_pct = rng.random_range(35.0..100.0);
        let mut vehicle = Self {
            grid,
            rng,
            from,
            to: from,
            dir: Direction::North,
            along_m: 0.0,
            speed_mps: 0.0,
            cruise_mps: MIN_CRUISE_MPS,
            next_dir: Direction::North,
            halt: Halt::None,
            motion: Motion::Driving,
            wait_s: 0.0,
            noise,
            battery_pct,
            odometer_m: 0.0,
        };
        // Every intersection has at least two exits (the grid has at least
        // one block), so the index is always in range.
        let exits: Vec<Direction> = grid.exits(from).collect();
        let dir = exits[vehicle.rng.random_range(0..exits.len())];
        vehicle.enter_segment(from, dir);
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
        let (x, y) = self.true_xy();
        let (ex, ey) = self.noise.offset();
        let (lat, lon) = self.grid.to_lat_lon(x + ex, y + ey);
        Fix {
            lat,
            lon,
            speed_mps: self.speed_mps as f32,
            heading_deg: self.dir.heading_deg() as f32,
            accuracy_m: self.noise.accuracy_m() as f32,
            battery_pct: self.battery_pct as f32,
            motion: self.motion,
        }
    }

    /// The true position, without GPS error, in WGS84 degrees (lat, lon).
    pub fn true_lat_lon(&self) -> (f64, f64) {
        let (x, y) = self.true_xy();
        self.grid.to_lat_lon(x, y)
    }

    /// What the vehicle is doing.
    pub fn motion(&self) -> Motion {
        self.motion
    }

    /// True ground speed, in m/s.
    pub fn speed_mps(&self) -> f64 {
        self.speed_mps
    }

    /// Distance driven since creation, in metres.
    pub fn odometer_m(&self) -> f64 {
        self.odometer_m
    }

    /// The city the vehicle drives in.
    pub fn grid(&self) -> &CityGrid {
        &self.grid
    }

    fn true_xy(&self) -> (f64, f64) {
        let (x0, y0) = self.grid.node_xy(self.from);
        let (ux, uy) = self.dir.unit();
        (x0 + ux * self.along_m, y0 + uy * self.along_m)
    }

    /// Starts driving from `from` in direction `dir` (which must lead to an
    /// intersection) and decides what happens at the far end.
    fn enter_segment(&mut self, from: Node, dir: Direction) {
        self.from = from;
        self.dir = dir;
        self.to = self.grid.neighbour(from, dir).unwrap_or(from);
        self.along_m = 0.0;
        self.cruise_mps = self.rng.random_range(MIN_CRUISE_MPS..MAX_CRUISE_MPS);
        self.next_dir = self.choose_turn();
        self.halt = if self.battery_pct < LOW_BATTERY_PCT || self.rng.random_bool(P_PARK) {
            Halt::Park(self.rng.random_range(PARK_S))
        } else if self.rng.random_bool(P_RED_LIGHT) {
            Halt::RedLight(self.rng.random_range(RED_LIGHT_S))
        } else {
            Halt::None
        };
    }

    /// A random exit at `self.to`: straight on is likelier than a turn, and
    /// a U-turn happens only where nothing else is possible.
    fn choose_turn(&mut self) -> Direction {
        let back = self.dir.reverse();
        let options: Vec<(Direction, u32)> = self
            .grid
            .exits(self.to)
            .filter(|&d| d != back)
            .map(|d| (d, if d == self.dir { STRAIGHT_WEIGHT } else { 1 }))
            .collect();
        let total: u32 = options.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return back;
        }
        let mut pick = self.rng.random_range(0..total);
        for (dir, weight) in options {
            if pick < weight {
                return dir;
            }
            pick -= weight;
        }
        back
    }

    /// One integration step of `h` seconds (at most [`SUBSTEP_S`]).
    fn step(&mut self, h: f64) {
        self.noise.advance(h);
        let battery_rate = match self.motion {
            Motion::Driving => -DRAIN_DRIVING_PCT_S,
            Motion::Waiting => -DRAIN_IDLE_PCT_S,
            Motion::Parked => CHARGE_PCT_S,
        };
        self.battery_pct = (self.battery_pct + battery_rate * h).clamp(0.0, 100.0);

        if self.motion != Motion::Driving {
            self.wait_s -= h;
            if self.wait_s <= 0.0 {
                self.motion = Motion::Driving;
                self.enter_segment(self.to, self.next_dir);
            }
            return;
        }

        let length = self.grid.block_m();
        let remaining = (length - self.along_m).max(0.0);
        let end_speed = match self.halt {
            Halt::None if self.next_dir == self.dir => self.cruise_mps,
            Halt::None => TURN_MPS,
            Halt::RedLight(_) | Halt::Park(_) => 0.0,
        };
        // Fastest speed from which the driver can still reach `end_speed`
        // by the intersection braking at the planned rate.
        let allowed = (end_speed * end_speed + 2.0 * PLAN_BRAKE_MPS2 * remaining).sqrt();
        let target = self.cruise_mps.min(allowed);
        self.speed_mps = if self.speed_mps < target {
            (self.speed_mps + ACCEL_MPS2 * h).min(target)
        } else {
            (self.speed_mps - MAX_BRAKE_MPS2 * h).max(target)
        };

        let distance = self.speed_mps * h;
        if distance < remaining {
            self.along_m += distance;
            self.odometer_m += distance;
            return;
        }
        self.odometer_m += remaining;
        match self.halt {
            Halt::RedLight(wait_s) | Halt::Park(wait_s) => {
                self.along_m = length;
                self.speed_mps = 0.0;
                self.wait_s = wait_s;
                self.motion = if matches!(self.halt, Halt::Park(_)) {
                    Motion::Parked
                } else {
                    Motion::Waiting
                };
            }
            Halt::None => {
                // Carry the overshoot into the next segment; it is well
                // under a block since a step moves at most a few metres.
                let overshoot = (distance - remaining).min(length);
                self.enter_segment(self.to, self.next_dir);
                self.along_m = overshoot;
                self.odometer_m += overshoot;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::city::haversine_m;

    const SEED: u64 = 42;

    /// 100 vehicles for 10 minutes at 1 Hz, as fixes per vehicle.
    fn fleet_tracks(step: Duration, steps: usize) -> Vec<(Vehicle, Vec<Fix>)> {
        let grid = CityGrid::new(52.52, 13.405);
        (0..100)
            .map(|i| {
                let mut vehicle = Vehicle::new(grid, SEED, i);
                let mut fixes = vec![vehicle.fix()];
                for _ in 0..steps {
                    vehicle.advance(step);
                    fixes.push(vehicle.fix());
                }
                (vehicle, fixes)
            })
            .collect()
    }

    fn max_implied_speed(fixes: &[Fix], step: Duration) -> f64 {
        fixes
            .windows(2)
            .map(|w| haversine_m(w[0].lat, w[0].lon, w[1].lat, w[1].lon) / step.as_secs_f64())
            .fold(0.0, f64::max)
    }

    #[test]
    fn ten_minutes_at_one_hertz_is_plausible() {
        let step = Duration::from_secs(1);
        let fleet = fleet_tracks(step, 600);
        let mut fastest = 0.0f64;
        let mut stopped_vehicles = 0;
        let mut parked_vehicles = 0;
        let mut total_m = 0.0;
        for (vehicle, fixes) in &fleet {
            fastest = fastest.max(max_implied_speed(fixes, step));
            // A stop is three or more consecutive fixes at zero speed.
            let stopped = fixes.windows(3).any(|w| {
                w.iter()
                    .all(|f| f.speed_mps == 0.0 && f.motion != Motion::Driving)
            });
            stopped_vehicles += usize::from(stopped);
            parked_vehicles += usize::from(fixes.iter().any(|f| f.motion == Motion::Parked));
            let moved = vehicle.odometer_m();
            assert!(moved > 500.0, "a vehicle moved only {moved} m in 10 min");
            total_m += moved;
            for f in fixes {
                assert!(
                    (0.0..=16.001).contains(&f.speed_mps),
                    "speed {}",
                    f.speed_mps
                );
                assert!((0.0..=100.0).contains(&f.battery_pct));
                assert!((2.0..6.0).contains(&f.accuracy_m));
            }
        }
        assert!(fastest < 25.0, "implied speed reached {fastest} m/s");
        // Cruise is capped at 16 m/s and GPS error moves under 2 m/s.
        assert!(fastest < 18.0, "implied speed reached {fastest} m/s");
        let mean_km = total_m / 1000.0 / fleet.len() as f64;
        assert!(mean_km > 3.0, "mean distance {mean_km} km in 10 min");
        assert!(
            stopped_vehicles >= 80,
            "only {stopped_vehicles} of 100 vehicles ever stopped"
        );
        assert!(parked_vehicles >= 1, "no vehicle parked");
    }

    #[test]
    fn high_rates_and_uneven_steps_never_teleport() {
        let grid = CityGrid::new(-33.87, 151.21);
        for i in 0..20 {
            let mut vehicle = Vehicle::new(grid, 9, i);
            let mut prev = vehicle.fix();
            for k in 0..3_000u64 {
                // 10 Hz with the odd late or early tick.
                let ms = match k % 50 {
                    0 => 1,
                    1 => 900,
                    _ => 100,
                };
                let dt = Duration::from_millis(ms);
                vehicle.advance(dt);
                let fix = vehicle.fix();
                let speed = haversine_m(prev.lat, prev.lon, fix.lat, fix.lon) / dt.as_secs_f64();
                assert!(speed < 25.0, "{speed} m/s over {ms} ms");
                prev = fix;
            }
        }
    }

    #[test]
    fn same_seed_same_track_other_seed_other_track() {
        let grid = CityGrid::new(52.52, 13.405);
        let track = |seed, index| {
            let mut vehicle = Vehicle::new(grid, seed, index);
            (0..300)
                .map(|_| {
                    vehicle.advance(Duration::from_millis(1000));
                    vehicle.fix()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(track(SEED, 3), track(SEED, 3));
        assert_ne!(track(SEED, 3), track(SEED, 4));
        assert_ne!(track(SEED, 3), track(SEED + 1, 3));
    }

    #[test]
    fn vehicles_stay_in_the_city() {
        let grid = CityGrid::new(52.52, 13.405);
        let (south, west) = grid.to_lat_lon(-1500.0 - 20.0, -1500.0 - 20.0);
        let (north, east) = grid.to_lat_lon(1500.0 + 20.0, 1500.0 + 20.0);
        for (_, fixes) in fleet_tracks(Duration::from_secs(5), 720) {
            for f in fixes {
                assert!((south..north).contains(&f.lat) && (west..east).contains(&f.lon));
            }
        }
    }

    #[test]
    fn position_carries_the_fix() {
        let grid = CityGrid::new(52.52, 13.405);
        let fix = Vehicle::new(grid, 1, 2).fix();
        let pos = fix.to_position("sim-0002", 1_700_000_000_000, 5);
        assert_eq!(pos.device_id, "sim-0002");
        assert_eq!((pos.ts_ms, pos.seq), (1_700_000_000_000, Some(5)));
        assert_eq!((pos.lat, pos.lon), (fix.lat, fix.lon));
        assert_eq!(pos.accuracy_m, Some(fix.accuracy_m));
        assert!(pos.speed_mps.is_some() && pos.heading_deg.is_some() && pos.battery_pct.is_some());
    }
}
