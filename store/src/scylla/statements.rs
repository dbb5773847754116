//! The CQL fleetd runs, prepared once per session.
//!
//! One prepared statement per write kind and per read. Every statement names
//! exactly one partition (all of its partition key columns are bound), so the
//! driver's token-aware load balancing sends it straight to a replica; only
//! `all_latest` scans a table, paged. Writes are marked idempotent: their
//! keys are device + device time, so executing one twice stores the same
//! thing, which is what lets the driver and fleetd retry them.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::values::{ALERT_COLUMNS, DEVICE_COLUMNS, GEOFENCE_COLUMNS, POSITION_COLUMNS};
use crate::StoreError;

/// A prepared statement and the name its metrics and errors carry.
#[derive(Debug, Clone)]
pub(crate) struct Stmt {
    pub(crate) name: &'static str,
    pub(crate) prepared: PreparedStatement,
}

/// Every statement of the backend.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) insert_position: Stmt,
    pub(crate) insert_position_day: Stmt,
    pub(crate) insert_latest: Stmt,
    pub(crate) insert_cell: Stmt,
    pub(crate) delete_cell: Stmt,
    pub(crate) select_latest: Stmt,
    pub(crate) select_all_latest: Stmt,
    pub(crate) select_days: Stmt,
    pub(crate) select_history: Stmt,
    pub(crate) select_cell: Stmt,
    pub(crate) insert_state: Stmt,
    pub(crate) select_state: Stmt,
    pub(crate) select_all_states: Stmt,
    pub(crate) insert_trip: Stmt,
    pub(crate) select_trips: Stmt,
    pub(crate) select_trip: Stmt,
    pub(crate) insert_alert_day: Stmt,
    pub(crate) insert_alert_device: Stmt,
    pub(crate) select_alerts_day: Stmt,
    pub(crate) select_alerts_device: Stmt,
    pub(crate) insert_device: Stmt,
    pub(crate) delete_device: Stmt,
    pub(crate) select_device: Stmt,
    pub(crate) select_all_devices: Stmt,
    pub(crate) insert_geofence: Stmt,
    pub(crate) select_geofence: Stmt,
    pub(crate) select_all_geofences: Stmt,
    pub(crate) delete_geofence: Stmt,
    pub(crate) delete_fence_members: Stmt,
    pub(crate) insert_member: Stmt,
    pub(crate) delete_member: Stmt,
    pub(crate) select_members: Stmt,
    pub(crate) insert_credential: Stmt,
    pub(crate) select_credential: Stmt,
    pub(crate) delete_credential: Stmt,
    pub(crate) insert_token: Stmt,
    pub(crate) select_tokens: Stmt,
    pub(crate) delete_token: Stmt,
    pub(crate) insert_webhook: Stmt,
    pub(crate) select_webhooks: Stmt,
    pub(crate) delete_webhook: Stmt,
    pub(crate) ready: Stmt,
}

