//! Track exports: `format=gpx|csv|kml` on `GET /v1/vehicles/{id}/track` and
//! on a trip's track. Unlike the JSON pages, an export holds every fix of
//! the range `[from, to]`: it is streamed, one store page at a time, so a
//! day at 1 Hz (86,400 fixes) never sits whole in memory.
//!
//! * GPX 1.1: one `trk` for the device, a new `trkseg` after a gap of more
//!   than [`SEGMENT_GAP_MS`] between fixes; `ele`, `time` (UTC, ms), `hdop`
//!   when the accuracy is known, and speed (m/s) and course (degrees) in
//!   the Garmin `TrackPointExtension` v2 namespace, which GPX readers know.
//! * CSV: a header row, then one row per fix; empty fields for what the
//!   device did not send.
//! * KML 2.2: one `Placemark` per segment (split as for GPX), a
//!   `LineString` of `lon,lat[,alt]`.
//! * GeoJSON lines (`format=geojson-lines`): a `FeatureCollection` of one
//!   `LineString` Feature per segment (split as for GPX), its properties
//!   the device, first and last `ts_ms` and the number of fixes; the
//!   paged `format=geojson` stays the points form.
//!
//! A store error mid-stream ends the body early (the client sees a broken
//! transfer, not a well-formed short file); it is logged.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::HeaderValue;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat};
use fleetd_schemas::{DeviceId, EnrichedPosition};
use fleetd_store::{HistoryQuery, Store};
use std::fmt::Write as _;

/// Fixes further apart than this start a new GPX segment / KML line.
pub(crate) const SEGMENT_GAP_MS: i64 = 5 * 60 * 1000;

/// Fixes read from the store per step of the stream.
const PAGE: usize = 5_000;

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Export {
    Gpx,
    Csv,
    Kml,
    GeoJsonLines,
}

impl Export {
    fn media_type(self) -> &'static str {
        match self {
            Self::Gpx => "application/gpx+xml",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Kml => "application/vnd.google-earth.kml+xml",
            Self::GeoJsonLines => "application/geo+json",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::Gpx => "gpx",
            Self::Csv => "csv",
            Self::Kml => "kml",
            Self::GeoJsonLines => "geojson",
        }
    }
}

/// What one export covers.
pub(crate) struct Range {
    pub(crate) from_ms: i64,
    pub(crate) to_ms: i64,
    /// Whether fixes flagged by a data-quality filter are included.
    pub(crate) include_filtered: bool,
    /// The track's name (the device id, or the device and trip).
    pub(crate) name: String,
}

