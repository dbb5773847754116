//! The live map page (`GET /`) and its assets, embedded in the binary so
//! that the page works offline: Leaflet (vendored from npm, BSD-2-Clause)
//! and fleetd's own script and style.

use axum::extract::{RawQuery, State};
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::extract::Path;
use crate::state::ApiState;

/// The page template; `__FLEETD_CONFIG__` becomes the page's JSON config.
pub(crate) const INDEX_HTML: &str = include_str!("../../assets/index.html");

/// Embedded assets: name, media type, content.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "map.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/map.js"),
    ),
    (
        "map.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/map.css"),
    ),
    (
        "leaflet.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/vendor/leaflet/leaflet.js"),
    ),
    (
        "leaflet.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/vendor/leaflet/leaflet.css"),
    ),
    (
        "LICENSE-leaflet.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../../assets/vendor/leaflet/LICENSE"),
    ),
];

/// Map settings the page reads: optional tiles for online use.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MapSettings {
    /// Tile URL template (`https://.../{z}/{x}/{y}.png`); `None` draws a
    /// plain background with a graticule and loads nothing from elsewhere.
    pub tile_url: Option<String>,
    /// Attribution shown for the tiles.
    pub tile_attribution: Option<String>,
}

/// Renders the page with `settings` as its config.
pub(crate) fn render_index(settings: &MapSettings) -> String {
    let json = serde_json::to_string(settings).unwrap_or_else(|_| "{}".to_owned());
    // Inside <script> the JSON must not close the element.
    INDEX_HTML.replace("__FLEETD_CONFIG__", &json.replace("</", "<\\/"))
}

/// `GET /`: the live map page.
///
/// A query that carries a position in the OsmAnd / Traccar Client protocol
/// (`?id=…&lat=…&lon=…`) is refused with 400: a tracker pointed at this
/// port would otherwise get the page's 200 and drop a fix it believes
/// delivered.
pub(crate) async fn index(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    if query.as_deref().is_some_and(is_tracker_position) {
        metrics::counter!(
            "fleetd_ingest_refused_total",
            "transport" => "http",
            "reason" => "tracker_protocol_on_api_port"
        )
        .increment(1);
        return Err(ApiError::BadRequest(
            "this is fleetd's API port, and the request looks like an OsmAnd / Traccar Client \
             position (id, lat, lon in the query): fleetd takes that protocol on its OsmAnd \
             listener (--osmand, Traccar's port 5055), not here, and stored nothing"
                .into(),
        ));
    }
    Ok((
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        state.live.index_html.to_string(),
    )
        .into_response())
}

/// Whether a query string names a device and a position as the OsmAnd
/// protocol does: `id` or `deviceid`, and `lat` with `lon` or `location`.
fn is_tracker_position(query: &str) -> bool {
    let has = |name: &str| {
        query.split('&').any(|pair| {
            pair.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(name))
        })
    };
    (has("id") || has("deviceid")) && ((has("lat") && has("lon")) || has("location"))
}

/// `GET /assets/{name}`: one embedded asset, 404 for any other name.
pub(crate) async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    let (_, media_type, body) = ASSETS.iter().find(|(n, _, _)| *n == name).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no asset {:?}",
            name.chars().take(64).collect::<String>()
        ))
    })?;
    Ok((
        [
            (CONTENT_TYPE, HeaderValue::from_static(media_type)),
            (
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        *body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::is_tracker_position;

    #[test]
    fn tracker_positions_are_told_from_map_links() {
        // As Traccar Client and OsmAnd send them.
        assert!(is_tracker_position(
            "id=123456&timestamp=1700000000&lat=52.5&lon=13.4&speed=0&bearing=0&altitude=34&accuracy=5&batt=80"
        ));
        assert!(is_tracker_position("deviceid=dev1&location=52.5,13.4"));
        assert!(is_tracker_position("ID=dev1&LAT=1&LON=2"));
        // The map's own links and bookmarks.
        assert!(!is_tracker_position("token=abc"));
        assert!(!is_tracker_position("lat=52.5&lon=13.4"));
        assert!(!is_tracker_position("id=dev1"));
        assert!(!is_tracker_position(""));
    }
}
