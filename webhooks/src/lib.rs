//! Webhooks for alerts: every alert the processor raises is POSTed to each
//! webhook whose filter it matches, signed as Standard Webhooks
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`; see [`sign`]).
//!
//! * The processor appends a batch's alerts to the [`Outbox`] before it
//!   stores the batch, so an alert the store keeps is never lost to its
//!   webhooks by a crash (at-least-once; a replayed batch may deliver an
//!   alert twice, with the same `webhook-id`).
//! * A fan-out task moves each alert from the outbox into the pending list
//!   of every matching hook (bounded: [`WebhookSettings::max_pending`];
//!   beyond it the alert becomes a dead letter, counted).
//! * One delivery task per hook sends its pending alerts one at a time, in
//!   order (so each device's alerts arrive in order), retrying a failure
//!   with exponential backoff and jitter up to
//!   [`WebhookSettings::max_attempts`], then keeping it as a dead letter
//!   that the API lists and can redeliver. A slow or dead receiver holds up
//!   only its own hook: the processor only ever appends to a local queue.
//! * Hooks are stored in the [`Store`] (shared by a cluster's nodes and
//!   reloaded every [`WebhookSettings::refresh`]); the queues are local to
//!   the node that raised the alerts (`{data}/webhooks`), sealed under the
//!   store key when there is one.

mod queue;
pub mod sign;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetd_schemas::{Alert, StoredWebhook, WebhookFilter, now_ms};
use fleetd_store::{Registry, Sealer, Store, StoreError};
use rand::Rng;
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use queue::{DeadLetter, Placed, Queue, Queued};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// A webhook as asked for is invalid; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// The delivery queue failed (I/O, a full disk).
    #[error("webhook queue: {0}")]
    Queue(#[from] fjall::Error),
    /// A queued value does not decode.
    #[error("webhook queue: corrupt value: {0}")]
    Corrupt(String),
    /// The store (where hooks live) failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking queue task failed.
    #[error("webhook queue task: {0}")]
    Task(String),
}

/// Settings (`[webhooks]` in fleetd.toml).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The queue's directory (`{data}/webhooks`).
    pub dir: PathBuf,
    /// Most alerts pending per hook; more become dead letters.
    pub max_pending: usize,
    /// Attempts per alert before it becomes a dead letter.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubles per attempt.
    pub backoff_initial: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Time one request may take (connect, send, answer).
    pub timeout: Duration,
    /// How often hooks are reloaded from the store (changes made on other
    /// nodes).
    pub refresh: Duration,
    /// Sync outbox appends to the disk (`durability = power`), not only to
    /// the OS.
    pub sync: bool,
}

impl WebhookSettings {
    /// The defaults, with the queue in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            max_pending: 10_000,
            max_attempts: 10,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
            refresh: Duration::from_secs(10),
            sync: false,
        }
    }
}

/// Most characters of a hook id; ids use `A-Z a-z 0-9 . _ -`.
pub const MAX_ID_LEN: usize = 64;
/// Longest URL.
pub const MAX_URL_LEN: usize = 2048;
/// Most entries per filter list.
pub const MAX_FILTER_ENTRIES: usize = 100;

/// Checks a hook id.
pub fn check_id(id: &str) -> Result<(), WebhookError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(WebhookError::Invalid(format!(
            "webhook ids are 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// What `PUT /v1/webhooks/{id}` asks for.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// Where to POST (`http://` or `https://`, absolute).
    pub url: String,
    /// Which alerts (default: all).
    #[serde(default)]
    pub filter: WebhookFilter,
    /// The signing secret (`whsec_…`); kept when a hook is replaced
    /// without one, made up when a new hook comes without one.
    #[serde(default)]
    pub secret: Option<String>,
}

/// A hook as the API shows it: no secret, with this node's queue figures.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookView {
    /// Its id.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// Which alerts it gets.
    pub filter: WebhookFilter,
    /// Created, Unix ms.
    pub created_ms: i64,
    /// Last changed, Unix ms.
    pub updated_ms: i64,
    /// Alerts waiting on this node.
    pub pending: usize,
    /// Dead letters on this node.
    pub dead_letters: usize,
}

/// The characters a URL may hold (RFC 3986: unreserved, reserved and `%`).
fn is_url_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b)
}

