//! Live streams, transport-independent: stream parameters and filters, the
//! wire encoding of events, and the per-client pump that moves events from
//! the hub into a client's bounded queue.
//!
//! Each client gets one pump task. It reads the hub's broadcast (never
//! blocking the publisher), filters, encodes, and `try_send`s frames into
//! the client's queue. A queue over its byte budget means the client does
//! not keep up: it is dropped, with a logged reason and
//! `fleetd_live_dropped_clients_total{transport,reason="slow"}`. A pump that
//! lags behind the broadcast resumes from the replay buffer, or tells the
//! client about the gap.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use fleetd_live::{EventKind, Follower, Gap, KindSet, LiveEvent, LiveHub, SeqEvent};
use fleetd_schemas::BBox;
use fleetd_schemas::{DeviceId, GeofenceId};
use fleetd_store::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dto::Vehicle;
use crate::error::ApiError;
use crate::params::{bad, echo, parse_bbox};
use crate::records::VehicleDetail;

/// Most ids in a `devices` or `geofence` filter.
pub(crate) const MAX_FILTER_IDS: usize = 1000;

/// Per-connection limits and timings of live streams (`[live]` in fleetd.toml).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Interval of SSE heartbeat comments and WebSocket pings; keeps idle
    /// connections open through proxies.
    pub heartbeat: Duration,
    /// Bytes a client may have queued (encoded, not yet written to its
    /// socket) before it counts as slow and is dropped.
    pub client_buffer_bytes: usize,
    /// Frames (one per published batch) a client may have queued.
    pub client_buffer_frames: usize,
    /// Reconnection delay suggested to SSE clients (`retry:`).
    pub retry: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            client_buffer_bytes: 1024 * 1024,
            client_buffer_frames: 256,
            retry: Duration::from_secs(2),
        }
    }
}

/// Raw parameters of `GET /v1/stream` and `GET /v1/ws`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamParams {
    bbox: Option<String>,
    devices: Option<String>,
    geofence: Option<String>,
    kinds: Option<String>,
    since: Option<String>,
}

/// What a client wants to receive.
#[derive(Debug, Clone)]
pub(crate) struct StreamFilter {
    pub(crate) bbox: Option<BBox>,
    pub(crate) devices: Option<HashSet<DeviceId>>,
    /// Matches alerts by `geofence_id`. Positions carry no fence membership
    /// yet, so a stream with this filter receives alerts only.
    pub(crate) geofences: Option<HashSet<GeofenceId>>,
    pub(crate) kinds: KindSet,
}

/// A validated stream request.
#[derive(Debug, Clone)]
pub(crate) struct StreamRequest {
    pub(crate) filter: StreamFilter,
    /// Resume after this sequence number.
    pub(crate) since: Option<u64>,
}

impl StreamParams {
    /// Validates the parameters; `last_event_id` (the SSE `Last-Event-ID`
    /// header, sent by reconnecting browsers) wins over `since`.
    pub(crate) fn validate(self, last_event_id: Option<&str>) -> Result<StreamRequest, ApiError> {
        // A bad `since` is an error even when the header wins over it.
        let since_param = self
            .since
            .as_deref()
            .map(|raw| parse_seq("since", raw))
            .transpose()?;
        let since = match last_event_id {
            Some(raw) => Some(parse_seq("Last-Event-ID", raw)?),
            None => since_param,
        };
        let bbox = self.bbox.as_deref().map(parse_bbox).transpose()?;
        let devices = self
            .devices
            .as_deref()
            .map(|raw| {
                parse_ids("devices", raw, |s| {
                    DeviceId::parse(s).map_err(|e| e.to_string())
                })
            })
            .transpose()?;
        let geofences = self
            .geofence
            .as_deref()
            .map(|raw| {
                parse_ids("geofence", raw, |s| {
                    GeofenceId::parse(s).map_err(|e| e.to_string())
                })
            })
            .transpose()?;
        let mut kinds = match self.kinds.as_deref() {
            None => KindSet::ALL,
            Some(raw) => parse_kinds(raw)?,
        };
        if geofences.is_some() {
            kinds.positions = false;
        }
        Ok(StreamRequest {
            filter: StreamFilter {
                bbox,
                devices,
                geofences,
                kinds,
            },
            since,
        })
    }
}