/// The streamed export of `device`'s history in `range`.
pub(crate) fn stream(
    store: Arc<dyn Store>,
    device: DeviceId,
    range: Range,
    format: Export,
) -> Response {
    let file = format!(
        "attachment; filename=\"{}.{}\"",
        file_stem(&range.name),
        format.extension()
    );
    let state = Some(Writer {
        store,
        device,
        range,
        format,
        cursor: None,
        started: false,
        last_ts: None,
        segment: Segment::default(),
        done: false,
    });
    let body = futures::stream::unfold(state, |state| async move {
        let mut writer = state?;
        let chunk = writer.next_chunk().await;
        match chunk {
            Some(Ok(bytes)) => Some((Ok::<Bytes, std::io::Error>(bytes), Some(writer))),
            Some(Err(e)) => Some((Err(e), None)),
            None => None,
        }
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(format.media_type()));
    if let Ok(v) = HeaderValue::from_str(&file) {
        headers.insert(CONTENT_DISPOSITION, v);
    }
    response
}

/// A file name made of the track's name: letters, digits, `-`, `_`, `.`.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

struct Writer {
    store: Arc<dyn Store>,
    device: DeviceId,
    range: Range,
    format: Export,
    cursor: Option<String>,
    started: bool,
    /// The previous fix's time, to split segments.
    last_ts: Option<i64>,
    /// The open segment (for the GeoJSON lines' properties).
    segment: Segment,
    done: bool,
}

/// What a GeoJSON line's properties say of its segment.
#[derive(Default)]
struct Segment {
    start_ts: i64,
    points: usize,
}

impl Writer {
    /// The next piece of the file: the header, a page of fixes, the footer;
    /// `None` once the footer is out.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        let mut out = String::new();
        if !self.started {
            self.started = true;
            self.header(&mut out);
        }
        let query = HistoryQuery {
            from_ms: self.range.from_ms,
            to_ms: self.range.to_ms,
            limit: PAGE,
            cursor: self.cursor.take(),
        };
        let page = match self.store.history(&self.device, &query).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(device = %self.device, error = %e, "track export cut short");
                return Some(Err(std::io::Error::other(e.to_string())));
            }
        };
        let all = self.range.include_filtered;
        for p in page.items.iter().filter(|p| all || p.flag.is_none()) {
            self.fix(&mut out, p);
        }
        match page.next_cursor {
            Some(cursor) if !cursor.is_empty() => self.cursor = Some(cursor),
            _ => {
                self.footer(&mut out);
                self.done = true;
            }
        }
        Some(Ok(Bytes::from(out)))
    }

    fn header(&self, out: &mut String) {
        let name = xml_escape(&self.range.name);
        match self.format {
            Export::Gpx => {
                let _ = write!(
                    out,
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                     <gpx version=\"1.1\" creator=\"fleetd\" \
                     xmlns=\"http://www.topografix.com/GPX/1/1\" \
                     xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
                     xmlns:gpxtpx=\"http://www.garmin.com/xmlschemas/TrackPointExtension/v2\" \
                     xsi:schemaLocation=\"http://www.topografix.com/GPX/1/1 http://www.topografix.com/GPX/1/1/gpx.xsd\">\n\
                     <metadata><name>{name}</name></metadata>\n<trk><name>{name}</name>\n"
                );
            }
            Export::Csv => out.push_str(
                "device_id,ts_ms,time,lat,lon,speed_mps,heading_deg,altitude_m,accuracy_m,battery_pct\n",
            ),
            Export::Kml => {
                let _ = write!(
                    out,
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                     <kml xmlns=\"http://www.opengis.net/kml/2.2\"><Document><name>{name}</name>\n"
                );
            }
            Export::GeoJsonLines => out.push_str("{\"type\":\"FeatureCollection\",\"features\":["),
        }
    }

    /// Closes the open GeoJSON line: its properties come last, once its
    /// last fix is known.
    fn close_line(&self, out: &mut String) {
        let _ = write!(
            out,
            "]}},\"properties\":{{\"device_id\":{},\"start_ts_ms\":{},\"end_ts_ms\":{},\"points\":{}}}}}",
            serde_json::Value::from(self.device.as_str()),
            self.segment.start_ts,
            self.last_ts.unwrap_or_default(),
            self.segment.points
        );
    }

    fn fix(&mut self, out: &mut String, p: &EnrichedPosition) {
        let r = &p.report;
        let new_segment = self
            .last_ts
            .is_none_or(|last| r.ts_ms - last > SEGMENT_GAP_MS);
        let first = self.last_ts.is_none();
        if let Export::GeoJsonLines = self.format {
            // Before `last_ts` moves on: a closing line ends at the previous fix.
            if new_segment && !first {
                self.close_line(out);
                out.push(',');
            }
            if new_segment {
                self.segment = Segment {
                    start_ts: r.ts_ms,
                    points: 0,
                };
                out.push_str(
                    "\n{\"type\":\"Feature\",\"geometry\":{\"type\":\"LineString\",\"coordinates\":[",
                );
            } else {
                out.push(',');
            }
            self.segment.points += 1;
        }
        self.last_ts = Some(r.ts_ms);
        match self.format {
            Export::Gpx => {
                if new_segment {
                    if !first {
                        out.push_str("</trkseg>\n");
                    }
                    out.push_str("<trkseg>\n");
                }
                let _ = write!(out, "<trkpt lat=\"{}\" lon=\"{}\">", r.lat, r.lon);
                if let Some(ele) = r.altitude_m {
                    let _ = write!(out, "<ele>{ele}</ele>");
                }
                let _ = write!(out, "<time>{}</time>", utc(r.ts_ms));
                if let Some(hdop) = r.accuracy_m {
                    // GPX has no accuracy radius; readers take hdop for it.
                    let _ = write!(out, "<hdop>{hdop}</hdop>");
                }
                if r.speed_mps.is_some() || r.heading_deg.is_some() {
                    out.push_str("<extensions><gpxtpx:TrackPointExtension>");
                    if let Some(speed) = r.speed_mps {
                        let _ = write!(out, "<gpxtpx:speed>{speed}</gpxtpx:speed>");
                    }
                    if let Some(course) = r.heading_deg {
                        let _ = write!(out, "<gpxtpx:course>{course}</gpxtpx:course>");
                    }
                    out.push_str("</gpxtpx:TrackPointExtension></extensions>");
                }
                out.push_str("</trkpt>\n");
            }
            Export::Csv => {
                let opt = |v: Option<f32>| v.map(|v| v.to_string()).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{}",
                    csv_field(r.device_id.as_str()),
                    r.ts_ms,
                    utc(r.ts_ms),
                    r.lat,
                    r.lon,
                    opt(r.speed_mps),
                    opt(r.heading_deg),
                    opt(r.altitude_m),
                    opt(r.accuracy_m),
                    opt(r.battery_pct),
                );
            }
            Export::Kml => {
                if new_segment {
                    if !first {
                        out.push_str("\n</coordinates></LineString></Placemark>\n");
                    }
                    let _ = writeln!(
                        out,
                        "<Placemark><name>{}</name><TimeSpan><begin>{}</begin></TimeSpan>\
                         <LineString><coordinates>",
                        xml_escape(&self.range.name),
                        utc(r.ts_ms)
                    );
                }
                match r.altitude_m {
                    Some(alt) => {
                        let _ = write!(out, "{},{},{} ", r.lon, r.lat, alt);
                    }
                    None => {
                        let _ = write!(out, "{},{} ", r.lon, r.lat);
                    }
                }
            }
            Export::GeoJsonLines => {
                let _ = match r.altitude_m {
                    Some(alt) => write!(out, "[{},{},{}]", r.lon, r.lat, alt),
                    None => write!(out, "[{},{}]", r.lon, r.lat),
                };
            }
        }
    }

    fn footer(&self, out: &mut String) {
        let any = self.last_ts.is_some();
        match self.format {
            Export::Gpx => {
                if any {
                    out.push_str("</trkseg>\n");
                }
                out.push_str("</trk>\n</gpx>\n");
            }
            Export::Csv => {}
            Export::Kml => {
                if any {
                    out.push_str("\n</coordinates></LineString></Placemark>\n");
                }
                out.push_str("</Document></kml>\n");
            }
            Export::GeoJsonLines => {
                if any {
                    self.close_line(out);
                }
                out.push_str("\n]}\n");
            }
        }
    }
}

/// RFC 3339 UTC with milliseconds.
fn utc(ts_ms: i64) -> String {
    DateTime::from_timestamp_millis(ts_ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_fields_are_escaped() {
        assert_eq!(xml_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(file_stem("alice/phone 1"), "alice_phone_1");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
