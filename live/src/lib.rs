//! The live hub: what the processor hands to live streams after each batch
//! is stored, with sequence numbers, a bounded replay buffer and live
//! per-H3-cell vehicle counts.
//!
//! * [`LiveHub::publish`] is called by partition workers once a batch is
//!   written: the batch's latest positions (one per device) and its alerts.
//!   It never blocks on a consumer: it takes a short in-memory lock, assigns
//!   sequence numbers, appends to the replay buffers and sends one
//!   [`LiveBatch`] on a `tokio::sync::broadcast` channel, which is lossy by
//!   design (a consumer that falls behind sees `Lagged` and resumes from the
//!   replay buffer, or is told about the gap).
//! * [`LiveHub::subscribe`] gives a consumer a broadcast receiver plus the
//!   buffered events after a sequence number (resume), and names what it
//!   cannot replay as [`Gap`]s. Subscribing and publishing share one lock,
//!   so nothing falls between the replayed events and the live ones.
//! * [`Follower`] is how a consumer reads the hub: it subscribes, replays,
//!   names gaps and resubscribes after falling behind, so the live streams
//!   and alert publishing share one resume algorithm.
//! * [`LiveHub::cells`] answers live vehicle counts per H3 cell (res 5–9),
//!   kept up to date incrementally from the published positions.

mod cells;
mod follower;
mod replay;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use fleetd_schemas::{Alert, EnrichedPosition, VehicleState, now_ms};
use tokio::sync::broadcast;

use cells::CellCounts;
pub use cells::{CELL_RESOLUTIONS, CellCount, CellsAnswer};
pub use follower::{Follower, Step};
use replay::Replay;

/// Settings of the live hub (`[live]` in fleetd.toml).
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// Position events kept for resuming streams. Positions are superseded
    /// quickly, so this can be small: a few windows' worth of the fleet.
    pub replay_positions: usize,
    /// Alert events kept for resuming streams. Alerts are rare and must not
    /// be missed, so they have their own, longer buffer.
    pub replay_alerts: usize,
    /// Events older than this are dropped from both replay buffers.
    pub replay_age: Duration,
    /// Capacity of the broadcast channel, in batches. A consumer more than
    /// this many batches behind lags and must resume from the replay buffer.
    pub broadcast_batches: usize,
    /// A device that sent nothing for this long leaves the live cell counts.
    pub cells_max_age: Duration,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            replay_positions: 20_000,
            replay_alerts: 10_000,
            replay_age: Duration::from_secs(600),
            broadcast_batches: 256,
            cells_max_age: Duration::from_secs(600),
        }
    }
}

/// What a live event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A device's new latest position.
    Position,
    /// An alert.
    Alert,
}

impl EventKind {
    /// The stable name: `position` or `alert` (the SSE `event:` field).
    pub fn name(self) -> &'static str {
        match self {
            Self::Position => "position",
            Self::Alert => "alert",
        }
    }
}

/// Which kinds a consumer wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindSet {
    /// Position events.
    pub positions: bool,
    /// Alert events.
    pub alerts: bool,
}

impl KindSet {
    /// Both kinds.
    pub const ALL: Self = Self {
        positions: true,
        alerts: true,
    };

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: EventKind) -> bool {
        match kind {
            EventKind::Position => self.positions,
            EventKind::Alert => self.alerts,
        }
    }
}

/// A device's new latest position with the vehicle state it brought the
/// device to, so a stream carries what `GET /v1/vehicles/{id}` answers.
#[derive(Debug, Clone, PartialEq)]
pub struct LivePosition {
    /// The position.
    pub position: EnrichedPosition,
    /// The device's state after it (motion, odometer, trip); `None` when
    /// the batch did not change the state.
    pub vehicle: Option<VehicleState>,
}

impl From<EnrichedPosition> for LivePosition {
    fn from(position: EnrichedPosition) -> Self {
        Self {
            position,
            vehicle: None,
        }
    }
}