fn parse_seq(name: &str, raw: &str) -> Result<u64, ApiError> {
    raw.trim().parse::<u64>().map_err(|_| {
        bad(format!(
            "{name} must be a sequence number (a non-negative integer, the id of the last event received), got {}",
            echo(raw)
        ))
    })
}

fn parse_ids<T: Eq + std::hash::Hash>(
    name: &str,
    raw: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<HashSet<T>, ApiError> {
    let parts: Vec<&str> = raw.split(',').map(str::trim).collect();
    if parts.len() > MAX_FILTER_IDS {
        return Err(bad(format!(
            "{name} lists {} ids, at most {MAX_FILTER_IDS} are allowed",
            parts.len()
        )));
    }
    parts
        .into_iter()
        .map(|p| parse(p).map_err(|e| bad(format!("{name}: {}: {e}", echo(p)))))
        .collect()
}

fn parse_kinds(raw: &str) -> Result<KindSet, ApiError> {
    let mut kinds = KindSet {
        positions: false,
        alerts: false,
    };
    for part in raw.split(',').map(str::trim) {
        match part {
            "positions" | "position" => kinds.positions = true,
            "alerts" | "alert" => kinds.alerts = true,
            other => {
                return Err(bad(format!(
                    "kinds must be a comma-separated list of positions and alerts, got {}",
                    echo(other)
                )));
            }
        }
    }
    Ok(kinds)
}

impl StreamFilter {
    /// Whether the client wants `event`.
    pub(crate) fn matches(&self, event: &LiveEvent) -> bool {
        if !self.kinds.contains(event.kind()) {
            return false;
        }
        if let Some(bbox) = &self.bbox {
            let (lat, lon) = event.lat_lon();
            if !bbox.contains(lat, lon) {
                return false;
            }
        }
        if let Some(devices) = &self.devices
            && !devices.iter().any(|d| d.as_str() == event.device_id())
        {
            return false;
        }
        if let Some(fences) = &self.geofences {
            return match event {
                LiveEvent::Alert(a) => a.geofence_id.as_ref().is_some_and(|g| fences.contains(g)),
                LiveEvent::Position(_) => false,
            };
        }
        true
    }
}

/// The two transports; they differ only in framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Server-Sent Events: `id`, `event`, `data` lines.
    Sse,
    /// WebSocket: one JSON text message per event.
    Ws,
}

impl Transport {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Sse => "sse",
            Self::Ws => "ws",
        }
    }
}

/// A stream position event: the vehicle JSON of `GET /v1/vehicles/{id}`
/// (position, state, registry fields) plus when it was published.
#[derive(Serialize)]
struct StreamPosition<'a> {
    #[serde(flatten)]
    vehicle: VehicleDetail<'a>,
    published_ms: i64,
}

/// The JSON of an event's payload, shared by both transports; registry
/// fields as `registry` holds them when the event is first encoded.
fn event_json(e: &SeqEvent, registry: &Registry) -> String {
    let json = match &e.event {
        LiveEvent::Position(p) => {
            let device = &p.position.report.device_id;
            let info = registry.get(device);
            let limit = registry.speed_limit_kmh(info.as_ref());
            serde_json::to_string(&StreamPosition {
                vehicle: VehicleDetail::new(
                    Vehicle::new(&p.position),
                    device.as_str(),
                    p.vehicle.as_ref(),
                    info.as_ref(),
                    limit,
                ),
                published_ms: e.published_ms,
            })
        }
        LiveEvent::Alert(a) => serde_json::to_string(a),
    };
    // Serializing plain data cannot fail; an empty object keeps the stream
    // well-formed if it ever did.
    json.unwrap_or_else(|_| "{}".to_owned())
}

/// One gap, as JSON.
#[derive(Serialize)]
struct GapJson<'a> {
    kind: &'a str,
    from_seq: u64,
    to_seq: u64,
    reason: &'a str,
    message: String,
}

fn gap_json(gap: &Gap) -> String {
    let kind = match gap.kind {
        EventKind::Position => "positions",
        EventKind::Alert => "alerts",
    };
    let message = format!(
        "{kind} {}..={} may have been missed and cannot be replayed ({})",
        gap.from_seq,
        gap.to_seq,
        gap.reason.code()
    );
    serde_json::to_string(&GapJson {
        kind,
        from_seq: gap.from_seq,
        to_seq: gap.to_seq,
        reason: gap.reason.code(),
        message,
    })
    .unwrap_or_else(|_| "{}".to_owned())
}

