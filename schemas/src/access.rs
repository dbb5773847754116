//! Who may use fleetd: the principals that hold secrets (devices, OwnTracks
//! users), API tokens and their scopes, as the store keeps them. Only
//! SHA-256 hashes of secrets are ever stored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::position::DeviceId;

/// Who a device credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Principal {
    /// One device: MQTT user name and HTTP login are its id; it may publish
    /// `fleet/{id}/…` (and, for an id `user/device`, that OwnTracks topic).
    Device(DeviceId),
    /// An OwnTracks user: its credential covers every `owntracks/{user}/…`
    /// device, the way Mosquitto's `%u` pattern does.
    User(String),
}

impl Principal {
    /// The store key: `device:{id}` or `user:{name}`.
    pub fn key(&self) -> String {
        match self {
            Self::Device(id) => format!("device:{id}"),
            Self::User(name) => format!("user:{name}"),
        }
    }

    /// The user name it logs in with (MQTT user name, HTTP basic user).
    pub fn login(&self) -> &str {
        match self {
            Self::Device(id) => id.as_str(),
            Self::User(name) => name,
        }
    }

    /// Checks an OwnTracks user name: what a device id allows, without `/`.
    pub fn user(name: &str) -> Result<Self, crate::InvalidId> {
        crate::InvalidId::check(crate::IdKind::User, name, |_, c| {
            crate::position::is_id_char(c)
        })?;
        Ok(Self::User(name.to_owned()))
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Device(id) => write!(f, "device {id}"),
            Self::User(name) => write!(f, "user {name}"),
        }
    }
}

/// A stored device credential: whose, and the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCredential {
    /// Whose it is.
    pub principal: Principal,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// When it was issued (or last rotated), Unix ms.
    pub issued_ms: i64,
}

/// What an API token may do. Each includes the ones below it: `admin`
/// may do everything `write` may, `write` everything `read` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Vehicles, tracks, trips, alerts, cells, streams, rejections; MQTT
    /// subscriptions to every device's outbound topics.
    Read,
    /// Geofences and the device registry; posting any device's positions
    /// (a trusted gateway), over HTTP and MQTT.
    Write,
    /// Credentials and tokens.
    Admin,
}

impl Scope {
    /// Every scope, lowest first.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    /// The stable name: `read`, `write` or `admin`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown scope {other:?}: expected read, write or admin"
            )),
        }
    }
}

/// A stored API token (the secret itself is shown once, at creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    /// Public id, part of the token string; used to list and revoke it.
    pub id: String,
    /// What it is for, as its creator named it.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// SHA-256 of the token's secret part, hex.
    pub secret_sha256: String,
    /// When it was created, Unix ms.
    pub created_ms: i64,
    /// When it stops working, Unix ms; `None`: never.
    pub expires_ms: Option<i64>,
    /// A share link's grant: the token then has no scopes and sees only
    /// these devices (`POST /v1/shares`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<ShareGrant>,
}

/// What a share link may see: a few devices' latest position, live
/// updates and recent track, read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareGrant {
    /// The devices it shows.
    pub devices: Vec<DeviceId>,
    /// How far back their track may be read, seconds before now.
    pub history_s: u32,
}

impl ShareGrant {
    /// Whether it shows `device`.
    pub fn shows(&self, device: &DeviceId) -> bool {
        self.devices.contains(device)
    }
}

impl StoredToken {
    /// The highest scope it holds.
    pub fn top_scope(&self) -> Option<Scope> {
        self.scopes.iter().copied().max()
    }
}
