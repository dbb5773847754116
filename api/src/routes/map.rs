//! The live map page (`GET /`) and its assets, embedded in the binary so
//! that the page works offline: Leaflet (vendored from npm, BSD-2-Clause)
//! and fleetd's own script and style.

use axum::extract::State;
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
pub(crate) async fn index(State(state): State<ApiState>) -> Response {
    (
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        state.live.index_html.to_string(),
    )
        .into_response()
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
