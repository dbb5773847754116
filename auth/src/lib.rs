//! Identity and access for fleetd: who may connect, publish, subscribe and
//! call the API.
//!
//! * [`Access`] is the one service every transport asks. It issues device
//!   credentials (a server-made secret of 192 random bits per device or
//!   OwnTracks user; only its SHA-256 is stored, no slow hash is needed for
//!   a secret nobody chose), API tokens with [`Scope`]s, verifies logins
//!   ([`Access::login`]) and bearer tokens ([`Access::bearer`]), and tells
//!   open sessions when their credential was rotated or revoked
//!   ([`Access::watch`]).
//! * [`Identity`] is what a verified login is; [`acl`] says which topics it
//!   may publish and subscribe to (the Mosquitto `%u` pattern, for fleetd's
//!   own topics and OwnTracks').
//! * [`LoginThrottle`] slows down guessing: failed logins per source address.
//! * [`admin_token`] keeps the admin token of first start in the data
//!   directory (`admin.token`, mode 0600).
//!
//! Credentials and tokens live in the [`fleetd_store::Store`], so several
//! fleetd nodes on one ScyllaDB cluster share them. Tokens are few and kept
//! in memory (reloaded periodically, see [`Access::refresh_tokens`]);
//! device credentials are read from the store at each login.

pub mod acl;
mod admin;
mod config;
mod error;
mod secret;
mod throttle;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use fleetd_schemas::{
    DeviceId, Principal, Scope, ShareGrant, StoredCredential, StoredToken, now_ms,
};
use fleetd_store::Store;
use tokio::sync::watch;

pub use admin::{ADMIN_TOKEN_FILE, AdminToken, admin_token, reset_admin_token};
pub use config::{AuthConfig, AuthSettings};
pub use error::{AccessError, LoginError};
pub use secret::{TOKEN_PREFIX, hash_secret, new_secret};
pub use throttle::LoginThrottle;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A device with its own credential.
    Device(DeviceId),
    /// An OwnTracks user: every `user/device` of it.
    User(String),
    /// A holder of an API token (a dashboard, a trusted gateway).
    Service {
        /// The token's public id.
        token_id: String,
        /// Its highest scope.
        scope: Scope,
    },
    /// The holder of a share link: read-only, a few devices, recent
    /// history.
    Share {
        /// The link's token id.
        token_id: String,
        /// What it may see.
        grant: Arc<ShareGrant>,
    },
    /// Nobody checked (`--allow-anonymous`): today's open behaviour.
    Anonymous,
}

impl Identity {
    /// Whether it may do what `needed` allows (a device or user may do
    /// nothing of the API's scopes; anonymous may do everything).
    pub fn has_scope(&self, needed: Scope) -> bool {
        match self {
            Self::Service { scope, .. } => *scope >= needed,
            Self::Anonymous => true,
            Self::Device(_) | Self::User(_) | Self::Share { .. } => false,
        }
    }

    /// The share grant of a share link's holder; `None` for everybody else.
    pub fn share(&self) -> Option<&ShareGrant> {
        match self {
            Self::Share { grant, .. } => Some(grant),
            _ => None,
        }
    }

    /// The name it is logged and sampled under (`device truck-1`, `user
    /// alice`, `token 3f2a…`, `anonymous`).
    pub fn label(&self) -> String {
        match self {
            Self::Device(id) => format!("device {id}"),
            Self::User(name) => format!("user {name}"),
            Self::Service { token_id, .. } => format!("token {token_id}"),
            Self::Share { token_id, .. } => format!("share {token_id}"),
            Self::Anonymous => "anonymous".into(),
        }
    }

    /// The key its session watch is filed under, if it has one.
    fn watch_key(&self) -> Option<String> {
        match self {
            Self::Device(id) => Some(Principal::Device(id.clone()).key()),
            Self::User(name) => Some(Principal::User(name.clone()).key()),
            Self::Service { token_id, .. } | Self::Share { token_id, .. } => {
                Some(token_key(token_id))
            }
            Self::Anonymous => None,
        }
    }
}

