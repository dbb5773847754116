//! The embedded backend: fjall keyspaces in one local database, plus an
//! in-memory index of latest positions.
//!
//! | keyspace  | key                                   | value            |
//! |-----------|---------------------------------------|------------------|
//! | `latest`  | `device_id`                           | `StoredPosition` |
//!
//! plus history's tiers (rows, then blocks; see [`crate::history`]) and the
//! small tables of [`crate::fjall_tables`] (vehicle state, trips, alerts,
//! device registry). Key layouts are in [`crate::keys`].
//!
//! Latest reads and area queries are answered from [`LatestIndex`], every
//! device's latest position in RAM bucketed by res-7 cell, rebuilt from
//! `latest` at open. Data directories of earlier versions also hold an
//! `area` keyspace (the index on disk, a delete and an insert per moved
//! vehicle); it is dropped at open.
//!
//! fjall's calls block on disk I/O and locks, so every one of them runs on
//! tokio's blocking pool through [`FjallStore::blocking`], never on an async
//! worker thread.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use fleetd_schemas::{DeviceId, EnrichedPosition};

use fleetd_schemas::{
    DeviceInfo, GeofenceId, Principal, StoredCredential, StoredToken, StoredWebhook, Trip,
    VehicleState,
};

use crate::area_index::LatestIndex;
use crate::fjall_tables::{self, Tables, table};
use crate::history::{History, Maintenance};
use crate::seal::{self, StoreKey};
use crate::{
    AlertPage, AlertQuery, AreaQuery, HistoryPage, HistoryQuery, MemberPage, Store, StoreError,
    StoredGeofence, TripPage, TripQuery, WriteBatch, codec, keys,
};

/// Largest memtable of a keyspace, in bytes.
///
/// fjall's default is 64 MiB per keyspace, and fjall 3.1 has no limit
/// across keyspaces (`max_write_buffer_size` is not read). With `latest`,
/// `state`, `devices` and the current hot-history bucket all written by
/// every batch, the default let memtables hold ~360 MB at the peak of a
/// 1M-vehicle run (heaptrack, BENCHMARKS.md, "Issue 20 goals 3–7 measured").
/// fjall reads this when it creates a keyspace; keyspaces of an existing
/// store keep the size they were created with.
const MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;

/// The options every keyspace of the embedded store is created with.
pub(crate) fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
}

/// The embedded [`Store`]: a fjall database in a local directory.
///
/// Cheap to clone; clones share the database. Only one process may open a
/// directory at a time (fjall locks it).
#[derive(Clone)]
pub struct FjallStore {
    pub(crate) inner: Arc<Inner>,
}

/// The database and its keyspaces; fjall handles are reference-counted, so
/// blocking tasks share this behind an `Arc`.
pub(crate) struct Inner {
    path: PathBuf,
    pub(crate) db: Database,
    latest: Keyspace,
    /// Rows, hot buckets and blocks (see [`crate::history`]).
    pub(crate) history: History,
    /// Every latest position, for latest reads and area queries; written
    /// after each batch is committed to `latest`.
    index: LatestIndex,
    pub(crate) tables: Tables,
}

impl FjallStore {
    /// Opens the store in `path`, creating the directory and keyspaces if
    /// missing and recovering whatever a previous run left; values are not
    /// encrypted (see [`FjallStore::open_with_key`]).
    ///
    /// Blocks on disk I/O (journal recovery); call it at start-up, before the
    /// runtime is busy, or from a blocking task.
    pub fn open(path: &Path) -> Result<FjallStore, StoreError> {
        FjallStore::open_with_key(path, None)
    }

    /// Opens the store in `path` with values sealed under `key` (see
    /// [`crate::seal`]), or in clear with `None`. The key is checked against
    /// the directory before fjall opens it: a wrong key, a missing key for
    /// an encrypted store or a key for a store in clear is
    /// [`StoreError::Key`], and nothing on disk changes.
    pub fn open_with_key(path: &Path, key: Option<&StoreKey>) -> Result<FjallStore, StoreError> {
        if path.join(crate::rekey::INCOMPLETE_MARKER).exists() {
            return Err(StoreError::Key(format!(
                "{} is an unfinished copy of `fleetd rekey`: delete it and run rekey again",
                path.display()
            )));
        }
        FjallStore::open_with_key_unchecked_marker(path, key)
    }

