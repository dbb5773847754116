//! The embedded backend's small tables: vehicle state, trips, alerts, the
//! device registry, geofences and their members.
//!
//! | keyspace           | key                               | value          |
//! |--------------------|-----------------------------------|----------------|
//! | `state`            | `device_id`                       | `VehicleState` |
//! | `trips`            | `device_id 0x00 ts(start)`        | `Trip`         |
//! | `alerts`           | `alert_id` (sorts by time)        | `Alert`        |
//! | `alerts_by_device` | `device_id 0x00 alert_id`         | empty          |
//! | `devices`          | `device_id`                       | `DeviceInfo`   |
//! | `geofences`        | `geofence_id`                     | `GeofenceRow`  |
//! | `fence_members`    | `geofence_id 0x00 device_id`      | entered ms (i64 BE) |
//! | `credentials`      | `device:{id}` / `user:{name}`     | `StoredCredential` |
//! | `tokens`           | token id                          | `StoredToken`  |
//! | `webhooks`         | webhook id                        | `StoredWebhook` |
//!
//! Values are JSON: these rows are few and small next to history, and JSON
//! with serde defaults keeps old data readable when fields are added. The
//! exception is `state`, rewritten for every device in every batch: it is a
//! `StoredVehicleState` protobuf (~240 bytes against ~660 of JSON for a
//! vehicle on a trip, and cheaper to encode); states that earlier versions
//! wrote as JSON still read.

use std::borrow::Cow;

use fjall::Keyspace;
use fleetd_schemas::storage::StoredVehicleState;
use fleetd_schemas::{
    Alert, DeviceId, DeviceInfo, GeofenceId, Principal, StoredCredential, StoredToken,
    StoredWebhook, Trip, VehicleState,
};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::seal::Sealer;
use crate::{
    AlertPage, AlertQuery, FenceMember, MemberPage, StoreError, StoredGeofence, TripPage,
    TripQuery, cursor, keys,
};

/// Rows an alert query examines at most before it returns what it has with
/// a cursor to continue: a filter that matches rarely must not turn one
/// request into a scan of every alert ever raised.
pub const ALERT_SCAN_BUDGET: usize = 100_000;

/// The names of the embedded store's keyspaces, which are also the
/// associated data of their sealed values (see [`crate::seal`]).
pub(crate) mod table {
    pub(crate) const LATEST: &str = "latest";
    pub(crate) const HISTORY: &str = "history";
    pub(crate) const STATE: &str = "state";
    pub(crate) const TRIPS: &str = "trips";
    pub(crate) const ALERTS: &str = "alerts";
    pub(crate) const ALERTS_BY_DEVICE: &str = "alerts_by_device";
    pub(crate) const DEVICES: &str = "devices";
    pub(crate) const CREDENTIALS: &str = "credentials";
    pub(crate) const TOKENS: &str = "tokens";
    pub(crate) const GEOFENCES: &str = "geofences";
    pub(crate) const FENCE_MEMBERS: &str = "fence_members";
    pub(crate) const WEBHOOKS: &str = "webhooks";
    /// Every keyspace, in the order `fleetd rekey` copies them.
    pub(crate) const ALL: [&str; 12] = [
        LATEST,
        HISTORY,
        STATE,
        TRIPS,
        ALERTS,
        ALERTS_BY_DEVICE,
        DEVICES,
        CREDENTIALS,
        TOKENS,
        GEOFENCES,
        FENCE_MEMBERS,
        WEBHOOKS,
    ];
    /// Keyspaces whose values are empty (only their keys are read): not
    /// sealed.
    pub(crate) fn is_keys_only(name: &str) -> bool {
        name == ALERTS_BY_DEVICE
    }
}

/// The small tables' keyspaces.
pub(crate) struct Tables {
    pub(crate) state: Keyspace,
    pub(crate) trips: Keyspace,
    pub(crate) alerts: Keyspace,
    pub(crate) alerts_by_device: Keyspace,
    pub(crate) devices: Keyspace,
    pub(crate) geofences: Keyspace,
    pub(crate) fence_members: Keyspace,
    pub(crate) credentials: Keyspace,
    pub(crate) tokens: Keyspace,
    pub(crate) webhooks: Keyspace,
    /// Seals values on the way in and opens them on the way out.
    pub(crate) sealer: Sealer,
}

impl Tables {
    /// `plain` sealed for row `key` of keyspace `table`.
    pub(crate) fn seal(&self, table: &str, key: &[u8], plain: Vec<u8>) -> Vec<u8> {
        self.sealer.seal(table, key, plain)
    }

