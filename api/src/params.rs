//! Query parameters: raw strings as sent, validated into store queries.
//!
//! Parameters are deserialized as strings and parsed here rather than by
//! serde, so that every 400 names the parameter and says what was expected.
//! Unknown parameters are ignored.

use fleetd_schemas::{AlertKind, DeviceId, DeviceInfo, GeofenceId};
use fleetd_store::{AlertQuery, AreaQuery, BBox, HistoryQuery, TripQuery};
use serde::Deserialize;

use crate::error::ApiError;

/// Default `limit` of area and track queries.
pub(crate) const DEFAULT_LIMIT: usize = 1000;
/// Largest `limit` of area and track queries.
pub(crate) const MAX_LIMIT: usize = 10_000;
/// Default `limit` of `GET /v1/rejections`.
pub(crate) const DEFAULT_REJECTIONS_LIMIT: usize = 100;
/// Largest `limit` of `GET /v1/rejections`.
pub(crate) const MAX_REJECTIONS_LIMIT: usize = 1000;
/// Largest `radius_m` of a `near` query (1000 km).
pub(crate) const MAX_RADIUS_M: f64 = 1_000_000.0;
/// How far past "now" the default `to` of a track query reaches, so that
/// positions from devices with fast clocks are included.
const DEFAULT_TO_AHEAD_MS: i64 = 24 * 60 * 60 * 1000;
/// How much of an offending value an error message echoes.
const ECHO_CHARS: usize = 64;

/// Response format of list endpoints (`format=json|geojson`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Format {
    /// Plain JSON (the default).
    #[default]
    Json,
    /// A GeoJSON `FeatureCollection`, served as `application/geo+json`.
    GeoJson,
}

/// Raw parameters of `GET /v1/vehicles`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AreaParams {
    bbox: Option<String>,
    near: Option<String>,
    radius_m: Option<String>,
    cell: Option<String>,
    limit: Option<String>,
    format: Option<String>,
}

/// A validated area query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AreaRequest {
    pub(crate) area: AreaQuery,
    pub(crate) limit: usize,
    pub(crate) format: Format,
}

impl AreaParams {
    /// Validates the parameters: exactly one of `bbox`, `near` (with
    /// `radius_m`) or `cell`, plus `limit` and `format`.
    pub(crate) fn validate(self) -> Result<AreaRequest, ApiError> {
        let given: Vec<&str> = [
            ("bbox", self.bbox.is_some()),
            ("near", self.near.is_some()),
            ("cell", self.cell.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect();
        if given.len() != 1 {
            let got = if given.is_empty() {
                "none".to_owned()
            } else {
                given.join(" and ")
            };
            return Err(bad(format!(
                "exactly one of bbox, near or cell is required, got {got}"
            )));
        }
        if self.radius_m.is_some() && self.near.is_none() {
            return Err(bad("radius_m is only valid together with near"));
        }
        let area = if let Some(bbox) = &self.bbox {
            AreaQuery::BBox(parse_bbox(bbox)?)
        } else if let Some(near) = &self.near {
            parse_near(near, self.radius_m.as_deref())?
        } else if let Some(cell) = &self.cell {
            AreaQuery::Cell(parse_cell(cell)?)
        } else {
            // Unreachable: exactly one of the three is present.
            return Err(bad("exactly one of bbox, near or cell is required"));
        };
        Ok(AreaRequest {
            area,
            limit: parse_limit(self.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?,
            format: parse_format(self.format.as_deref())?,
        })
    }
}

/// Raw parameters of `GET /v1/vehicles/{id}/track`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TrackParams {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    format: Option<String>,
    filtered: Option<String>,
}

/// How a track is answered: a page (JSON, GeoJSON) or a whole-range export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrackFormat {
    /// One page of `limit` fixes, with a cursor for the next.
    Page(Format),
    /// Every fix of the range, streamed (see `export`).
    Export(crate::export::Export),
}

/// A validated track query.
#[derive(Debug, Clone)]
pub(crate) struct TrackRequest {
    pub(crate) query: HistoryQuery,
    pub(crate) format: TrackFormat,
    /// Whether fixes flagged by a data-quality filter are included
    /// (`filtered=true`, the default) or left out (`filtered=false`).
    pub(crate) include_filtered: bool,
}

impl TrackParams {
    /// Validates the parameters. `from` defaults to 0 and `to` to one day
    /// after `now_ms`; an empty `cursor` counts as none.
    pub(crate) fn validate(self, now_ms: i64) -> Result<TrackRequest, ApiError> {
        let (from_ms, to_ms) = time_range(
            ("from", self.from.as_deref()),
            ("to", self.to.as_deref()),
            now_ms,
        )?;
        Ok(TrackRequest {
            query: HistoryQuery {
                from_ms,
                to_ms,
                limit: parse_limit(self.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?,
                cursor: self.cursor.filter(|c| !c.is_empty()),
            },
            format: parse_track_format(self.format.as_deref())?,
            include_filtered: match self.filtered.as_deref() {
                None | Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(bad(format!(
                        "filtered must be true or false, got {}",
                        echo(other)
                    )));
                }
            },
        })
    }
}

/// Raw parameters of `GET /v1/rejections`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RejectionsParams {
    limit: Option<String>,
}

