//! Bound values and result rows: the only place that maps
//! [`EnrichedPosition`] to and from CQL columns.
//!
//! Statements use named bind markers (`:device_id`, `:write_time`, ...), and
//! [`Bind`] serializes by the names the server reports for a prepared
//! statement, so one value type serves every statement and a column added
//! to a statement without a value here fails loudly instead of shifting.

use fleetd_schemas::{
    Alert, DeviceId, DeviceInfo, EnrichedPosition, H3Cells, PositionReport, RejectReason,
};
use scylla::DeserializeRow;
use scylla::serialize::SerializationError;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::RowWriter;
use scylla::value::CqlTimestamp;

use crate::{StoreError, StoredGeofence};

/// The position columns every SELECT returns, in [`PositionRow`]'s order.
pub(crate) const POSITION_COLUMNS: &str = "device_id, ts, lat, lon, accuracy_m, altitude_m, \
     speed_mps, heading_deg, battery_pct, seq, h3_area, h3_detail, speed_derived, \
     heading_derived, received_at, flag";

/// Values for one execution of a prepared statement, looked up by bind
/// marker name. Fields a statement does not name are ignored.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Bind<'a> {
    /// Supplies `device_id` and every position column.
    pub(crate) position: Option<&'a EnrichedPosition>,
    /// `device_id` for statements without a position (reads, deletes).
    pub(crate) device_id: Option<&'a str>,
    /// `day`: days since the epoch (history partition).
    pub(crate) day: Option<i32>,
    /// `from_day`, `to_day`: a range of history days.
    pub(crate) from_day: Option<i32>,
    /// See `from_day`.
    pub(crate) to_day: Option<i32>,
    /// `cell`: a res-7 H3 cell (area partition).
    pub(crate) cell: Option<i64>,
    /// `minute`: minutes since the epoch, server clock (area partition).
    pub(crate) minute: Option<i32>,
    /// `write_time`: the `USING TIMESTAMP` value, microseconds.
    pub(crate) write_time: Option<i64>,
    /// `from_ts`, `to_ts`: an inclusive history time range, Unix ms.
    pub(crate) from_ts: Option<i64>,
    /// See `from_ts`.
    pub(crate) to_ts: Option<i64>,
    /// `row_limit`: a LIMIT.
    pub(crate) row_limit: Option<i32>,
    /// `ts` for rows that are not positions (vehicle state), Unix ms.
    pub(crate) ts: Option<i64>,
    /// `start_ts`: a trip's start, Unix ms.
    pub(crate) start_ts: Option<i64>,
    /// `state`, `trip` or `alert`: a JSON document column.
    pub(crate) json: Option<&'a str>,
    /// Supplies `id`, `kind`, `geofence_id` (and `device_id`) of alert rows.
    pub(crate) alert: Option<&'a Alert>,
    /// `shard`: the alert partition shard.
    pub(crate) shard: Option<i32>,
    /// `from_id`, `to_id`: an inclusive alert id range.
    pub(crate) from_id: Option<&'a str>,
    /// See `from_id`.
    pub(crate) to_id: Option<&'a str>,
    /// Supplies the registry columns (`name`, `class`, `speed_limit_kmh`,
    /// `updated_at`); `tags` comes from `json`.
    pub(crate) device: Option<&'a DeviceInfo>,
    /// Supplies `geofence_id`, `geojson` and `updated_at` of a fence row.
    pub(crate) geofence: Option<&'a StoredGeofence>,
    /// `geofence_id` for statements about one fence (deletes, member reads).
    pub(crate) fence_id: Option<&'a str>,
    /// `entered_at`: when a device entered a fence, Unix ms.
    pub(crate) entered_at: Option<i64>,
    /// `after_device`: member pages start after this device id.
    pub(crate) after_device: Option<&'a str>,
    /// `principal`: a credential's key.
    pub(crate) principal: Option<&'a str>,
    /// `token_id`: an API token's id (its partition `bucket` is always 0).
    pub(crate) token_id: Option<&'a str>,
    /// `webhook_id`: a webhook's id (its partition `bucket` is always 0).
    pub(crate) webhook_id: Option<&'a str>,
    /// `doc`: a credential's or token's JSON.
    pub(crate) doc: Option<&'a str>,
}

/// A bind marker [`Bind`] has no value for.
#[derive(Debug, thiserror::Error)]
#[error("no value for bind marker {0:?}")]
struct MissingValue(String);