    /// The plain value of row `key` of keyspace `table`.
    pub(crate) fn open<'a>(
        &self,
        table: &str,
        key: &[u8],
        stored: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, StoreError> {
        self.sealer.open(table, key, stored)
    }
}

/// A `geofences` value.
#[derive(Serialize, Deserialize)]
pub(crate) struct GeofenceRow {
    pub(crate) geojson: String,
    pub(crate) updated_ms: i64,
}

/// Separates the fence id from the device id in `fence_members` keys; ids
/// never contain it, and it sorts below every id byte.
const MEMBER_SEPARATOR: u8 = 0x00;

/// `geofence_id 0x00 device_id`, or the fence's prefix with `device = None`.
pub(crate) fn member_key(fence: &GeofenceId, device: Option<&DeviceId>) -> Vec<u8> {
    let device = device.map_or("", |d| d.as_str());
    let mut key = Vec::with_capacity(fence.as_str().len() + 1 + device.len());
    key.extend_from_slice(fence.as_str().as_bytes());
    key.push(MEMBER_SEPARATOR);
    key.extend_from_slice(device.as_bytes());
    key
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs to a Vec cannot fail (no maps with
    // non-string keys, no I/O).
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt(format!("{what}: {err}")))
}

/// Encodes a vehicle state for the `state` keyspace.
pub(crate) fn encode_state(state: &VehicleState) -> Vec<u8> {
    StoredVehicleState::from(state).encode_to_vec()
}

/// Decodes a `state` value: protobuf, or JSON as written before. A
/// protobuf value never starts with `{` (that would be field 15 as a
/// group, which the message does not use).
pub(crate) fn decode_state(bytes: &[u8]) -> Result<VehicleState, StoreError> {
    if bytes.first() == Some(&b'{') {
        return decode("vehicle state", bytes);
    }
    let stored = StoredVehicleState::decode(bytes)
        .map_err(|err| StoreError::Corrupt(format!("vehicle state: {err}")))?;
    VehicleState::try_from(stored)
        .map_err(|err| StoreError::Corrupt(format!("vehicle state: {err}")))
}

fn device_from_key(key: &[u8]) -> Result<DeviceId, StoreError> {
    let s = std::str::from_utf8(key)
        .map_err(|_| StoreError::Corrupt("device key is not utf-8".into()))?;
    DeviceId::parse(s).map_err(|err| StoreError::Corrupt(format!("device key: {err}")))
}

/// A validated alert cursor: an alert id (`{ts:013}-{16 hex}`).
pub(crate) fn alert_cursor(cursor: &str) -> Result<String, StoreError> {
    let ok = cursor.len() == 30
        && cursor.as_bytes()[13] == b'-'
        && cursor[..13].bytes().all(|b| b.is_ascii_digit())
        && cursor[14..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(cursor.to_owned())
    } else {
        Err(StoreError::InvalidQuery(format!(
            "malformed alert cursor {cursor:?}"
        )))
    }
}

