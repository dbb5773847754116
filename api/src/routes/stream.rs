//! Live streams: `GET /v1/stream` (Server-Sent Events) and `GET /v1/ws`
//! (WebSocket).
//!
//! Both take the filters `bbox`, `devices`, `geofence` and `kinds`, and
//! resume after a sequence number (`since`, or the SSE `Last-Event-ID`
//! header). SSE events are `event: position|alert|gap` with the sequence
//! number as `id`; WebSocket messages are `{"seq", "type", "data"}`
//! (gaps: `{"type": "gap", "data": {...}}`).
//!
//! A stream outlives the request that checked its token: it ends when the
//! caller's token (or credential) is revoked or expires, and the client's
//! reconnect then meets the check again. A share link's stream carries its
//! devices' positions only.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use fleetd_auth::Identity;
use fleetd_schemas::DeviceId;
use futures::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::conn::Conn;
use crate::error::ApiError;
use crate::extract::Query;
use crate::live::{self, ClientQueue, Pump, StreamParams, StreamRequest, Transport};
use crate::state::ApiState;

/// `GET /v1/stream`: Server-Sent Events of positions and alerts.
///
/// Starts with a `retry:` hint and a comment naming the newest sequence
/// number, then replays (with `since` or `Last-Event-ID`), then streams.
/// Heartbeat comments keep idle connections open. 400 for a bad parameter.
pub(crate) async fn sse(
    State(state): State<ApiState>,
    identity: Option<Extension<Identity>>,
    conn: Option<Extension<ConnectInfo<Conn>>>,
    headers: HeaderMap,
    Query(params): Query<StreamParams>,
) -> Result<Response, ApiError> {
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Last-Event-ID must be ASCII".into()))?,
        ),
        None => None,
    };
    let request = for_share(params.validate(last_event_id)?, identity.as_ref())?;
    let (peer, kill) = conn_parts(conn);
    let preamble = Bytes::from(format!(
        "retry: {}\n: fleetd live stream\n\n",
        state.live.settings.retry.as_millis()
    ));
    let queue = start(
        &state,
        request.clone(),
        Transport::Sse,
        peer,
        kill,
        Some(preamble),
    );
    let body = futures::stream::unfold(queue, |mut queue: ClientQueue| async move {
        let frame = queue.rx.recv().await?;
        queue.delivered(&frame);
        let chunk = match frame.parts.len() {
            1 => frame.parts.into_iter().next().unwrap_or_default(),
            _ => Bytes::from(frame.parts.concat()),
        };
        Some((Ok::<_, std::convert::Infallible>(chunk), queue))
    })
    .take_until(revoked(&state, identity));
    Ok((
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Tells nginx-style proxies not to buffer the stream.
            (
                axum::http::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// `GET /v1/ws`: the same events over a WebSocket, one JSON text message
/// each; pings keep the connection open. 400 for a bad parameter or a
/// request that is not a WebSocket upgrade.
pub(crate) async fn ws(
    State(state): State<ApiState>,
    identity: Option<Extension<Identity>>,
    conn: Option<Extension<ConnectInfo<Conn>>>,
    Query(params): Query<StreamParams>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let request = for_share(params.validate(None)?, identity.as_ref())?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::BadRequest(format!(
            "GET /v1/ws needs a WebSocket upgrade request: {}",
            rejection.body_text().to_lowercase()
        ))
    })?;
    let (peer, _) = conn_parts(conn);
    Ok(upgrade
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| ws_session(socket, state, request, peer, identity))
        .into_response())
}

/// A share link's stream: the positions of its devices only (those asked
/// for among them, or all of them), no alerts.
fn for_share(
    mut request: StreamRequest,
    identity: Option<&Extension<Identity>>,
) -> Result<StreamRequest, ApiError> {
    let Some(grant) = identity.and_then(|Extension(i)| i.share()) else {
        return Ok(request);
    };
    let shown: HashSet<DeviceId> = match request.filter.devices.take() {
        Some(asked) => asked.into_iter().filter(|d| grant.shows(d)).collect(),
        None => grant.devices.iter().cloned().collect(),
    };
    if shown.is_empty() {
        return Err(ApiError::NotFound(
            "this share link shows none of these devices".into(),
        ));
    }
    request.filter.devices = Some(shown);
    request.filter.geofences = None;
    request.filter.kinds.alerts = false;
    request.filter.kinds.positions = true;
    Ok(request)
}

/// Resolves when the caller's token or credential is revoked or rotated
/// (never for anonymous callers).
fn revoked(
    state: &ApiState,
    identity: Option<Extension<Identity>>,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    match identity {
        Some(Extension(identity)) => Box::pin(state.access.watch(&identity)),
        None => Box::pin(std::future::pending()),
    }
}

/// The peer and kill switch of the connection; absent when the router is
/// driven without a listener (tests).
fn conn_parts(conn: Option<Extension<ConnectInfo<Conn>>>) -> (String, CancellationToken) {
    match conn {
        Some(Extension(ConnectInfo(c))) => (c.peer.to_string(), c.kill),
        None => ("unknown".to_owned(), CancellationToken::new()),
    }
}

fn start(
    state: &ApiState,
    request: StreamRequest,
    transport: Transport,
    peer: String,
    kill: CancellationToken,
    preamble: Option<Bytes>,
) -> ClientQueue {
    let pump = Pump {
        hub: state.live.hub.clone(),
        filter: request.filter,
        transport,
        settings: state.live.settings.clone(),
        shutdown: state.live.shutdown.clone(),
        tasks: state.live.tasks.clone(),
        kill,
        peer,
        registry: Arc::clone(&state.registry),
    };
    live::start(pump, request.since, preamble)
}

/// One WebSocket client: writes queued frames, pings, reads (for pongs and
/// close), and closes on shutdown or when the pump drops it as slow.
async fn ws_session(
    socket: WebSocket,
    state: ApiState,
    request: StreamRequest,
    peer: String,
    identity: Option<Extension<Identity>>,
) {
    let mut revoked = revoked(&state, identity);
    let kill = CancellationToken::new();
    let shutdown = state.live.shutdown.clone();
    let mut queue = start(&state, request, Transport::Ws, peer, kill.clone(), None);
    let (mut sink, mut incoming) = socket.split();
    let mut ping = tokio::time::interval(state.live.settings.heartbeat);
    ping.reset();
    let close = loop {
        tokio::select! {
            biased;
            _ = kill.cancelled() => break Some((close_code::POLICY, "too slow: events were not read in time")),
            _ = shutdown.cancelled() => break Some((close_code::AWAY, "fleetd is shutting down")),
            () = &mut revoked => break Some((close_code::POLICY, "the token was revoked")),
            frame = queue.rx.recv() => {
                let Some(frame) = frame else { break None };
                let mut sent = true;
                for part in &frame.parts {
                    // A send that blocks on a full socket must not outlive
                    // the pump's verdict.
                    let text = match std::str::from_utf8(part) {
                        Ok(t) => t.to_owned(),
                        Err(_) => continue,
                    };
                    tokio::select! {
                        r = sink.send(Message::Text(text.into())) => if r.is_err() { sent = false; break },
                        _ = kill.cancelled() => { sent = false; break }
                    }
                }
                queue.delivered(&frame);
                if !sent { break None; }
            }
            message = incoming.next() => match message {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                // Pings are answered by the WebSocket layer; other client
                // messages carry no meaning yet.
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() { break None; }
            }
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
}
