//! GPS error model: a smooth, slowly wandering offset of a few metres, as
//! multipath and atmospheric error look on a real receiver.

use std::f64::consts::TAU;

use rand::Rng;

/// Sinusoids per axis. Three with random periods and phases give an offset
/// that looks random, has exactly the chosen variance and moves slowly.
const COMPONENTS: usize = 3;

/// Shortest and longest period of a component, in seconds. The shortest
/// period bounds how fast the offset moves: at most
/// `sigma · √(2/COMPONENTS) · COMPONENTS · 2π / MIN_PERIOD_S` per axis
/// (under 1.3 m/s for the largest sigma), so noise never makes consecutive
/// fixes look like a jump, whatever the publish rate.
const MIN_PERIOD_S: f64 = 30.0;
const MAX_PERIOD_S: f64 = 120.0;

/// Per-axis standard deviation of the error, in metres, drawn per vehicle.
const MIN_SIGMA_M: f64 = 1.5;
const MAX_SIGMA_M: f64 = 3.5;

/// Radius holding 68 % of a circular 2-D Gaussian error with per-axis
/// standard deviation 1, i.e. `√(-2 ln 0.32)`: what `accuracy_m` reports.
const R68_PER_SIGMA: f64 = 1.5096;

/// One axis component: amplitude, angular frequency (rad/s), phase (rad).
#[derive(Debug, Clone, Copy)]
struct Wave {
    amplitude: f64,
    omega: f64,
    phase: f64,
}

impl Wave {
    fn random<R: Rng>(rng: &mut R, amplitude: f64) -> Self {
        Self {
            amplitude,
            omega: TAU / rng.random_range(MIN_PERIOD_S..MAX_PERIOD_S),
            phase: rng.random_range(0.0..TAU),
        }
    }

    fn at(&self, t: f64) -> f64 {
        self.amplitude * (self.omega * t + self.phase).sin()
    }
}

/// The error of one receiver: a smooth offset in local metres (east, north).
#[derive(Debug, Clone)]
pub(crate) struct GpsNoise {
    sigma_m: f64,
    east: [Wave; COMPONENTS],
    north: [Wave; COMPONENTS],
    /// Seconds since the receiver started; the only state that advances.
    t: f64,
}

impl GpsNoise {
    /// A receiver with a random error size and random wander.
    pub(crate) fn new<R: Rng>(rng: &mut R) -> Self {
        let sigma_m = rng.random_range(MIN_SIGMA_M..MAX_SIGMA_M);
        // A random-phase sinusoid of amplitude a has variance a²/2.
        let amplitude = sigma_m * (2.0 / COMPONENTS as f64).sqrt();
        Self {
            sigma_m,
            east: std::array::from_fn(|_| Wave::random(rng, amplitude)),
            north: std::array::from_fn(|_| Wave::random(rng, amplitude)),
            t: 0.0,
        }
    }

    /// Moves the error forward by `dt_s` seconds.
    pub(crate) fn advance(&mut self, dt_s: f64) {
        self.t += dt_s;
    }

    /// Current error in metres (east, north).
    pub(crate) fn offset(&self) -> (f64, f64) {
        let sum = |waves: &[Wave; COMPONENTS]| waves.iter().map(|w| w.at(self.t)).sum::<f64>();
        (sum(&self.east), sum(&self.north))
    }

    /// The 68 % horizontal accuracy radius this receiver reports, in metres.
    pub(crate) fn accuracy_m(&self) -> f64 {
        R68_PER_SIGMA * self.sigma_m
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    #[test]
    fn error_is_smooth_and_about_as_large_as_reported() {
        let mut rng = SmallRng::seed_from_u64(7);
        let (mut within, mut total) = (0u32, 0u32);
        for _ in 0..50 {
            let mut noise = GpsNoise::new(&mut rng);
            let mut prev = noise.offset();
            for _ in 0..2_000 {
                noise.advance(0.5);
                let (x, y) = noise.offset();
                let drift = (x - prev.0).hypot(y - prev.1) / 0.5;
                assert!(drift < 2.0, "error moved at {drift} m/s");
                prev = (x, y);
                total += 1;
                within += u32::from(x.hypot(y) <= noise.accuracy_m());
            }
        }
        let share = f64::from(within) / f64::from(total);
        assert!(
            (0.58..0.80).contains(&share),
            "{share} of fixes within accuracy"
        );
    }
}
