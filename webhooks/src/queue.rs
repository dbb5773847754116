//! The node-local delivery queue, in its own fjall database
//! (`{data}/webhooks`):
//!
//! | keyspace  | key                        | value          |
//! |-----------|----------------------------|----------------|
//! | `meta`    | `next_seq`                 | u64 BE         |
//! | `outbox`  | seq (u64 BE)               | [`Queued`]     |
//! | `pending` | `hook_id 0x00 seq`         | [`Queued`]     |
//! | `dead`    | `hook_id 0x00 seq`         | [`DeadLetter`] |
//!
//! The processor appends a batch's alerts to `outbox` before it writes the
//! batch to the store; the fan-out moves each one into the `pending` list of
//! every hook it matches (or into `dead` when the hook's list is full) and
//! removes it from `outbox`, in one atomic write; a delivery removes it from
//! `pending`. Sequence numbers only grow, so every list is in the order the
//! processor raised the alerts, which is each device's order.
//!
//! Values are JSON, sealed under the store key when fleetd runs with one
//! (alerts carry coordinates).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use fleetd_schemas::Alert;
use fleetd_store::Sealer;
use serde::{Deserialize, Serialize};

use crate::WebhookError;

mod table {
    pub(super) const META: &str = "meta";
    pub(super) const OUTBOX: &str = "outbox";
    pub(super) const PENDING: &str = "pending";
    pub(super) const DEAD: &str = "dead";
}

const NEXT_SEQ: &[u8] = b"next_seq";

/// An alert waiting for delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    /// The alert, as `GET /v1/alerts` shows it.
    pub alert: Alert,
    /// When the processor queued it, Unix ms.
    pub queued_ms: i64,
}

/// An alert a hook gave up on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its place in the hook's order; `after` of the next page.
    pub seq: u64,
    /// The alert.
    pub alert: Alert,
    /// When the processor queued it, Unix ms.
    pub queued_ms: i64,
    /// When it was given up, Unix ms.
    pub failed_ms: i64,
    /// Delivery attempts made (0 when the hook's queue was full).
    pub attempts: u32,
    /// `failed` (every attempt failed) or `queue_full`.
    pub reason: String,
    /// The last attempt's error (status, timeout, connection), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Where the fan-out put one alert for one hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// In the hook's pending list.
    Pending,
    /// In its dead letters: the pending list was full.
    QueueFull,
}

/// The queue; share it as `Arc`. Every method blocks on disk I/O: call it
/// from a blocking task.
pub struct Queue {
    db: Database,
    meta: Keyspace,
    outbox: Keyspace,
    pending: Keyspace,
    dead: Keyspace,
    sealer: Option<Arc<Sealer>>,
    /// Appends take sequence numbers under this lock, so the counter on
    /// disk moves with them.
    next_seq: Mutex<u64>,
    /// Pending entries per hook (counted at open).
    pending_count: Mutex<HashMap<String, usize>>,
    /// Whether appends are synced to the disk (`durability = power`) or
    /// written to the OS (`process`).
    sync: bool,
}

