//! Storage for fleetd: the [`Store`] trait and its backends.
//!
//! The processor writes one [`WriteBatch`] per micro-batch and partition; the
//! API reads latest positions, areas and history. Both talk to an
//! `Arc<dyn Store>`, so a backend is chosen once at start-up:
//!
//! * [`FjallStore`]: the embedded default, an LSM tree in a local directory
//!   (fjall). All fjall calls run on tokio's blocking pool, never on the
//!   async runtime's workers.
//! * [`ScyllaStore`]: the clustered backend with the same contract, over a
//!   ScyllaDB cluster (module [`scylla`]; schema in `schemas/cql/`).
//!
//! Area queries ([`AreaQuery`]) are answered from an index of latest
//! positions keyed by their H3 cell at [`H3Cells::AREA_RES`](fleetd_schemas::H3Cells::AREA_RES)
//! (see [`fleetd_schemas::H3Cells`]).

mod area;
mod area_index;
mod codec;
mod config;
mod cover;
mod cursor;
mod error;
mod fjall_store;
mod fjall_tables;
mod history;
mod history_block;
mod keys;
mod registry;
mod rekey;
pub mod scylla;
pub mod seal;

use std::sync::Arc;

use async_trait::async_trait;
use fleetd_schemas::{
    Alert, AlertKind, DeviceId, DeviceInfo, DeviceTrip, EnrichedPosition, GeofenceId,
    MembershipChange, Principal, StoredCredential, StoredToken, StoredWebhook, Trip, VehicleState,
};

pub use area::{AreaQuery, BBox};
pub use config::{ScyllaConfig, StoreBackend, StoreBackendName, StoreConfig, open};
pub use error::StoreError;
pub use fjall_store::FjallStore;
pub use fjall_tables::ALERT_SCAN_BUDGET;
pub use history::Maintenance;
pub use history_block::PRECISION as HISTORY_PRECISION;
pub use registry::Registry;
pub use rekey::{INCOMPLETE_MARKER, RekeyReport, rekey};
pub use scylla::{ScyllaSettings, ScyllaStore};
pub use seal::{Sealer, StoreKey};

/// What one micro-batch of one processor partition writes.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    /// Every accepted position of the batch, for history (late ones included).
    /// A position with the same device and `ts_ms` as a stored one replaces it.
    pub history: Vec<EnrichedPosition>,
    /// New latest positions: at most one per device, each newer (by `ts_ms`)
    /// than the device's previous latest.
    pub latest: Vec<LatestUpdate>,
    /// Vehicle states that changed: at most one per device, replacing the
    /// stored one.
    pub states: Vec<(DeviceId, VehicleState)>,
    /// Trips opened, extended or closed: each replaces the stored trip of
    /// the same device and `start_ts_ms`.
    pub trips: Vec<DeviceTrip>,
    /// Alerts raised by the batch. An alert with the id of a stored one
    /// replaces it (ids are deterministic, so a retried batch does not
    /// duplicate alerts).
    pub alerts: Vec<Alert>,
    /// Geofence memberships that began or ended, in order: the index behind
    /// [`Store::geofence_members`]. A device's memberships also travel in
    /// its [`VehicleState`].
    pub memberships: Vec<MembershipChange>,
}

impl WriteBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
            && self.latest.is_empty()
            && self.states.is_empty()
            && self.trips.is_empty()
            && self.alerts.is_empty()
            && self.memberships.is_empty()
    }
}

/// A device's new latest position.
#[derive(Debug, Clone)]
pub struct LatestUpdate {
    /// The new latest position. Its `h3.area` must be the res-7 cell of its
    /// lat/lon: the area index is keyed by it (a position without a valid
    /// res-7 cell is stored but left out of area queries, with a warning).
    pub position: EnrichedPosition,
    /// The area cell (`h3.area`) of the latest position this one replaces, so
    /// the backend can move the device in its area index without reading the
    /// old row first. `None` when the device had no latest position.
    pub previous_area_cell: Option<u64>,
}