fn token_key(id: &str) -> String {
    format!("token:{id}")
}

/// A device credential as issued: the secret is shown once, here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IssuedCredential {
    /// The device it is for (for an OwnTracks user: the user name).
    pub device_id: String,
    /// The MQTT user name and HTTP login.
    pub username: String,
    /// The secret: the MQTT password and HTTP password.
    pub password: String,
}

/// An API token as created: the token string is shown once, here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The stored record (no secret).
    pub record: StoredToken,
    /// The whole token, `fltd_{id}_{secret}`, for `Authorization: Bearer`.
    pub token: String,
}

/// Settings of [`Access`].
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// No authentication at all (`--allow-anonymous`).
    pub allow_anonymous: bool,
    /// Failed logins per source address per minute before further attempts
    /// are refused unchecked for the rest of the minute.
    pub max_failed_logins_per_minute: u32,
}

impl Default for AccessSettings {
    fn default() -> Self {
        Self {
            allow_anonymous: false,
            max_failed_logins_per_minute: 20,
        }
    }
}

/// The access service; cheap to share (`Arc`).
pub struct Access {
    store: Arc<dyn Store>,
    settings: AccessSettings,
    tokens: RwLock<HashMap<String, StoredToken>>,
    throttle: LoginThrottle,
    /// One watch per principal or token with open sessions: bumped when its
    /// credential is rotated or revoked, which closes those sessions.
    watches: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("allow_anonymous", &self.settings.allow_anonymous)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// The service over `store`, with its API tokens loaded.
    pub async fn open(
        store: Arc<dyn Store>,
        settings: AccessSettings,
    ) -> Result<Self, AccessError> {
        let throttle = LoginThrottle::new(settings.max_failed_logins_per_minute);
        let access = Self {
            store,
            settings,
            tokens: RwLock::default(),
            throttle,
            watches: Mutex::default(),
        };
        access.refresh_tokens().await?;
        Ok(access)
    }

    /// Whether authentication is off.
    pub fn allow_anonymous(&self) -> bool {
        self.settings.allow_anonymous
    }

    /// Reloads the API tokens from the store (tokens other nodes made or
    /// revoked); sessions of tokens that disappeared are closed.
    pub async fn refresh_tokens(&self) -> Result<(), AccessError> {
        let stored = self.store.all_tokens().await?;
        let fresh: HashMap<String, StoredToken> =
            stored.into_iter().map(|t| (t.id.clone(), t)).collect();
        let gone: Vec<String> = {
            let mut tokens = write(&self.tokens);
            let gone = tokens
                .keys()
                .filter(|id| !fresh.contains_key(*id))
                .cloned()
                .collect();
            *tokens = fresh;
            gone
        };
        for id in gone {
            self.bump(&token_key(&id));
        }
        metrics::gauge!("fleetd_api_tokens").set(read(&self.tokens).len() as f64);
        Ok(())
    }

    /// Issues a fresh secret for each principal, replacing (rotating) any
    /// it had: the old secret stops working at once and sessions opened
    /// with it are closed. One store write for the whole list.
    pub async fn issue_credentials(
        &self,
        principals: &[Principal],
    ) -> Result<Vec<IssuedCredential>, AccessError> {
        let issued_ms = now_ms();
        let mut stored = Vec::with_capacity(principals.len());
        let mut issued = Vec::with_capacity(principals.len());
        for principal in principals {
            let secret = new_secret();
            stored.push(StoredCredential {
                principal: principal.clone(),
                secret_sha256: hash_secret(&secret),
                issued_ms,
            });
            issued.push(IssuedCredential {
                device_id: principal.login().to_owned(),
                username: principal.login().to_owned(),
                password: secret,
            });
        }
        self.store.put_credentials(&stored).await?;
        for principal in principals {
            self.bump(&principal.key());
        }
        metrics::counter!("fleetd_credentials_issued_total").increment(principals.len() as u64);
        Ok(issued)
    }