impl Tables {
    pub(crate) fn vehicle_state(
        &self,
        device: &DeviceId,
    ) -> Result<Option<VehicleState>, StoreError> {
        let key = device.as_str().as_bytes();
        match self.state.get(key)? {
            Some(v) => decode_state(&self.open(table::STATE, key, &v)?).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn all_vehicle_states(&self) -> Result<Vec<(DeviceId, VehicleState)>, StoreError> {
        self.state
            .iter()
            .map(|guard| {
                let (key, value) = guard.into_inner()?;
                let value = self.open(table::STATE, &key, &value)?;
                Ok((device_from_key(&key)?, decode_state(&value)?))
            })
            .collect()
    }

    pub(crate) fn trips(
        &self,
        device: &DeviceId,
        query: &TripQuery,
    ) -> Result<TripPage, StoreError> {
        let Some((from_ms, to_ms)) = query.page_range()? else {
            return Ok(TripPage::default());
        };
        let start = keys::device_ts_key(device, from_ms);
        let end = keys::device_ts_key(device, to_ms);
        let mut page = TripPage::default();
        for guard in self.trips.range(start..=end).rev() {
            let (key, value) = guard.into_inner()?;
            let trip: Trip = decode("trip", &self.open(table::TRIPS, &key, &value)?)?;
            if page.items.len() == query.limit {
                page.next_cursor = Some(cursor::encode(trip.start_ts_ms));
                break;
            }
            page.items.push(trip);
        }
        Ok(page)
    }

    pub(crate) fn trip(
        &self,
        device: &DeviceId,
        start_ts_ms: i64,
    ) -> Result<Option<Trip>, StoreError> {
        let key = keys::device_ts_key(device, start_ts_ms);
        match self.trips.get(&key)? {
            Some(v) => decode("trip", &self.open(table::TRIPS, &key, &v)?).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn alerts(&self, query: &AlertQuery) -> Result<AlertPage, StoreError> {
        let mut page = AlertPage::default();
        let Some((lo, hi)) = query.page_ids(query.since_ms)? else {
            return Ok(page);
        };
        let mut examined = 0usize;
        // Pushes a matching alert, or ends the page with a cursor at it.
        let mut take = |alert: Alert, page: &mut AlertPage| -> bool {
            examined += 1;
            if page.items.len() == query.limit || examined > ALERT_SCAN_BUDGET {
                page.next_cursor = Some(alert.id);
                return false;
            }
            if query.matches(&alert) {
                page.items.push(alert);
            }
            true
        };
        match &query.device {
            Some(device) => {
                let start = keys::device_alert_key(device, &lo);
                let end = keys::device_alert_key(device, &hi);
                for guard in self.alerts_by_device.range(start..=end).rev() {
                    let key = guard.key()?;
                    let id = &key[device.as_str().len() + 1..];
                    let Some(value) = self.alerts.get(id)? else {
                        continue;
                    };
                    let value = self.open(table::ALERTS, id, &value)?;
                    if !take(decode("alert", &value)?, &mut page) {
                        break;
                    }
                }
            }
            None => {
                for guard in self.alerts.range(lo.as_bytes()..=hi.as_bytes()).rev() {
                    let (key, value) = guard.into_inner()?;
                    let value = self.open(table::ALERTS, &key, &value)?;
                    if !take(decode("alert", &value)?, &mut page) {
                        break;
                    }
                }
            }
        }
        Ok(page)
    }

    pub(crate) fn device(&self, device: &DeviceId) -> Result<Option<DeviceInfo>, StoreError> {
        let key = device.as_str().as_bytes();
        match self.devices.get(key)? {
            Some(v) => decode("device", &self.open(table::DEVICES, key, &v)?).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn all_devices(&self) -> Result<Vec<(DeviceId, DeviceInfo)>, StoreError> {
        self.devices
            .iter()
            .map(|guard| {
                let (key, value) = guard.into_inner()?;
                let value = self.open(table::DEVICES, &key, &value)?;
                Ok((device_from_key(&key)?, decode("device", &value)?))
            })
            .collect()
    }

    pub(crate) fn geofence(&self, id: &GeofenceId) -> Result<Option<StoredGeofence>, StoreError> {
        let key = id.as_str().as_bytes();
        match self.geofences.get(key)? {
            Some(v) => {
                let row: GeofenceRow = decode("geofence", &self.open(table::GEOFENCES, key, &v)?)?;
                Ok(Some(StoredGeofence {
                    id: id.clone(),
                    geojson: row.geojson,
                    updated_ms: row.updated_ms,
                }))
            }
            None => Ok(None),
        }
    }

    pub(crate) fn all_geofences(&self) -> Result<Vec<StoredGeofence>, StoreError> {
        self.geofences
            .iter()
            .map(|guard| {
                let (key, value) = guard.into_inner()?;
                let id = std::str::from_utf8(&key)
                    .ok()
                    .and_then(|s| GeofenceId::parse(s).ok())
                    .ok_or_else(|| StoreError::Corrupt("geofence key is not a fence id".into()))?;
                let value = self.open(table::GEOFENCES, &key, &value)?;
                let row: GeofenceRow = decode("geofence", &value)?;
                Ok(StoredGeofence {
                    id,
                    geojson: row.geojson,
                    updated_ms: row.updated_ms,
                })
            })
            .collect()
    }

    /// Removes the fence and every member row in one atomic batch.
    pub(crate) fn delete_geofence(
        &self,
        db: &fjall::Database,
        id: &GeofenceId,
    ) -> Result<bool, StoreError> {
        let existed = self.geofences.contains_key(id.as_str())?;
        let mut batch = db.batch();
        batch.remove(&self.geofences, id.as_str());
        for guard in self.fence_members.prefix(member_key(id, None)) {
            batch.remove(&self.fence_members, guard.key()?);
        }
        batch.commit()?;
        Ok(existed)
    }

    pub(crate) fn geofence_members(
        &self,
        fence: &GeofenceId,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<MemberPage, StoreError> {
        crate::check_limit("member", limit)?;
        let prefix = member_key(fence, None);
        let mut page = MemberPage::default();
        let iter = match after {
            Some(d) => {
                // Strictly after the cursor's key; device ids are ASCII, so
                // `prefix 0xFF` is above every member key of this fence.
                let mut start = member_key(fence, Some(d));
                start.push(0);
                let mut end = prefix.clone();
                end.push(0xFF);
                self.fence_members.range(start..end)
            }
            None => self.fence_members.prefix(&prefix),
        };
        for guard in iter {
            let (key, value) = guard.into_inner()?;
            let device = device_from_key(&key[prefix.len()..])?;
            if page.items.len() == limit {
                page.next_cursor = page.items.last().map(|m| m.device.to_string());
                break;
            }
            let value = self.open(table::FENCE_MEMBERS, &key, &value)?;
            let entered: [u8; 8] = value
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::Corrupt("fence member value is not 8 bytes".into()))?;
            page.items.push(FenceMember {
                device,
                entered_ms: i64::from_be_bytes(entered),
            });
        }
        Ok(page)
    }
}

impl Tables {
    pub(crate) fn put_credentials(
        &self,
        db: &fjall::Database,
        credentials: &[StoredCredential],
    ) -> Result<(), StoreError> {
        let mut batch = db.batch();
        for c in credentials {
            let key = c.principal.key();
            let value = self.seal(table::CREDENTIALS, key.as_bytes(), encode(c));
            batch.insert(&self.credentials, key, value);
        }
        Ok(batch.commit()?)
    }

    pub(crate) fn credential(
        &self,
        principal: &Principal,
    ) -> Result<Option<StoredCredential>, StoreError> {
        let key = principal.key();
        match self.credentials.get(&key)? {
            Some(v) => decode(
                "credential",
                &self.open(table::CREDENTIALS, key.as_bytes(), &v)?,
            )
            .map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn delete_credential(&self, principal: &Principal) -> Result<bool, StoreError> {
        let key = principal.key();
        let existed = self.credentials.contains_key(&key)?;
        self.credentials.remove(key)?;
        Ok(existed)
    }

    pub(crate) fn all_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        self.tokens
            .iter()
            .map(|guard| {
                let (key, value) = guard.into_inner()?;
                decode("token", &self.open(table::TOKENS, &key, &value)?)
            })
            .collect()
    }

    pub(crate) fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.tokens.contains_key(id)?;
        self.tokens.remove(id)?;
        Ok(existed)
    }

    pub(crate) fn all_webhooks(&self) -> Result<Vec<StoredWebhook>, StoreError> {
        self.webhooks
            .iter()
            .map(|guard| {
                let (key, value) = guard.into_inner()?;
                decode("webhook", &self.open(table::WEBHOOKS, &key, &value)?)
            })
            .collect()
    }

    pub(crate) fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.webhooks.contains_key(id)?;
        self.webhooks.remove(id)?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use fleetd_schemas::{Anchor, Fix, Motion, Trip, VehicleState};

    use super::*;

    fn on_a_trip() -> VehicleState {
        let fix = Fix {
            ts_ms: 1_764_662_400_123,
            lat: 60.170_123_456_789,
            lon: 24.938_765_432_1,
        };
        VehicleState {
            ts_ms: fix.ts_ms,
            motion: Motion::Moving,
            motion_since_ms: fix.ts_ms - 5_000,
            odometer_m: 123_456.789_012,
            trip: Some(Box::new(Trip::start_at(fix))),
            last_fix: Some(fix),
            anchor: Some(Anchor {
                fix,
                last_ts_ms: fix.ts_ms,
                run_m: 12.3,
                points: 3,
                mean: Some((60.1701, 24.9387)),
                last: Some((60.1702, 24.9388)),
            }),
            last_seen_ms: fix.ts_ms + 300,
            ..VehicleState::default()
        }
    }

    #[test]
    fn states_read_back_in_either_encoding() {
        let state = on_a_trip();
        let proto = encode_state(&state);
        let json = encode(&state);
        assert_eq!(decode_state(&proto).ok(), Some(state.clone()));
        // Written by versions that kept states as JSON.
        assert_eq!(decode_state(&json).ok(), Some(state));
        eprintln!(
            "state on a trip: {} bytes protobuf, {} JSON",
            proto.len(),
            json.len()
        );
        assert!(proto.len() * 2 < json.len());
        // An empty value is a state with every field at its default.
        assert_eq!(decode_state(&[]).ok(), Some(VehicleState::default()));
        assert!(matches!(
            decode_state(&[0xff, 0xff]),
            Err(StoreError::Corrupt(_))
        ));
    }
}
