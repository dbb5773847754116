//! The dispatcher: splits ingest chunks by device partition.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use fleetd_schemas::{DeviceId, Ingested, PositionReport};
use tokio::sync::mpsc;

/// The partition owning `device`: a fixed hash (stable across runs and
/// processes), so a device always lands on the same worker.
pub(crate) fn partition_of(device: &DeviceId, partitions: usize) -> usize {
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(device.as_str());
    (hash % partitions as u64) as usize
}

/// Routes chunks until `input` closes, then drops the partition senders so
/// the workers flush and stop. Sends are awaited: a slow partition pushes
/// back on ingest rather than growing a queue. A journal checkpoint goes to
/// every partition (each settles its part), behind the positions before it.
pub(crate) async fn run(
    mut input: mpsc::Receiver<Ingested>,
    partitions: Vec<mpsc::Sender<Ingested>>,
) {
    let n = partitions.len();
    let mut split: Vec<Vec<PositionReport>> = vec![Vec::new(); n];
    while let Some(item) = input.recv().await {
        metrics::gauge!("fleetd_queue_depth").set(input.len() as f64);
        let (chunk, replayed) = match item {
            Ingested::Positions(chunk) => (chunk, false),
            Ingested::Replayed(chunk) => (chunk, true),
            Ingested::Checkpoint(checkpoint) => {
                for (p, part) in checkpoint.split(n).into_iter().enumerate() {
                    if partitions[p]
                        .send(Ingested::Checkpoint(part))
                        .await
                        .is_err()
                    {
                        tracing::error!(partition = p, "partition worker gone; dispatcher stops");
                        return;
                    }
                }
                continue;
            }
        };
        if n == 1 {
            split[0] = chunk;
        } else {
            for report in chunk {
                split[partition_of(&report.device_id, n)].push(report);
            }
        }
        for (p, reports) in split.iter_mut().enumerate() {
            if reports.is_empty() {
                continue;
            }
            let reports = std::mem::take(reports);
            let item = if replayed {
                Ingested::Replayed(reports)
            } else {
                Ingested::Positions(reports)
            };
            if partitions[p].send(item).await.is_err() {
                tracing::error!(partition = p, "partition worker gone; dispatcher stops");
                return;
            }
        }
    }
    metrics::gauge!("fleetd_queue_depth").set(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        let ids: Vec<DeviceId> = (0..1000)
            .map(|i| DeviceId::parse(&format!("dev-{i}")).expect("id"))
            .collect();
        let mut counts = [0usize; 4];
        for id in &ids {
            let p = partition_of(id, 4);
            assert_eq!(p, partition_of(id, 4));
            counts[p] += 1;
        }
        assert!(counts.iter().all(|&c| c > 150), "{counts:?}");
    }
}