/// The payload of one live event.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    /// A device's new latest position (at most one per device per batch).
    Position(Box<LivePosition>),
    /// An alert raised while processing the batch.
    Alert(Alert),
}

impl LiveEvent {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Position(_) => EventKind::Position,
            Self::Alert(_) => EventKind::Alert,
        }
    }

    /// Where it happened, `(lat, lon)`.
    pub fn lat_lon(&self) -> (f64, f64) {
        match self {
            Self::Position(p) => (p.position.report.lat, p.position.report.lon),
            Self::Alert(a) => (a.lat, a.lon),
        }
    }

    /// Which device.
    pub fn device_id(&self) -> &str {
        match self {
            Self::Position(p) => p.position.report.device_id.as_str(),
            Self::Alert(a) => a.device_id.as_str(),
        }
    }
}

/// One event with its sequence number. Shared (`Arc`) by the replay buffer
/// and every consumer; its wire encoding is computed once, by whichever
/// consumer needs it first ([`SeqEvent::encoded`]).
#[derive(Debug)]
pub struct SeqEvent {
    /// Position in the hub's total order; strictly increasing, also across
    /// restarts (see [`LiveHub::new`]).
    pub seq: u64,
    /// Wall-clock time of publication, Unix ms (for delivery-lag figures).
    pub published_ms: i64,
    /// Monotonic time of publication (for the replay age bound and lag).
    pub published_at: Instant,
    /// The payload.
    pub event: LiveEvent,
    encoded: OnceLock<Arc<str>>,
}

impl SeqEvent {
    /// The event's encoding, computed by `encode` the first time it is asked
    /// for and shared afterwards, so a thousand streams serialize it once.
    pub fn encoded(&self, encode: impl FnOnce(&SeqEvent) -> String) -> &Arc<str> {
        self.encoded.get_or_init(|| Arc::from(encode(self)))
    }
}

/// The events of one published batch, in sequence order.
#[derive(Debug)]
pub struct LiveBatch {
    /// The events; sequence numbers are consecutive.
    pub events: Vec<Arc<SeqEvent>>,
}

/// Why events cannot be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// They were dropped from the bounded replay buffer (count or age).
    Expired,
    /// They were published before this process started.
    BeforeStart,
    /// The requested sequence number is newer than anything published.
    UnknownSequence,
}

impl GapReason {
    /// The stable code, e.g. `expired`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::BeforeStart => "before_start",
            Self::UnknownSequence => "unknown_sequence",
        }
    }
}

/// Events of `kind` with sequence numbers in `from_seq..=to_seq` that a
/// consumer may have missed and cannot get from the replay buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Which kind of events.
    pub kind: EventKind,
    /// First sequence number possibly missed.
    pub from_seq: u64,
    /// Last sequence number possibly missed.
    pub to_seq: u64,
    /// Why they are not available.
    pub reason: GapReason,
}

/// A consumer's start: the live receiver, the replayed events and the gaps.
#[derive(Debug)]
pub struct Subscription {
    /// Batches published after `replay` (never overlapping it).
    pub receiver: broadcast::Receiver<Arc<LiveBatch>>,
    /// Buffered events after the requested sequence number, in order, of
    /// the requested kinds only.
    pub replay: Vec<Arc<SeqEvent>>,
    /// What could not be replayed.
    pub gaps: Vec<Gap>,
    /// The newest sequence number published so far (0 if none).
    pub last_seq: u64,
}

/// The in-process hub between the processor and live streams. Cheap to
/// clone; all clones are the same hub.
#[derive(Clone)]
pub struct LiveHub {
    inner: Arc<Inner>,
}

struct Inner {
    settings: LiveSettings,
    /// Sequence numbers, replay buffers and the broadcast sender: one lock so
    /// that a subscription's replay and its live receiver meet exactly.
    state: Mutex<HubState>,
    cells: Mutex<CellCounts>,
    /// First sequence number of this process.
    base_seq: u64,
    published: AtomicU64,
}