/// Named bind markers for every position column, in [`POSITION_COLUMNS`]
/// order.
fn position_markers() -> String {
    POSITION_COLUMNS
        .split(',')
        .map(|c| format!(":{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The CQL text of every statement for keyspace `ks`, by name; the
/// contract tests check these against the schema file.
pub fn cql(ks: &str) -> Vec<(&'static str, String)> {
    let cols = POSITION_COLUMNS;
    let marks = position_markers();
    vec![
        (
            "insert_position",
            format!("INSERT INTO {ks}.positions (day, {cols}) VALUES (:day, {marks})"),
        ),
        (
            "insert_position_day",
            format!("INSERT INTO {ks}.position_days (device_id, day) VALUES (:device_id, :day)"),
        ),
        (
            "insert_latest",
            format!(
                "INSERT INTO {ks}.latest_position ({cols}) VALUES ({marks}) \
                 USING TIMESTAMP :write_time"
            ),
        ),
        (
            "insert_cell",
            format!(
                "INSERT INTO {ks}.devices_by_cell (cell, minute, {cols}) \
                 VALUES (:cell, :minute, {marks}) USING TIMESTAMP :write_time"
            ),
        ),
        (
            "delete_cell",
            format!(
                "DELETE FROM {ks}.devices_by_cell USING TIMESTAMP :write_time \
                 WHERE cell = :cell AND minute = :minute AND device_id = :device_id"
            ),
        ),
        (
            "select_latest",
            format!("SELECT {cols} FROM {ks}.latest_position WHERE device_id = :device_id"),
        ),
        (
            "select_all_latest",
            format!("SELECT {cols} FROM {ks}.latest_position"),
        ),
        (
            "select_days",
            format!(
                "SELECT day FROM {ks}.position_days WHERE device_id = :device_id \
                 AND day >= :from_day AND day <= :to_day"
            ),
        ),
        (
            "select_history",
            format!(
                "SELECT {cols} FROM {ks}.positions WHERE device_id = :device_id AND day = :day \
                 AND ts >= :from_ts AND ts <= :to_ts ORDER BY ts ASC LIMIT :row_limit"
            ),
        ),
        (
            "select_cell",
            format!(
                "SELECT {cols} FROM {ks}.devices_by_cell WHERE cell = :cell AND minute = :minute"
            ),
        ),
        (
            "insert_state",
            format!(
                "INSERT INTO {ks}.vehicle_state (device_id, ts, state) \
                 VALUES (:device_id, :ts, :state)"
            ),
        ),
        (
            "select_state",
            format!("SELECT device_id, state FROM {ks}.vehicle_state WHERE device_id = :device_id"),
        ),
        (
            "select_all_states",
            format!("SELECT device_id, state FROM {ks}.vehicle_state"),
        ),
        (
            "insert_trip",
            format!(
                "INSERT INTO {ks}.trips (device_id, start_ts, trip) \
                 VALUES (:device_id, :start_ts, :trip)"
            ),
        ),
        (
            "select_trips",
            format!(
                "SELECT trip FROM {ks}.trips WHERE device_id = :device_id \
                 AND start_ts >= :from_ts AND start_ts <= :to_ts \
                 ORDER BY start_ts DESC LIMIT :row_limit"
            ),
        ),
        (
            "select_trip",
            format!(
                "SELECT trip FROM {ks}.trips WHERE device_id = :device_id \
                 AND start_ts = :start_ts"
            ),
        ),
        (
            "insert_alert_day",
            format!(
                "INSERT INTO {ks}.alerts_by_day (day, shard, id, device_id, kind, geofence_id, alert) \
                 VALUES (:day, :shard, :id, :device_id, :kind, :geofence_id, :alert)"
            ),
        ),
        (
            "insert_alert_device",
            format!(
                "INSERT INTO {ks}.alerts_by_device (device_id, day, id, kind, geofence_id, alert) \
                 VALUES (:device_id, :day, :id, :kind, :geofence_id, :alert)"
            ),
        ),
        (
            "select_alerts_day",
            format!(
                "SELECT {ALERT_COLUMNS} FROM {ks}.alerts_by_day WHERE day = :day AND shard = :shard \
                 AND id >= :from_id AND id <= :to_id ORDER BY id DESC LIMIT :row_limit"
            ),
        ),
        (
            "select_alerts_device",
            format!(
                "SELECT {ALERT_COLUMNS} FROM {ks}.alerts_by_device WHERE device_id = :device_id \
                 AND day = :day AND id >= :from_id AND id <= :to_id ORDER BY id DESC LIMIT :row_limit"
            ),
        ),
        (
            "insert_device",
            format!(
                "INSERT INTO {ks}.devices ({DEVICE_COLUMNS}) \
                 VALUES (:device_id, :name, :class, :speed_limit_kmh, :tags, :updated_at)"
            ),
        ),
        (
            "delete_device",
            format!("DELETE FROM {ks}.devices WHERE device_id = :device_id"),
        ),
        (
            "select_device",
            format!("SELECT {DEVICE_COLUMNS} FROM {ks}.devices WHERE device_id = :device_id"),
        ),
        (
            "select_all_devices",
            format!("SELECT {DEVICE_COLUMNS} FROM {ks}.devices"),
        ),
        (
            "insert_geofence",
            format!(
                "INSERT INTO {ks}.geofences ({GEOFENCE_COLUMNS}) \
                 VALUES (:geofence_id, :geojson, :updated_at)"
            ),
        ),
        (
            "select_geofence",
            format!(
                "SELECT {GEOFENCE_COLUMNS} FROM {ks}.geofences WHERE geofence_id = :geofence_id"
            ),
        ),
        (
            "select_all_geofences",
            format!("SELECT {GEOFENCE_COLUMNS} FROM {ks}.geofences"),
        ),
        (
            "delete_geofence",
            format!("DELETE FROM {ks}.geofences WHERE geofence_id = :geofence_id"),
        ),
        (
            "delete_fence_members",
            format!("DELETE FROM {ks}.geofence_members WHERE geofence_id = :geofence_id"),
        ),
        (
            "insert_member",
            format!(
                "INSERT INTO {ks}.geofence_members (geofence_id, device_id, entered_at) \
                 VALUES (:geofence_id, :device_id, :entered_at) USING TIMESTAMP :write_time"
            ),
        ),
        (
            "delete_member",
            format!(
                "DELETE FROM {ks}.geofence_members USING TIMESTAMP :write_time \
                 WHERE geofence_id = :geofence_id AND device_id = :device_id"
            ),
        ),
        (
            "select_members",
            format!(
                "SELECT device_id, entered_at FROM {ks}.geofence_members \
                 WHERE geofence_id = :geofence_id AND device_id > :after_device \
                 LIMIT :row_limit"
            ),
        ),
        (
            "insert_credential",
            format!("INSERT INTO {ks}.credentials (principal, doc) VALUES (:principal, :doc)"),
        ),
        (
            "select_credential",
            format!("SELECT doc FROM {ks}.credentials WHERE principal = :principal"),
        ),
        (
            "delete_credential",
            format!("DELETE FROM {ks}.credentials WHERE principal = :principal"),
        ),
        (
            "insert_token",
            format!(
                "INSERT INTO {ks}.api_tokens (bucket, token_id, doc) VALUES (:bucket, :token_id, :doc)"
            ),
        ),
        (
            "select_tokens",
            format!("SELECT doc FROM {ks}.api_tokens WHERE bucket = :bucket"),
        ),
        (
            "delete_token",
            format!("DELETE FROM {ks}.api_tokens WHERE bucket = :bucket AND token_id = :token_id"),
        ),
        (
            "insert_webhook",
            format!(
                "INSERT INTO {ks}.webhooks (bucket, webhook_id, doc) VALUES (:bucket, :webhook_id, :doc)"
            ),
        ),
        (
            "select_webhooks",
            format!("SELECT doc FROM {ks}.webhooks WHERE bucket = :bucket"),
        ),
        (
            "delete_webhook",
            format!(
                "DELETE FROM {ks}.webhooks WHERE bucket = :bucket AND webhook_id = :webhook_id"
            ),
        ),
        (
            // One partition read of a key no device can have (`#` is not a
            // device id character): proves the table exists and enough
            // replicas answer, without scanning.
            "ready",
            format!("SELECT device_id FROM {ks}.latest_position WHERE device_id = '#ready'"),
        ),
    ]
}

/// Statements whose repetition is harmless.
const IDEMPOTENT: &[&str] = &[
    "insert_position",
    "insert_position_day",
    "insert_latest",
    "insert_cell",
    "delete_cell",
    "select_latest",
    "select_all_latest",
    "select_days",
    "select_history",
    "select_cell",
    "insert_state",
    "select_state",
    "select_all_states",
    "insert_trip",
    "select_trips",
    "select_trip",
    "insert_alert_day",
    "insert_alert_device",
    "select_alerts_day",
    "select_alerts_device",
    "insert_device",
    "delete_device",
    "select_device",
    "select_all_devices",
    "insert_geofence",
    "select_geofence",
    "select_all_geofences",
    "delete_geofence",
    "delete_fence_members",
    "insert_member",
    "delete_member",
    "select_members",
    "insert_credential",
    "select_credential",
    "delete_credential",
    "insert_token",
    "select_tokens",
    "delete_token",
    "insert_webhook",
    "select_webhooks",
    "delete_webhook",
    "ready",
];

impl Statements {
    /// Prepares every statement; a failure names the statement.
    pub(crate) async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let mut prepared = std::collections::HashMap::new();
        for (name, text) in cql(ks) {
            let mut statement = session.prepare(text).await.map_err(|err| {
                StoreError::Unavailable(format!("cannot prepare scylla statement {name}: {err}"))
            })?;
            statement.set_is_idempotent(IDEMPOTENT.contains(&name));
            prepared.insert(
                name,
                Stmt {
                    name,
                    prepared: statement,
                },
            );
        }
        let mut take = |name: &'static str| {
            prepared
                .remove(name)
                .ok_or_else(|| StoreError::Scylla(format!("statement {name} was not prepared")))
        };
        Ok(Self {
            insert_position: take("insert_position")?,
            insert_position_day: take("insert_position_day")?,
            insert_latest: take("insert_latest")?,
            insert_cell: take("insert_cell")?,
            delete_cell: take("delete_cell")?,
            select_latest: take("select_latest")?,
            select_all_latest: take("select_all_latest")?,
            select_days: take("select_days")?,
            select_history: take("select_history")?,
            select_cell: take("select_cell")?,
            insert_state: take("insert_state")?,
            select_state: take("select_state")?,
            select_all_states: take("select_all_states")?,
            insert_trip: take("insert_trip")?,
            select_trips: take("select_trips")?,
            select_trip: take("select_trip")?,
            insert_alert_day: take("insert_alert_day")?,
            insert_alert_device: take("insert_alert_device")?,
            select_alerts_day: take("select_alerts_day")?,
            select_alerts_device: take("select_alerts_device")?,
            insert_device: take("insert_device")?,
            delete_device: take("delete_device")?,
            select_device: take("select_device")?,
            select_all_devices: take("select_all_devices")?,
            insert_geofence: take("insert_geofence")?,
            select_geofence: take("select_geofence")?,
            select_all_geofences: take("select_all_geofences")?,
            delete_geofence: take("delete_geofence")?,
            delete_fence_members: take("delete_fence_members")?,
            insert_member: take("insert_member")?,
            delete_member: take("delete_member")?,
            select_members: take("select_members")?,
            insert_credential: take("insert_credential")?,
            select_credential: take("select_credential")?,
            delete_credential: take("delete_credential")?,
            insert_token: take("insert_token")?,
            select_tokens: take("select_tokens")?,
            delete_token: take("delete_token")?,
            insert_webhook: take("insert_webhook")?,
            select_webhooks: take("select_webhooks")?,
            delete_webhook: take("delete_webhook")?,
            ready: take("ready")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fleetd retries every statement (`exec::with_retry`) and rewrites a
    /// failed batch whole, so each one must be idempotent and marked so for
    /// the driver; a new statement missing from the list fails here.
    #[test]
    fn every_statement_is_marked_idempotent() {
        let names: Vec<&str> = cql("ks").into_iter().map(|(name, _)| name).collect();
        for name in &names {
            assert!(IDEMPOTENT.contains(name), "{name} is not marked idempotent");
        }
        for name in IDEMPOTENT {
            assert!(names.contains(name), "{name} is no statement");
        }
    }
}