/// Whether `url` has the form the API document gives: `http://` or
/// `https://`, a host name of letters, digits and `-` in dot-separated
/// labels whose last starts with a letter (or a dotted-quad IPv4 address),
/// an optional port (1 to 65535), then an optional path (with
/// query) of URL characters. No user info, no IP literals in brackets:
/// hooks name their receivers.
fn well_formed(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let (host, port) = authority.split_once(':').unwrap_or((authority, ""));
    let label_ok =
        |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    // A host whose last label is a number is an IPv4 address to URL
    // parsers: then it must be a dotted quad without leading zeros; a
    // name's last label starts with a letter.
    let octet_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 3
            && l.bytes().all(|b| b.is_ascii_digit())
            && (l == "0" || !l.starts_with('0'))
            && l.parse::<u8>().is_ok()
    };
    let labels: Vec<&str> = host.split('.').collect();
    let host_ok = match labels.last() {
        Some(last) if last.starts_with(|c: char| c.is_ascii_alphabetic()) => {
            labels.iter().all(|l| label_ok(l))
        }
        _ => labels.len() == 4 && labels.iter().all(|l| octet_ok(l)),
    };
    let port_ok = port.is_empty() && !authority.contains(':')
        || port.bytes().all(|b| b.is_ascii_digit())
            && !port.starts_with('0')
            && port.parse::<u16>().is_ok();
    host_ok && port_ok && path.bytes().all(is_url_char)
}

fn check_url(url: &str) -> Result<(), WebhookError> {
    if url.len() > MAX_URL_LEN {
        return Err(WebhookError::Invalid(format!(
            "url is longer than {MAX_URL_LEN} characters"
        )));
    }
    if !well_formed(url) {
        return Err(WebhookError::Invalid(
            "url must be http:// or https://, a host name, an optional port and a path of URL characters"
                .into(),
        ));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| WebhookError::Invalid(format!("url is not an absolute URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(WebhookError::Invalid(
            "url must be http:// or https:// with a host".into(),
        ));
    }
    Ok(())
}

fn check_filter(filter: &WebhookFilter) -> Result<(), WebhookError> {
    let lists = [
        ("kinds", filter.kinds.len()),
        ("geofences", filter.geofences.len()),
        ("devices", filter.devices.len()),
        ("tags", filter.tags.len()),
    ];
    for (name, n) in lists {
        if n > MAX_FILTER_ENTRIES {
            return Err(WebhookError::Invalid(format!(
                "filter.{name} has {n} entries; at most {MAX_FILTER_ENTRIES}"
            )));
        }
    }
    if filter
        .tags
        .iter()
        .any(|t| t.is_empty() || t.starts_with('='))
    {
        return Err(WebhookError::Invalid(
            "filter.tags entries are `key` or `key=value`".into(),
        ));
    }
    Ok(())
}

/// Where the processor puts alerts for webhooks. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    queue: Arc<Queue>,
    wake: Arc<Notify>,
}

impl Outbox {
    /// Appends `alerts`, durably, before their batch is stored. Blocks on
    /// disk I/O: call it from a blocking task.
    pub fn append(&self, alerts: &[Alert]) -> Result<(), WebhookError> {
        self.queue.append(alerts, now_ms())?;
        self.wake.notify_one();
        Ok(())
    }
}

/// A hook in force on this node, with what it is signed with.
struct Hook {
    stored: StoredWebhook,
    key: Vec<u8>,
}

/// A running hook's delivery task.
struct Running {
    spec: watch::Sender<Arc<Hook>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
}