impl RejectionsParams {
    /// The validated `limit`.
    pub(crate) fn limit(&self) -> Result<usize, ApiError> {
        parse_limit(
            self.limit.as_deref(),
            DEFAULT_REJECTIONS_LIMIT,
            MAX_REJECTIONS_LIMIT,
        )
    }
}

/// Validates the `{id}` path segment.
pub(crate) fn parse_device_id(raw: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(raw).map_err(|err| bad(format!("invalid vehicle id: {err}")))
}

pub(crate) fn parse_bbox(raw: &str) -> Result<BBox, ApiError> {
    let parts: Vec<&str> = raw.split(',').collect();
    let [min_lon, min_lat, max_lon, max_lat] = parts.as_slice() else {
        return Err(bad(format!(
            "bbox must be four comma-separated numbers minLon,minLat,maxLon,maxLat, got {}",
            echo(raw)
        )));
    };
    let bbox = BBox {
        min_lon: parse_lon("bbox minLon", min_lon)?,
        min_lat: parse_lat("bbox minLat", min_lat)?,
        max_lon: parse_lon("bbox maxLon", max_lon)?,
        max_lat: parse_lat("bbox maxLat", max_lat)?,
    };
    // min_lon > max_lon is allowed: the box crosses the antimeridian.
    if bbox.min_lat > bbox.max_lat {
        return Err(bad(format!(
            "bbox minLat ({}) must not be greater than maxLat ({})",
            bbox.min_lat, bbox.max_lat
        )));
    }
    Ok(bbox)
}

fn parse_near(raw: &str, radius: Option<&str>) -> Result<AreaQuery, ApiError> {
    let parts: Vec<&str> = raw.split(',').collect();
    let [lat, lon] = parts.as_slice() else {
        return Err(bad(format!(
            "near must be two comma-separated numbers lat,lon, got {}",
            echo(raw)
        )));
    };
    let lat = parse_lat("near lat", lat)?;
    let lon = parse_lon("near lon", lon)?;
    let Some(radius) = radius else {
        return Err(bad("near requires radius_m (metres)"));
    };
    let radius_m = parse_finite("radius_m", radius)?;
    if !(radius_m > 0.0 && radius_m <= MAX_RADIUS_M) {
        return Err(bad(format!(
            "radius_m must be in (0, {MAX_RADIUS_M}] metres, got {radius_m}"
        )));
    }
    Ok(AreaQuery::Near { lat, lon, radius_m })
}

fn parse_cell(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<h3o::CellIndex>().map(u64::from).map_err(|err| {
        bad(format!(
            "cell must be an H3 cell index in hex, got {}: {err}",
            echo(raw)
        ))
    })
}