struct HubState {
    next_seq: u64,
    positions: Replay,
    alerts: Replay,
    sender: broadcast::Sender<Arc<LiveBatch>>,
}

impl LiveHub {
    /// A hub with nothing published.
    ///
    /// Sequence numbers start at the current Unix time in microseconds, so
    /// they keep increasing across restarts as long as the hub publishes
    /// fewer than a million events per second on average; a client resuming
    /// with an id from before the restart is told about the gap instead of
    /// being served unrelated events.
    pub fn new(settings: LiveSettings) -> Self {
        let base_seq = u64::try_from(now_ms()).unwrap_or(0).saturating_mul(1000) + 1;
        Self::with_base_seq(settings, base_seq)
    }

    /// A hub whose first event gets sequence number `base_seq` (≥ 1).
    pub fn with_base_seq(settings: LiveSettings, base_seq: u64) -> Self {
        let base_seq = base_seq.max(1);
        let (sender, _) = broadcast::channel(settings.broadcast_batches.max(1));
        let state = HubState {
            next_seq: base_seq,
            positions: Replay::new(settings.replay_positions, base_seq - 1),
            alerts: Replay::new(settings.replay_alerts, base_seq - 1),
            sender,
        };
        let cells = CellCounts::new(settings.cells_max_age);
        Self {
            inner: Arc::new(Inner {
                settings,
                state: Mutex::new(state),
                cells: Mutex::new(cells),
                base_seq,
                published: AtomicU64::new(0),
            }),
        }
    }

    /// The hub's settings.
    pub fn settings(&self) -> &LiveSettings {
        &self.inner.settings
    }

    /// Seeds the live cell counts with positions restored at start (each
    /// device's latest), without publishing events.
    pub fn seed(&self, positions: &[EnrichedPosition]) {
        let now = Instant::now();
        let mut cells = lock(&self.inner.cells);
        for p in positions {
            cells.update(p, now);
        }
    }

    /// Publishes one stored batch: its latest positions (one per device) and
    /// its alerts, in that order, taking them over (the worker has no more
    /// use for them). Never blocks on, or waits for, a consumer.
    pub fn publish(&self, positions: Vec<LivePosition>, alerts: Vec<Alert>) {
        if positions.is_empty() && alerts.is_empty() {
            return;
        }
        let now = Instant::now();
        {
            let mut cells = lock(&self.inner.cells);
            for p in &positions {
                cells.update(&p.position, now);
            }
            cells.sweep_if_due(now);
        }
        let published_ms = now_ms();
        let (n_positions_in, n_alerts_in) = (positions.len(), alerts.len());
        let payloads = positions
            .into_iter()
            .map(|p| LiveEvent::Position(Box::new(p)))
            .chain(alerts.into_iter().map(LiveEvent::Alert));
        let mut state = lock(&self.inner.state);
        let mut events = Vec::with_capacity(n_positions_in + n_alerts_in);
        for event in payloads {
            let seq = state.next_seq;
            state.next_seq += 1;
            let event = Arc::new(SeqEvent {
                seq,
                published_ms,
                published_at: now,
                event,
                encoded: OnceLock::new(),
            });
            match event.event.kind() {
                EventKind::Position => state.positions.push(Arc::clone(&event)),
                EventKind::Alert => state.alerts.push(Arc::clone(&event)),
            }
            events.push(event);
        }
        let age = self.inner.settings.replay_age;
        state.positions.expire(now, age);
        state.alerts.expire(now, age);
        // An error only means that nobody listens right now.
        let _ = state.sender.send(Arc::new(LiveBatch { events }));
        let (n_positions, n_alerts) = (state.positions.len(), state.alerts.len());
        drop(state);
        self.inner
            .published
            .fetch_add((n_positions_in + n_alerts_in) as u64, Ordering::Relaxed);
        metrics::counter!("fleetd_live_published_total", "kind" => "position")
            .increment(n_positions_in as u64);
        metrics::counter!("fleetd_live_published_total", "kind" => "alert")
            .increment(n_alerts_in as u64);
        metrics::gauge!("fleetd_live_replay_events", "kind" => "position").set(n_positions as f64);
        metrics::gauge!("fleetd_live_replay_events", "kind" => "alert").set(n_alerts as f64);
    }

