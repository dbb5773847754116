//! The ScyllaDB backend: the same [`Store`] contract as the embedded one,
//! over a cluster.
//!
//! | table | key | written by |
//! |---|---|---|
//! | `latest_position` | `device_id` | every latest update, `USING TIMESTAMP` device time |
//! | `positions` | `(device_id, day)`, `ts` | every history row |
//! | `position_days` | `device_id`, `day` | once per device and day in a batch |
//! | `devices_by_cell` | `(cell, minute)`, `device_id` | every latest update (area index) |
//! | `vehicle_state` | `device_id` | every state change |
//! | `trips` | `device_id`, `start_ts` | every trip change |
//! | `alerts_by_day`, `alerts_by_device` | `(day, shard)` / `(device_id, day)`, `id` | every alert |
//! | `devices` | `device_id` | the registry API |
//! | `geofences` | `geofence_id` | the geofence API |
//! | `geofence_members` | `geofence_id`, `device_id` | enter/exit, `USING TIMESTAMP` device time |
//!
//! The schema and why each key is what it is: `schemas/cql/`.
//! A write batch becomes independent single-partition statements (no
//! multi-partition batches), run with at most
//! [`ScyllaSettings::max_inflight`] in flight, each retried on transient
//! errors (`exec.rs`). The batch is not atomic: a failure part-way leaves some
//! rows written, and the processor writes the whole batch again, which is
//! safe because every statement is idempotent.
//!
//! Differences from the embedded backend, by design:
//! * area queries see devices whose latest position was *written* in the
//!   last [`ScyllaSettings::area_minutes`] minutes (server clock), not every
//!   device ever seen: the index is "who is here now";
//! * [`Store::flush`] has nothing to do: a write is acknowledged at the
//!   configured consistency or it fails.

mod exec;
mod schema;
mod settings;
mod statements;
mod tables;
mod tls;
mod values;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fleetd_schemas::{
    DeviceId, DeviceInfo, EnrichedPosition, GeofenceId, H3Cells, Principal, StoredCredential,
    StoredToken, StoredWebhook, Trip, VehicleState,
};
use futures::{StreamExt, TryStreamExt, stream};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;

use self::exec::{Failure, with_retry};
use self::statements::{Statements, Stmt};
use self::values::{Bind, DayRow, PositionRow};
use crate::{
    AlertPage, AlertQuery, AreaQuery, HistoryPage, HistoryQuery, MemberPage, Store, StoreError,
    StoredGeofence, TripPage, TripQuery, WriteBatch, cover, cursor,
};

pub use self::schema::{SCHEMA_FILES, create_keyspace_cql, schema_statements};
pub use self::settings::{Consistency, Credentials, ScyllaSettings};
pub use self::statements::cql as statement_cql;
pub use self::tls::{ClientCertificate, ScyllaTls};

/// Milliseconds per history partition (one day).
pub(super) const DAY_MS: i64 = 86_400_000;
/// Milliseconds per area-index partition (one minute).
const MINUTE_MS: i64 = 60_000;
/// Rows per page of a full-table scan.
const SCAN_PAGE_ROWS: i32 = 5_000;

/// The ScyllaDB [`Store`]. Cheap to clone; clones share the session.
#[derive(Clone)]
pub struct ScyllaStore {
    inner: Arc<Inner>,
}

struct Inner {
    session: Session,
    statements: Statements,
    settings: ScyllaSettings,
}

impl fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("contact_points", &self.inner.settings.contact_points)
            .field("keyspace", &self.inner.settings.keyspace)
            .finish_non_exhaustive()
    }
}

