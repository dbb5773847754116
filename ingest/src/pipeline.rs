//! One MQTT message at a time: decode and validate into positions, count
//! and sample what is dropped. The transports (the embedded broker's gate,
//! the external broker client) append the positions to the journal.

use std::sync::Arc;

use fleetd_schemas::{PositionReport, RejectionLog, now_ms};

use crate::decode::{Decoder, Outcome, Reject};
use crate::topic;

/// Most positions per journal append from request/response transports
/// (HTTP): chunks amortise the journal's per-append overhead.
pub const MAX_CHUNK: usize = 512;

/// Turns one MQTT message at a time into positions for the processor and
/// counts everything it drops. Transport-independent: the embedded link and
/// an external broker client both feed it.
pub struct Ingestor {
    decoder: Decoder,
    rejections: Arc<RejectionLog>,
    rejects: Vec<Reject>,
}

impl Ingestor {
    /// An ingestor that records rejections in `rejections`.
    pub fn new(decoder: Decoder, rejections: Arc<RejectionLog>) -> Self {
        Self {
            decoder,
            rejections,
            rejects: Vec::new(),
        }
    }

    /// Decodes one message, appending accepted positions to `chunk`.
    pub fn handle(
        &mut self,
        topic: &[u8],
        payload: &[u8],
        chunk: &mut Vec<PositionReport>,
    ) -> Outcome {
        let received_ms = now_ms();
        let Ok(topic) = std::str::from_utf8(topic) else {
            // MQTT requires UTF-8 topics; the broker should not let this through.
            self.rejections.record(
                fleetd_schemas::RejectReason::UnknownTopic,
                "<non-utf8>",
                None,
                "topic is not UTF-8".into(),
                payload,
                received_ms,
            );
            return Outcome::Decoded;
        };
        let route = topic::route(topic);
        let before = chunk.len();
        let outcome = self
            .decoder
            .decode(&route, payload, received_ms, chunk, &mut self.rejects);
        count_received(chunk.len() - before);
        count_outcome(outcome);
        let device = match &route {
            topic::TopicRoute::Position(d)
            | topic::TopicRoute::PositionBatch(d)
            | topic::TopicRoute::OwnTracks(d) => Some(d.as_str()),
            _ => None,
        };
        for reject in self.rejects.drain(..) {
            record_reject(
                &self.rejections,
                topic,
                device,
                reject,
                payload,
                received_ms,
            );
        }
        outcome
    }
}

/// Counts positions handed to the processor (`fleetd_received_total`).
pub(crate) fn count_received(n: usize) {
    if n > 0 {
        metrics::counter!("fleetd_received_total").increment(n as u64);
    }
}

/// Counts a payload that was not input (`fleetd_ignored_total{kind}`).
pub(crate) fn count_outcome(outcome: Outcome) {
    if let Outcome::Ignored(kind) = outcome {
        metrics::counter!("fleetd_ignored_total", "kind" => kind).increment(1);
    }
}

/// Counts and samples one rejection, the same way for every transport.
/// `device` is the one the transport knows (topic, request); a device the
/// payload named itself wins.
pub(crate) fn record_reject(
    rejections: &RejectionLog,
    source: &str,
    device: Option<&str>,
    reject: Reject,
    payload: &[u8],
    received_ms: i64,
) {
    let device = reject.device.as_ref().map(|d| d.as_str()).or(device);
    tracing::debug!(source, reason = reject.reason.code(), detail = %reject.detail, "rejected input");
    rejections.record(
        reject.reason,
        source,
        device,
        reject.detail,
        payload,
        received_ms,
    );
}