fn hook_key(hook: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(hook.len() + 9);
    key.extend_from_slice(hook.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn hook_prefix(hook: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(hook.len() + 1);
    key.extend_from_slice(hook.as_bytes());
    key.push(0);
    key
}

fn seq_of(key: &[u8]) -> Result<u64, WebhookError> {
    key.len()
        .checked_sub(8)
        .and_then(|start| key[start..].try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| WebhookError::Corrupt("a queue key without a sequence number".into()))
}

/// The hook id of a `pending` or `dead` key.
fn hook_of(key: &[u8]) -> Option<&str> {
    let end = key.len().checked_sub(9)?;
    (key.get(end) == Some(&0))
        .then(|| std::str::from_utf8(&key[..end]).ok())
        .flatten()
}

impl Queue {
    /// Opens (or creates) the queue in `dir`, values sealed with `sealer`.
    pub fn open(
        dir: &Path,
        sealer: Option<Arc<Sealer>>,
        sync: bool,
    ) -> Result<Queue, WebhookError> {
        std::fs::create_dir_all(dir).map_err(fjall::Error::from)?;
        let db = Database::builder(dir).open()?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        let (meta, outbox, pending, dead) = (
            ks(table::META)?,
            ks(table::OUTBOX)?,
            ks(table::PENDING)?,
            ks(table::DEAD)?,
        );
        let next_seq = match meta.get(NEXT_SEQ)? {
            Some(v) => v
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| WebhookError::Corrupt("next_seq is not 8 bytes".into()))?,
            None => 1,
        };
        let mut counts: HashMap<String, usize> = HashMap::new();
        for guard in pending.iter() {
            let key = guard.key()?;
            if let Some(hook) = hook_of(&key) {
                *counts.entry(hook.to_owned()).or_default() += 1;
            }
        }
        Ok(Queue {
            db,
            meta,
            outbox,
            pending,
            dead,
            sealer,
            next_seq: Mutex::new(next_seq),
            pending_count: Mutex::new(counts),
            sync,
        })
    }

    // The sealer's associated data names the table as `#webhooks.{table}`,
    // so no value opens as one of the store's or the journal's.
    fn seal(&self, table: &str, key: &[u8], plain: Vec<u8>) -> Vec<u8> {
        match &self.sealer {
            Some(s) => s.seal(&format!("#webhooks.{table}"), key, plain),
            None => plain,
        }
    }

    fn open_value<'a>(
        &self,
        table: &str,
        key: &[u8],
        value: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, WebhookError> {
        Ok(match &self.sealer {
            Some(s) => s.open(&format!("#webhooks.{table}"), key, value)?,
            None => std::borrow::Cow::Borrowed(value),
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<T, WebhookError> {
        let plain = self.open_value(table, key, value)?;
        serde_json::from_slice(&plain).map_err(|e| WebhookError::Corrupt(format!("{table}: {e}")))
    }

    fn persist(&self) -> Result<(), WebhookError> {
        let mode = if self.sync {
            PersistMode::SyncData
        } else {
            PersistMode::Buffer
        };
        Ok(self.db.persist(mode)?)
    }

    /// Appends `alerts` to the outbox, durably (to the OS, or to the disk
    /// with `sync`) before it returns: the caller writes them to the store
    /// next, and a store write that outlives a crash must not outlive its
    /// alerts' deliveries.
    pub fn append(&self, alerts: &[Alert], now_ms: i64) -> Result<(), WebhookError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let mut next = self.next_seq.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = self.db.batch();
        let mut seq = *next;
        for alert in alerts {
            let key = seq.to_be_bytes();
            let queued = Queued {
                alert: alert.clone(),
                queued_ms: now_ms,
            };
            let value = self.seal(table::OUTBOX, &key, encode(&queued));
            batch.insert(&self.outbox, key, value);
            seq += 1;
        }
        batch.insert(&self.meta, NEXT_SEQ, seq.to_be_bytes());
        batch.commit()?;
        *next = seq;
        drop(next);
        self.persist()
    }

    /// Up to `limit` outbox entries, oldest first.
    pub fn outbox(&self, limit: usize) -> Result<Vec<(u64, Queued)>, WebhookError> {
        let mut out = Vec::new();
        for guard in self.outbox.iter().take(limit) {
            let (key, value) = guard.into_inner()?;
            let seq = seq_of(&key)?;
            out.push((seq, self.decode(table::OUTBOX, &key, &value)?));
        }
        Ok(out)
    }

    /// Moves outbox entries into hooks' lists: `targets[i]` are the hooks
    /// `entries[i]` goes to. A hook whose pending list holds `max_pending`
    /// gets a dead letter instead. One atomic write: a crash leaves either
    /// the outbox entry or every hook's copy.
    pub fn fan_out(
        &self,
        entries: &[(u64, Queued)],
        targets: &[Vec<String>],
        max_pending: usize,
        now_ms: i64,
    ) -> Result<Vec<(String, Placed)>, WebhookError> {
        let mut counts = self.pending_count.lock().unwrap_or_else(|e| e.into_inner());
        let mut added: HashMap<&str, usize> = HashMap::new();
        let mut placed = Vec::new();
        let mut batch = self.db.batch();
        for ((seq, queued), hooks) in entries.iter().zip(targets) {
            for hook in hooks {
                let key = hook_key(hook, *seq);
                let n = counts.get(hook.as_str()).copied().unwrap_or(0)
                    + added.get(hook.as_str()).copied().unwrap_or(0);
                if n < max_pending {
                    let value = self.seal(table::PENDING, &key, encode(queued));
                    batch.insert(&self.pending, key, value);
                    *added.entry(hook).or_default() += 1;
                    placed.push((hook.clone(), Placed::Pending));
                } else {
                    let dead = DeadLetter {
                        seq: *seq,
                        alert: queued.alert.clone(),
                        queued_ms: queued.queued_ms,
                        failed_ms: now_ms,
                        attempts: 0,
                        reason: "queue_full".into(),
                        last_error: None,
                    };
                    let value = self.seal(table::DEAD, &key, encode(&dead));
                    batch.insert(&self.dead, key, value);
                    placed.push((hook.clone(), Placed::QueueFull));
                }
            }
            batch.remove(&self.outbox, seq.to_be_bytes());
        }
        batch.commit()?;
        for (hook, n) in added {
            *counts.entry(hook.to_owned()).or_default() += n;
        }
        Ok(placed)
    }

    /// The oldest pending entry of `hook`.
    pub fn first_pending(&self, hook: &str) -> Result<Option<(u64, Queued)>, WebhookError> {
        let Some(guard) = self.pending.prefix(hook_prefix(hook)).next() else {
            return Ok(None);
        };
        let (key, value) = guard.into_inner()?;
        Ok(Some((
            seq_of(&key)?,
            self.decode(table::PENDING, &key, &value)?,
        )))
    }

    /// Removes a delivered entry.
    pub fn delivered(&self, hook: &str, seq: u64) -> Result<(), WebhookError> {
        self.pending.remove(hook_key(hook, seq))?;
        self.count_down(hook, 1);
        Ok(())
    }

    fn count_down(&self, hook: &str, n: usize) {
        let mut counts = self.pending_count.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = counts.get_mut(hook) {
            *c = c.saturating_sub(n);
        }
    }

    /// Moves a pending entry to the dead letters.
    pub fn give_up(&self, hook: &str, dead: &DeadLetter) -> Result<(), WebhookError> {
        let key = hook_key(hook, dead.seq);
        let mut batch = self.db.batch();
        batch.remove(&self.pending, key.clone());
        let value = self.seal(table::DEAD, &key, encode(dead));
        batch.insert(&self.dead, key, value);
        batch.commit()?;
        self.count_down(hook, 1);
        Ok(())
    }

    /// Entries pending for `hook`.
    pub fn pending_len(&self, hook: &str) -> usize {
        let counts = self.pending_count.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(hook).copied().unwrap_or(0)
    }

    /// Up to `limit` dead letters of `hook` after sequence `after`, oldest
    /// first.
    pub fn dead_letters(
        &self,
        hook: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, WebhookError> {
        let start = hook_key(hook, after.map_or(0, |s| s.saturating_add(1)));
        let end = hook_key(hook, u64::MAX);
        let mut out = Vec::new();
        for guard in self.dead.range(start..=end).take(limit) {
            let (key, value) = guard.into_inner()?;
            out.push(self.decode(table::DEAD, &key, &value)?);
        }
        Ok(out)
    }

    /// Dead letters of `hook`.
    pub fn dead_len(&self, hook: &str) -> Result<usize, WebhookError> {
        let mut n = 0;
        for guard in self.dead.prefix(hook_prefix(hook)) {
            guard.key()?;
            n += 1;
        }
        Ok(n)
    }

    /// Moves every dead letter of `hook` back to its pending list (in their
    /// order, behind nothing: sequence numbers place them before anything
    /// newer still pending). Returns how many moved.
    pub fn redeliver(&self, hook: &str) -> Result<usize, WebhookError> {
        let mut batch = self.db.batch();
        let mut moved = 0;
        for guard in self.dead.prefix(hook_prefix(hook)) {
            let (key, value) = guard.into_inner()?;
            let dead: DeadLetter = self.decode(table::DEAD, &key, &value)?;
            let queued = Queued {
                alert: dead.alert,
                queued_ms: dead.queued_ms,
            };
            let sealed = self.seal(table::PENDING, &key, encode(&queued));
            batch.insert(&self.pending, key.to_vec(), sealed);
            batch.remove(&self.dead, key);
            moved += 1;
        }
        batch.commit()?;
        let mut counts = self.pending_count.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(hook.to_owned()).or_default() += moved;
        Ok(moved)
    }

    /// Deletes the dead letters of `hook`; returns how many there were.
    pub fn clear_dead(&self, hook: &str) -> Result<usize, WebhookError> {
        clear_prefix(&self.db, &self.dead, &hook_prefix(hook))
    }

    /// Deletes everything of `hook` (it was deleted).
    pub fn forget(&self, hook: &str) -> Result<(), WebhookError> {
        clear_prefix(&self.db, &self.pending, &hook_prefix(hook))?;
        clear_prefix(&self.db, &self.dead, &hook_prefix(hook))?;
        let mut counts = self.pending_count.lock().unwrap_or_else(|e| e.into_inner());
        counts.remove(hook);
        Ok(())
    }

    /// Copies every entry into `dst` (`fleetd rekey`: opened with this
    /// queue's key, sealed with `dst`'s); returns how many.
    pub fn copy_into(&self, dst: &Queue) -> Result<usize, WebhookError> {
        let mut n = 0;
        for (table, src_ks, dst_ks) in [
            (table::OUTBOX, &self.outbox, &dst.outbox),
            (table::PENDING, &self.pending, &dst.pending),
            (table::DEAD, &self.dead, &dst.dead),
        ] {
            let mut batch = dst.db.batch();
            for guard in src_ks.iter() {
                let (key, value) = guard.into_inner()?;
                let plain = self.open_value(table, &key, &value)?.into_owned();
                batch.insert(dst_ks, key.to_vec(), dst.seal(table, &key, plain));
                n += 1;
            }
            batch.commit()?;
        }
        let next = *self.next_seq.lock().unwrap_or_else(|e| e.into_inner());
        dst.meta.insert(NEXT_SEQ, next.to_be_bytes())?;
        dst.db.persist(PersistMode::SyncAll)?;
        Ok(n)
    }
}

fn clear_prefix(db: &Database, ks: &Keyspace, prefix: &[u8]) -> Result<usize, WebhookError> {
    let mut batch = db.batch();
    let mut n = 0;
    for guard in ks.prefix(prefix) {
        batch.remove(ks, guard.key()?);
        n += 1;
    }
    batch.commit()?;
    Ok(n)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain data with string keys: serializing cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}
