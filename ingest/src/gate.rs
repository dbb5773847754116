//! The embedded broker's gate: who may connect (the access service), what a
//! session may publish and subscribe to (the topic ACL) and how fast a
//! device may send (a token bucket per session).
//!
//! It is also where positions enter fleetd: a publish to a position topic
//! is decoded in the connection's task and appended to the ingest journal,
//! and its PUBACK waits until the journal made it durable. The router never
//! sees it (`PublishVerdict::Consume`): positions are not relayed to other
//! MQTT subscribers (the live streams of the API carry them), and the broker
//! keeps no per-topic state for a million device topics.
//!
//! It plugs into rumqttd's connection hooks (`vendor/rumqttd`, see its
//! PATCHES.md): every hook runs in the connection's own task, never on the
//! router thread, so a login that waits for the store slows only its own
//! connection. A refused publish is dropped before the router sees it: it
//! is neither acknowledged, stored nor delivered to a subscriber.

use std::future::ready;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetd_auth::{Access, Identity, LoginError, acl};
use fleetd_journal::Journal;
use fleetd_schemas::{DeviceId, PositionReport, RejectReason, RejectionLog, now_ms};
use rumqttd::hooks::BoxFuture;
use rumqttd::protocol::QoS;
use rumqttd::{
    AckOutcome, ConnectInfo, ConnectRefusal, ConnectionHooks, DisconnectReason, IncomingPublish,
    PublishVerdict, SessionHooks, TlsIdentity,
};

use crate::decode::{Decoder, Outcome};
use crate::pipeline::Ingestor;
use crate::topic::{self, TopicRoute};

/// How long a publish waits for room in the journal before its connection
/// is closed unacknowledged (counted in
/// `fleetd_ingest_refused_total{reason="overloaded"}`): fleetd is then
/// offered more than it can store, or its disk is failing. The client keeps
/// the publish and resends it after reconnecting.
const OVERLOAD_WAIT: Duration = Duration::from_secs(5);

/// Per-device message rate limit (`ingest.device_rate_per_s`,
/// `ingest.device_burst`): a token bucket per MQTT session of a device or
/// OwnTracks user. API-token (service) sessions carry many devices and are
/// not limited, nor is anyone in `--allow-anonymous` mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained messages per second; 0 turns the limit off.
    pub per_s: f64,
    /// Messages a device may send at once after being quiet (a phone
    /// flushing what it queued offline).
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_s: 50.0,
            burst: 500,
        }
    }
}

/// The connection hooks of the embedded broker.
pub struct MqttGate {
    access: Arc<Access>,
    rejections: Arc<RejectionLog>,
    rate: RateLimit,
    decoder: Decoder,
    journal: Journal,
}

impl MqttGate {
    /// A gate asking `access`, sampling refused publishes in `rejections`,
    /// decoding positions with `decoder` into `journal`.
    pub fn new(
        access: Arc<Access>,
        rejections: Arc<RejectionLog>,
        rate: RateLimit,
        decoder: Decoder,
        journal: Journal,
    ) -> Self {
        Self {
            access,
            rejections,
            rate,
            decoder,
            journal,
        }
    }
}

