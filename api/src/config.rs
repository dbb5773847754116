//! `[api]` and `[live]` of fleetd.toml: the file layer and its validation
//! into [`ApiSettings`] and [`LiveApiSettings`]. Defaults are the settings
//! types' own.

use std::net::SocketAddr;
use std::time::Duration;

use fleetd_live::LiveSettings;
use fleetd_schemas::{InvalidSetting, ensure_setting};
use serde::Deserialize;

use crate::{ConnectionLimits, DEFAULT_REQUEST_TIMEOUT, MapSettings, StreamSettings};

/// `[api]`: the HTTP server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // fleetd.toml documents every key.
pub struct ApiConfig {
    pub http: String,
    pub request_timeout_s: u64,
    pub cors_origins: Vec<String>,
    pub metrics_open: bool,
    pub header_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_connections: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        let limits = ConnectionLimits::default();
        Self {
            http: "0.0.0.0:8080".into(),
            request_timeout_s: DEFAULT_REQUEST_TIMEOUT.as_secs(),
            cors_origins: Vec::new(),
            metrics_open: false,
            header_read_timeout_ms: limits.header_read_timeout.as_millis() as u64,
            idle_timeout_ms: limits.idle_timeout.as_millis() as u64,
            max_connections: limits.max_connections,
        }
    }
}

/// Validated `[api]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    /// Where the HTTP API listens.
    pub http: SocketAddr,
    /// Upper bound on one request ([`crate::ApiState::request_timeout`]).
    pub request_timeout: Duration,
    /// Browser origins (`https://host[:port]`) whose pages may call the
    /// API (CORS) and open live streams; none by default.
    pub cors_origins: Vec<String>,
    /// Whether `GET /metrics` answers without a token (default: it needs
    /// one with `read` scope).
    pub metrics_open: bool,
    /// Timeouts and the connection cap of the listener (the cap as
    /// configured; the binary lowers it to fit the file-descriptor limit).
    pub limits: ConnectionLimits,
}

impl ApiConfig {
    /// Validates the section.
    pub fn validate(&self) -> Result<ApiSettings, InvalidSetting> {
        let http = self.http.parse().map_err(|_| {
            InvalidSetting(format!(
                "api.http (--http): {:?} is not an address like 0.0.0.0:8080",
                self.http
            ))
        })?;
        ensure_setting!(
            self.request_timeout_s > 0,
            "api.request_timeout_s must be > 0"
        );
        ensure_setting!(
            self.header_read_timeout_ms > 0 && self.idle_timeout_ms > 0,
            "api.header_read_timeout_ms and api.idle_timeout_ms must be > 0"
        );
        ensure_setting!(self.max_connections > 0, "api.max_connections must be > 0");
        let cors_origins = self
            .cors_origins
            .iter()
            .map(|origin| normalize_origin(origin))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ApiSettings {
            http,
            request_timeout: Duration::from_secs(self.request_timeout_s),
            cors_origins,
            metrics_open: self.metrics_open,
            limits: ConnectionLimits {
                header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
                idle_timeout: Duration::from_millis(self.idle_timeout_ms),
                max_connections: self.max_connections,
            },
        })
    }
}

/// An origin as browsers send it in `Origin`: `scheme://host[:port]`,
/// lowercase, no path. A trailing `/` is forgiven.
fn normalize_origin(origin: &str) -> Result<String, InvalidSetting> {
    let trimmed = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"));
    let valid = rest.is_some_and(|host| {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
    });
    ensure_setting!(
        valid,
        "api.cors_origins: {origin:?} is not an origin like https://dashboard.example:8443 (scheme, host and port only)"
    );
    Ok(trimmed)
}

/// `[live]`: the live hub, live streams, the heatmap and the map page.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // fleetd.toml documents every key.
pub struct LiveConfig {
    pub replay_positions: usize,
    pub replay_alerts: usize,
    pub replay_age_s: u64,
    pub broadcast_batches: usize,
    pub heartbeat_s: u64,
    pub client_buffer_bytes: usize,
    pub client_buffer_frames: usize,
    pub cells_max_age_s: u64,
    pub tile_url: String,
    pub tile_attribution: String,
}