impl ScyllaStore {
    /// Connects to the cluster, applies the schema first when `migrate` is
    /// set, and prepares every statement.
    ///
    /// Fails with [`StoreError::Unavailable`] when no contact point answers
    /// and with a message naming the keyspace or statement when the schema
    /// is missing (run once with `migrate`).
    pub async fn connect(settings: ScyllaSettings, migrate: bool) -> Result<Self, StoreError> {
        settings.validate()?;
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if let Some(dc) = &settings.local_datacenter {
            policy = policy.prefer_datacenter(dc.clone());
        }
        let profile = ExecutionProfile::builder()
            .load_balancing_policy(policy.build())
            .consistency(settings.consistency.to_driver())
            .request_timeout(Some(settings.request_timeout))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&settings.contact_points)
            .connection_timeout(settings.connect_timeout)
            .default_execution_profile_handle(profile.into_handle());
        if let Some(credentials) = &settings.credentials {
            builder = builder.user(&credentials.username, &credentials.password);
        }
        if let Some(tls) = settings.tls.clone() {
            let config = tokio::task::spawn_blocking(move || tls.client_config())
                .await
                .map_err(|err| StoreError::Config(format!("scylla TLS setup: {err}")))??;
            builder = builder.tls_context(Some(config));
        }
        let session = builder.build().await.map_err(|err| {
            StoreError::Unavailable(format!(
                "cannot connect to ScyllaDB at {}{}: {err}",
                settings.contact_points.join(","),
                if settings.tls.is_some() {
                    " over TLS"
                } else {
                    ""
                }
            ))
        })?;
        if migrate {
            schema::migrate(&session, &settings).await?;
        }
        let statements = Statements::prepare(&session, &settings.keyspace)
            .await
            .map_err(|err| match err {
                StoreError::Unavailable(msg) => StoreError::Unavailable(format!(
                    "{msg} (does keyspace {} exist? start once with --scylla-migrate)",
                    settings.keyspace
                )),
                other => other,
            })?;
        tracing::info!(
            contact_points = %settings.contact_points.join(","),
            keyspace = %settings.keyspace,
            "scylla store connected"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                session,
                statements,
                settings,
            }),
        })
    }

    /// Executes one statement (unpaged) with retries and metrics.
    async fn run(&self, stmt: &Stmt, bind: Bind<'_>) -> Result<QueryResult, StoreError> {
        let settings = &self.inner.settings;
        let session = &self.inner.session;
        with_retry(
            stmt.name,
            settings.retry_max,
            settings.retry_backoff,
            || async {
                session
                    .execute_unpaged(&stmt.prepared, bind)
                    .await
                    .map_err(Failure::from)
            },
        )
        .await
    }

    /// Executes a read and decodes its rows as `R`.
    async fn rows<R>(&self, stmt: &Stmt, bind: Bind<'_>) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self.run(stmt, bind).await?;
        let rows = result
            .into_rows_result()
            .map_err(|err| StoreError::Scylla(format!("{}: {err}", stmt.name)))?;
        rows.rows::<R>()
            .map_err(|err| StoreError::Scylla(format!("{}: {err}", stmt.name)))?
            .map(|row| row.map_err(|err| StoreError::Corrupt(format!("{}: {err}", stmt.name))))
            .collect()
    }

    /// Every row of a full-table scan (paged), retried as a whole on a
    /// transient error.
    async fn scan<R>(&self, stmt: &Stmt) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Send,
    {
        let settings = &self.inner.settings;
        let session = &self.inner.session;
        with_retry(
            stmt.name,
            settings.retry_max,
            settings.retry_backoff,
            || async {
                let mut prepared = stmt.prepared.clone();
                prepared.set_page_size(SCAN_PAGE_ROWS);
                let pager = session
                    .execute_iter(prepared, ())
                    .await
                    .map_err(|err| Failure::transient(err.to_string()))?;
                let rows = pager
                    .rows_stream::<R>()
                    .map_err(|err| Failure::permanent(err.to_string()))?;
                rows.try_collect::<Vec<_>>()
                    .await
                    .map_err(|err| Failure::transient(err.to_string()))
            },
        )
        .await
    }

    /// The minute buckets an area read looks at, newest first.
    fn area_minutes(&self, now_ms: i64) -> Vec<i32> {
        let now = minute_of(now_ms);
        (0..self.inner.settings.area_minutes as i32)
            .map(|back| now.saturating_sub(back))
            .collect()
    }
}