impl ConnectionHooks for MqttGate {
    fn on_connect<'a>(
        &'a self,
        info: &'a ConnectInfo,
    ) -> BoxFuture<'a, Result<Box<dyn SessionHooks>, ConnectRefusal>> {
        Box::pin(async move {
            let peer = info.meta.peer_addr.map(|a| a.ip());
            let login = match &info.meta.tls_identity {
                // A device certificate, verified against the client CA in
                // the handshake: its CN is the device, whatever user name
                // the CONNECT carries.
                Some(cert) => certificate_login(cert),
                None => {
                    self.access
                        .login(info.username.as_deref(), info.password.as_deref(), peer)
                        .await
                }
            };
            match login {
                Ok(identity) => {
                    metrics::counter!("fleetd_mqtt_connects_total", "result" => "accepted")
                        .increment(1);
                    metrics::gauge!("fleetd_mqtt_sessions").increment(1.0);
                    // A certificate session has no stored credential to
                    // watch: it ends when the device disconnects.
                    let closed = match info.meta.tls_identity {
                        Some(_) => None,
                        None => Some(Box::pin(self.access.watch(&identity)) as BoxFuture<_>),
                    };
                    let bucket = match identity {
                        Identity::Device(_) | Identity::User(_) if self.rate.per_s > 0.0 => {
                            Some(TokenBucket::new(self.rate))
                        }
                        _ => None,
                    };
                    Ok(Box::new(Session {
                        label: identity.label(),
                        identity,
                        rejections: Arc::clone(&self.rejections),
                        ingestor: Ingestor::new(self.decoder.clone(), Arc::clone(&self.rejections)),
                        journal: self.journal.clone(),
                        bucket,
                        closed,
                    }) as Box<dyn SessionHooks>)
                }
                Err(LoginError::Store(e)) => {
                    metrics::counter!("fleetd_mqtt_connects_total", "result" => "unavailable")
                        .increment(1);
                    tracing::warn!(error = %e, "MQTT login: the credential store failed");
                    Err(ConnectRefusal::ServerUnavailable)
                }
                Err(e) => {
                    metrics::counter!("fleetd_mqtt_connects_total", "result" => e.reason())
                        .increment(1);
                    tracing::debug!(
                        client_id = %info.client_id,
                        peer = ?info.meta.peer_addr,
                        reason = e.reason(),
                        "MQTT connection refused"
                    );
                    Err(ConnectRefusal::NotAuthorized)
                }
            }
        })
    }
}

/// The identity of a device certificate: `Identity::Device` of its CN.
fn certificate_login(cert: &TlsIdentity) -> Result<Identity, LoginError> {
    let cn = cert
        .common_name
        .as_deref()
        .ok_or(LoginError::BadCertificate)?;
    DeviceId::parse(cn)
        .map(Identity::Device)
        .map_err(|_| LoginError::BadCertificate)
}

/// One accepted MQTT connection.
struct Session {
    identity: Identity,
    /// `identity.label()`, made once: it names the session in samples.
    label: String,
    rejections: Arc<RejectionLog>,
    ingestor: Ingestor,
    journal: Journal,
    bucket: Option<TokenBucket>,
    /// The access service's watch, handed to the broker on `closed()`.
    closed: Option<BoxFuture<'static, ()>>,
}

impl Session {
    fn refuse(&self, reason: RejectReason, publish: &IncomingPublish, detail: String) {
        let device = match topic::route(publish.topic()) {
            TopicRoute::Position(d) | TopicRoute::PositionBatch(d) | TopicRoute::OwnTracks(d) => {
                Some(d)
            }
            _ => None,
        };
        self.rejections.record(
            reason,
            publish.topic(),
            device.as_ref().map(|d| d.as_str()),
            detail,
            publish.payload(),
            now_ms(),
        );
    }
}