impl Default for LiveConfig {
    fn default() -> Self {
        let hub = LiveSettings::default();
        let stream = StreamSettings::default();
        Self {
            replay_positions: hub.replay_positions,
            replay_alerts: hub.replay_alerts,
            replay_age_s: hub.replay_age.as_secs(),
            broadcast_batches: hub.broadcast_batches,
            heartbeat_s: stream.heartbeat.as_secs(),
            client_buffer_bytes: stream.client_buffer_bytes,
            client_buffer_frames: stream.client_buffer_frames,
            cells_max_age_s: hub.cells_max_age.as_secs(),
            tile_url: String::new(),
            tile_attribution: String::new(),
        }
    }
}

/// Validated `[live]`: what the hub, the streams and the map page get.
#[derive(Debug, Clone)]
pub struct LiveApiSettings {
    /// The hub's replay buffers and broadcast.
    pub hub: LiveSettings,
    /// Per-client stream limits.
    pub streams: StreamSettings,
    /// The map page's tiles.
    pub map: MapSettings,
}

impl LiveConfig {
    /// Validates the section.
    pub fn validate(&self) -> Result<LiveApiSettings, InvalidSetting> {
        ensure_setting!(
            self.broadcast_batches > 0 && self.client_buffer_frames > 0,
            "live.broadcast_batches and live.client_buffer_frames must be > 0"
        );
        ensure_setting!(
            self.client_buffer_bytes >= 4096,
            "live.client_buffer_bytes must be at least 4096, got {}",
            self.client_buffer_bytes
        );
        ensure_setting!(
            (1..=3600).contains(&self.heartbeat_s),
            "live.heartbeat_s must be in 1..=3600, got {}",
            self.heartbeat_s
        );
        ensure_setting!(
            self.replay_age_s > 0 && self.cells_max_age_s > 0,
            "live.replay_age_s and live.cells_max_age_s must be > 0"
        );
        let tile_url = self.tile_url.trim();
        let is_http = tile_url.starts_with("http://") || tile_url.starts_with("https://");
        ensure_setting!(
            tile_url.is_empty() || is_http,
            "live.tile_url must be an http(s) URL template like https://tile.example/{{z}}/{{x}}/{{y}}.png, got {tile_url:?}"
        );
        let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        Ok(LiveApiSettings {
            hub: LiveSettings {
                replay_positions: self.replay_positions,
                replay_alerts: self.replay_alerts,
                replay_age: Duration::from_secs(self.replay_age_s),
                broadcast_batches: self.broadcast_batches,
                cells_max_age: Duration::from_secs(self.cells_max_age_s),
            },
            streams: StreamSettings {
                heartbeat: Duration::from_secs(self.heartbeat_s),
                client_buffer_bytes: self.client_buffer_bytes,
                client_buffer_frames: self.client_buffer_frames,
                ..StreamSettings::default()
            },
            map: MapSettings {
                tile_url: non_empty(&self.tile_url),
                tile_attribution: non_empty(&self.tile_attribution),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        let api = ApiConfig::default().validate().expect("valid");
        assert_eq!(api.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        let bad = ApiConfig {
            http: "nope".into(),
            ..ApiConfig::default()
        };
        assert!(
            bad.validate()
                .expect_err("bad address")
                .0
                .contains("api.http")
        );
        assert!(api.cors_origins.is_empty() && !api.metrics_open);
        let cors = ApiConfig {
            cors_origins: vec!["https://Dash.example:8443/".into()],
            ..ApiConfig::default()
        };
        assert_eq!(
            cors.validate().expect("valid").cors_origins,
            ["https://dash.example:8443"]
        );
        let bad = ApiConfig {
            cors_origins: vec!["dash.example/x".into()],
            ..ApiConfig::default()
        };
        assert!(
            bad.validate()
                .expect_err("bad origin")
                .0
                .contains("api.cors_origins")
        );
        LiveConfig::default().validate().expect("valid");
        let bad = LiveConfig {
            tile_url: "tiles/{z}/{x}/{y}.png".into(),
            ..LiveConfig::default()
        };
        assert!(
            bad.validate()
                .expect_err("bad url")
                .0
                .contains("live.tile_url")
        );
        let bad = LiveConfig {
            client_buffer_bytes: 10,
            ..LiveConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
