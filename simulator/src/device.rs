//! One simulated device: the task that connects a [`Vehicle`] to the broker,
//! publishes its fixes on schedule, reconnects when the connection drops and
//! drains on stop.

use std::sync::Arc;
use std::time::Duration;

use fleetd_schemas::proto::Position;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::city::CityGrid;
use crate::ledger::{Ledger, SharedLedger};
use crate::progress::Counters;
use crate::report::VehicleReport;
use crate::session::{Endpoint, Session};
use crate::vehicle::Vehicle;

/// Tries of the first connection before the vehicle counts as not connected
/// (it keeps retrying in the background while the fleet publishes).
const INITIAL_ATTEMPTS: u32 = 3;
/// Reconnect back-off bounds; each wait is jittered to 50–100 %.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Largest model step taken from one fix to the next, so a wall-clock jump
/// cannot fling a vehicle across the city.
const MAX_STEP_MS: i64 = 60_000;
/// Mixed into the seed of the back-off jitter so it never shares a stream
/// with the movement model.
const JITTER_SEED: u64 = 0x6a09_e667_f3bc_c909;

/// What every device of a run shares.
#[derive(Debug)]
pub(crate) struct Fleet {
    pub(crate) endpoint: Endpoint,
    pub(crate) period: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) grid: CityGrid,
    pub(crate) seed: u64,
    pub(crate) vehicles: usize,
    /// Bounds connection attempts in progress across the fleet, so a large
    /// fleet (or a fleet reconnecting after a broker restart) does not hit
    /// the broker all at once.
    pub(crate) connect_permits: Semaphore,
    pub(crate) counters: Arc<Counters>,
}

/// How the runner steers a device through the phases of a run.
pub(crate) struct Signals {
    /// Receives the outcome of the device's first connection.
    pub(crate) connected: mpsc::Sender<Result<(), String>>,
    /// Carries the instant publishing starts, once every device has tried
    /// to connect.
    pub(crate) go: watch::Receiver<Option<Instant>>,
    /// Fires at the end of the run (duration reached or cancelled).
    pub(crate) stop: CancellationToken,
}

/// One device: its vehicle, its ledger and its publishing state.
pub(crate) struct Device {
    fleet: Arc<Fleet>,
    index: usize,
    device_id: String,
    topic: String,
    vehicle: Vehicle,
    ledger: Arc<SharedLedger>,
    /// Counter of the next position, counting from 0, gaps for none.
    seq: u64,
    /// Device time of the previous position, to keep times strictly increasing.
    prev_ts_ms: Option<i64>,
    jitter: SmallRng,
}

impl Device {
    pub(crate) fn new(fleet: Arc<Fleet>, index: usize, device_id: String) -> Self {
        let vehicle = Vehicle::new(fleet.grid, fleet.seed, index as u64);
        let ledger = Ledger::new(fleet.endpoint.qos, fleet.counters.clone());
        Self {
            topic: format!("fleet/{device_id}/pos"),
            device_id,
            vehicle,
            ledger: Arc::new(SharedLedger::new(ledger)),
            seq: 0,
            prev_ts_ms: None,
            jitter: SmallRng::seed_from_u64(fleet.seed ^ index as u64 ^ JITTER_SEED),
            index,
            fleet,
        }
    }

