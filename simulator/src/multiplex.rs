//! Many vehicles over one MQTT connection ([`Group`]): how a gateway, a
//! load generator or a million-vehicle fleet on one machine publishes. Each
//! phone still publishes on its own topic at its own rate; the group spreads
//! the ticks evenly over the period, and one ledger follows every publish.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::device::{Fleet, Signals};
use crate::ledger::{Ledger, SharedLedger, Unit};
use crate::phone::{Outgoing, Phone};
use crate::report::VehicleReport;
use crate::session::Session;

/// How often a group wakes to publish what is due; positions are sent in
/// bursts of at most this slice of the period.
const SLICE: Duration = Duration::from_millis(10);
/// Back-off bounds of a group's reconnects.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The vehicles sharing one connection.
pub(crate) struct Group {
    fleet: Arc<Fleet>,
    client_id: String,
    phones: Vec<Phone>,
    ledger: Arc<SharedLedger>,
    out: Vec<Outgoing>,
}

impl Group {
    /// A group connecting as `client_id` for the vehicles with fleet
    /// indices `indices` and ids `device_ids`.
    pub(crate) fn new(
        fleet: Arc<Fleet>,
        client_id: String,
        members: impl IntoIterator<Item = (usize, String)>,
    ) -> Self {
        let phones = members
            .into_iter()
            .map(|(index, device_id)| {
                Phone::new(
                    &fleet.map,
                    fleet.seed,
                    index,
                    device_id,
                    fleet.chaos,
                    fleet.outages,
                )
            })
            .collect();
        let ledger = Ledger::new(fleet.endpoint.qos, fleet.counters.clone());
        Self {
            fleet,
            client_id,
            phones,
            ledger: Arc::new(SharedLedger::new(ledger)),
            out: Vec::new(),
        }
    }

    /// Connects, publishes until stopped, drains; one report per vehicle.
    pub(crate) async fn run(mut self, signals: Signals) -> Vec<VehicleReport> {
        let Signals {
            connected,
            mut go,
            stop,
        } = signals;
        let first = self.connect(&stop).await;
        let outcome = match &first {
            Ok(_) => Ok(self.phones.len()),
            Err(reason) => Err(reason.clone()),
        };
        let _ = connected.send(outcome).await;
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
        for i in 0..self.phones.len() {
            self.phones[i].flush_held(&mut self.out);
            self.send_out(i, session.as_ref()).await;
        }
        if let Some(session) = session {
            let deadline = Instant::now() + self.fleet.drain_timeout;
            session.close(&self.ledger, deadline).await;
        }
        let devices = self.ledger.read(|l| l.devices().clone());
        self.phones
            .into_iter()
            .map(|phone| {
                let totals = devices.get(&phone.index()).cloned().unwrap_or_default();
                let injected = phone.injected();
                VehicleReport::new(phone.device_id, totals, injected)
            })
            .collect()
    }

    async fn connect(&self, stop: &CancellationToken) -> Result<Session, String> {
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
                &self.client_id,
                self.ledger.clone(),
                fleet.counters.clone(),
            ) => session,
        }
    }

    /// Ticks every phone once per period, in round-robin order spread over
    /// the period, until `stop`.
    async fn publish(
        &mut self,
        mut session: Option<Session>,
        start: Instant,
        stop: &CancellationToken,
    ) -> Option<Session> {
        let n = self.phones.len();
        let period = self.fleet.period;
        let ticks_per_s = n as f64 / period.as_secs_f64();
        let (mut done, mut next) = (0u64, 0usize);
        let mut slice = tokio::time::interval_at(start, SLICE);
        slice.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut backoff = BACKOFF_MIN;
        let mut retry_at = start;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return session,
                reason = lost(&mut session) => {
                    tracing::warn!(client_id = %self.client_id, %reason, "connection lost, reconnecting");
                    if let Some(old) = session.take() {
                        old.discard(&self.ledger).await;
                    }
                    backoff = BACKOFF_MIN;
                    retry_at = Instant::now() + backoff;
                }
                _ = tokio::time::sleep_until(retry_at), if session.is_none() => {
                    match self.connect(stop).await {
                        Ok(new) => session = Some(new),
                        Err(reason) => {
                            tracing::debug!(client_id = %self.client_id, %reason, "reconnect failed");
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                            retry_at = Instant::now() + backoff;
                        }
                    }
                }
                _ = slice.tick() => {
                    let due = (start.elapsed().as_secs_f64() * ticks_per_s) as u64;
                    // More than a whole period behind (a stalled connection):
                    // skip ahead rather than burst, as per-vehicle tickers do.
                    done = done.max(due.saturating_sub(n as u64));
                    let now_ms = fleetd_schemas::now_ms();
                    while done < due {
                        let i = next;
                        next = (next + 1) % n;
                        done += 1;
                        self.phones[i].tick(now_ms, period, &mut self.out);
                        self.send_out(i, session.as_ref()).await;
                    }
                }
            }
        }
    }

    /// Publishes what phone `i` produced, waiting for room in the client's
    /// queue; without a connection its positions count as failed.
    async fn send_out(&mut self, i: usize, session: Option<&Session>) {
        let phone = &mut self.phones[i];
        let dropped = phone.take_dropped();
        if dropped > 0 {
            let device = phone.index();
            self.ledger.update(|l| l.unsent(device, dropped));
        }
        for outgoing in self.out.drain(..) {
            match session {
                Some(live) => {
                    let topic = phone.topic(outgoing.topic);
                    live.submit_waiting(&self.ledger, &topic, outgoing).await;
                }
                None => {
                    if let Unit::Positions { device, count, .. } = outgoing.unit {
                        self.ledger.update(|l| l.unsent(device, count));
                    }
                }
            }
        }
    }
}

/// Resolves when `session` drops its connection; never while there is none.
async fn lost(session: &mut Option<Session>) -> String {
    match session {
        Some(live) => live.lost().await,
        None => std::future::pending().await,
    }
}