    /// [`FjallStore::open_with_key`] for a copy that `fleetd rekey` is
    /// writing.
    pub(crate) fn open_with_key_unchecked_marker(
        path: &Path,
        key: Option<&StoreKey>,
    ) -> Result<FjallStore, StoreError> {
        let sealer = seal::prepare(path, key)?;
        std::fs::create_dir_all(path).map_err(fjall::Error::from)?;
        let db = Database::builder(path).open()?;
        let ks = |name: &str| db.keyspace(name, keyspace_options);
        let latest = ks(table::LATEST)?;
        let history = History::open(&db, ks(table::HISTORY)?)?;
        if db.keyspace_exists(LEGACY_AREA_KEYSPACE) {
            let legacy = ks(LEGACY_AREA_KEYSPACE)?;
            db.delete_keyspace(legacy)?;
        }
        let tables = Tables {
            state: ks(table::STATE)?,
            trips: ks(table::TRIPS)?,
            alerts: ks(table::ALERTS)?,
            alerts_by_device: ks(table::ALERTS_BY_DEVICE)?,
            devices: ks(table::DEVICES)?,
            credentials: ks(table::CREDENTIALS)?,
            tokens: ks(table::TOKENS)?,
            webhooks: ks(table::WEBHOOKS)?,
            geofences: ks(table::GEOFENCES)?,
            fence_members: ks(table::FENCE_MEMBERS)?,
            sealer,
        };
        let index = LatestIndex::default();
        index.restore(latest.iter().map(|guard| {
            let (key, value) = guard.into_inner()?;
            codec::decode(&tables.open(table::LATEST, &key, &value)?)
        }))?;
        let inner = Inner {
            path: path.to_path_buf(),
            db,
            latest,
            history,
            index,
            tables,
        };
        inner.report_disk_space();
        // Every label at 0 from the start, so the first scrape shows them.
        for (what, _) in maintained(&Maintenance::default()) {
            metrics::counter!("fleetd_store_history_maintained_total", "what" => what).increment(0);
        }
        Ok(FjallStore {
            inner: Arc::new(inner),
        })
    }

    /// Keeps history for `days` (`None`: forever): maintenance drops each
    /// day of blocks once it ended `days` ago (see [`crate::history`]).
    pub fn set_history_days(&self, days: Option<u32>) {
        self.inner.history.set_retention_days(days);
    }

    /// One maintenance pass on the calling thread, which it blocks on disk
    /// I/O: closes hot buckets into blocks, merges late rows, applies the
    /// retention. [`Store::maintain`] runs it on the blocking pool.
    pub fn maintain_blocking(&self) -> Result<Maintenance, StoreError> {
        self.inner.maintain()
    }

    /// Rewrites the history keyspaces' tables at once (fjall's major
    /// compaction), dropping the tombstones of merged rows that fjall's
    /// background compaction would drop over time: the disk use history
    /// settles at. Blocks; for benchmarks and tools, not the serving path.
    pub fn compact_history_tables(&self) -> Result<(), StoreError> {
        self.inner.db.persist(PersistMode::SyncAll)?;
        self.inner.history.major_compact()?;
        self.inner.report_disk_space();
        Ok(())
    }

    /// Bytes on disk of history's tables, every tier (what
    /// `fleetd_store_disk_bytes` reports for `history`, `history_hot` and
    /// `history_blocks`); memtables not yet flushed are not counted.
    pub fn history_disk_bytes(&self) -> u64 {
        self.inner.history.disk_space().iter().map(|(_, b)| b).sum()
    }

    /// Whether values are encrypted at rest.
    pub fn is_sealed(&self) -> bool {
        self.inner.tables.sealer.is_sealed()
    }

    /// Runs `f` on tokio's blocking pool with the shared handles.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|err| StoreError::Task(err.to_string()))?
    }
}

