//! JSON and GeoJSON shapes of positions, as served by the vehicle routes.
//!
//! **Vehicle JSON** (one position):
//!
//! ```json
//! {"device_id": "truck-1", "ts_ms": 1700000000000, "lat": 52.52, "lon": 13.405,
//!  "accuracy_m": 5.0, "altitude_m": 34.0, "speed_mps": 8.3, "heading_deg": 90.0,
//!  "battery_pct": 77.0, "seq": 42, "speed_derived": false, "heading_derived": true,
//!  "received_ms": 1700000000120,
//!  "h3": {"7": "87194e69dffffff", "9": "89194e69d4fffff"}}
//! ```
//!
//! `filtered` names the data-quality filter that flagged a history fix
//! (`poor_accuracy`, `teleport`, `stationary_jitter`, `too_late`); it is
//! absent on accepted fixes.
//!
//! Optional fields the device did not send (`accuracy_m`, `altitude_m`,
//! `speed_mps`, `heading_deg`, `battery_pct`, `seq`) are **omitted**, never
//! `null`. `h3` maps each stored cell's resolution to the cell as lowercase
//! hex (one key when both cells have the same resolution; a cell that is not
//! a valid H3 index is left out).
//!
//! **GeoJSON**: a `FeatureCollection` of `Point` features with
//! `coordinates: [lon, lat]` and `properties` = the vehicle JSON without
//! `lat`/`lon`. List metadata (`count`, `truncated`, `device_id`,
//! `next_cursor`) travels as top-level foreign members.

use std::fmt;

use fleetd_schemas::EnrichedPosition;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

/// One position in vehicle JSON (or as GeoJSON properties: without coordinates).
#[derive(Debug, Serialize)]
pub(crate) struct Vehicle<'a> {
    device_id: &'a str,
    ts_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    lat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lon: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy_m: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    altitude_m: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed_mps: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heading_deg: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    battery_pct: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    speed_derived: bool,
    heading_derived: bool,
    received_ms: i64,
    h3: H3Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    filtered: Option<&'static str>,
}

impl<'a> Vehicle<'a> {
    /// Vehicle JSON of `p`, with `lat` and `lon`.
    pub(crate) fn new(p: &'a EnrichedPosition) -> Self {
        let mut v = Self::properties(p);
        v.lat = Some(p.report.lat);
        v.lon = Some(p.report.lon);
        v
    }

    /// GeoJSON properties of `p`: the vehicle JSON without `lat`/`lon`.
    fn properties(p: &'a EnrichedPosition) -> Self {
        let r = &p.report;
        Self {
            device_id: r.device_id.as_str(),
            ts_ms: r.ts_ms,
            lat: None,
            lon: None,
            accuracy_m: r.accuracy_m,
            altitude_m: r.altitude_m,
            speed_mps: r.speed_mps,
            heading_deg: r.heading_deg,
            battery_pct: r.battery_pct,
            seq: r.seq,
            speed_derived: p.speed_derived,
            heading_derived: p.heading_derived,
            received_ms: r.received_ms,
            h3: H3Json::new(p.h3.area, p.h3.detail),
            filtered: p.flag.map(|f| f.code()),
        }
    }
}

/// The `h3` object: `{"<resolution>": "<cell hex>", ...}`, ascending by resolution.
#[derive(Debug)]
struct H3Json {
    cells: [Option<h3o::CellIndex>; 2],
}

impl H3Json {
    fn new(area: u64, detail: u64) -> Self {
        let area = h3o::CellIndex::try_from(area).ok();
        let mut detail = h3o::CellIndex::try_from(detail).ok();
        if let (Some(a), Some(d)) = (area, detail)
            && a.resolution() == d.resolution()
        {
            detail = None;
        }
        let mut cells = [area, detail];
        cells.sort_by_key(|c| c.map(|c| c.resolution()));
        Self { cells }
    }
}

impl Serialize for H3Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let cells = self.cells.iter().flatten();
        let mut map = serializer.serialize_map(Some(cells.clone().count()))?;
        for cell in cells {
            map.serialize_entry(&u8::from(cell.resolution()), &Displayed(cell))?;
        }
        map.end()
    }
}

/// Serializes a value through its `Display` impl, without an intermediate `String`.
struct Displayed<T>(T);

impl<T: fmt::Display> Serialize for Displayed<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// `GET /v1/vehicles` as JSON: `{"vehicles": [...], "count": N, "truncated": bool}`.
#[derive(Debug, Serialize)]
pub(crate) struct VehicleList<'a> {
    vehicles: Vec<Vehicle<'a>>,
    count: usize,
    truncated: bool,
}

impl<'a> VehicleList<'a> {
    pub(crate) fn new(positions: &'a [EnrichedPosition], truncated: bool) -> Self {
        Self {
            vehicles: positions.iter().map(Vehicle::new).collect(),
            count: positions.len(),
            truncated,
        }
    }
}

/// `GET /v1/vehicles/{id}/track` as JSON:
/// `{"device_id": "...", "items": [...], "next_cursor": "..." | null}`.
#[derive(Debug, Serialize)]
pub(crate) struct Track<'a> {
    device_id: &'a str,
    items: Vec<Vehicle<'a>>,
    next_cursor: Option<&'a str>,
}