    /// Starts a consumer. With `since = Some(n)` (the last sequence number
    /// the consumer saw), buffered events of `kinds` after `n` are returned
    /// for replay, and what the buffer no longer holds is named as gaps;
    /// with `None` the consumer starts with the next event.
    pub fn subscribe(&self, since: Option<u64>, kinds: KindSet) -> Subscription {
        let now = Instant::now();
        let age = self.inner.settings.replay_age;
        let mut state = lock(&self.inner.state);
        let receiver = state.sender.subscribe();
        let last_seq = state.next_seq.saturating_sub(1);
        let mut replay = Vec::new();
        let mut gaps = Vec::new();
        if let Some(since) = since {
            state.positions.expire(now, age);
            state.alerts.expire(now, age);
            if since > last_seq {
                gaps.push(Gap {
                    kind: EventKind::Position,
                    from_seq: last_seq + 1,
                    to_seq: since,
                    reason: GapReason::UnknownSequence,
                });
            } else {
                let base = self.inner.base_seq;
                let mut parts: Vec<Vec<Arc<SeqEvent>>> = Vec::new();
                let buffers = [
                    (EventKind::Position, &state.positions),
                    (EventKind::Alert, &state.alerts),
                ];
                for (kind, buffer) in buffers {
                    if !kinds.contains(kind) {
                        continue;
                    }
                    let unavailable = buffer.unavailable_through();
                    if since < unavailable {
                        let reason = if since + 1 < base {
                            GapReason::BeforeStart
                        } else {
                            GapReason::Expired
                        };
                        gaps.push(Gap {
                            kind,
                            from_seq: since + 1,
                            to_seq: unavailable,
                            reason,
                        });
                    }
                    parts.push(buffer.after(since));
                }
                replay = merge_by_seq(&parts);
            }
        }
        drop(state);
        if since.is_some() {
            if gaps.is_empty() {
                metrics::counter!("fleetd_live_replay_hits_total").increment(1);
            } else {
                metrics::counter!("fleetd_live_replay_gaps_total").increment(1);
            }
            metrics::counter!("fleetd_live_replayed_events_total").increment(replay.len() as u64);
        }
        Subscription {
            receiver,
            replay,
            gaps,
            last_seq,
        }
    }

    /// Live vehicle counts per H3 cell at `res` (5–9), for cells whose centre
    /// lies in `bbox` (`None`: everywhere), at most `limit` cells, busiest
    /// first. Cost is proportional to the number of occupied cells, never
    /// to history; call it off the async runtime for large fleets.
    pub fn cells(
        &self,
        res: h3o::Resolution,
        bbox: Option<&fleetd_schemas::BBox>,
        limit: usize,
    ) -> Option<CellsAnswer> {
        let mut cells = lock(&self.inner.cells);
        cells.sweep_if_due(Instant::now());
        cells.query(res, bbox, limit)
    }

    /// Events published since start.
    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for LiveHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveHub")
            .field("settings", &self.inner.settings)
            .field("base_seq", &self.inner.base_seq)
            .finish_non_exhaustive()
    }
}

/// Locks `m`; a panic elsewhere while holding it leaves plain data behind,
/// still consistent enough to serve, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Merges vectors that are each sorted by `seq` into one sorted vector.
fn merge_by_seq(parts: &[Vec<Arc<SeqEvent>>]) -> Vec<Arc<SeqEvent>> {
    let mut out: Vec<Arc<SeqEvent>> = parts.iter().flat_map(|p| p.iter().cloned()).collect();
    // Two already sorted runs: the stable sort merges them in linear time.
    out.sort_by_key(|e| e.seq);
    out
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