#[async_trait]
impl Store for ScyllaStore {
    async fn write_batch(&self, batch: Arc<WriteBatch>) -> Result<(), StoreError> {
        let started = Instant::now();
        let st = &self.inner.statements;
        let minute = minute_of(wall_clock_ms());

        // Later entries win for a repeated key, as if written one after
        // another (concurrent writes of one key have no defined order).
        let mut history: HashMap<(&str, i64), &EnrichedPosition> = HashMap::new();
        let mut days: HashSet<(&str, i32)> = HashSet::new();
        for position in &batch.history {
            let r = &position.report;
            history.insert((r.device_id.as_str(), r.ts_ms), position);
            days.insert((r.device_id.as_str(), day_of(r.ts_ms)));
        }
        let mut ops: Vec<(&Stmt, Bind<'_>)> =
            Vec::with_capacity(history.len() + days.len() + batch.latest.len() * 4);
        for position in history.into_values() {
            let bind = Bind {
                position: Some(position),
                day: Some(day_of(position.report.ts_ms)),
                ..Bind::default()
            };
            ops.push((&st.insert_position, bind));
        }
        for (device_id, day) in days {
            let bind = Bind {
                device_id: Some(device_id),
                day: Some(day),
                ..Bind::default()
            };
            ops.push((&st.insert_position_day, bind));
        }
        for update in &batch.latest {
            let position = &update.position;
            // Device time in µs: a late or replayed write never wins.
            let write_time = Some(position.report.ts_ms.saturating_mul(1000));
            ops.push((
                &st.insert_latest,
                Bind {
                    position: Some(position),
                    write_time,
                    ..Bind::default()
                },
            ));
            let new_cell = position.h3.area;
            if let Some(old_cell) = update.previous_area_cell.filter(|&old| old != new_cell) {
                // The old cell's rows a reader could still see: this minute
                // and the ones before it that area reads look at.
                for m in self.area_minutes(minute as i64 * MINUTE_MS) {
                    ops.push((
                        &st.delete_cell,
                        Bind {
                            device_id: Some(position.report.device_id.as_str()),
                            cell: Some(old_cell as i64),
                            minute: Some(m),
                            write_time,
                            ..Bind::default()
                        },
                    ));
                }
            }
            if is_area_cell(new_cell) {
                ops.push((
                    &st.insert_cell,
                    Bind {
                        position: Some(position),
                        cell: Some(new_cell as i64),
                        minute: Some(minute),
                        write_time,
                        ..Bind::default()
                    },
                ));
            } else {
                tracing::warn!(
                    device_id = %position.report.device_id,
                    cell = format_args!("{new_cell:#x}"),
                    "latest position has no valid res-7 area cell; left out of area queries"
                );
            }
        }

        let docs = tables::BatchDocs::new(&batch);
        docs.push_ops(st, &mut ops);

        let n_ops = ops.len();
        // Futures are made up front (they do nothing until polled) so that
        // no closure lives across the await; at most `max_inflight` run.
        let writes: Vec<_> = ops
            .into_iter()
            .map(|(stmt, bind)| self.run(stmt, bind))
            .collect();
        stream::iter(writes)
            .buffer_unordered(self.inner.settings.max_inflight)
            .try_for_each(|_| async { Ok(()) })
            .await?;
        metrics::histogram!("fleetd_store_write_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("fleetd_store_rows_written_total", "table" => "history")
            .increment(batch.history.len() as u64);
        metrics::counter!("fleetd_store_rows_written_total", "table" => "latest")
            .increment(batch.latest.len() as u64);
        tracing::trace!(statements = n_ops, "scylla batch written");
        Ok(())
    }

    async fn latest(&self, device: &DeviceId) -> Result<Option<EnrichedPosition>, StoreError> {
        let bind = Bind {
            device_id: Some(device.as_str()),
            ..Bind::default()
        };
        let rows: Vec<PositionRow> = self
            .rows(&self.inner.statements.select_latest, bind)
            .await?;
        rows.into_iter()
            .next()
            .map(PositionRow::into_position)
            .transpose()
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
        let now_ms = wall_clock_ms();
        let cells = cover::cover(area)?
            .and_then(|coarse| res7_cells(&coarse, self.inner.settings.area_max_cells));
        let mut newest: HashMap<String, EnrichedPosition> = HashMap::new();
        let mut keep = |position: EnrichedPosition| {
            let id = position.report.device_id.as_str();
            let newer = newest
                .get(id)
                .is_none_or(|old| old.report.ts_ms < position.report.ts_ms);
            if newer {
                newest.insert(id.to_owned(), position);
            }
        };
        match cells {
            Some(cells) => {
                let minutes = self.area_minutes(now_ms);
                let st = &self.inner.statements;
                let mut reads = Vec::with_capacity(cells.len() * minutes.len());
                for &cell in &cells {
                    for &minute in &minutes {
                        let bind = Bind {
                            cell: Some(cell as i64),
                            minute: Some(minute),
                            ..Bind::default()
                        };
                        reads.push(self.rows::<PositionRow>(&st.select_cell, bind));
                    }
                }
                let mut results =
                    stream::iter(reads).buffer_unordered(self.inner.settings.max_inflight);
                while let Some(rows) = results.try_next().await? {
                    for row in rows {
                        keep(row.into_position()?);
                    }
                }
            }
            None => {
                // Too large for the index: scan every latest position, with
                // the same "reported recently" window the index applies.
                let oldest_minute = self.area_minutes(now_ms).last().copied().unwrap_or(0);
                let since_ms = i64::from(oldest_minute) * MINUTE_MS;
                for row in self
                    .scan::<PositionRow>(&self.inner.statements.select_all_latest)
                    .await?
                {
                    let position = row.into_position()?;
                    if position.report.received_ms >= since_ms {
                        keep(position);
                    }
                }
            }
        }
        let mut found: Vec<EnrichedPosition> = newest
            .into_values()
            .filter(|p| area.contains(p.report.lat, p.report.lon))
            .collect();
        // Deterministic order, so that `limit` cuts the same way each time.
        found.sort_by(|a, b| a.report.device_id.cmp(&b.report.device_id));
        found.truncate(limit);
        Ok(found)
    }

    async fn all_latest(&self) -> Result<Vec<EnrichedPosition>, StoreError> {
        self.scan::<PositionRow>(&self.inner.statements.select_all_latest)
            .await?
            .into_iter()
            .map(PositionRow::into_position)
            .collect()
    }

    async fn history(
        &self,
        device: &DeviceId,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, StoreError> {
        let Some((from_ms, to_ms)) = query.page_range()? else {
            return Ok(HistoryPage::default());
        };
        let st = &self.inner.statements;
        let id = device.as_str();
        let day_rows: Vec<DayRow> = self
            .rows(
                &st.select_days,
                Bind {
                    device_id: Some(id),
                    from_day: Some(day_of(from_ms)),
                    to_day: Some(day_of(to_ms)),
                    ..Bind::default()
                },
            )
            .await?;
        let mut days: Vec<i32> = day_rows.into_iter().map(|row| row.day).collect();
        days.sort_unstable();
        // One row beyond the page says whether there is a next page and
        // where it starts.
        let wanted = query.limit.saturating_add(1);
        let mut items = Vec::new();
        for day in days {
            let remaining = wanted - items.len();
            let rows: Vec<PositionRow> = self
                .rows(
                    &st.select_history,
                    Bind {
                        device_id: Some(id),
                        day: Some(day),
                        from_ts: Some(from_ms),
                        to_ts: Some(to_ms),
                        row_limit: Some(i32::try_from(remaining).unwrap_or(i32::MAX)),
                        ..Bind::default()
                    },
                )
                .await?;
            for row in rows {
                items.push(row.into_position()?);
            }
            if items.len() >= wanted {
                break;
            }
        }
        let mut page = HistoryPage::default();
        if items.len() > query.limit {
            page.next_cursor = items
                .get(query.limit)
                .map(|p| cursor::encode(p.report.ts_ms));
            items.truncate(query.limit);
        }
        page.items = items;
        Ok(page)
    }

    async fn vehicle_state(&self, device: &DeviceId) -> Result<Option<VehicleState>, StoreError> {
        self.read_vehicle_state(device).await
    }

    async fn all_vehicle_states(&self) -> Result<Vec<(DeviceId, VehicleState)>, StoreError> {
        self.read_all_vehicle_states().await
    }

    async fn trips(&self, device: &DeviceId, query: &TripQuery) -> Result<TripPage, StoreError> {
        self.read_trips(device, query).await
    }

    async fn trip(&self, device: &DeviceId, start_ts_ms: i64) -> Result<Option<Trip>, StoreError> {
        self.read_trip(device, start_ts_ms).await
    }

    async fn alerts(&self, query: &AlertQuery) -> Result<AlertPage, StoreError> {
        self.read_alerts(query).await
    }

    async fn put_device(&self, device: &DeviceId, info: &DeviceInfo) -> Result<(), StoreError> {
        self.write_device(device, info).await
    }

    async fn device(&self, device: &DeviceId) -> Result<Option<DeviceInfo>, StoreError> {
        self.read_device(device).await
    }

    async fn delete_device(&self, device: &DeviceId) -> Result<bool, StoreError> {
        self.remove_device(device).await
    }

    async fn all_devices(&self) -> Result<Vec<(DeviceId, DeviceInfo)>, StoreError> {
        self.read_all_devices().await
    }

    async fn put_geofence(&self, fence: &StoredGeofence) -> Result<(), StoreError> {
        self.write_geofence(fence).await
    }

    async fn geofence(&self, id: &GeofenceId) -> Result<Option<StoredGeofence>, StoreError> {
        self.read_geofence(id).await
    }

    async fn delete_geofence(&self, id: &GeofenceId) -> Result<bool, StoreError> {
        self.remove_geofence(id).await
    }

    async fn all_geofences(&self) -> Result<Vec<StoredGeofence>, StoreError> {
        self.read_all_geofences().await
    }

    async fn geofence_members(
        &self,
        fence: &GeofenceId,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<MemberPage, StoreError> {
        self.read_members(fence, after, limit).await
    }

    async fn put_credentials(&self, credentials: &[StoredCredential]) -> Result<(), StoreError> {
        self.write_credentials(credentials).await
    }

    async fn credential(
        &self,
        principal: &Principal,
    ) -> Result<Option<StoredCredential>, StoreError> {
        self.read_credential(principal).await
    }

    async fn delete_credential(&self, principal: &Principal) -> Result<bool, StoreError> {
        self.remove_credential(principal).await
    }

    async fn put_token(&self, token: &StoredToken) -> Result<(), StoreError> {
        self.write_token(token).await
    }

    async fn all_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        self.read_tokens().await
    }

    async fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        self.remove_token(id).await
    }

    async fn put_webhook(&self, hook: &StoredWebhook) -> Result<(), StoreError> {
        self.write_webhook(hook).await
    }

    async fn all_webhooks(&self) -> Result<Vec<StoredWebhook>, StoreError> {
        self.read_webhooks().await
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        self.remove_webhook(id).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every completed write was acknowledged by the replicas the
        // consistency level requires; nothing is buffered client-side.
        Ok(())
    }

    async fn ready(&self) -> Result<(), StoreError> {
        // One attempt, no retries: readiness reports the state now.
        let stmt = &self.inner.statements.ready;
        with_retry(stmt.name, 0, self.inner.settings.retry_backoff, || async {
            self.inner
                .session
                .execute_unpaged(&stmt.prepared, ())
                .await
                .map_err(Failure::from)
        })
        .await
        .map(|_| ())
        .map_err(|err| match err {
            StoreError::Scylla(msg) => StoreError::Unavailable(msg),
            other => other,
        })
    }
}

/// The res-7 cells of a cover, or `None` when there are more than `max`.
fn res7_cells(coarse: &[h3o::CellIndex], max: usize) -> Option<Vec<u64>> {
    let area_res = h3o::Resolution::try_from(H3Cells::AREA_RES).ok()?;
    let mut total: u64 = 0;
    for cell in coarse {
        total = total.saturating_add(cell.children_count(area_res));
    }
    if total > max as u64 {
        return None;
    }
    let mut cells: Vec<u64> = coarse
        .iter()
        .flat_map(|cell| cell.children(area_res).map(u64::from))
        .collect();
    cells.sort_unstable();
    cells.dedup();
    Some(cells)
}

/// Whether `raw` is an H3 cell at the area index resolution.
fn is_area_cell(raw: u64) -> bool {
    h3o::CellIndex::try_from(raw).is_ok_and(|cell| u8::from(cell.resolution()) == H3Cells::AREA_RES)
}

/// The history partition (days since the epoch) of a device time; clamped
/// to `i32`, which spans ±5.8 million years.
pub(super) fn day_of(ts_ms: i64) -> i32 {
    clamp_i32(ts_ms.div_euclid(DAY_MS))
}

/// The area-index partition (minutes since the epoch) of a wall-clock time.
fn minute_of(ms: i64) -> i32 {
    clamp_i32(ms.div_euclid(MINUTE_MS))
}

fn clamp_i32(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(if v < 0 { i32::MIN } else { i32::MAX })
}

/// The server clock, Unix ms: the area index is bucketed by write time.
pub(super) fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_of_times() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_MS - 1), 0);
        assert_eq!(day_of(-1), -1);
        assert_eq!(minute_of(MINUTE_MS * 3 + 5), 3);
        assert_eq!(day_of(i64::MAX), i32::MAX);
    }

    #[test]
    fn res7_cells_expand_and_cap() {
        let berlin = h3o::LatLng::new(52.52, 13.405).expect("finite");
        let res5 = berlin.to_cell(h3o::Resolution::Five);
        let cells = res7_cells(&[res5], 1000).expect("49 children");
        assert_eq!(cells.len(), 49);
        assert!(res7_cells(&[res5], 48).is_none());
        let res7 = berlin.to_cell(h3o::Resolution::Seven);
        assert_eq!(res7_cells(&[res7], 1), Some(vec![u64::from(res7)]));
    }
}