fn parse_lat(name: &str, raw: &str) -> Result<f64, ApiError> {
    let value = parse_finite(name, raw)?;
    if !(-90.0..=90.0).contains(&value) {
        return Err(bad(format!("{name} must be in [-90, 90], got {value}")));
    }
    Ok(value)
}

fn parse_lon(name: &str, raw: &str) -> Result<f64, ApiError> {
    let value = parse_finite(name, raw)?;
    if !(-180.0..=180.0).contains(&value) {
        return Err(bad(format!("{name} must be in [-180, 180], got {value}")));
    }
    Ok(value)
}

fn parse_finite(name: &str, raw: &str) -> Result<f64, ApiError> {
    match raw.trim().parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        _ => Err(bad(format!(
            "{name} must be a finite number, got {}",
            echo(raw)
        ))),
    }
}

fn parse_epoch_ms(name: &str, raw: &str) -> Result<i64, ApiError> {
    raw.trim().parse::<i64>().map_err(|_| {
        bad(format!(
            "{name} must be an integer (Unix epoch milliseconds), got {}",
            echo(raw)
        ))
    })
}

pub(crate) fn parse_limit(
    raw: Option<&str>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    match raw.trim().parse::<usize>() {
        Ok(limit) if (1..=max).contains(&limit) => Ok(limit),
        _ => Err(bad(format!(
            "limit must be an integer in [1, {max}], got {}",
            echo(raw)
        ))),
    }
}

pub(crate) fn parse_format(raw: Option<&str>) -> Result<Format, ApiError> {
    match raw {
        None | Some("json") => Ok(Format::Json),
        Some("geojson") => Ok(Format::GeoJson),
        Some(other) => Err(bad(format!(
            "format must be json or geojson, got {}",
            echo(other)
        ))),
    }
}

/// `format=` of a track: json, geojson, or an export (gpx, csv, kml,
/// geojson-lines).
fn parse_track_format(raw: Option<&str>) -> Result<TrackFormat, ApiError> {
    use crate::export::Export;
    Ok(match raw {
        Some("gpx") => TrackFormat::Export(Export::Gpx),
        Some("csv") => TrackFormat::Export(Export::Csv),
        Some("kml") => TrackFormat::Export(Export::Kml),
        Some("geojson-lines") => TrackFormat::Export(Export::GeoJsonLines),
        None | Some("json") | Some("geojson") => TrackFormat::Page(parse_format(raw)?),
        Some(other) => {
            return Err(bad(format!(
                "format must be json, geojson, geojson-lines, gpx, csv or kml, got {}",
                echo(other)
            )));
        }
    })
}

/// An offending value for an error message: quoted, and cut short so that a
/// huge parameter does not make a huge response.
pub(crate) fn echo(raw: &str) -> String {
    if raw.chars().count() <= ECHO_CHARS {
        format!("{raw:?}")
    } else {
        let head: String = raw.chars().take(ECHO_CHARS).collect();
        format!("{head:?}…")
    }
}

pub(crate) fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

/// Default `limit` of trip and alert queries.
pub(crate) const DEFAULT_EVENT_LIMIT: usize = 100;
/// Largest `limit` of trip and alert queries.
pub(crate) const MAX_EVENT_LIMIT: usize = 1000;

/// Raw parameters of `GET /v1/vehicles/{id}/trips`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TripsParams {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

impl TripsParams {
    /// Validates into a store query: trips *starting* in `[from, to]`,
    /// newest first.
    pub(crate) fn validate(self, now_ms: i64) -> Result<TripQuery, ApiError> {
        let (from_ms, to_ms) = time_range(
            ("from", self.from.as_deref()),
            ("to", self.to.as_deref()),
            now_ms,
        )?;
        Ok(TripQuery {
            from_ms,
            to_ms,
            limit: parse_limit(self.limit.as_deref(), DEFAULT_EVENT_LIMIT, MAX_EVENT_LIMIT)?,
            cursor: self.cursor.filter(|c| !c.is_empty()),
        })
    }
}