impl fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FjallStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for FjallStore {
    async fn write_batch(&self, batch: Arc<WriteBatch>) -> Result<(), StoreError> {
        let started = Instant::now();
        let (history_rows, latest_rows) = self
            .blocking(move |inner| {
                let written = inner.write(&batch)?;
                inner.report_disk_space();
                Ok(written)
            })
            .await?;
        metrics::histogram!("fleetd_store_write_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("fleetd_store_rows_written_total", "table" => "history")
            .increment(history_rows as u64);
        metrics::counter!("fleetd_store_rows_written_total", "table" => "latest")
            .increment(latest_rows as u64);
        Ok(())
    }

    async fn latest(&self, device: &DeviceId) -> Result<Option<EnrichedPosition>, StoreError> {
        // One hash lookup under a lock that writers hold for at most one
        // chunk (~0.1 ms): not worth a trip to the blocking pool.
        Ok(self.inner.index.get(device))
    }

    async fn latest_in_area(
        &self,
        area: &AreaQuery,
        limit: usize,
    ) -> Result<Vec<EnrichedPosition>, StoreError> {
        area.validate()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let area = *area;
        // Planning and testing are CPU work proportional to the area (a
        // full scan for a continent), so they run off the async workers.
        self.blocking(move |inner| inner.index.in_area(&area, limit))
            .await
    }

    async fn all_latest(&self) -> Result<Vec<EnrichedPosition>, StoreError> {
        self.blocking(|inner| Ok(inner.index.all())).await
    }

    async fn history(
        &self,
        device: &DeviceId,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, StoreError> {
        let Some((from_ms, to_ms)) = query.page_range()? else {
            return Ok(HistoryPage::default());
        };
        let (limit, device) = (query.limit, device.clone());
        self.blocking(move |inner| inner.history_page(&device, from_ms, to_ms, limit))
            .await
    }

    async fn vehicle_state(&self, device: &DeviceId) -> Result<Option<VehicleState>, StoreError> {
        let device = device.clone();
        self.blocking(move |inner| inner.tables.vehicle_state(&device))
            .await
    }

    async fn all_vehicle_states(&self) -> Result<Vec<(DeviceId, VehicleState)>, StoreError> {
        self.blocking(|inner| inner.tables.all_vehicle_states())
            .await
    }

    async fn trips(&self, device: &DeviceId, query: &TripQuery) -> Result<TripPage, StoreError> {
        let (device, query) = (device.clone(), query.clone());
        self.blocking(move |inner| inner.tables.trips(&device, &query))
            .await
    }

    async fn trip(&self, device: &DeviceId, start_ts_ms: i64) -> Result<Option<Trip>, StoreError> {
        let device = device.clone();
        self.blocking(move |inner| inner.tables.trip(&device, start_ts_ms))
            .await
    }

    async fn alerts(&self, query: &AlertQuery) -> Result<AlertPage, StoreError> {
        let query = query.clone();
        self.blocking(move |inner| inner.tables.alerts(&query))
            .await
    }

    async fn put_device(&self, device: &DeviceId, info: &DeviceInfo) -> Result<(), StoreError> {
        let (key, value) = (device.as_str().to_owned(), fjall_tables::encode(info));
        self.blocking(move |inner| {
            let value = inner.tables.seal(table::DEVICES, key.as_bytes(), value);
            Ok(inner.tables.devices.insert(key, value)?)
        })
        .await
    }

    async fn device(&self, device: &DeviceId) -> Result<Option<DeviceInfo>, StoreError> {
        let device = device.clone();
        self.blocking(move |inner| inner.tables.device(&device))
            .await
    }

    async fn delete_device(&self, device: &DeviceId) -> Result<bool, StoreError> {
        let key = device.as_str().to_owned();
        self.blocking(move |inner| {
            let existed = inner.tables.devices.contains_key(&key)?;
            inner.tables.devices.remove(key)?;
            Ok(existed)
        })
        .await
    }

    async fn all_devices(&self) -> Result<Vec<(DeviceId, DeviceInfo)>, StoreError> {
        self.blocking(|inner| inner.tables.all_devices()).await
    }

    async fn put_geofence(&self, fence: &StoredGeofence) -> Result<(), StoreError> {
        let key = fence.id.as_str().to_owned();
        let value = fjall_tables::encode(&fjall_tables::GeofenceRow {
            geojson: fence.geojson.clone(),
            updated_ms: fence.updated_ms,
        });
        self.blocking(move |inner| {
            let value = inner.tables.seal(table::GEOFENCES, key.as_bytes(), value);
            Ok(inner.tables.geofences.insert(key, value)?)
        })
        .await
    }

    async fn geofence(&self, id: &GeofenceId) -> Result<Option<StoredGeofence>, StoreError> {
        let id = id.clone();
        self.blocking(move |inner| inner.tables.geofence(&id)).await
    }

    async fn delete_geofence(&self, id: &GeofenceId) -> Result<bool, StoreError> {
        let id = id.clone();
        self.blocking(move |inner| inner.tables.delete_geofence(&inner.db, &id))
            .await
    }

    async fn all_geofences(&self) -> Result<Vec<StoredGeofence>, StoreError> {
        self.blocking(|inner| inner.tables.all_geofences()).await
    }

    async fn geofence_members(
        &self,
        fence: &GeofenceId,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<MemberPage, StoreError> {
        let (fence, after) = (fence.clone(), after.cloned());
        self.blocking(move |inner| inner.tables.geofence_members(&fence, after.as_ref(), limit))
            .await
    }

    async fn put_credentials(&self, credentials: &[StoredCredential]) -> Result<(), StoreError> {
        let credentials = credentials.to_vec();
        self.blocking(move |inner| inner.tables.put_credentials(&inner.db, &credentials))
            .await
    }

    async fn credential(
        &self,
        principal: &Principal,
    ) -> Result<Option<StoredCredential>, StoreError> {
        let principal = principal.clone();
        self.blocking(move |inner| inner.tables.credential(&principal))
            .await
    }

    async fn delete_credential(&self, principal: &Principal) -> Result<bool, StoreError> {
        let principal = principal.clone();
        self.blocking(move |inner| inner.tables.delete_credential(&principal))
            .await
    }

    async fn put_token(&self, token: &StoredToken) -> Result<(), StoreError> {
        let (key, value) = (token.id.clone(), fjall_tables::encode(token));
        self.blocking(move |inner| {
            let value = inner.tables.seal(table::TOKENS, key.as_bytes(), value);
            Ok(inner.tables.tokens.insert(key, value)?)
        })
        .await
    }

    async fn all_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        self.blocking(|inner| inner.tables.all_tokens()).await
    }

    async fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.blocking(move |inner| inner.tables.delete_token(&id))
            .await
    }

    async fn put_webhook(&self, hook: &StoredWebhook) -> Result<(), StoreError> {
        let (key, value) = (hook.id.clone(), fjall_tables::encode(hook));
        self.blocking(move |inner| {
            let value = inner.tables.seal(table::WEBHOOKS, key.as_bytes(), value);
            Ok(inner.tables.webhooks.insert(key, value)?)
        })
        .await
    }

    async fn all_webhooks(&self) -> Result<Vec<StoredWebhook>, StoreError> {
        self.blocking(|inner| inner.tables.all_webhooks()).await
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.blocking(move |inner| inner.tables.delete_webhook(&id))
            .await
    }

    async fn maintain(&self) -> Result<(), StoreError> {
        self.blocking(|inner| inner.maintain().map(|_| ())).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.blocking(|inner| Ok(inner.db.persist(PersistMode::SyncAll)?))
            .await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        // Handing buffered journal bytes to the OS is cheap, and it is the
        // public call that reports fjall's poisoned state (set after a failed
        // fsync or a panicked background worker, when writes stop).
        self.blocking(|inner| {
            inner
                .db
                .persist(PersistMode::Buffer)
                .map_err(|err| match err {
                    fjall::Error::Poisoned => StoreError::Stopped(err.to_string()),
                    err => StoreError::Unavailable(format!("embedded store: {err}")),
                })
        })
        .await
    }
}

/// Whether the fence of a `fence_members` key is stored (a failed read
/// counts as yes: the member row is then written, as it would have been).
fn fence_exists(t: &Tables, member_key: &[u8]) -> bool {
    let fence = member_key.split(|b| *b == 0).next().unwrap_or_default();
    t.geofences.contains_key(fence).unwrap_or(true)
}

/// `fleetd_store_history_maintained_total`'s labels with a pass's counts.
fn maintained(done: &Maintenance) -> [(&'static str, u64); 5] {
    [
        ("buckets_compacted", done.buckets_compacted),
        ("rows_compacted", done.rows_compacted),
        ("blocks_written", done.blocks_written),
        ("rows_expired", done.rows_expired),
        ("days_dropped", done.days_dropped),
    ]
}

/// How long one maintenance pass works through late rows at most, so a
/// data directory of an earlier version (every row late) migrates in
/// steps rather than in one long pass.
const MAINTENANCE_LATE_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// The keyspace that held the area index on disk before it moved to RAM.
const LEGACY_AREA_KEYSPACE: &str = "area";

impl Inner {
    /// Sets `fleetd_store_disk_bytes{keyspace}`: the bytes of each
    /// keyspace's tables on disk (fjall keeps the sizes in memory, so this
    /// is a sum over a few tables, not a directory walk).
    /// `keyspace="wal"` is fjall's own write-ahead log, which holds what
    /// its memtables have not yet flushed to tables.
    fn report_disk_space(&self) {
        let mut tables = 0;
        for name in table::ALL
            .into_iter()
            .filter(|name| *name != table::HISTORY)
        {
            let bytes = self.keyspace(name).disk_space();
            tables += bytes;
            metrics::gauge!("fleetd_store_disk_bytes", "keyspace" => name).set(bytes as f64);
        }
        for (name, bytes) in self.history.disk_space() {
            tables += bytes;
            metrics::gauge!("fleetd_store_disk_bytes", "keyspace" => name).set(bytes as f64);
        }
        if let Ok(all) = self.db.disk_space() {
            metrics::gauge!("fleetd_store_disk_bytes", "keyspace" => "wal")
                .set(all.saturating_sub(tables) as f64);
        }
    }

    /// [`FjallStore::maintain_blocking`], with its metrics and log.
    fn maintain(&self) -> Result<Maintenance, StoreError> {
        let started = Instant::now();
        let done = self
            .history
            .maintain(&self.tables.sealer, MAINTENANCE_LATE_BUDGET);
        let took = started.elapsed();
        metrics::histogram!("fleetd_store_maintenance_seconds").record(took.as_secs_f64());
        let done = done.inspect_err(|err| {
            metrics::counter!("fleetd_store_maintenance_errors_total").increment(1);
            tracing::warn!(error = %err, "history maintenance failed; retried next pass");
        })?;
        for (what, n) in maintained(&done) {
            metrics::counter!("fleetd_store_history_maintained_total", "what" => what).increment(n);
        }
        if done != Maintenance::default() {
            tracing::debug!(
                ?done,
                took_ms = took.as_millis() as u64,
                "history maintained"
            );
        }
        self.report_disk_space();
        Ok(done)
    }

    /// The keyspace named `name` (one of [`table::ALL`]).
    pub(crate) fn keyspace(&self, name: &str) -> &Keyspace {
        let t = &self.tables;
        match name {
            table::LATEST => &self.latest,
            table::HISTORY => &self.history.late,
            table::STATE => &t.state,
            table::TRIPS => &t.trips,
            table::ALERTS => &t.alerts,
            table::ALERTS_BY_DEVICE => &t.alerts_by_device,
            table::DEVICES => &t.devices,
            table::CREDENTIALS => &t.credentials,
            table::TOKENS => &t.tokens,
            table::WEBHOOKS => &t.webhooks,
            table::GEOFENCES => &t.geofences,
            _ => &t.fence_members,
        }
    }

    /// Applies one [`WriteBatch`] as one atomic fjall batch; returns the
    /// number of history and latest rows written.
    ///
    /// Every item of a fjall batch gets the same sequence number, so two
    /// writes of one key in one batch would have no defined order. The
    /// batch is therefore collapsed per key first, later entries winning, as
    /// they would if written one after another.
    fn write(&self, batch: &WriteBatch) -> Result<(usize, usize), StoreError> {
        let mut history: HashMap<Vec<u8>, &EnrichedPosition> =
            HashMap::with_capacity(batch.history.len());
        for position in &batch.history {
            let key = keys::history_key(&position.report.device_id, position.report.ts_ms);
            history.insert(key, position);
        }

        let mut latest: HashMap<Vec<u8>, Vec<u8>> = HashMap::with_capacity(batch.latest.len());
        for update in &batch.latest {
            let position = &update.position;
            let key = keys::latest_key(&position.report.device_id);
            let value = self
                .tables
                .seal(table::LATEST, &key, codec::encode(position));
            latest.insert(key, value);
        }

        let counts = (history.len(), latest.len());
        let mut fjall_batch = self.db.batch();
        for (key, value) in latest {
            fjall_batch.insert(&self.latest, key, value);
        }
        self.write_tables(&mut fjall_batch, batch);
        // Adds the history rows to the batch and commits it.
        self.history.write(
            &self.tables.sealer,
            history.into_iter().collect(),
            fjall_batch,
        )?;
        // Only what is committed becomes visible, and all of it before
        // `write_batch` returns.
        self.index.apply(&batch.latest);
        metrics::gauge!("fleetd_store_latest_devices").set(self.index.len() as f64);
        Ok(counts)
    }

    /// Adds the batch's states, trips and alerts to `fjall_batch`, collapsed
    /// per key like the positions (later entries win).
    fn write_tables(&self, fjall_batch: &mut fjall::OwnedWriteBatch, batch: &WriteBatch) {
        let t = &self.tables;
        let mut states: HashMap<&str, Vec<u8>> = HashMap::with_capacity(batch.states.len());
        for (device, state) in &batch.states {
            states.insert(device.as_str(), fjall_tables::encode_state(state));
        }
        for (key, value) in states {
            let value = t.seal(table::STATE, key.as_bytes(), value);
            fjall_batch.insert(&t.state, key, value);
        }
        for trip in &batch.trips {
            let key = keys::device_ts_key(&trip.device_id, trip.trip.start_ts_ms);
            let value = t.seal(table::TRIPS, &key, fjall_tables::encode(&trip.trip));
            fjall_batch.insert(&t.trips, key, value);
        }
        for alert in &batch.alerts {
            let id = alert.id.as_str();
            let value = t.seal(table::ALERTS, id.as_bytes(), fjall_tables::encode(alert));
            fjall_batch.insert(&t.alerts, id, value);
            fjall_batch.insert(
                &t.alerts_by_device,
                keys::device_alert_key(&alert.device_id, &alert.id),
                [],
            );
        }
        // In order: a device may enter and leave one fence within a batch.
        let mut members: HashMap<Vec<u8>, Option<i64>> = HashMap::new();
        for change in &batch.memberships {
            let key = fjall_tables::member_key(&change.fence, Some(&change.device));
            members.insert(key, change.entered.then_some(change.ts_ms));
        }
        for (key, entered) in members {
            match entered {
                // A batch evaluated just before its fence was deleted must
                // not bring members of the deleted fence back.
                Some(ms) if fence_exists(t, &key) => {
                    let value = t.seal(table::FENCE_MEMBERS, &key, ms.to_be_bytes().to_vec());
                    fjall_batch.insert(&t.fence_members, key, value)
                }
                Some(_) => {}
                None => fjall_batch.remove(&t.fence_members, key),
            }
        }
    }

    /// One page of `device`'s history in `[from_ms, to_ms]` (`from_ms ≤
    /// to_ms`, `limit ≥ 1`).
    fn history_page(
        &self,
        device: &DeviceId,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        self.history
            .page(&self.tables.sealer, device, from_ms, to_ms, limit)
    }
}