/// A page of history, oldest first.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// Positions in ascending `ts_ms` order.
    pub items: Vec<EnrichedPosition>,
    /// Pass to [`HistoryQuery::cursor`] for the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// A history range query for one device.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// Inclusive lower bound of `ts_ms`.
    pub from_ms: i64,
    /// Inclusive upper bound of `ts_ms`.
    pub to_ms: i64,
    /// Maximum number of items in the page (≥ 1).
    pub limit: usize,
    /// Opaque cursor from a previous page of the same query.
    pub cursor: Option<String>,
}

impl HistoryQuery {
    /// The inclusive `(from_ms, to_ms)` range this page covers, `from_ms`
    /// moved up to the cursor; `None` when the range is empty. Both
    /// backends page the same way, so they validate the same way.
    pub(crate) fn page_range(&self) -> Result<Option<(i64, i64)>, StoreError> {
        check_limit("history", self.limit)?;
        let resume_ms = self.cursor.as_deref().map(cursor::decode).transpose()?;
        let from_ms = resume_ms.map_or(self.from_ms, |ts| ts.max(self.from_ms));
        Ok((from_ms <= self.to_ms).then_some((from_ms, self.to_ms)))
    }
}

/// Refuses a page size of 0: every paged read returns at least one item
/// when there is one, or its cursor could not move on.
pub(crate) fn check_limit(what: &str, limit: usize) -> Result<(), StoreError> {
    if limit == 0 {
        return Err(StoreError::InvalidQuery(format!(
            "{what} limit must be at least 1"
        )));
    }
    Ok(())
}

impl TripQuery {
    /// The inclusive `(from_ms, to_ms)` range of trip start times this page
    /// covers (newest first: `to_ms` moved down to the cursor); `None` when
    /// it is empty. Both backends page trips the same way.
    pub(crate) fn page_range(&self) -> Result<Option<(i64, i64)>, StoreError> {
        check_limit("trip", self.limit)?;
        let resume = self.cursor.as_deref().map(cursor::decode).transpose()?;
        let to_ms = resume.map_or(self.to_ms, |ts| ts.min(self.to_ms));
        Ok((self.from_ms <= to_ms).then_some((self.from_ms, to_ms)))
    }
}

impl AlertQuery {
    /// The inclusive alert-id range `(lo, hi)` this page covers for alerts
    /// since `since_ms` (newest first: `hi` moved down to the cursor);
    /// `None` when it is empty. Both backends page alerts the same way.
    pub(crate) fn page_ids(&self, since_ms: i64) -> Result<Option<(String, String)>, StoreError> {
        check_limit("alert", self.limit)?;
        let mut hi = keys::alert_id_ceil(self.until_ms);
        if let Some(c) = self.cursor.as_deref() {
            hi = hi.min(fjall_tables::alert_cursor(c)?);
        }
        let lo = keys::alert_id_floor(since_ms);
        Ok((lo <= hi).then_some((lo, hi)))
    }
}

/// A query for one device's trips, newest first.
#[derive(Debug, Clone)]
pub struct TripQuery {
    /// Trips starting at or after this (`start_ts_ms`).
    pub from_ms: i64,
    /// Trips starting at or before this.
    pub to_ms: i64,
    /// Maximum number of trips in the page (≥ 1).
    pub limit: usize,
    /// Opaque cursor from a previous page of the same query.
    pub cursor: Option<String>,
}