/// Raw parameters of `GET /v1/alerts`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AlertsParams {
    since: Option<String>,
    until: Option<String>,
    device: Option<String>,
    geofence: Option<String>,
    kind: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

impl AlertsParams {
    /// Validates into a store query: `since`/`until` in Unix ms, `device`,
    /// `geofence`, `kind` a comma-separated list of alert kinds.
    pub(crate) fn validate(self, now_ms: i64) -> Result<AlertQuery, ApiError> {
        let (since_ms, until_ms) = time_range(
            ("since", self.since.as_deref()),
            ("until", self.until.as_deref()),
            now_ms,
        )?;
        let device = self.device.as_deref().map(parse_device_id).transpose()?;
        let geofence = self
            .geofence
            .as_deref()
            .map(|g| GeofenceId::parse(g).map_err(|e| bad(format!("geofence {}: {e}", echo(g)))))
            .transpose()?;
        let mut kinds = Vec::new();
        if let Some(raw) = self.kind.as_deref() {
            for code in raw.split(',') {
                let kind = AlertKind::from_code(code).ok_or_else(|| {
                    let all: Vec<&str> = AlertKind::ALL.iter().map(|k| k.code()).collect();
                    bad(format!(
                        "kind must be a comma-separated list of {}, got {}",
                        all.join(", "),
                        echo(code)
                    ))
                })?;
                kinds.push(kind);
            }
        }
        Ok(AlertQuery {
            since_ms,
            until_ms,
            device,
            geofence,
            kinds,
            limit: parse_limit(self.limit.as_deref(), DEFAULT_EVENT_LIMIT, MAX_EVENT_LIMIT)?,
            cursor: self.cursor.filter(|c| !c.is_empty()),
        })
    }
}

/// An inclusive range in Unix ms from two named parameters: the start
/// defaults to 0, the end to a day after now.
fn time_range(
    (from_name, from): (&str, Option<&str>),
    (to_name, to): (&str, Option<&str>),
    now_ms: i64,
) -> Result<(i64, i64), ApiError> {
    let from_ms = match from {
        Some(raw) => parse_epoch_ms(from_name, raw)?,
        None => 0,
    };
    let to_ms = match to {
        Some(raw) => parse_epoch_ms(to_name, raw)?,
        None => now_ms.saturating_add(DEFAULT_TO_AHEAD_MS),
    };
    if from_ms > to_ms {
        return Err(bad(format!(
            "{from_name} ({from_ms}) must not be after {to_name} ({to_ms})"
        )));
    }
    Ok((from_ms, to_ms))
}

/// An optional whole number of a JSON body, as JSON Schema's `integer`
/// has it: `5` and `5.0` alike (`5.5`, a negative or a too large number is
/// an error naming the value).
pub(crate) fn integral<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
            .map(|f| f as u64)
    });
    whole
        .and_then(|n| T::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{number} is not a whole number in range")))
}

/// Longest registry `name`, in characters.
const MAX_NAME_CHARS: usize = 200;
/// Longest registry `class`, in bytes.
const MAX_CLASS_LEN: usize = 64;
/// Most registry tags per device.
const MAX_TAGS: usize = 64;
/// Longest tag key and value, in characters.
const MAX_TAG_KEY_LEN: usize = 64;
const MAX_TAG_VALUE_CHARS: usize = 256;

/// The body of `PUT /v1/devices/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceBody {
    name: Option<String>,
    class: Option<String>,
    speed_limit_kmh: Option<f64>,
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
}

