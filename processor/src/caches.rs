//! The processor's enrichment caches of store tables, the device registry
//! and the geofence index: loaded at start, reloaded periodically so that
//! changes made through other fleetd nodes sharing the store arrive (this
//! node's API writes through to them at once).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fleetd_geofence::{Geofence, Geofences};
use fleetd_store::{Registry, Store, StoreError};
use tokio_util::sync::CancellationToken;

/// Replaces the registry cache with the store's device table.
pub(crate) async fn load_registry(
    store: &dyn Store,
    registry: &Registry,
) -> Result<usize, StoreError> {
    let entries = store.all_devices().await?;
    let n = entries.len();
    metrics::gauge!("fleetd_registry_devices").set(n as f64);
    registry.replace_all(entries);
    Ok(n)
}

/// Loads every stored geofence into `geofences` (parsing and covering them
/// on the blocking pool; only fences that changed are covered again);
/// returns how many there are. A stored fence that no longer parses is
/// logged and skipped rather than stopping the start.
pub(crate) async fn load_geofences(
    store: &dyn Store,
    geofences: &Arc<Geofences>,
) -> Result<usize, StoreError> {
    let stored = store.all_geofences().await?;
    let geofences = Arc::clone(geofences);
    tokio::task::spawn_blocking(move || {
        let mut fences = Vec::with_capacity(stored.len());
        for row in stored {
            match Geofence::from_stored(row.id.clone(), &row.geojson) {
                Ok(fence) => fences.push(fence),
                Err(e) => {
                    tracing::error!(geofence = %row.id, error = %e, "stored geofence does not parse; skipped")
                }
            }
        }
        let n = fences.len();
        let report = geofences.sync(fences);
        if report.upserted + report.removed > 0 {
            tracing::debug!(
                upserted = report.upserted,
                removed = report.removed,
                "geofences synced"
            );
        }
        metrics::gauge!("fleetd_geofences").set(n as f64);
        n
    })
    .await
    .map_err(|e| StoreError::Task(format!("geofence load: {e}")))
}

/// Runs `reload` every `every` until `cancel`; a failed reload keeps what
/// is cached (the store may be briefly unreachable) and is retried at the
/// next tick.
pub(crate) async fn refresh<F, Fut, T>(
    what: &'static str,
    every: Duration,
    cancel: CancellationToken,
    reload: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(e) = reload().await {
            tracing::warn!(cache = what, error = %e, "cache reload failed; keeping the cached copy");
        }
    }
}
