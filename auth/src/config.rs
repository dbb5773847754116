//! `[auth]` of fleetd.toml, validated into [`AccessSettings`].

use std::time::Duration;

use fleetd_schemas::{InvalidSetting, ensure_setting};
use serde::Deserialize;

use crate::AccessSettings;

/// `[auth]`: every key has a default; unknown keys are errors.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // fleetd.toml documents every key.
pub struct AuthConfig {
    pub allow_anonymous: bool,
    pub max_failed_logins_per_minute: u32,
    pub token_refresh_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        let settings = AccessSettings::default();
        Self {
            allow_anonymous: settings.allow_anonymous,
            max_failed_logins_per_minute: settings.max_failed_logins_per_minute,
            token_refresh_s: DEFAULT_TOKEN_REFRESH.as_secs(),
        }
    }
}

/// How often API tokens are reloaded from the store by default.
const DEFAULT_TOKEN_REFRESH: Duration = Duration::from_secs(10);

/// Validated `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// What the access service runs with.
    pub access: AccessSettings,
    /// How often API tokens are reloaded from the store.
    pub token_refresh: Duration,
}

impl AuthConfig {
    /// Validates the section.
    pub fn validate(&self) -> Result<AuthSettings, InvalidSetting> {
        ensure_setting!(
            self.token_refresh_s >= 1,
            "auth.token_refresh_s must be at least 1"
        );
        Ok(AuthSettings {
            access: AccessSettings {
                allow_anonymous: self.allow_anonymous,
                max_failed_logins_per_minute: self.max_failed_logins_per_minute,
            },
            token_refresh: Duration::from_secs(self.token_refresh_s),
        })
    }
}