impl DeviceBody {
    /// Validates into a registry entry stamped `now_ms`.
    pub(crate) fn validate(self, now_ms: i64) -> Result<DeviceInfo, ApiError> {
        if let Some(name) = &self.name
            && (name.is_empty() || name.chars().count() > MAX_NAME_CHARS)
        {
            return Err(bad(format!(
                "name must be 1 to {MAX_NAME_CHARS} characters, got {}",
                echo(name)
            )));
        }
        if let Some(class) = &self.class {
            let ok = !class.is_empty()
                && class.len() <= MAX_CLASS_LEN
                && class
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(bad(format!(
                    "class must be 1 to {MAX_CLASS_LEN} characters of A-Z a-z 0-9 _ -, got {}",
                    echo(class)
                )));
            }
        }
        if let Some(limit) = self.speed_limit_kmh
            && !(limit.is_finite() && limit > 0.0 && limit <= 1000.0)
        {
            return Err(bad(format!(
                "speed_limit_kmh must be in (0, 1000], got {limit}"
            )));
        }
        if self.tags.len() > MAX_TAGS {
            return Err(bad(format!(
                "at most {MAX_TAGS} tags, got {}",
                self.tags.len()
            )));
        }
        for (key, value) in &self.tags {
            if key.is_empty() || key.chars().count() > MAX_TAG_KEY_LEN {
                return Err(bad(format!(
                    "tag keys must be 1 to {MAX_TAG_KEY_LEN} characters, got {}",
                    echo(key)
                )));
            }
            if value.chars().count() > MAX_TAG_VALUE_CHARS {
                return Err(bad(format!(
                    "tag {} is longer than {MAX_TAG_VALUE_CHARS} characters",
                    echo(key)
                )));
            }
        }
        Ok(DeviceInfo {
            name: self.name,
            class: self.class,
            speed_limit_kmh: self.speed_limit_kmh,
            tags: self.tags,
            updated_ms: now_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(pairs: &[(&str, &str)]) -> Result<AreaRequest, String> {
        let query: String = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let params: AreaParams = serde_urlencoded_from(&query);
        params.validate().map_err(|e| e.to_string())
    }

    /// Parses a query string the way axum's `Query` does (its error case is
    /// covered by the router tests).
    fn serde_urlencoded_from<T: serde::de::DeserializeOwned>(query: &str) -> T {
        let uri: axum::http::Uri = format!("/?{query}").parse().expect("uri");
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::try_from_uri(&uri).expect("query");
        value
    }

    #[test]
    fn bbox_is_parsed_and_may_cross_the_antimeridian() {
        let req = area(&[("bbox", "170,-10,-170,10")]).expect("valid");
        assert_eq!(
            req.area,
            AreaQuery::BBox(BBox {
                min_lon: 170.0,
                min_lat: -10.0,
                max_lon: -170.0,
                max_lat: 10.0
            })
        );
        assert_eq!(req.limit, DEFAULT_LIMIT);
        assert_eq!(req.format, Format::Json);
    }

    #[test]
    fn near_and_cell_are_parsed() {
        let req =
            area(&[("near", "52.5,13.4"), ("radius_m", "500"), ("limit", "7")]).expect("valid");
        assert_eq!(
            req.area,
            AreaQuery::Near {
                lat: 52.5,
                lon: 13.4,
                radius_m: 500.0
            }
        );
        assert_eq!(req.limit, 7);
        let req = area(&[("cell", "87194e69dffffff"), ("format", "geojson")]).expect("valid");
        assert_eq!(req.area, AreaQuery::Cell(0x87194e69dffffff));
        assert_eq!(req.format, Format::GeoJson);
    }

    #[test]
    fn bad_area_parameters_name_the_parameter() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "exactly one of bbox, near or cell"),
            (
                &[("bbox", "1,2,3,4"), ("cell", "87194e69dffffff")],
                "bbox and cell",
            ),
            (&[("bbox", "1,2,3")], "bbox must be four"),
            (
                &[("bbox", "a,2,3,4")],
                "bbox minLon must be a finite number",
            ),
            (
                &[("bbox", "NaN,2,3,4")],
                "bbox minLon must be a finite number",
            ),
            (
                &[("bbox", "1,inf,3,4")],
                "bbox minLat must be a finite number",
            ),
            (
                &[("bbox", "1,2,181,4")],
                "bbox maxLon must be in [-180, 180]",
            ),
            (&[("bbox", "1,2,3,91")], "bbox maxLat must be in [-90, 90]"),
            (
                &[("bbox", "1,5,3,4")],
                "bbox minLat (5) must not be greater than maxLat (4)",
            ),
            (&[("near", "1")], "near must be two"),
            (
                &[("near", "91,0"), ("radius_m", "5")],
                "near lat must be in [-90, 90]",
            ),
            (
                &[("near", "0,-181"), ("radius_m", "5")],
                "near lon must be in [-180, 180]",
            ),
            (&[("near", "0,0")], "near requires radius_m"),
            (
                &[("near", "0,0"), ("radius_m", "0")],
                "radius_m must be in (0, 1000000]",
            ),
            (
                &[("near", "0,0"), ("radius_m", "1000001")],
                "radius_m must be in",
            ),
            (
                &[("near", "0,0"), ("radius_m", "x")],
                "radius_m must be a finite number",
            ),
            (
                &[("cell", "87194e69dffffff"), ("radius_m", "5")],
                "radius_m is only valid",
            ),
            (&[("cell", "zz")], "cell must be an H3 cell index"),
            (&[("cell", "0")], "cell must be an H3 cell index"),
            (
                &[("cell", "87194e69dffffff"), ("limit", "0")],
                "limit must be an integer in [1, 10000]",
            ),
            (
                &[("cell", "87194e69dffffff"), ("limit", "10001")],
                "limit must be an integer",
            ),
            (
                &[("cell", "87194e69dffffff"), ("limit", "-1")],
                "limit must be an integer",
            ),
            (
                &[("cell", "87194e69dffffff"), ("format", "csv")],
                "format must be json or geojson",
            ),
        ];
        for (pairs, expected) in cases {
            let err = area(pairs).expect_err(expected);
            assert!(
                err.contains(expected),
                "{pairs:?}: {err:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn track_defaults_and_errors() {
        let req = TrackParams::default().validate(1_000).expect("valid");
        assert_eq!(req.query.from_ms, 0);
        assert_eq!(req.query.to_ms, 1_000 + DEFAULT_TO_AHEAD_MS);
        assert_eq!(req.query.limit, DEFAULT_LIMIT);
        assert_eq!(req.query.cursor, None);

        let track = |q: &str| {
            serde_urlencoded_from::<TrackParams>(q)
                .validate(0)
                .map_err(|e| e.to_string())
        };
        let req = track("from=5&to=9&limit=3&cursor=abc&format=geojson").expect("valid");
        assert_eq!(
            (req.query.from_ms, req.query.to_ms, req.query.limit),
            (5, 9, 3)
        );
        assert_eq!(req.query.cursor.as_deref(), Some("abc"));
        assert_eq!(req.format, TrackFormat::Page(Format::GeoJson));
        assert_eq!(track("cursor=").expect("valid").query.cursor, None);

        for (q, expected) in [
            ("from=x", "from must be an integer"),
            ("to=1.5", "to must be an integer"),
            ("from=10&to=9", "from (10) must not be after to (9)"),
            ("limit=0", "limit must be an integer in [1, 10000]"),
            (
                "format=shp",
                "format must be json, geojson, geojson-lines, gpx, csv or kml",
            ),
        ] {
            let err = track(q).expect_err(q);
            assert!(err.contains(expected), "{q}: {err:?} lacks {expected:?}");
        }
        use crate::export::Export;
        for (q, export) in [
            ("format=gpx", Export::Gpx),
            ("format=csv", Export::Csv),
            ("format=kml", Export::Kml),
            ("format=geojson-lines", Export::GeoJsonLines),
        ] {
            assert_eq!(
                track(q).expect(q).format,
                TrackFormat::Export(export),
                "{q}"
            );
        }
    }

    #[test]
    fn rejections_limit() {
        let limit = |q: &str| serde_urlencoded_from::<RejectionsParams>(q).limit();
        assert_eq!(limit("").ok(), Some(DEFAULT_REJECTIONS_LIMIT));
        assert_eq!(limit("limit=1000").ok(), Some(1000));
        assert!(limit("limit=1001").is_err());
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "x".repeat(1000);
        assert!(echo(&long).len() < 80);
    }
}
