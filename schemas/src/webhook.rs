//! A webhook subscription as stored: where alerts are delivered, which
//! ones, and the secret their signatures are made with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Alert, AlertKind, DeviceId, GeofenceId};

/// Which alerts a webhook receives. Every non-empty list must match (AND
/// across lists, OR within one); empty lists match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFilter {
    /// Alert kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<AlertKind>,
    /// Geofences (alerts without a fence never match a non-empty list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub geofences: Vec<GeofenceId>,
    /// Devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceId>,
    /// Registry tags, each `key` (any value) or `key=value`: the device
    /// must carry at least one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl WebhookFilter {
    /// Whether `alert`, of a device with registry tags `tags`, passes.
    pub fn matches(&self, alert: &Alert, tags: Option<&BTreeMap<String, String>>) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&alert.kind))
            && (self.devices.is_empty() || self.devices.contains(&alert.device_id))
            && (self.geofences.is_empty()
                || alert
                    .geofence_id
                    .as_ref()
                    .is_some_and(|g| self.geofences.contains(g)))
            && (self.tags.is_empty() || self.tags.iter().any(|t| has_tag(tags, t)))
    }
}

/// Whether `tags` holds `wanted` (`key`, or `key=value`).
fn has_tag(tags: Option<&BTreeMap<String, String>>, wanted: &str) -> bool {
    let Some(tags) = tags else { return false };
    match wanted.split_once('=') {
        Some((key, value)) => tags.get(key).is_some_and(|v| v == value),
        None => tags.contains_key(wanted),
    }
}

/// A webhook as stored (shared by every node of a cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWebhook {
    /// Its id, as chosen in `PUT /v1/webhooks/{id}`.
    pub id: String,
    /// Where deliveries are POSTed (`http` or `https`).
    pub url: String,
    /// Which alerts it receives.
    #[serde(default)]
    pub filter: WebhookFilter,
    /// The Standard Webhooks signing secret, `whsec_` and base64 of 24–64
    /// random bytes.
    pub secret: String,
    /// When it was created, Unix ms.
    pub created_ms: i64,
    /// When it last changed, Unix ms.
    pub updated_ms: i64,
}