/// A page of trips, newest first.
#[derive(Debug, Clone, Default)]
pub struct TripPage {
    /// Trips by descending `start_ts_ms`.
    pub items: Vec<Trip>,
    /// Pass to [`TripQuery::cursor`] for the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// A query over alerts, newest first. Filters combine with AND.
#[derive(Debug, Clone)]
pub struct AlertQuery {
    /// Alerts with `ts_ms` at or after this.
    pub since_ms: i64,
    /// Alerts with `ts_ms` at or before this.
    pub until_ms: i64,
    /// Only this device's alerts.
    pub device: Option<DeviceId>,
    /// Only alerts about this geofence.
    pub geofence: Option<GeofenceId>,
    /// Only these kinds (empty: every kind).
    pub kinds: Vec<AlertKind>,
    /// Maximum number of alerts in the page (≥ 1).
    pub limit: usize,
    /// Opaque cursor from a previous page of the same query.
    pub cursor: Option<String>,
}

impl AlertQuery {
    /// Whether `alert` passes the filters (time range, device, geofence,
    /// kinds).
    pub fn matches(&self, alert: &Alert) -> bool {
        alert.ts_ms >= self.since_ms
            && alert.ts_ms <= self.until_ms
            && self.device.as_ref().is_none_or(|d| *d == alert.device_id)
            && self
                .geofence
                .as_ref()
                .is_none_or(|g| alert.geofence_id.as_ref() == Some(g))
            && (self.kinds.is_empty() || self.kinds.contains(&alert.kind))
    }
}

/// A page of alerts, newest first.
#[derive(Debug, Clone, Default)]
pub struct AlertPage {
    /// Alerts by descending time (then id).
    pub items: Vec<Alert>,
    /// Pass to [`AlertQuery::cursor`] for the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// A geofence as stored: its GeoJSON text (the validated form the API
/// answers with) and when it last changed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredGeofence {
    /// The fence id.
    pub id: GeofenceId,
    /// GeoJSON Feature text, as written by the processor's `Geofence::to_geojson`.
    pub geojson: String,
    /// Server time of the last change, Unix epoch milliseconds.
    pub updated_ms: i64,
}

/// One device inside a geofence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceMember {
    /// The device.
    pub device: DeviceId,
    /// Device time it entered, Unix epoch milliseconds.
    pub entered_ms: i64,
}

/// A page of a fence's members, by device id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberPage {
    /// Members in ascending device id order.
    pub items: Vec<FenceMember>,
    /// Pass as `after` for the next page (the last device id of this one);
    /// `None` on the last page.
    pub next_cursor: Option<String>,
}