impl<'a> Track<'a> {
    pub(crate) fn new(
        device_id: &'a str,
        items: &'a [EnrichedPosition],
        next_cursor: Option<&'a str>,
    ) -> Self {
        Self {
            device_id,
            items: items.iter().map(Vehicle::new).collect(),
            next_cursor,
        }
    }
}

/// A GeoJSON `FeatureCollection` of position points, plus foreign members `M`.
#[derive(Debug, Serialize)]
pub(crate) struct FeatureCollection<'a, M> {
    #[serde(rename = "type")]
    kind: &'static str,
    features: Vec<Feature<'a>>,
    #[serde(flatten)]
    members: M,
}

impl<'a, M: Serialize> FeatureCollection<'a, M> {
    pub(crate) fn new(positions: &'a [EnrichedPosition], members: M) -> Self {
        Self {
            kind: "FeatureCollection",
            features: positions.iter().map(Feature::new).collect(),
            members,
        }
    }
}

/// Foreign members of an area `FeatureCollection`.
#[derive(Debug, Serialize)]
pub(crate) struct AreaMembers {
    pub(crate) count: usize,
    pub(crate) truncated: bool,
}

/// Foreign members of a track `FeatureCollection`.
#[derive(Debug, Serialize)]
pub(crate) struct TrackMembers<'a> {
    pub(crate) device_id: &'a str,
    pub(crate) next_cursor: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Feature<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    geometry: Point,
    properties: Vehicle<'a>,
}

impl<'a> Feature<'a> {
    fn new(p: &'a EnrichedPosition) -> Self {
        Self {
            kind: "Feature",
            geometry: Point {
                kind: "Point",
                coordinates: [p.report.lon, p.report.lat],
            },
            properties: Vehicle::properties(p),
        }
    }
}

#[derive(Debug, Serialize)]
struct Point {
    #[serde(rename = "type")]
    kind: &'static str,
    coordinates: [f64; 2],
}

#[cfg(test)]
mod tests {
    use fleetd_schemas::{DeviceId, H3Cells, PositionReport};
    use serde_json::json;

    use super::*;

    fn position() -> EnrichedPosition {
        let ll = h3o::LatLng::new(52.52, 13.405).expect("valid coordinates");
        EnrichedPosition {
            report: PositionReport {
                device_id: DeviceId::parse("truck-1").expect("valid id"),
                ts_ms: 1_700_000_000_000,
                lat: 52.52,
                lon: 13.405,
                accuracy_m: Some(5.0),
                altitude_m: None,
                speed_mps: Some(8.5),
                heading_deg: None,
                battery_pct: None,
                seq: Some(42),
                received_ms: 1_700_000_000_120,
            },
            h3: H3Cells {
                area: ll.to_cell(h3o::Resolution::Seven).into(),
                detail: ll.to_cell(h3o::Resolution::Nine).into(),
            },
            speed_derived: false,
            heading_derived: true,
            flag: None,
        }
    }

    #[test]
    fn vehicle_json_omits_absent_fields() {
        let p = position();
        let area = h3o::CellIndex::try_from(p.h3.area)
            .expect("cell")
            .to_string();
        let detail = h3o::CellIndex::try_from(p.h3.detail)
            .expect("cell")
            .to_string();
        let value = serde_json::to_value(Vehicle::new(&p)).expect("serializes");
        assert_eq!(
            value,
            json!({
                "device_id": "truck-1", "ts_ms": 1_700_000_000_000_i64,
                "lat": 52.52, "lon": 13.405, "accuracy_m": 5.0, "speed_mps": 8.5,
                "seq": 42, "speed_derived": false, "heading_derived": true,
                "received_ms": 1_700_000_000_120_i64,
                "h3": {"7": area, "9": detail},
            })
        );
    }

    #[test]
    fn h3_skips_invalid_and_duplicate_resolutions() {
        let p = position();
        let json = |area, detail| serde_json::to_value(H3Json::new(area, detail)).expect("ok");
        assert_eq!(json(0, 0), json!({}));
        let one = json(p.h3.area, p.h3.area);
        assert_eq!(one.as_object().map(|o| o.len()), Some(1));
        // Order of the inputs does not matter: keys ascend by resolution.
        assert_eq!(json(p.h3.detail, p.h3.area), json(p.h3.area, p.h3.detail));
    }

    #[test]
    fn geojson_feature_has_lon_lat_and_no_coordinates_in_properties() {
        let ps = [position()];
        let fc = FeatureCollection::new(
            &ps,
            AreaMembers {
                count: 1,
                truncated: false,
            },
        );
        let value = serde_json::to_value(fc).expect("serializes");
        assert_eq!(value["type"], "FeatureCollection");
        assert_eq!(value["count"], 1);
        let feature = &value["features"][0];
        assert_eq!(feature["type"], "Feature");
        assert_eq!(
            feature["geometry"],
            json!({"type": "Point", "coordinates": [13.405, 52.52]})
        );
        assert_eq!(feature["properties"]["device_id"], "truck-1");
        assert!(feature["properties"].get("lat").is_none());
        assert!(feature["properties"].get("lon").is_none());
    }
}
