//! The small tables on ScyllaDB: vehicle state, trips, alerts and the device
//! registry (schema: `schemas/cql/002_state_alerts_registry.cql`).
//!
//! Documents the processor owns (state, trips, alerts) travel as JSON text
//! columns, so adding a field needs no schema change; keys and the columns
//! queries select on (alert kind, geofence) are real columns.

use std::collections::HashMap;

use fleetd_schemas::{
    Alert, DeviceId, DeviceInfo, DeviceTrip, GeofenceId, MembershipChange, Principal,
    StoredCredential, StoredToken, StoredWebhook, Trip, VehicleState,
};
use futures::{StreamExt, TryStreamExt, stream};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::statements::{Statements, Stmt};
use super::values::{AlertRow, Bind, DeviceRow, DocRow, GeofenceRow, MemberRow, StateRow, TripRow};
use super::{DAY_MS, ScyllaStore, day_of};
use crate::{
    AlertPage, AlertQuery, FenceMember, MemberPage, StoreError, StoredGeofence, TripPage,
    TripQuery, WriteBatch, cursor,
};

/// Partitions per day of `alerts_by_day`.
pub(crate) const ALERT_SHARDS: i32 = 8;
/// Rows one alert partition read returns at most.
const ALERT_READ_ROWS: usize = 5_000;
/// Alerts live this long (the tables' TTL): older days are not read.
const ALERT_RETENTION_MS: i64 = 30 * DAY_MS;

fn to_json<T: Serialize>(value: &T) -> String {
    // Plain structs with string map keys: serializing cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn from_json<T: DeserializeOwned>(what: &str, text: Option<&str>) -> Result<T, StoreError> {
    let text = text.ok_or_else(|| StoreError::Corrupt(format!("{what}: null document")))?;
    serde_json::from_str(text).map_err(|err| StoreError::Corrupt(format!("{what}: {err}")))
}

fn parse_device(id: &str) -> Result<DeviceId, StoreError> {
    DeviceId::parse(id).map_err(|err| StoreError::Corrupt(format!("device id: {err}")))
}

/// The `alerts_by_day` shard of a device: FNV-1a of its id, so it is
/// stable across builds and processes.
pub(crate) fn alert_shard(device: &DeviceId) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device.as_str().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    (h % ALERT_SHARDS as u64) as i32
}

