//! One simulated device with its own MQTT connection: the task that connects
//! a [`Phone`] to the broker, publishes on schedule, goes offline when the
//! phone loses its network (flushing a `pos/batch` on return), reconnects
//! when the connection drops and drains on stop.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::chaos::Chaos;
use crate::ledger::{Ledger, SharedLedger, Unit};
use crate::phone::{CityMap, Outages, Outgoing, Phone};
use crate::progress::Counters;
use crate::report::VehicleReport;
use crate::session::{Endpoint, Session};

/// Tries of the first connection before the vehicle counts as not connected
/// (it keeps retrying in the background while the fleet publishes).
const INITIAL_ATTEMPTS: u32 = 3;
/// Reconnect back-off bounds; each wait is jittered to 50–100 %.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Mixed into the seed of the back-off jitter so it never shares a stream
/// with the movement model.
const JITTER_SEED: u64 = 0x6a09_e667_f3bc_c909;

/// What every device of a run shares.
#[derive(Debug)]
pub(crate) struct Fleet {
    pub(crate) endpoint: Endpoint,
    pub(crate) period: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) map: CityMap,
    pub(crate) chaos: Chaos,
    pub(crate) outages: Outages,
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
    /// Receives the outcome of the first connection: how many vehicles it
    /// carries, or why it failed.
    pub(crate) connected: mpsc::Sender<Result<usize, String>>,
    /// Carries the instant publishing starts, once every device has tried
    /// to connect.
    pub(crate) go: watch::Receiver<Option<Instant>>,
    /// Fires at the end of the run (duration reached or cancelled).
    pub(crate) stop: CancellationToken,
}

/// One device: its phone, its ledger and its connection's back-off.
pub(crate) struct Device {
    fleet: Arc<Fleet>,
    index: usize,
    phone: Phone,
    ledger: Arc<SharedLedger>,
    jitter: SmallRng,
    /// Reused buffer of the messages one tick produces.
    out: Vec<Outgoing>,
}

impl Device {
    pub(crate) fn new(fleet: Arc<Fleet>, index: usize, device_id: String) -> Self {
        let phone = Phone::new(
            &fleet.map,
            fleet.seed,
            index,
            device_id,
            fleet.chaos,
            fleet.outages,
        );
        let ledger = Ledger::new(fleet.endpoint.qos, fleet.counters.clone());
        Self {
            phone,
            ledger: Arc::new(SharedLedger::new(ledger)),
            jitter: SmallRng::seed_from_u64(fleet.seed ^ index as u64 ^ JITTER_SEED),
            index,
            fleet,
            out: Vec::new(),
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
            .send(first.as_ref().map(|_| 1).map_err(Clone::clone))
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
        // Whatever the phone still holds goes now, or counts as failed.
        self.phone.flush_held(&mut self.out);
        self.send_out(session.as_ref());
        if let Some(session) = session {
            let deadline = Instant::now() + self.fleet.drain_timeout;
            session.close(&self.ledger, deadline).await;
        }
        let totals = self.ledger.read(Ledger::totals);
        let injected = self.phone.injected();
        VehicleReport::new(self.phone.device_id, totals, injected)
    }

    /// The first connection, retried a couple of times with back-off.
    async fn connect_initially(&mut self, stop: &CancellationToken) -> Result<Session, String> {
        let mut backoff = BACKOFF_MIN;
        let mut attempt = 1;
        loop {
            match self.connect_once(stop).await {
                Ok(session) => return Ok(session),
                Err(reason) if attempt >= INITIAL_ATTEMPTS || stop.is_cancelled() => {
                    tracing::debug!(device_id = %self.phone.device_id, attempt, %reason, "could not connect");
                    return Err(reason);
                }
                Err(reason) => {
                    tracing::debug!(device_id = %self.phone.device_id, attempt, %reason, "connect failed, retrying");
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
                &self.phone.device_id,
                self.ledger.clone(),
                fleet.counters.clone(),
            ) => session,
        }
    }

    /// Publishes a fix every period from `start` (shifted by this device's
    /// share of the period, so the fleet's load is smooth) until `stop`,
    /// reconnecting with back-off whenever the connection drops, and
    /// disconnecting while the phone is offline. Returns the session that is
    /// live at the end, if any.
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
                    tracing::warn!(device_id = %self.phone.device_id, %reason, "connection lost, reconnecting");
                    if let Some(old) = session.take() {
                        old.discard(&self.ledger).await;
                    }
                    backoff = BACKOFF_MIN;
                    retry_at = Instant::now() + self.jittered(backoff);
                }
                _ = tokio::time::sleep_until(retry_at), if session.is_none() && !self.phone.is_offline() => {
                    match self.connect_once(stop).await {
                        Ok(new) => {
                            tracing::debug!(device_id = %self.phone.device_id, "reconnected");
                            session = Some(new);
                        }
                        Err(reason) => {
                            tracing::debug!(device_id = %self.phone.device_id, %reason, "reconnect failed");
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                            retry_at = Instant::now() + self.jittered(backoff);
                        }
                    }
                }
                _ = ticker.tick() => {
                    let was_offline = self.phone.is_offline();
                    self.phone.tick(fleetd_schemas::now_ms(), period, &mut self.out);
                    let dropped = self.phone.take_dropped();
                    if dropped > 0 {
                        let device = self.phone.index();
                        self.ledger.update(|l| l.unsent(device, dropped));
                    }
                    if self.phone.is_offline() && !was_offline {
                        // The phone lost its network: hang up cleanly after
                        // what it already sent, and come back when it returns.
                        if let Some(live) = session.take() {
                            let deadline = Instant::now() + self.fleet.drain_timeout;
                            live.close(&self.ledger, deadline).await;
                        }
                        continue;
                    }
                    if was_offline && !self.phone.is_offline() && session.is_none() {
                        // Back online: connect now, so the flush is not lost.
                        if let Ok(new) = self.connect_once(stop).await {
                            session = Some(new);
                        }
                    }
                    self.send_out(session.as_ref());
                }
            }
        }
    }

    /// Hands what the phone produced to the session, or counts it as failed
    /// when there is none.
    fn send_out(&mut self, session: Option<&Session>) {
        for outgoing in self.out.drain(..) {
            match session {
                Some(live) => {
                    live.submit(&self.ledger, &self.phone.topic(outgoing.topic), outgoing)
                }
                None => {
                    if let Unit::Positions { device, count, .. } = outgoing.unit {
                        self.ledger.update(|l| l.unsent(device, count));
                    }
                }
            }
        }
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