struct Inner {
    queue: Arc<Queue>,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    settings: WebhookSettings,
    client: reqwest::Client,
    running: Mutex<HashMap<String, Running>>,
    /// Held by a fan-out round and by a hook's deletion, so a round never
    /// files alerts for a hook deleted under it.
    fan_out: tokio::sync::Mutex<()>,
    outbox_wake: Arc<Notify>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// The webhook service: the API's handle and the tasks that deliver.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

impl Webhooks {
    /// Opens the queue, loads the hooks from `store`, and starts the
    /// fan-out, the refresh and one delivery task per hook; they stop when
    /// `cancel` fires ([`Webhooks::join`] waits for them).
    pub async fn start(
        settings: WebhookSettings,
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        sealer: Option<Arc<Sealer>>,
        cancel: CancellationToken,
    ) -> Result<(Webhooks, Outbox), WebhookError> {
        let (dir, sync) = (settings.dir.clone(), settings.sync);
        let queue = tokio::task::spawn_blocking(move || Queue::open(&dir, sealer, sync))
            .await
            .map_err(|e| WebhookError::Task(e.to_string()))??;
        let queue = Arc::new(queue);
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fleetd-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::Invalid(format!("webhook HTTP client: {e}")))?;
        let outbox_wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            queue: Arc::clone(&queue),
            store,
            registry,
            settings,
            client,
            running: Mutex::new(HashMap::new()),
            fan_out: tokio::sync::Mutex::new(()),
            outbox_wake: Arc::clone(&outbox_wake),
            cancel,
            tasks: TaskTracker::new(),
        });
        let hooks = Webhooks { inner };
        hooks.reload().await?;
        let me = hooks.clone();
        hooks
            .inner
            .tasks
            .spawn(async move { me.fan_out_loop().await });
        let me = hooks.clone();
        hooks
            .inner
            .tasks
            .spawn(async move { me.refresh_loop().await });
        tracing::info!(
            hooks = hooks.running_ids().len(),
            dir = %hooks.inner.settings.dir.display(),
            "webhooks started"
        );
        let outbox = Outbox {
            queue,
            wake: outbox_wake,
        };
        Ok((hooks, outbox))
    }

    /// Waits for every task after the cancellation token fired.
    pub async fn join(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running_ids(&self) -> Vec<String> {
        self.running().keys().cloned().collect()
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, WebhookError>
    where
        T: Send + 'static,
        F: FnOnce(&Queue) -> Result<T, WebhookError> + Send + 'static,
    {
        let queue = Arc::clone(&self.inner.queue);
        tokio::task::spawn_blocking(move || f(&queue))
            .await
            .map_err(|e| WebhookError::Task(e.to_string()))?
    }

    /// Brings the running hooks in line with the store.
    async fn reload(&self) -> Result<(), WebhookError> {
        let stored = self.inner.store.all_webhooks().await?;
        let mut seen = Vec::with_capacity(stored.len());
        for hook in stored {
            seen.push(hook.id.clone());
            if let Err(e) = self.install(hook.clone()) {
                tracing::warn!(hook = %hook.id, error = %e, "stored webhook is invalid; not delivering to it");
            }
        }
        for id in self.running_ids() {
            if !seen.contains(&id) {
                self.uninstall(&id).await?;
            }
        }
        Ok(())
    }

    /// Starts (or updates) the delivery task of `hook`.
    fn install(&self, stored: StoredWebhook) -> Result<(), WebhookError> {
        let key = sign::secret_key(&stored.secret)?;
        let hook = Arc::new(Hook { stored, key });
        let id = hook.stored.id.clone();
        let mut running = self.running();
        if let Some(r) = running.get(&id) {
            if r.spec.borrow().stored != hook.stored {
                r.spec.send_replace(hook);
            }
            return Ok(());
        }
        let (spec, spec_rx) = watch::channel(hook);
        let wake = Arc::new(Notify::new());
        let stop = self.inner.cancel.child_token();
        running.insert(
            id.clone(),
            Running {
                spec,
                wake: Arc::clone(&wake),
                stop: stop.clone(),
            },
        );
        drop(running);
        let me = self.clone();
        self.inner
            .tasks
            .spawn(async move { me.deliver_loop(id, spec_rx, wake, stop).await });
        Ok(())
    }

    /// Stops the delivery task of `id` and deletes its queue.
    async fn uninstall(&self, id: &str) -> Result<(), WebhookError> {
        let _round = self.inner.fan_out.lock().await;
        if let Some(r) = self.running().remove(id) {
            r.stop.cancel();
        }
        let owned = id.to_owned();
        self.blocking(move |q| q.forget(&owned)).await?;
        metrics::gauge!("fleetd_webhook_pending", "hook" => id.to_owned()).set(0.0);
        tracing::info!(hook = id, "webhook removed");
        Ok(())
    }

    /// Hook `id` as stored (the store holds a cluster's hooks).
    async fn stored(&self, id: &str) -> Result<Option<StoredWebhook>, WebhookError> {
        let all = self.inner.store.all_webhooks().await?;
        Ok(all.into_iter().find(|h| h.id == id))
    }

    /// Creates or replaces hook `id`; answers it (with its secret) and
    /// whether it is new.
    pub async fn put(
        &self,
        id: &str,
        request: WebhookRequest,
    ) -> Result<(StoredWebhook, bool), WebhookError> {
        check_id(id)?;
        check_url(&request.url)?;
        check_filter(&request.filter)?;
        if let Some(secret) = &request.secret {
            sign::secret_key(secret)?;
        }
        let existing = self.stored(id).await?;
        let now = now_ms();
        let created = existing.is_none();
        let secret = match (request.secret, &existing) {
            (Some(s), _) => s,
            (None, Some(old)) => old.secret.clone(),
            (None, None) => sign::new_secret(),
        };
        let hook = StoredWebhook {
            id: id.to_owned(),
            url: request.url,
            filter: request.filter,
            secret,
            created_ms: existing.as_ref().map_or(now, |h| h.created_ms),
            updated_ms: now,
        };
        self.inner.store.put_webhook(&hook).await?;
        self.install(hook.clone())?;
        tracing::info!(hook = id, url = %hook.url, created, "webhook saved");
        Ok((hook, created))
    }

    /// Deletes hook `id` and its queue on this node; `false` if there was
    /// none. Nothing is delivered to it afterwards (a request in flight is
    /// abandoned).
    pub async fn delete(&self, id: &str) -> Result<bool, WebhookError> {
        check_id(id)?;
        let existed = self.inner.store.delete_webhook(id).await?;
        self.uninstall(id).await?;
        Ok(existed)
    }

    /// Every hook, by id.
    pub async fn list(&self) -> Result<Vec<WebhookView>, WebhookError> {
        let mut hooks = self.inner.store.all_webhooks().await?;
        hooks.sort_by(|a, b| a.id.cmp(&b.id));
        let mut out = Vec::with_capacity(hooks.len());
        for hook in hooks {
            out.push(self.view(hook).await?);
        }
        Ok(out)
    }

    /// Hook `id`.
    pub async fn get(&self, id: &str) -> Result<Option<WebhookView>, WebhookError> {
        check_id(id)?;
        let found = self.stored(id).await?;
        match found {
            Some(hook) => Ok(Some(self.view(hook).await?)),
            None => Ok(None),
        }
    }

    async fn view(&self, hook: StoredWebhook) -> Result<WebhookView, WebhookError> {
        let id = hook.id.clone();
        let (pending, dead_letters) = self
            .blocking(move |q| Ok((q.pending_len(&id), q.dead_len(&id)?)))
            .await?;
        Ok(WebhookView {
            id: hook.id,
            url: hook.url,
            filter: hook.filter,
            created_ms: hook.created_ms,
            updated_ms: hook.updated_ms,
            pending,
            dead_letters,
        })
    }

    /// Up to `limit` dead letters of hook `id` after sequence `after`,
    /// oldest first.
    pub async fn dead_letters(
        &self,
        id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, WebhookError> {
        check_id(id)?;
        let id = id.to_owned();
        self.blocking(move |q| q.dead_letters(&id, after, limit))
            .await
    }

    /// Deletes the dead letters of hook `id`; answers how many.
    pub async fn clear_dead_letters(&self, id: &str) -> Result<usize, WebhookError> {
        check_id(id)?;
        let id = id.to_owned();
        self.blocking(move |q| q.clear_dead(&id)).await
    }

    /// Queues the dead letters of hook `id` for delivery again; answers how
    /// many.
    pub async fn redeliver(&self, id: &str) -> Result<usize, WebhookError> {
        check_id(id)?;
        let owned = id.to_owned();
        let moved = self.blocking(move |q| q.redeliver(&owned)).await?;
        if let Some(r) = self.running().get(id) {
            r.wake.notify_one();
        }
        Ok(moved)
    }

    async fn refresh_loop(&self) {
        loop {
            tokio::select! {
                () = self.inner.cancel.cancelled() => return,
                () = tokio::time::sleep(self.inner.settings.refresh) => {}
            }
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "webhooks not reloaded from the store");
            }
        }
    }

    async fn fan_out_loop(&self) {
        loop {
            match self.fan_out_round().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "webhook fan-out failed; retrying"),
            }
            tokio::select! {
                () = self.inner.cancel.cancelled() => return,
                () = self.inner.outbox_wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Files up to a page of outbox alerts; `true` if there may be more.
    async fn fan_out_round(&self) -> Result<bool, WebhookError> {
        const PAGE: usize = 512;
        let _round = self.inner.fan_out.lock().await;
        let entries = self.blocking(|q| q.outbox(PAGE)).await?;
        if entries.is_empty() {
            return Ok(false);
        }
        let hooks: Vec<(String, WebhookFilter)> = self
            .running()
            .iter()
            .map(|(id, r)| (id.clone(), r.spec.borrow().stored.filter.clone()))
            .collect();
        let targets: Vec<Vec<String>> = entries
            .iter()
            .map(|(_, queued)| {
                let info = self.inner.registry.get(&queued.alert.device_id);
                let tags = info.as_ref().map(|i| &i.tags);
                hooks
                    .iter()
                    .filter(|(_, filter)| filter.matches(&queued.alert, tags))
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .collect();
        let more = entries.len() == PAGE;
        let max_pending = self.inner.settings.max_pending;
        let placed = self
            .blocking(move |q| q.fan_out(&entries, &targets, max_pending, now_ms()))
            .await?;
        let running = self.running();
        for (hook, place) in &placed {
            match place {
                Placed::Pending => {}
                Placed::QueueFull => {
                    metrics::counter!("fleetd_webhook_dead_letters_total", "hook" => hook.clone(), "reason" => "queue_full")
                        .increment(1);
                }
            }
        }
        let mut woken: Vec<&str> = placed.iter().map(|(h, _)| h.as_str()).collect();
        woken.sort_unstable();
        woken.dedup();
        for hook in woken {
            if let Some(r) = running.get(hook) {
                r.wake.notify_one();
            }
            metrics::gauge!("fleetd_webhook_pending", "hook" => hook.to_owned())
                .set(self.inner.queue.pending_len(hook) as f64);
        }
        if placed.iter().any(|(_, p)| *p == Placed::QueueFull) {
            tracing::warn!(
                max_pending,
                "a webhook's queue is full: new alerts for it go to its dead letters"
            );
        }
        Ok(more)
    }

    async fn deliver_loop(
        &self,
        id: String,
        spec: watch::Receiver<Arc<Hook>>,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) {
        let settings = &self.inner.settings;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let owned = id.clone();
            let next = match self.blocking(move |q| q.first_pending(&owned)).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(hook = %id, error = %e, "webhook queue unreadable; retrying");
                    None
                }
            };
            let Some((seq, queued)) = next else {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            };
            let mut attempts = 0u32;
            let outcome = loop {
                attempts += 1;
                let hook = Arc::clone(&spec.borrow());
                let started = Instant::now();
                let sent = tokio::select! {
                    () = stop.cancelled() => return,
                    sent = self.send(&hook, &queued.alert) => sent,
                };
                metrics::histogram!("fleetd_webhook_request_seconds", "hook" => id.clone())
                    .record(started.elapsed().as_secs_f64());
                match sent {
                    Ok(()) => {
                        metrics::counter!("fleetd_webhook_deliveries_total", "hook" => id.clone(), "result" => "delivered").increment(1);
                        let waited = (now_ms() - queued.queued_ms).max(0) as f64 / 1000.0;
                        metrics::histogram!("fleetd_webhook_delivery_seconds", "hook" => id.clone())
                            .record(waited);
                        break None;
                    }
                    Err(error) => {
                        metrics::counter!("fleetd_webhook_deliveries_total", "hook" => id.clone(), "result" => "failed").increment(1);
                        if attempts >= settings.max_attempts {
                            break Some(error);
                        }
                        let delay = backoff(settings, attempts);
                        tracing::debug!(hook = %id, attempts, error = %error, delay_ms = delay.as_millis() as u64, "webhook delivery failed; will retry");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            };
            let owned = id.clone();
            let done = match outcome {
                None => self.blocking(move |q| q.delivered(&owned, seq)).await,
                Some(error) => {
                    tracing::warn!(hook = %id, alert = %queued.alert.id, attempts, error = %error, "webhook delivery given up: kept as a dead letter");
                    metrics::counter!("fleetd_webhook_dead_letters_total", "hook" => id.clone(), "reason" => "failed").increment(1);
                    let dead = DeadLetter {
                        seq,
                        alert: queued.alert.clone(),
                        queued_ms: queued.queued_ms,
                        failed_ms: now_ms(),
                        attempts,
                        reason: "failed".into(),
                        last_error: Some(error),
                    };
                    self.blocking(move |q| q.give_up(&owned, &dead)).await
                }
            };
            if let Err(e) = done {
                tracing::warn!(hook = %id, error = %e, "webhook queue not updated; the alert may be sent again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            metrics::gauge!("fleetd_webhook_pending", "hook" => id.clone())
                .set(self.inner.queue.pending_len(&id) as f64);
        }
    }

    /// One attempt: POSTs `alert` to `hook`; `Err` names what failed.
    async fn send(&self, hook: &Hook, alert: &Alert) -> Result<(), String> {
        let body = payload(alert);
        let timestamp = now_ms() / 1000;
        let signature = sign::signature(&hook.key, &alert.id, timestamp, &body);
        let response = self
            .inner
            .client
            .post(&hook.stored.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &alert.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    }
}

/// Copies the webhook queue in `from` (sealed with `from_key`'s sealer, or
/// in clear) into `to`, sealed with `to_key`'s (`fleetd rekey`); returns
/// how many entries. Blocks on disk I/O.
pub fn rekey_queue(
    from: &std::path::Path,
    from_sealer: Option<Arc<Sealer>>,
    to: &std::path::Path,
    to_sealer: Option<Arc<Sealer>>,
) -> Result<usize, WebhookError> {
    let src = Queue::open(from, from_sealer, false)?;
    let dst = Queue::open(to, to_sealer, true)?;
    src.copy_into(&dst)
}

/// The delivery body: Standard Webhooks' `{type, timestamp, data}` with
/// the alert JSON of `GET /v1/alerts` as `data`.
pub fn payload(alert: &Alert) -> Vec<u8> {
    let timestamp = chrono::DateTime::from_timestamp_millis(alert.ts_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let body = serde_json::json!({
        "type": format!("alert.{}", alert.kind.code()),
        "timestamp": timestamp,
        "data": alert,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The wait after `attempts` failures: doubling from the initial wait up to
/// the longest, then a random 50–100% of it, so hooks that failed together
/// do not retry together.
fn backoff(settings: &WebhookSettings, attempts: u32) -> Duration {
    let doubled = settings
        .backoff_initial
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let full = doubled.min(settings.backoff_max);
    full.mul_f64(rand::rng().random_range(0.5..=1.0))
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}

#[cfg(test)]
mod tests;

/// `[webhooks]` of fleetd.toml, as written.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Deliver alerts to webhooks (and serve `/v1/webhooks`).
    pub enabled: bool,
    /// See [`WebhookSettings::max_pending`].
    pub max_pending: usize,
    /// See [`WebhookSettings::max_attempts`].
    pub max_attempts: u32,
    /// See [`WebhookSettings::backoff_initial`].
    pub backoff_initial_ms: u64,
    /// See [`WebhookSettings::backoff_max`].
    pub backoff_max_ms: u64,
    /// See [`WebhookSettings::timeout`].
    pub timeout_ms: u64,
    /// See [`WebhookSettings::refresh`].
    pub refresh_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        let d = WebhookSettings::new(PathBuf::new());
        Self {
            enabled: true,
            max_pending: d.max_pending,
            max_attempts: d.max_attempts,
            backoff_initial_ms: d.backoff_initial.as_millis() as u64,
            backoff_max_ms: d.backoff_max.as_millis() as u64,
            timeout_ms: d.timeout.as_millis() as u64,
            refresh_ms: d.refresh.as_millis() as u64,
        }
    }
}

impl WebhookConfig {
    /// Checks the section; `None` when webhooks are off. The queue goes to
    /// `dir`; `sync` as [`WebhookSettings::sync`].
    pub fn validate(
        &self,
        dir: PathBuf,
        sync: bool,
    ) -> Result<Option<WebhookSettings>, fleetd_schemas::InvalidSetting> {
        use fleetd_schemas::InvalidSetting;
        if !self.enabled {
            return Ok(None);
        }
        let positive = |key: &'static str, v: u64| {
            if v == 0 {
                Err(InvalidSetting::new(format!(
                    "webhooks.{key} must be at least 1"
                )))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        if self.max_pending == 0 || self.max_attempts == 0 {
            return Err(InvalidSetting::new(
                "webhooks.max_pending and webhooks.max_attempts must be at least 1",
            ));
        }
        let backoff_initial = positive("backoff_initial_ms", self.backoff_initial_ms)?;
        let backoff_max = positive("backoff_max_ms", self.backoff_max_ms)?;
        if backoff_max < backoff_initial {
            return Err(InvalidSetting::new(
                "webhooks.backoff_max_ms must be at least webhooks.backoff_initial_ms",
            ));
        }
        Ok(Some(WebhookSettings {
            dir,
            max_pending: self.max_pending,
            max_attempts: self.max_attempts,
            backoff_initial,
            backoff_max,
            timeout: positive("timeout_ms", self.timeout_ms)?,
            refresh: positive("refresh_ms", self.refresh_ms)?,
            sync,
        }))
    }
}