/// The JSON documents of one write batch, serialized once so that the
/// statements can borrow them.
pub(super) struct BatchDocs<'a> {
    states: Vec<(&'a DeviceId, &'a VehicleState, String)>,
    trips: Vec<(&'a DeviceTrip, String)>,
    alerts: Vec<(&'a Alert, String)>,
    memberships: &'a [MembershipChange],
}

impl<'a> BatchDocs<'a> {
    pub(super) fn new(batch: &'a WriteBatch) -> Self {
        // Later entries win for a repeated key, as in the position tables.
        let mut states: HashMap<&str, (&DeviceId, &VehicleState)> = HashMap::new();
        for (device, state) in &batch.states {
            states.insert(device.as_str(), (device, state));
        }
        let mut trips: HashMap<(&str, i64), &DeviceTrip> = HashMap::new();
        for trip in &batch.trips {
            trips.insert((trip.device_id.as_str(), trip.trip.start_ts_ms), trip);
        }
        Self {
            states: states
                .into_values()
                .map(|(d, s)| (d, s, to_json(s)))
                .collect(),
            trips: trips.into_values().map(|t| (t, to_json(&t.trip))).collect(),
            alerts: batch.alerts.iter().map(|a| (a, to_json(a))).collect(),
            memberships: &batch.memberships,
        }
    }

    /// Appends one statement per row to `ops`.
    pub(super) fn push_ops(&'a self, st: &'a Statements, ops: &mut Vec<(&'a Stmt, Bind<'a>)>) {
        for (device, state, json) in &self.states {
            ops.push((
                &st.insert_state,
                Bind {
                    device_id: Some(device.as_str()),
                    ts: Some(state.ts_ms),
                    json: Some(json),
                    ..Bind::default()
                },
            ));
        }
        for (trip, json) in &self.trips {
            ops.push((
                &st.insert_trip,
                Bind {
                    device_id: Some(trip.device_id.as_str()),
                    start_ts: Some(trip.trip.start_ts_ms),
                    json: Some(json),
                    ..Bind::default()
                },
            ));
        }
        for (alert, json) in &self.alerts {
            let day = Some(day_of(alert.ts_ms));
            ops.push((
                &st.insert_alert_day,
                Bind {
                    alert: Some(alert),
                    day,
                    shard: Some(alert_shard(&alert.device_id)),
                    json: Some(json),
                    ..Bind::default()
                },
            ));
            ops.push((
                &st.insert_alert_device,
                Bind {
                    alert: Some(alert),
                    day,
                    json: Some(json),
                    ..Bind::default()
                },
            ));
        }
        // Written at the event's device time, so an enter and a later exit
        // of the same fence resolve by time whatever order they land in.
        for change in self.memberships {
            let bind = Bind {
                fence_id: Some(change.fence.as_str()),
                device_id: Some(change.device.as_str()),
                write_time: Some(change.ts_ms.saturating_mul(1000)),
                entered_at: change.entered.then_some(change.ts_ms),
                ..Bind::default()
            };
            let stmt = if change.entered {
                &st.insert_member
            } else {
                &st.delete_member
            };
            ops.push((stmt, bind));
        }
    }
}

impl ScyllaStore {
    pub(super) async fn read_vehicle_state(
        &self,
        device: &DeviceId,
    ) -> Result<Option<VehicleState>, StoreError> {
        let bind = Bind {
            device_id: Some(device.as_str()),
            ..Bind::default()
        };
        let rows: Vec<StateRow> = self.rows(&self.inner.statements.select_state, bind).await?;
        rows.into_iter()
            .next()
            .map(|row| from_json("vehicle state", row.state.as_deref()))
            .transpose()
    }

    pub(super) async fn read_all_vehicle_states(
        &self,
    ) -> Result<Vec<(DeviceId, VehicleState)>, StoreError> {
        self.scan::<StateRow>(&self.inner.statements.select_all_states)
            .await?
            .into_iter()
            .map(|row| {
                Ok((
                    parse_device(&row.device_id)?,
                    from_json("vehicle state", row.state.as_deref())?,
                ))
            })
            .collect()
    }

    pub(super) async fn read_trips(
        &self,
        device: &DeviceId,
        query: &TripQuery,
    ) -> Result<TripPage, StoreError> {
        let Some((from_ms, to_ms)) = query.page_range()? else {
            return Ok(TripPage::default());
        };
        let bind = Bind {
            device_id: Some(device.as_str()),
            from_ts: Some(from_ms),
            to_ts: Some(to_ms),
            row_limit: Some(i32::try_from(query.limit.saturating_add(1)).unwrap_or(i32::MAX)),
            ..Bind::default()
        };
        let rows: Vec<TripRow> = self.rows(&self.inner.statements.select_trips, bind).await?;
        let mut trips = rows
            .into_iter()
            .map(|row| from_json::<Trip>("trip", row.trip.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        trips.sort_by_key(|t| std::cmp::Reverse(t.start_ts_ms));
        let mut page = TripPage::default();
        if trips.len() > query.limit {
            page.next_cursor = trips
                .get(query.limit)
                .map(|t| cursor::encode(t.start_ts_ms));
            trips.truncate(query.limit);
        }
        page.items = trips;
        Ok(page)
    }

    pub(super) async fn read_trip(
        &self,
        device: &DeviceId,
        start_ts_ms: i64,
    ) -> Result<Option<Trip>, StoreError> {
        let bind = Bind {
            device_id: Some(device.as_str()),
            start_ts: Some(start_ts_ms),
            ..Bind::default()
        };
        let rows: Vec<TripRow> = self.rows(&self.inner.statements.select_trip, bind).await?;
        rows.into_iter()
            .next()
            .map(|row| from_json("trip", row.trip.as_deref()))
            .transpose()
    }

    /// Alerts newest first: the query's days, newest first; per day the
    /// device's partition or every shard, merged by id (ids sort by time).
    pub(super) async fn read_alerts(&self, query: &AlertQuery) -> Result<AlertPage, StoreError> {
        let since_ms = query
            .since_ms
            .max(query.until_ms.min(super::wall_clock_ms()) - ALERT_RETENTION_MS);
        let mut page = AlertPage::default();
        let Some((lo, hi)) = query.page_ids(since_ms)? else {
            return Ok(page);
        };
        let st = &self.inner.statements;
        // Alert times are device times that ingest bounds to a few minutes
        // ahead of the server clock: no partition lies beyond tomorrow.
        let hi_ts = hi[..13]
            .parse::<i64>()
            .unwrap_or(query.until_ms)
            .min(super::wall_clock_ms() + DAY_MS);
        let (first_day, last_day) = (day_of(hi_ts), day_of(since_ms));
        let mut examined = 0usize;
        for day in (last_day..=first_day).rev() {
            let mut reads = Vec::new();
            let row_limit = Some(ALERT_READ_ROWS as i32);
            match &query.device {
                Some(device) => reads.push(self.rows::<AlertRow>(
                    &st.select_alerts_device,
                    Bind {
                        device_id: Some(device.as_str()),
                        day: Some(day),
                        from_id: Some(&lo),
                        to_id: Some(&hi),
                        row_limit,
                        ..Bind::default()
                    },
                )),
                None => {
                    for shard in 0..ALERT_SHARDS {
                        reads.push(self.rows::<AlertRow>(
                            &st.select_alerts_day,
                            Bind {
                                day: Some(day),
                                shard: Some(shard),
                                from_id: Some(&lo),
                                to_id: Some(&hi),
                                row_limit,
                                ..Bind::default()
                            },
                        ));
                    }
                }
            }
            let results: Vec<Vec<AlertRow>> = stream::iter(reads)
                .buffer_unordered(self.inner.settings.max_inflight)
                .try_collect()
                .await?;
            // A partition that filled its read may hold older rows not read
            // yet: the merged rows are complete only above its last id.
            let complete_above = results
                .iter()
                .filter(|rows| rows.len() >= ALERT_READ_ROWS)
                .filter_map(|rows| rows.iter().map(|r| r.id.clone()).min())
                .max();
            let mut rows: Vec<AlertRow> = results.into_iter().flatten().collect();
            rows.sort_by(|a, b| b.id.cmp(&a.id));
            for row in rows {
                let cut = complete_above.as_ref().is_some_and(|c| row.id <= *c);
                if page.items.len() == query.limit || cut || examined >= crate::ALERT_SCAN_BUDGET {
                    page.next_cursor = Some(row.id);
                    return Ok(page);
                }
                examined += 1;
                let alert: Alert = from_json("alert", row.alert.as_deref())?;
                if query.matches(&alert) {
                    page.items.push(alert);
                }
            }
        }
        Ok(page)
    }

    pub(super) async fn write_device(
        &self,
        device: &DeviceId,
        info: &DeviceInfo,
    ) -> Result<(), StoreError> {
        let tags = to_json(&info.tags);
        let bind = Bind {
            device_id: Some(device.as_str()),
            device: Some(info),
            json: Some(&tags),
            ..Bind::default()
        };
        self.run(&self.inner.statements.insert_device, bind).await?;
        Ok(())
    }

    pub(super) async fn read_device(
        &self,
        device: &DeviceId,
    ) -> Result<Option<DeviceInfo>, StoreError> {
        let bind = Bind {
            device_id: Some(device.as_str()),
            ..Bind::default()
        };
        let rows: Vec<DeviceRow> = self
            .rows(&self.inner.statements.select_device, bind)
            .await?;
        rows.into_iter()
            .next()
            .map(|row| device_info(row).map(|(_, info)| info))
            .transpose()
    }

    pub(super) async fn remove_device(&self, device: &DeviceId) -> Result<bool, StoreError> {
        let existed = self.read_device(device).await?.is_some();
        let bind = Bind {
            device_id: Some(device.as_str()),
            ..Bind::default()
        };
        self.run(&self.inner.statements.delete_device, bind).await?;
        Ok(existed)
    }

    pub(super) async fn read_all_devices(&self) -> Result<Vec<(DeviceId, DeviceInfo)>, StoreError> {
        self.scan::<DeviceRow>(&self.inner.statements.select_all_devices)
            .await?
            .into_iter()
            .map(device_info)
            .collect()
    }
}

impl ScyllaStore {
    pub(super) async fn write_geofence(&self, fence: &StoredGeofence) -> Result<(), StoreError> {
        let bind = Bind {
            geofence: Some(fence),
            ..Bind::default()
        };
        self.run(&self.inner.statements.insert_geofence, bind)
            .await?;
        Ok(())
    }

    pub(super) async fn read_geofence(
        &self,
        id: &GeofenceId,
    ) -> Result<Option<StoredGeofence>, StoreError> {
        let bind = Bind {
            fence_id: Some(id.as_str()),
            ..Bind::default()
        };
        let rows: Vec<GeofenceRow> = self
            .rows(&self.inner.statements.select_geofence, bind)
            .await?;
        rows.into_iter().next().map(stored_geofence).transpose()
    }

    /// Deletes the fence row, then its member partition. A failure in
    /// between leaves members of a fence that no longer exists: the API
    /// never lists them (it answers 404 for the fence), and it deletes a
    /// fence before creating one under a new id.
    pub(super) async fn remove_geofence(&self, id: &GeofenceId) -> Result<bool, StoreError> {
        let existed = self.read_geofence(id).await?.is_some();
        let bind = Bind {
            fence_id: Some(id.as_str()),
            ..Bind::default()
        };
        self.run(&self.inner.statements.delete_geofence, bind)
            .await?;
        self.run(&self.inner.statements.delete_fence_members, bind)
            .await?;
        Ok(existed)
    }

    pub(super) async fn read_all_geofences(&self) -> Result<Vec<StoredGeofence>, StoreError> {
        self.scan::<GeofenceRow>(&self.inner.statements.select_all_geofences)
            .await?
            .into_iter()
            .map(stored_geofence)
            .collect()
    }

    pub(super) async fn read_members(
        &self,
        fence: &GeofenceId,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<MemberPage, StoreError> {
        crate::check_limit("member", limit)?;
        let bind = Bind {
            fence_id: Some(fence.as_str()),
            // Every device id sorts after the empty string.
            after_device: Some(after.map_or("", |d| d.as_str())),
            row_limit: Some(i32::try_from(limit.saturating_add(1)).unwrap_or(i32::MAX)),
            ..Bind::default()
        };
        let rows: Vec<MemberRow> = self
            .rows(&self.inner.statements.select_members, bind)
            .await?;
        let mut items = rows
            .into_iter()
            .map(|row| {
                Ok(FenceMember {
                    device: parse_device(&row.device_id)?,
                    entered_ms: row.entered_at.map_or(0, |t| t.0),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        items.sort_by(|a, b| a.device.cmp(&b.device));
        let mut page = MemberPage::default();
        if items.len() > limit {
            items.truncate(limit);
            page.next_cursor = items.last().map(|m| m.device.to_string());
        }
        page.items = items;
        Ok(page)
    }
}

fn stored_geofence(row: GeofenceRow) -> Result<StoredGeofence, StoreError> {
    let id = GeofenceId::parse(&row.geofence_id)
        .map_err(|err| StoreError::Corrupt(format!("geofence id: {err}")))?;
    Ok(StoredGeofence {
        id,
        geojson: row
            .geojson
            .ok_or_else(|| StoreError::Corrupt("geofence: null geojson".into()))?,
        updated_ms: row.updated_at.map_or(0, |t| t.0),
    })
}

fn device_info(row: DeviceRow) -> Result<(DeviceId, DeviceInfo), StoreError> {
    let tags = match row.tags.as_deref() {
        None | Some("") => Default::default(),
        Some(text) => from_json("device tags", Some(text))?,
    };
    Ok((
        parse_device(&row.device_id)?,
        DeviceInfo {
            name: row.name,
            class: row.class,
            speed_limit_kmh: row.speed_limit_kmh,
            tags,
            updated_ms: row.updated_at.map_or(0, |t| t.0),
        },
    ))
}

impl ScyllaStore {
    pub(super) async fn write_credentials(
        &self,
        credentials: &[StoredCredential],
    ) -> Result<(), StoreError> {
        // Bulk provisioning: bounded concurrency, one statement per row (no
        // multi-partition batch).
        let docs: Vec<(String, String)> = credentials
            .iter()
            .map(|c| (c.principal.key(), to_json(c)))
            .collect();
        // Futures made up front, as in write_batch: no closure lives across
        // the await.
        let st = &self.inner.statements.insert_credential;
        let writes: Vec<_> = docs
            .iter()
            .map(|(key, doc)| {
                let bind = Bind {
                    principal: Some(key),
                    doc: Some(doc),
                    ..Bind::default()
                };
                self.run(st, bind)
            })
            .collect();
        stream::iter(writes)
            .buffer_unordered(self.inner.settings.max_inflight)
            .try_for_each(|_| async { Ok(()) })
            .await
    }

    pub(super) async fn read_credential(
        &self,
        principal: &Principal,
    ) -> Result<Option<StoredCredential>, StoreError> {
        let key = principal.key();
        let bind = Bind {
            principal: Some(&key),
            ..Bind::default()
        };
        let rows: Vec<DocRow> = self
            .rows(&self.inner.statements.select_credential, bind)
            .await?;
        rows.into_iter()
            .next()
            .map(|row| from_json("credential", row.doc.as_deref()))
            .transpose()
    }

    pub(super) async fn remove_credential(
        &self,
        principal: &Principal,
    ) -> Result<bool, StoreError> {
        let existed = self.read_credential(principal).await?.is_some();
        let key = principal.key();
        let bind = Bind {
            principal: Some(&key),
            ..Bind::default()
        };
        self.run(&self.inner.statements.delete_credential, bind)
            .await?;
        Ok(existed)
    }

    pub(super) async fn write_token(&self, token: &StoredToken) -> Result<(), StoreError> {
        let doc = to_json(token);
        let bind = Bind {
            token_id: Some(&token.id),
            doc: Some(&doc),
            ..Bind::default()
        };
        self.run(&self.inner.statements.insert_token, bind).await?;
        Ok(())
    }

    pub(super) async fn read_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let rows: Vec<DocRow> = self
            .rows(&self.inner.statements.select_tokens, Bind::default())
            .await?;
        rows.into_iter()
            .map(|row| from_json("token", row.doc.as_deref()))
            .collect()
    }

    pub(super) async fn write_webhook(&self, hook: &StoredWebhook) -> Result<(), StoreError> {
        let doc = to_json(hook);
        let bind = Bind {
            webhook_id: Some(&hook.id),
            doc: Some(&doc),
            ..Bind::default()
        };
        self.run(&self.inner.statements.insert_webhook, bind)
            .await?;
        Ok(())
    }

    pub(super) async fn read_webhooks(&self) -> Result<Vec<StoredWebhook>, StoreError> {
        let rows: Vec<DocRow> = self
            .rows(&self.inner.statements.select_webhooks, Bind::default())
            .await?;
        rows.into_iter()
            .map(|row| from_json("webhook", row.doc.as_deref()))
            .collect()
    }

    pub(super) async fn remove_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.read_webhooks().await?.iter().any(|h| h.id == id);
        let bind = Bind {
            webhook_id: Some(id),
            ..Bind::default()
        };
        self.run(&self.inner.statements.delete_webhook, bind)
            .await?;
        Ok(existed)
    }

    pub(super) async fn remove_token(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.read_tokens().await?.iter().any(|t| t.id == id);
        let bind = Bind {
            token_id: Some(id),
            ..Bind::default()
        };
        self.run(&self.inner.statements.delete_token, bind).await?;
        Ok(existed)
    }
}