    /// Revokes a principal's credential; `false` if it had none. Its open
    /// sessions are closed.
    pub async fn revoke_credential(&self, principal: &Principal) -> Result<bool, AccessError> {
        let existed = self.store.delete_credential(principal).await?;
        self.bump(&principal.key());
        Ok(existed)
    }

    /// Verifies a login (MQTT CONNECT, HTTP basic) from `peer`: a device
    /// id or OwnTracks user with its secret, or any user name with an API
    /// token as the password (a service). Failed attempts are throttled per
    /// address.
    pub async fn login(
        &self,
        username: Option<&str>,
        password: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<Identity, LoginError> {
        if self.settings.allow_anonymous {
            return Ok(Identity::Anonymous);
        }
        if let Some(ip) = peer
            && self.throttle.is_throttled(ip)
        {
            metrics::counter!("fleetd_auth_throttled_total").increment(1);
            return Err(LoginError::Throttled);
        }
        let result = self.check_login(username, password).await;
        match &result {
            Ok(_) => metrics::counter!("fleetd_auth_logins_total", "result" => "ok").increment(1),
            Err(LoginError::Store(_)) => {
                metrics::counter!("fleetd_auth_logins_total", "result" => "error").increment(1)
            }
            Err(_) => {
                metrics::counter!("fleetd_auth_logins_total", "result" => "refused").increment(1);
                if let Some(ip) = peer {
                    self.throttle.failed(ip);
                }
            }
        }
        result
    }

    async fn check_login(
        &self,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Identity, LoginError> {
        let password = password.ok_or(LoginError::NoCredentials)?;
        if password.starts_with(TOKEN_PREFIX) {
            // A share link is a bearer token for the map, not a login.
            return match self.token(password)? {
                Identity::Share { .. } => Err(LoginError::Wrong),
                identity => Ok(identity),
            };
        }
        let username = username.ok_or(LoginError::NoCredentials)?;
        let offered = hash_secret(password);
        // A user name may be a device id, an OwnTracks user, or (for a name
        // without `/`) both: either credential may match.
        let mut candidates = Vec::with_capacity(2);
        if let Ok(id) = DeviceId::parse(username) {
            candidates.push(Principal::Device(id));
        }
        if let Ok(user) = Principal::user(username) {
            candidates.push(user);
        }
        for principal in candidates {
            if let Some(stored) = self.store.credential(&principal).await?
                && secret::same_hash(&stored.secret_sha256, &offered)
            {
                return Ok(match principal {
                    Principal::Device(id) => Identity::Device(id),
                    Principal::User(name) => Identity::User(name),
                });
            }
        }
        Err(LoginError::Wrong)
    }

    /// Verifies an `Authorization: Bearer` token.
    pub fn bearer(&self, token: &str) -> Result<Identity, LoginError> {
        if self.settings.allow_anonymous {
            return Ok(Identity::Anonymous);
        }
        self.token(token)
    }

    fn token(&self, token: &str) -> Result<Identity, LoginError> {
        let (id, secret) = secret::split_token(token).ok_or(LoginError::Wrong)?;
        let tokens = read(&self.tokens);
        let stored = tokens.get(id).ok_or(LoginError::Wrong)?;
        if !secret::same_hash(&stored.secret_sha256, &hash_secret(secret)) {
            return Err(LoginError::Wrong);
        }
        if stored.expires_ms.is_some_and(|at| at <= now_ms()) {
            return Err(LoginError::Expired);
        }
        if let Some(grant) = &stored.share {
            return Ok(Identity::Share {
                token_id: stored.id.clone(),
                grant: Arc::new(grant.clone()),
            });
        }
        let scope = stored.top_scope().ok_or(LoginError::Wrong)?;
        Ok(Identity::Service {
            token_id: stored.id.clone(),
            scope,
        })
    }

    /// Creates an API token; its secret is in the answer only.
    pub async fn create_token(
        &self,
        name: &str,
        scopes: &[Scope],
        expires_in: Option<Duration>,
    ) -> Result<IssuedToken, AccessError> {
        if scopes.is_empty() {
            return Err(AccessError::Invalid(
                "a token needs at least one scope".into(),
            ));
        }
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        self.issue_token(name, scopes, expires_in, None).await
    }

    /// Creates a share link's token: no scopes, `grant`'s devices only,
    /// until `expires_in` from now (a share always expires).
    pub async fn create_share(
        &self,
        name: &str,
        grant: ShareGrant,
        expires_in: Duration,
    ) -> Result<IssuedToken, AccessError> {
        if grant.devices.is_empty() {
            return Err(AccessError::Invalid(
                "a share link shows at least one device".into(),
            ));
        }
        self.issue_token(name, Vec::new(), Some(expires_in), Some(grant))
            .await
    }

    async fn issue_token(
        &self,
        name: &str,
        scopes: Vec<Scope>,
        expires_in: Option<Duration>,
        share: Option<ShareGrant>,
    ) -> Result<IssuedToken, AccessError> {
        let (id, secret, token) = secret::new_token();
        let created_ms = now_ms();
        let record = StoredToken {
            id: id.clone(),
            name: name.to_owned(),
            scopes,
            secret_sha256: hash_secret(&secret),
            created_ms,
            expires_ms: expires_in.map(|d| {
                created_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            }),
            share,
        };
        self.store.put_token(&record).await?;
        write(&self.tokens).insert(id, record.clone());
        metrics::gauge!("fleetd_api_tokens").set(read(&self.tokens).len() as f64);
        Ok(IssuedToken { record, token })
    }

    /// Every API token, without secrets, oldest first.
    pub fn tokens(&self) -> Vec<StoredToken> {
        let mut all: Vec<StoredToken> = read(&self.tokens).values().cloned().collect();
        all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        all
    }

    /// Revokes a token; `false` if there was none. Its sessions close.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, AccessError> {
        let existed = self.store.delete_token(id).await?;
        let cached = write(&self.tokens).remove(id).is_some();
        self.bump(&token_key(id));
        Ok(existed || cached)
    }

    /// Resolves when `identity`'s credential is rotated or revoked, or its
    /// token expires (never, for anonymous sessions): open sessions watch
    /// it and close.
    pub fn watch(&self, identity: &Identity) -> impl Future<Output = ()> + Send + 'static {
        let expires_ms = match identity {
            Identity::Service { token_id, .. } | Identity::Share { token_id, .. } => {
                read(&self.tokens).get(token_id).and_then(|t| t.expires_ms)
            }
            _ => None,
        };
        let changed = self.changed(identity);
        async move {
            let Some(at) = expires_ms else {
                return changed.await;
            };
            let left = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep(Duration::from_millis(left)) => {}
            }
        }
    }

    fn changed(&self, identity: &Identity) -> impl Future<Output = ()> + Send + 'static {
        let receiver = identity.watch_key().map(|key| {
            let mut watches = lock(&self.watches);
            // Drop the watches nobody holds any more, now and then, so the
            // map stays as large as the set of connected principals.
            if watches.len() >= 1024 && watches.len().is_power_of_two() {
                watches.retain(|_, tx| tx.receiver_count() > 0);
            }
            watches
                .entry(key)
                .or_insert_with(|| watch::channel(0).0)
                .subscribe()
        });
        async move {
            match receiver {
                Some(mut rx) => {
                    // An error means the sender was dropped: nothing can
                    // change any more, so the session stays.
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn bump(&self, key: &str) {
        if let Some(tx) = lock(&self.watches).remove(key) {
            tx.send_modify(|generation| *generation += 1);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests;