    /// Runs the device through connect, publish and drain; the report holds
    /// its final counts.
    pub(crate) async fn run(mut self, signals: Signals) -> VehicleReport {
        let Signals {
            connected,
            mut go,
            stop,
        } = signals;
        let first = self.connect_initially(&stop).await;
        let _ = connected
            .send(first.as_ref().map(|_| ()).map_err(Clone::clone))
            .await;
        drop(connected);
        let mut session = first.ok();

        let start = tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            start = go.wait_for(Option::is_some) => start.ok().and_then(|s| *s),
        };
        if let Some(start) = start {
            session = self.publish(session, start, &stop).await;
        }
        if let Some(session) = session {
            let deadline = Instant::now() + self.fleet.drain_timeout;
            session.close(&self.ledger, deadline).await;
        }
        let totals = self.ledger.read(Ledger::totals);
        VehicleReport {
            device_id: self.device_id,
            published: totals.published,
            acked: totals.acked,
            failed: totals.failed,
            last: totals.last,
        }
    }

    /// The first connection, retried a couple of times with back-off.
    async fn connect_initially(&mut self, stop: &CancellationToken) -> Result<Session, String> {
        let mut backoff = BACKOFF_MIN;
        let mut attempt = 1;
        loop {
            match self.connect_once(stop).await {
                Ok(session) => return Ok(session),
                Err(reason) if attempt >= INITIAL_ATTEMPTS || stop.is_cancelled() => {
                    tracing::debug!(device_id = %self.device_id, attempt, %reason, "could not connect");
                    return Err(reason);
                }
                Err(reason) => {
                    tracing::debug!(device_id = %self.device_id, attempt, %reason, "connect failed, retrying");
                }
            }
            attempt += 1;
            let wait = self.jittered(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            tokio::select! {
                _ = stop.cancelled() => return Err("stopped while connecting".to_owned()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One connection attempt, waiting for a fleet-wide connect permit first.
    async fn connect_once(&self, stop: &CancellationToken) -> Result<Session, String> {
        let fleet = &self.fleet;
        let _permit = tokio::select! {
            _ = stop.cancelled() => return Err("stopped while connecting".to_owned()),
            permit = fleet.connect_permits.acquire() => {
                permit.map_err(|_| "connect permits closed".to_owned())?
            }
        };
        tokio::select! {
            _ = stop.cancelled() => Err("stopped while connecting".to_owned()),
            session = Session::open(
                &fleet.endpoint,
                &self.device_id,
                self.ledger.clone(),
                fleet.counters.clone(),
            ) => session,
        }
    }

    /// Publishes a fix every period from `start` (shifted by this device's
    /// share of the period, so the fleet's load is smooth) until `stop`,
    /// reconnecting with back-off whenever the connection drops. Returns the
    /// session that is live at the end, if any.
    async fn publish(
        &mut self,
        mut session: Option<Session>,
        start: Instant,
        stop: &CancellationToken,
    ) -> Option<Session> {
        let period = self.fleet.period;
        let phase = period.mul_f64(self.index as f64 / self.fleet.vehicles as f64);
        let mut ticker = tokio::time::interval_at(start + phase, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut backoff = BACKOFF_MIN;
        let mut retry_at = start + self.jittered(backoff);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return session,
                reason = lost(&mut session) => {
                    tracing::warn!(device_id = %self.device_id, %reason, "connection lost, reconnecting");
                    if let Some(old) = session.take() {
                        old.discard(&self.ledger).await;
                    }
                    backoff = BACKOFF_MIN;
                    retry_at = Instant::now() + self.jittered(backoff);
                }
                _ = tokio::time::sleep_until(retry_at), if session.is_none() => {
                    match self.connect_once(stop).await {
                        Ok(new) => {
                            tracing::info!(device_id = %self.device_id, "reconnected");
                            session = Some(new);
                        }
                        Err(reason) => {
                            tracing::debug!(device_id = %self.device_id, %reason, "reconnect failed");
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                            retry_at = Instant::now() + self.jittered(backoff);
                        }
                    }
                }
                _ = ticker.tick() => {
                    let position = self.next_position();
                    match &session {
                        Some(live) => live.submit(&self.ledger, &self.topic, position),
                        None => self.ledger.update(Ledger::unsent),
                    }
                }
            }
        }
    }

    /// Advances the vehicle to now and returns its next position. Device
    /// time is the wall clock, bumped by 1 ms when it would not increase;
    /// the model advances by exactly the difference in device time, so the
    /// speed a consumer derives from consecutive positions is the model's.
    fn next_position(&mut self) -> Position {
        let now = fleetd_schemas::now_ms();
        let ts_ms = match self.prev_ts_ms {
            Some(prev) if now <= prev => prev + 1,
            _ => now,
        };
        if let Some(prev) = self.prev_ts_ms {
            let step_ms = (ts_ms - prev).clamp(0, MAX_STEP_MS);
            self.vehicle
                .advance(Duration::from_millis(step_ms.unsigned_abs()));
        }
        self.prev_ts_ms = Some(ts_ms);
        let position = self
            .vehicle
            .fix()
            .to_position(&self.device_id, ts_ms, self.seq);
        self.seq += 1;
        position
    }

    fn jittered(&mut self, wait: Duration) -> Duration {
        wait.mul_f64(self.jitter.random_range(0.5..=1.0))
    }
}

/// Resolves when `session` drops its connection; never while there is none.
async fn lost(session: &mut Option<Session>) -> String {
    match session {
        Some(live) => live.lost().await,
        None => std::future::pending().await,
    }
}
