//! The ingest loop: broker link → decode/validate → bounded processor queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetd_schemas::{PositionReport, RejectionLog, now_ms};
use futures::FutureExt;
use rumqttd::Notification;
use rumqttd::local::LinkRx;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::decode::{Decoder, Outcome, Reject};
use crate::error::IngestError;
use crate::topic;

/// Most positions per chunk sent to the processor. Chunks amortise channel
/// overhead; the queue's memory bound is `queue capacity × this × ~200 B`.
pub const MAX_CHUNK: usize = 512;

/// How ingest drains the broker link at shutdown: it keeps reading until the
/// link has been quiet this long (or [`DRAIN_DEADLINE`] passes), so that
/// publishes the broker already acknowledged are not dropped.
const DRAIN_QUIET: Duration = Duration::from_millis(300);
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Turns one MQTT message at a time into positions for the processor and
/// counts everything it drops. Transport-independent: the embedded link and
/// an external broker client both feed it.
pub struct Ingestor {
    decoder: Decoder,
    rejections: Arc<RejectionLog>,
    rejects: Vec<Reject>,
    /// Last commit-log offset seen per broker subscription, to count what
    /// the broker dropped because ingest fell too far behind.
    last_offsets: [Option<u64>; 2],
}

impl Ingestor {
    /// An ingestor that records rejections in `rejections`.
    pub fn new(decoder: Decoder, rejections: Arc<RejectionLog>) -> Self {
        Self {
            decoder,
            rejections,
            rejects: Vec::new(),
            last_offsets: [None; 2],
        }
    }

    /// Notes the broker commit-log offset of a forwarded publish. Offsets
    /// of one subscription are consecutive; a jump means the broker dropped
    /// unread publishes (its in-RAM log is bounded), counted in
    /// `fleetd_broker_dropped_total`.
    pub fn note_offset(&mut self, topic: &[u8], offset: u64) {
        let log = usize::from(!topic.starts_with(b"fleet/"));
        if let Some(last) = self.last_offsets[log]
            && offset > last + 1
        {
            let dropped = offset - last - 1;
            metrics::counter!("fleetd_broker_dropped_total").increment(dropped);
            tracing::warn!(
                dropped,
                "broker dropped unread publishes: ingest fell behind its buffer"
            );
        }
        self.last_offsets[log] = Some(offset);
    }

    /// Decodes one message, appending accepted positions to `chunk`.
    pub fn handle(&mut self, topic: &[u8], payload: &[u8], chunk: &mut Vec<PositionReport>) {
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
            return;
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

/// Runs ingest from the embedded broker's link until `cancel`, then drains
/// the link and returns; dropping `output` tells the processor to flush.
///
/// Backpressure: `output` is bounded and sends are awaited. When the
/// processor falls behind, ingest stops reading the link and rumqttd holds
/// unread publishes in its in-RAM commit log, up to its segment bound; past
/// that the broker drops the oldest unread data (it logs a cursor jump).
pub async fn run_embedded(
    mut link_rx: LinkRx,
    mut ingestor: Ingestor,
    output: mpsc::Sender<Vec<PositionReport>>,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    let mut chunk = Vec::with_capacity(MAX_CHUNK);
    loop {
        let notification = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            n = link_rx.next() => n,
        };
        let notification =
            notification.map_err(|e| IngestError::Broker(format!("ingest link failed: {e}")))?;
        handle_notification(&mut link_rx, notification, &mut ingestor, &mut chunk).await?;
        // Take whatever else is already buffered without waiting, so one
        // channel send carries many positions under load and none waits idle.
        while chunk.len() < MAX_CHUNK {
            match link_rx.next().now_or_never() {
                Some(n) => {
                    let n =
                        n.map_err(|e| IngestError::Broker(format!("ingest link failed: {e}")))?;
                    handle_notification(&mut link_rx, n, &mut ingestor, &mut chunk).await?;
                }
                None => break,
            }
        }
        if !chunk.is_empty() && !send(&output, &mut chunk).await {
            return Ok(());
        }
    }
    drain(link_rx, ingestor, &output, chunk).await
}

async fn drain(
    mut link_rx: LinkRx,
    mut ingestor: Ingestor,
    output: &mpsc::Sender<Vec<PositionReport>>,
    mut chunk: Vec<PositionReport>,
) -> Result<(), IngestError> {
    let deadline = Instant::now() + DRAIN_DEADLINE;
    let mut drained = 0usize;
    while Instant::now() < deadline {
        match tokio::time::timeout(DRAIN_QUIET, link_rx.next()).await {
            Ok(Ok(n)) => {
                let before = chunk.len();
                handle_notification(&mut link_rx, n, &mut ingestor, &mut chunk).await?;
                drained += chunk.len() - before;
                if chunk.len() >= MAX_CHUNK && !send(output, &mut chunk).await {
                    return Ok(());
                }
            }
            Ok(Err(e)) => return Err(IngestError::Broker(format!("ingest link failed: {e}"))),
            Err(_quiet) => break,
        }
    }
    if !chunk.is_empty() {
        send(output, &mut chunk).await;
    }
    tracing::info!(drained, "ingest stopped");
    Ok(())
}

async fn handle_notification(
    link_rx: &mut LinkRx,
    notification: Option<Notification>,
    ingestor: &mut Ingestor,
    chunk: &mut Vec<PositionReport>,
) -> Result<(), IngestError> {
    match notification {
        Some(Notification::Forward(forward)) => {
            if let Some((_segment, offset)) = forward.cursor {
                ingestor.note_offset(&forward.publish.topic, offset);
            }
            ingestor.handle(&forward.publish.topic, &forward.publish.payload, chunk);
        }
        // The router pauses a link whose buffer filled up and forwards
        // nothing more until the link asks again; without this ingest stalls.
        Some(Notification::Unschedule) => link_rx
            .wake()
            .await
            .map_err(|e| IngestError::Broker(format!("cannot wake ingest link: {e}")))?,
        _ => {}
    }
    Ok(())
}

/// Sends the chunk, measuring time spent blocked by a full queue. Returns
/// false when the processor is gone.
async fn send(output: &mpsc::Sender<Vec<PositionReport>>, chunk: &mut Vec<PositionReport>) -> bool {
    let full = std::mem::replace(chunk, Vec::with_capacity(MAX_CHUNK));
    let started = Instant::now();
    let result = match output.try_send(full) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(full)) => {
            let r = output.send(full).await;
            metrics::histogram!("fleetd_ingest_blocked_seconds")
                .record(started.elapsed().as_secs_f64());
            r.map_err(|_| ())
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
    };
    if result.is_err() {
        tracing::warn!("processor queue closed; ingest stops");
        return false;
    }
    true
}