/// The storage contract shared by all backends.
///
/// Callers: the processor (writes, and [`Store::all_latest`] once at start to
/// restore its state) and the API (reads). Implementations are shared as
/// `Arc<dyn Store>` and must be safe to call concurrently.
///
/// Consistency: after `write_batch` returns `Ok`, every read sees the batch.
/// A batch is applied atomically where the backend allows it (fjall: one
/// atomic write batch); otherwise idempotently, so a retried batch is safe.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Writes one micro-batch: history rows, latest positions and the area
    /// index. Called by one processor partition at a time per device, so a
    /// device's writes never race each other. Shared, not copied: the caller
    /// retries the same batch after an error and publishes it afterwards.
    async fn write_batch(&self, batch: Arc<WriteBatch>) -> Result<(), StoreError>;

    /// The latest position of `device`, or `None` if it never reported.
    async fn latest(&self, device: &DeviceId) -> Result<Option<EnrichedPosition>, StoreError>;

    /// Latest positions inside `area`, at most `limit`, in no particular order.
    ///
    /// An invalid area (coordinates out of range, negative radius, invalid
    /// cell index) is a [`StoreError::InvalidQuery`].
    async fn latest_in_area(
        &self,
        area: &AreaQuery,
        limit: usize,
    ) -> Result<Vec<EnrichedPosition>, StoreError>;

    /// Every device's latest position, for restoring processor state at start.
    async fn all_latest(&self) -> Result<Vec<EnrichedPosition>, StoreError>;

    /// A page of `device`'s history in `[from_ms, to_ms]`, oldest first.
    ///
    /// A malformed cursor or a zero limit is a [`StoreError::InvalidQuery`];
    /// `from_ms > to_ms` is an empty page.
    async fn history(
        &self,
        device: &DeviceId,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, StoreError>;

    /// The vehicle state of `device`, or `None` if none was written.
    async fn vehicle_state(&self, device: &DeviceId) -> Result<Option<VehicleState>, StoreError>;

    /// Every device's vehicle state, for restoring the processor at start.
    async fn all_vehicle_states(&self) -> Result<Vec<(DeviceId, VehicleState)>, StoreError>;

    /// A page of `device`'s trips whose start lies in the query's range,
    /// newest first. A malformed cursor or a zero limit is a
    /// [`StoreError::InvalidQuery`].
    async fn trips(&self, device: &DeviceId, query: &TripQuery) -> Result<TripPage, StoreError>;

    /// One trip of `device` by its `start_ts_ms`.
    async fn trip(&self, device: &DeviceId, start_ts_ms: i64) -> Result<Option<Trip>, StoreError>;

    /// A page of alerts matching `query`, newest first. A malformed cursor
    /// or a zero limit is a [`StoreError::InvalidQuery`].
    async fn alerts(&self, query: &AlertQuery) -> Result<AlertPage, StoreError>;

    /// Creates or replaces `device`'s registry entry.
    async fn put_device(&self, device: &DeviceId, info: &DeviceInfo) -> Result<(), StoreError>;

    /// `device`'s registry entry.
    async fn device(&self, device: &DeviceId) -> Result<Option<DeviceInfo>, StoreError>;

    /// Removes `device`'s registry entry; whether there was one.
    async fn delete_device(&self, device: &DeviceId) -> Result<bool, StoreError>;

    /// The whole registry, for the processor's enrichment cache.
    async fn all_devices(&self) -> Result<Vec<(DeviceId, DeviceInfo)>, StoreError>;

    /// Creates or replaces a geofence.
    async fn put_geofence(&self, fence: &StoredGeofence) -> Result<(), StoreError>;

    /// One geofence.
    async fn geofence(&self, id: &GeofenceId) -> Result<Option<StoredGeofence>, StoreError>;

    /// Removes a geofence and its membership index; whether it existed.
    async fn delete_geofence(&self, id: &GeofenceId) -> Result<bool, StoreError>;

    /// Every geofence, for the processor's index (start-up and refresh).
    async fn all_geofences(&self) -> Result<Vec<StoredGeofence>, StoreError>;

    /// The devices inside `fence` now (as written through
    /// [`WriteBatch::memberships`]), by device id, starting after the device
    /// id `after`, at most `limit` (≥ 1, else [`StoreError::InvalidQuery`]).
    async fn geofence_members(
        &self,
        fence: &GeofenceId,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<MemberPage, StoreError>;

    /// Stores device credentials (hashes only), each replacing the one of
    /// its principal: provisioning, in bulk, and rotation.
    async fn put_credentials(&self, credentials: &[StoredCredential]) -> Result<(), StoreError>;

    /// The credential of `principal`, if it has one (read at every login).
    async fn credential(
        &self,
        principal: &Principal,
    ) -> Result<Option<StoredCredential>, StoreError>;

    /// Removes `principal`'s credential; `true` if there was one.
    async fn delete_credential(&self, principal: &Principal) -> Result<bool, StoreError>;

    /// Stores an API token (hash only), replacing one of the same id.
    async fn put_token(&self, token: &StoredToken) -> Result<(), StoreError>;

    /// Every API token (a deployment holds few; read at start and refresh).
    async fn all_tokens(&self) -> Result<Vec<StoredToken>, StoreError>;

    /// Removes a token; `true` if it existed.
    async fn delete_token(&self, id: &str) -> Result<bool, StoreError>;

    /// Creates or replaces a webhook.
    async fn put_webhook(&self, hook: &StoredWebhook) -> Result<(), StoreError>;

    /// Every webhook (a handful: read whole).
    async fn all_webhooks(&self) -> Result<Vec<StoredWebhook>, StoreError>;

    /// Deletes a webhook; `false` if there was none.
    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError>;

    /// Makes every completed `write_batch` durable (called at shutdown).
    async fn flush(&self) -> Result<(), StoreError>;

    /// Periodic upkeep, called by the server every
    /// `store.maintenance_interval_s`: the embedded store compacts closed
    /// history buckets into blocks and applies `store.history_days`.
    /// ScyllaDB's tables expire by their TTLs: nothing to do there.
    async fn maintain(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the backend can serve requests now (for `/readyz`).
    async fn ready(&self) -> Result<(), StoreError>;
}