/// Encodes one event for `transport`.
fn encode_event(transport: Transport, e: &SeqEvent, registry: &Registry) -> Bytes {
    let json = e.encoded(|e| event_json(e, registry));
    let name = e.event.kind().name();
    Bytes::from(match transport {
        Transport::Sse => format!("id: {}\nevent: {name}\ndata: {json}\n\n", e.seq),
        Transport::Ws => format!(r#"{{"seq":{},"type":"{name}","data":{json}}}"#, e.seq),
    })
}

fn encode_gap(transport: Transport, gap: &Gap) -> Bytes {
    let json = gap_json(gap);
    Bytes::from(match transport {
        Transport::Sse => format!("event: gap\ndata: {json}\n\n"),
        Transport::Ws => format!(r#"{{"type":"gap","data":{json}}}"#),
    })
}

/// Encoded events on their way to one client: one frame per published batch.
#[derive(Debug)]
pub(crate) struct Frame {
    /// SSE: chunks to write back to back; WebSocket: one message each.
    pub(crate) parts: Vec<Bytes>,
    /// Events in the frame (heartbeats and gaps are not events).
    pub(crate) events: usize,
    /// When the newest event of the frame was published.
    pub(crate) published_at: Option<Instant>,
    bytes: usize,
}

impl Frame {
    fn new() -> Self {
        Self {
            parts: Vec::new(),
            events: 0,
            published_at: None,
            bytes: 0,
        }
    }

    fn push(&mut self, part: Bytes) {
        self.bytes += part.len();
        self.parts.push(part);
    }

    /// A frame with one part that is not an event (heartbeat, preamble).
    pub(crate) fn control(part: Bytes) -> Self {
        let mut frame = Self::new();
        frame.push(part);
        frame
    }
}

/// The receiving end of a client's queue, with its byte accounting.
#[derive(Debug)]
pub(crate) struct ClientQueue {
    pub(crate) rx: mpsc::Receiver<Frame>,
    queued: Arc<AtomicUsize>,
    transport: Transport,
}

impl ClientQueue {
    /// Marks `frame` as handed to the transport: its bytes leave the budget,
    /// and its events are counted as sent with their delivery lag.
    pub(crate) fn delivered(&self, frame: &Frame) {
        self.queued.fetch_sub(frame.bytes, Ordering::Relaxed);
        if frame.events > 0 {
            let label = self.transport.label();
            metrics::counter!("fleetd_live_events_sent_total", "transport" => label)
                .increment(frame.events as u64);
            if let Some(at) = frame.published_at {
                metrics::histogram!("fleetd_live_delivery_seconds", "transport" => label)
                    .record(at.elapsed().as_secs_f64());
            }
        }
    }
}

/// Why a pump stopped, other than being dropped as slow (the `Err` case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PumpEnd {
    /// The client went away (its queue was dropped).
    ClientGone,
    /// fleetd is shutting down.
    Shutdown,
}

/// Everything a pump needs.
pub(crate) struct Pump {
    pub(crate) hub: LiveHub,
    pub(crate) filter: StreamFilter,
    pub(crate) transport: Transport,
    pub(crate) settings: StreamSettings,
    pub(crate) shutdown: CancellationToken,
    /// Where the pump task is spawned, so the API's shutdown waits for it.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when the client is dropped as slow, so the transport can
    /// close its connection.
    pub(crate) kill: CancellationToken,
    pub(crate) peer: String,
    /// Names, classes and tags for position events.
    pub(crate) registry: Arc<Registry>,
}

/// Subscribes and starts a pump task; returns the client's queue.
pub(crate) fn start(pump: Pump, since: Option<u64>, preamble: Option<Bytes>) -> ClientQueue {
    let (tx, rx) = mpsc::channel(pump.settings.client_buffer_frames.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    let queue = ClientQueue {
        rx,
        queued: Arc::clone(&queued),
        transport: pump.transport,
    };
    // Subscribed before the task runs, so nothing published after the
    // request is missed.
    let follower = Follower::new(&pump.hub, since, pump.filter.kinds);
    let tasks = pump.tasks.clone();
    tasks.spawn(run(pump, follower, preamble, tx, queued));
    queue
}

struct Sender {
    tx: mpsc::Sender<Frame>,
    queued: Arc<AtomicUsize>,
    budget: usize,
}

impl Sender {
    /// Queues a frame without waiting; `Err` means the client is too slow.
    fn send(&self, frame: Frame) -> Result<(), String> {
        let queued = self.queued.load(Ordering::Relaxed);
        if queued > 0 && queued + frame.bytes > self.budget {
            return Err(format!(
                "{queued} bytes queued, the per-client limit is {}",
                self.budget
            ));
        }
        let bytes = frame.bytes;
        match self.tx.try_send(frame) {
            Ok(()) => {
                self.queued.fetch_add(bytes, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(format!(
                "{} frames queued, the per-client limit",
                self.tx.max_capacity()
            )),
            // The transport is gone; the select loop notices.
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
        }
    }
}

async fn run(
    pump: Pump,
    follower: Follower,
    preamble: Option<Bytes>,
    tx: mpsc::Sender<Frame>,
    queued: Arc<AtomicUsize>,
) {
    let label = pump.transport.label();
    metrics::gauge!("fleetd_live_clients", "transport" => label).increment(1.0);
    let sender = Sender {
        tx,
        queued,
        budget: pump.settings.client_buffer_bytes,
    };
    let end = pump_loop(&pump, &sender, follower, preamble).await;
    metrics::gauge!("fleetd_live_clients", "transport" => label).decrement(1.0);
    match &end {
        Err(reason) => {
            metrics::counter!("fleetd_live_dropped_clients_total", "transport" => label, "reason" => "slow")
                .increment(1);
            tracing::warn!(transport = label, peer = %pump.peer, reason = %reason, "dropping slow live client");
            pump.kill.cancel();
        }
        Ok(PumpEnd::Shutdown) => {
            // Ending the queue ends the response; a client whose socket is
            // full would still hold graceful shutdown, so cut it shortly after.
            drop(sender);
            tokio::time::sleep(Duration::from_millis(500)).await;
            pump.kill.cancel();
        }
        Ok(_) => {}
    }
    tracing::debug!(transport = label, peer = %pump.peer, ?end, "live client ended");
}

/// Moves the follower's steps into the client's queue, one frame per step:
/// the first (the preamble, what cannot be replayed, then the replay), one
/// per published batch, and a catch-up after falling behind the broadcast.
async fn pump_loop(
    pump: &Pump,
    sender: &Sender,
    mut follower: Follower,
    mut preamble: Option<Bytes>,
) -> Result<PumpEnd, String> {
    let transport = pump.transport;
    let mut heartbeat = tokio::time::interval(pump.settings.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.reset();
    let mut idle = true;
    loop {
        tokio::select! {
            biased;
            _ = pump.shutdown.cancelled() => return Ok(PumpEnd::Shutdown),
            _ = sender.tx.closed() => return Ok(PumpEnd::ClientGone),
            step = follower.next() => {
                if step.lagged {
                    metrics::counter!("fleetd_live_lagged_total", "transport" => transport.label()).increment(1);
                    tracing::debug!(peer = %pump.peer, last_seq = follower.last_seq(), "live client lagged; resuming from the replay buffer");
                }
                let mut frame = Frame::new();
                if let Some(p) = preamble.take() {
                    frame.push(p);
                }
                for gap in &step.gaps {
                    frame.push(encode_gap(transport, gap));
                }
                for e in step.events() {
                    add_event(pump, &mut frame, e);
                }
                if !frame.parts.is_empty() {
                    idle &= frame.events == 0;
                    sender.send(frame)?;
                }
            },
            _ = heartbeat.tick() => {
                if transport == Transport::Sse && idle {
                    sender.send(Frame::control(Bytes::from_static(b": heartbeat\n\n")))?;
                }
                idle = true;
            }
        }
    }
}

fn add_event(pump: &Pump, frame: &mut Frame, e: &Arc<SeqEvent>) {
    if pump.filter.matches(&e.event) {
        frame.push(encode_event(pump.transport, e, &pump.registry));
        frame.events += 1;
        frame.published_at = Some(e.published_at);
    }
}