impl SerializeRow for Bind<'_> {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> Result<(), SerializationError> {
        for spec in ctx.columns() {
            let (name, typ) = (spec.name(), spec.typ());
            let cell = writer.make_cell_writer();
            let missing = || SerializationError::new(MissingValue(name.to_owned()));
            let p = self.position.map(|p| (&p.report, p));
            // Each arm serializes one value; `?` on the Option reports a
            // marker whose value this Bind was not given.
            match name {
                "device_id" => {
                    let id = match (self.device_id, p, self.alert) {
                        (Some(id), _, _) => id,
                        (None, Some((r, _)), _) => r.device_id.as_str(),
                        (None, None, Some(a)) => a.device_id.as_str(),
                        (None, None, None) => return Err(missing()),
                    };
                    id.serialize(typ, cell)?
                }
                "day" => self.day.ok_or_else(missing)?.serialize(typ, cell)?,
                "from_day" => self.from_day.ok_or_else(missing)?.serialize(typ, cell)?,
                "to_day" => self.to_day.ok_or_else(missing)?.serialize(typ, cell)?,
                "cell" => self.cell.ok_or_else(missing)?.serialize(typ, cell)?,
                "minute" => self.minute.ok_or_else(missing)?.serialize(typ, cell)?,
                "write_time" => self.write_time.ok_or_else(missing)?.serialize(typ, cell)?,
                "from_ts" => {
                    CqlTimestamp(self.from_ts.ok_or_else(missing)?).serialize(typ, cell)?
                }
                "to_ts" => CqlTimestamp(self.to_ts.ok_or_else(missing)?).serialize(typ, cell)?,
                "row_limit" => self.row_limit.ok_or_else(missing)?.serialize(typ, cell)?,
                "ts" if self.ts.is_some() => {
                    CqlTimestamp(self.ts.ok_or_else(missing)?).serialize(typ, cell)?
                }
                "start_ts" => {
                    CqlTimestamp(self.start_ts.ok_or_else(missing)?).serialize(typ, cell)?
                }
                "state" | "trip" | "alert" | "tags" => {
                    self.json.ok_or_else(missing)?.serialize(typ, cell)?
                }
                "shard" => self.shard.ok_or_else(missing)?.serialize(typ, cell)?,
                "principal" => self.principal.ok_or_else(missing)?.serialize(typ, cell)?,
                "token_id" => self.token_id.ok_or_else(missing)?.serialize(typ, cell)?,
                "webhook_id" => self.webhook_id.ok_or_else(missing)?.serialize(typ, cell)?,
                "doc" => self.doc.ok_or_else(missing)?.serialize(typ, cell)?,
                // Every token lives in one small partition.
                "bucket" => 0i32.serialize(typ, cell)?,
                "from_id" => self.from_id.ok_or_else(missing)?.serialize(typ, cell)?,
                "to_id" => self.to_id.ok_or_else(missing)?.serialize(typ, cell)?,
                "id" => self
                    .alert
                    .ok_or_else(missing)?
                    .id
                    .as_str()
                    .serialize(typ, cell)?,
                "kind" => self
                    .alert
                    .ok_or_else(missing)?
                    .kind
                    .code()
                    .serialize(typ, cell)?,
                "geofence_id" => match (self.fence_id, self.geofence, self.alert) {
                    (Some(id), _, _) => Some(id),
                    (None, Some(g), _) => Some(g.id.as_str()),
                    (None, None, Some(a)) => a.geofence_id.as_ref().map(|g| g.as_str()),
                    (None, None, None) => return Err(missing()),
                }
                .serialize(typ, cell)?,
                "geojson" => self
                    .geofence
                    .ok_or_else(missing)?
                    .geojson
                    .as_str()
                    .serialize(typ, cell)?,
                "entered_at" => {
                    CqlTimestamp(self.entered_at.ok_or_else(missing)?).serialize(typ, cell)?
                }
                "after_device" => self
                    .after_device
                    .ok_or_else(missing)?
                    .serialize(typ, cell)?,
                "name" => self
                    .device
                    .ok_or_else(missing)?
                    .name
                    .as_deref()
                    .serialize(typ, cell)?,
                "class" => self
                    .device
                    .ok_or_else(missing)?
                    .class
                    .as_deref()
                    .serialize(typ, cell)?,
                "speed_limit_kmh" => self
                    .device
                    .ok_or_else(missing)?
                    .speed_limit_kmh
                    .serialize(typ, cell)?,
                "updated_at" => {
                    let ms = match (self.device, self.geofence) {
                        (Some(d), _) => d.updated_ms,
                        (None, Some(g)) => g.updated_ms,
                        (None, None) => return Err(missing()),
                    };
                    CqlTimestamp(ms).serialize(typ, cell)?
                }
                column => {
                    let (r, p) = p.ok_or_else(missing)?;
                    match column {
                        "ts" => CqlTimestamp(r.ts_ms).serialize(typ, cell)?,
                        "lat" => r.lat.serialize(typ, cell)?,
                        "lon" => r.lon.serialize(typ, cell)?,
                        "accuracy_m" => r.accuracy_m.serialize(typ, cell)?,
                        "altitude_m" => r.altitude_m.serialize(typ, cell)?,
                        "speed_mps" => r.speed_mps.serialize(typ, cell)?,
                        "heading_deg" => r.heading_deg.serialize(typ, cell)?,
                        "battery_pct" => r.battery_pct.serialize(typ, cell)?,
                        // CQL has no unsigned integers: u64 values are
                        // stored bit for bit in a bigint and cast back.
                        "seq" => r.seq.map(|s| s as i64).serialize(typ, cell)?,
                        "h3_area" => (p.h3.area as i64).serialize(typ, cell)?,
                        "h3_detail" => (p.h3.detail as i64).serialize(typ, cell)?,
                        "speed_derived" => p.speed_derived.serialize(typ, cell)?,
                        "heading_derived" => p.heading_derived.serialize(typ, cell)?,
                        "received_at" => CqlTimestamp(r.received_ms).serialize(typ, cell)?,
                        "flag" => p.flag.map(|f| f.code()).serialize(typ, cell)?,
                        _ => return Err(missing()),
                    }
                }
            };
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// One row of [`POSITION_COLUMNS`], as any position table returns it.
#[derive(Debug, DeserializeRow)]
pub(crate) struct PositionRow {
    device_id: String,
    ts: CqlTimestamp,
    lat: f64,
    lon: f64,
    accuracy_m: Option<f32>,
    altitude_m: Option<f32>,
    speed_mps: Option<f32>,
    heading_deg: Option<f32>,
    battery_pct: Option<f32>,
    seq: Option<i64>,
    h3_area: Option<i64>,
    h3_detail: Option<i64>,
    speed_derived: Option<bool>,
    heading_derived: Option<bool>,
    received_at: Option<CqlTimestamp>,
    flag: Option<String>,
}

impl PositionRow {
    /// The domain position; a row whose device id is no longer valid is
    /// corrupt rather than skipped (as in the embedded backend).
    pub(crate) fn into_position(self) -> Result<EnrichedPosition, StoreError> {
        let device_id = DeviceId::parse(&self.device_id)
            .map_err(|err| StoreError::Corrupt(format!("position row: {err}")))?;
        Ok(EnrichedPosition {
            report: PositionReport {
                device_id,
                ts_ms: self.ts.0,
                lat: self.lat,
                lon: self.lon,
                accuracy_m: self.accuracy_m,
                altitude_m: self.altitude_m,
                speed_mps: self.speed_mps,
                heading_deg: self.heading_deg,
                battery_pct: self.battery_pct,
                seq: self.seq.map(|s| s as u64),
                received_ms: self.received_at.map_or(0, |t| t.0),
            },
            h3: H3Cells {
                area: self.h3_area.map_or(0, |c| c as u64),
                detail: self.h3_detail.map_or(0, |c| c as u64),
            },
            speed_derived: self.speed_derived.unwrap_or(false),
            heading_derived: self.heading_derived.unwrap_or(false),
            flag: self.flag.as_deref().and_then(RejectReason::from_code),
        })
    }
}

/// The `days` column of `position_days`.
#[derive(Debug, DeserializeRow)]
pub(crate) struct DayRow {
    pub(crate) day: i32,
}

/// A `vehicle_state` row.
#[derive(Debug, DeserializeRow)]
pub(crate) struct StateRow {
    pub(crate) device_id: String,
    pub(crate) state: Option<String>,
}

/// A `trips` row.
#[derive(Debug, DeserializeRow)]
pub(crate) struct TripRow {
    pub(crate) trip: Option<String>,
}

/// An `alerts_by_day` or `alerts_by_device` row.
#[derive(Debug, DeserializeRow)]
pub(crate) struct AlertRow {
    pub(crate) id: String,
    pub(crate) alert: Option<String>,
}

/// A `devices` row.
#[derive(Debug, DeserializeRow)]
pub(crate) struct DeviceRow {
    pub(crate) device_id: String,
    pub(crate) name: Option<String>,
    pub(crate) class: Option<String>,
    pub(crate) speed_limit_kmh: Option<f64>,
    pub(crate) tags: Option<String>,
    pub(crate) updated_at: Option<CqlTimestamp>,
}

/// The columns [`DeviceRow`] reads, in order.
pub(crate) const DEVICE_COLUMNS: &str = "device_id, name, class, speed_limit_kmh, tags, updated_at";
/// A `geofences` row.
#[derive(Debug, DeserializeRow)]
pub(crate) struct GeofenceRow {
    pub(crate) geofence_id: String,
    pub(crate) geojson: Option<String>,
    pub(crate) updated_at: Option<CqlTimestamp>,
}

/// A `credentials`, `api_tokens` or `webhooks` row: the JSON document.
#[derive(Debug, DeserializeRow)]
pub(crate) struct DocRow {
    pub(crate) doc: Option<String>,
}

/// The columns [`GeofenceRow`] reads, in order.
pub(crate) const GEOFENCE_COLUMNS: &str = "geofence_id, geojson, updated_at";

/// A `geofence_members` row.
#[derive(Debug, DeserializeRow)]
pub(crate) struct MemberRow {
    pub(crate) device_id: String,
    pub(crate) entered_at: Option<CqlTimestamp>,
}

/// The columns [`AlertRow`] reads, in order.
pub(crate) const ALERT_COLUMNS: &str = "id, alert";