impl SessionHooks for Session {
    fn on_publish(&mut self, publish: &IncomingPublish) -> BoxFuture<'static, PublishVerdict> {
        if !acl::may_publish(&self.identity, publish.topic()) {
            let detail = format!("{} may not publish to this topic", self.label);
            tracing::debug!(topic = publish.topic(), who = %self.label, "MQTT publish refused");
            self.refuse(RejectReason::NotAuthorized, publish, detail);
            return Box::pin(ready(PublishVerdict::Drop));
        }
        if let Some(bucket) = &mut self.bucket
            && !bucket.take(Instant::now())
        {
            let detail = format!("{} is over its message rate limit", self.label);
            self.refuse(RejectReason::RateLimited, publish, detail);
            return Box::pin(ready(PublishVerdict::Drop));
        }
        if !is_position_topic(publish.topic()) {
            return Box::pin(ready(PublishVerdict::Forward));
        }
        let mut positions = Vec::new();
        let outcome =
            self.ingestor
                .handle(publish.topic_bytes(), publish.payload(), &mut positions);
        if positions.is_empty() {
            // Nothing to store: acknowledged at once, so that a device does
            // not resend a rejected message forever. What is not input
            // (an OwnTracks card or waypoint) still reaches subscribers.
            return Box::pin(ready(match outcome {
                Outcome::Ignored(_) => PublishVerdict::Forward,
                Outcome::Decoded => PublishVerdict::Consume(None),
            }));
        }
        Box::pin(append(self.journal.clone(), positions))
    }

    fn on_subscribe(&mut self, filter: &str, _qos: QoS) -> bool {
        let allowed = acl::may_subscribe(&self.identity, filter);
        if !allowed {
            metrics::counter!("fleetd_mqtt_subscribe_denied_total").increment(1);
            tracing::debug!(filter, who = %self.label, "MQTT subscription refused");
        }
        allowed
    }

    fn closed(&mut self) -> BoxFuture<'static, ()> {
        self.closed
            .take()
            .unwrap_or_else(|| Box::pin(std::future::pending()))
    }

    fn on_disconnect(&mut self, reason: DisconnectReason) {
        metrics::gauge!("fleetd_mqtt_sessions").decrement(1.0);
        if reason == DisconnectReason::ClosedByHook {
            tracing::info!(who = %self.label, "MQTT session closed: its credential changed");
        }
    }
}

/// Whether fleetd consumes publishes to `topic` as positions (malformed
/// topics under its namespaces included, so that they are counted as
/// rejections). Its own output topics go through the router to subscribers.
fn is_position_topic(topic: &str) -> bool {
    (topic.starts_with("fleet/") || topic.starts_with("owntracks/"))
        && topic::route(topic) != TopicRoute::Ignored
}

/// Appends a publish's positions to the journal, waiting for room at most
/// [`OVERLOAD_WAIT`]; its acknowledgement waits until they are durable. A
/// connection waits for one append at a time, and the journal's queue
/// serves waiters in order, so a flood from one connection delays another
/// connection's publish by at most one append per busy connection.
async fn append(journal: Journal, positions: Vec<PositionReport>) -> PublishVerdict {
    let started = Instant::now();
    let pending = match tokio::time::timeout(OVERLOAD_WAIT, journal.append(positions)).await {
        Ok(Ok(pending)) => pending,
        Ok(Err(_closed)) => {
            // Shutting down: nothing more is acknowledged; the client
            // resends to the next fleetd.
            count_refused("shutting_down");
            return PublishVerdict::Disconnect;
        }
        Err(_elapsed) => {
            count_refused("overloaded");
            return PublishVerdict::Disconnect;
        }
    };
    let waited = started.elapsed();
    if waited >= Duration::from_millis(1) {
        metrics::histogram!("fleetd_ingest_blocked_seconds").record(waited.as_secs_f64());
    }
    PublishVerdict::Consume(Some(Box::pin(async move {
        match pending.durable().await {
            Ok(()) => AckOutcome::Ack,
            Err(_) => AckOutcome::Close,
        }
    })))
}

fn count_refused(reason: &'static str) {
    metrics::counter!("fleetd_ingest_refused_total", "transport" => "mqtt", "reason" => reason)
        .increment(1);
}

/// A token bucket: `burst` tokens, refilled at `per_s`.
#[derive(Debug, Clone)]
struct TokenBucket {
    tokens: f64,
    per_s: f64,
    burst: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: RateLimit) -> Self {
        Self {
            tokens: f64::from(rate.burst.max(1)),
            per_s: rate.per_s,
            burst: f64::from(rate.burst.max(1)),
            at: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.per_s).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(RateLimit {
            per_s: 10.0,
            burst: 5,
        });
        b.at = start;
        assert_eq!((0..8).filter(|_| b.take(start)).count(), 5);
        // 1 s later: 10 more tokens, but never more than the burst.
        let later = start + Duration::from_secs(1);
        assert_eq!((0..8).filter(|_| b.take(later)).count(), 5);
        // 100 ms later: one token.
        let soon = later + Duration::from_millis(100);
        assert!(b.take(soon));
        assert!(!b.take(soon));
    }
}
