//! The embedded store's history: rows while they are fresh, compact blocks
//! once their time bucket has closed, whole days dropped at retention.
//!
//! Time is cut into [`BUCKET_MS`] buckets (UTC, so a day holds whole
//! buckets). A position lives in one of three tiers:
//!
//! | tier   | keyspace                   | key                                  | value |
//! |--------|----------------------------|--------------------------------------|-------|
//! | hot    | `history_hot.{bucket_ms}`  | `device_id 0x00 ts`                  | `StoredPosition` |
//! | late   | `history`                  | `device_id 0x00 ts`                  | `StoredPosition` |
//! | blocks | `history_blocks.{day}`     | `device_id 0x00 ts(bucket) part(u16)` | a block ([`crate::history_block`]) |
//!
//! * **Hot**: a batch writes each fix as a row into the keyspace of its
//!   bucket, for the current bucket and its neighbours: the write path
//!   stays one insert per fix.
//! * **Blocks**: once a bucket has ended [`GRACE_MS`] ago, maintenance
//!   closes it (later fixes of that time go to the late tier), reads its
//!   keyspace in key order (device by device), writes one block per device
//!   into the partition of the bucket's day, makes that durable and drops
//!   the hot keyspace whole: no per-row deletes, no tombstones.
//! * **Late**: fixes outside the hot window (a tracker's backlog, a replay,
//!   a clock that is off) and data directories of earlier versions, which
//!   held every row here. Maintenance merges them into their blocks and
//!   deletes the rows, in one atomic batch per group.
//! * **Retention**: `history_days` drops the block partitions of days that
//!   ended before the cut-off whole (`delete_keyspace`), without touching
//!   anything else; late rows older than the cut-off are deleted, not
//!   merged.
//!
//! A read merges the tiers, reading them in the order data moves (hot,
//! late, blocks): a fix that moves between two reads is already in its
//! next tier, so a page never misses it; one seen twice is deduplicated
//! by `ts_ms`, the most recently written tier winning.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, OwnedWriteBatch, PersistMode};
use fleetd_schemas::{DeviceId, EnrichedPosition};

use crate::fjall_store::keyspace_options;
use crate::fjall_tables::table;
use crate::seal::Sealer;
use crate::{HistoryPage, StoreError, codec, cursor, history_block, keys};

/// Length of a history bucket: the span of one block (300 fixes at 1 Hz).
pub(crate) const BUCKET_MS: i64 = 300_000;
/// How long after its end a bucket still takes fixes as rows.
pub(crate) const GRACE_MS: i64 = 30_000;
const DAY_MS: i64 = 86_400_000;
/// Name prefixes of the hot and block keyspaces.
pub(crate) const HOT_PREFIX: &str = "history_hot.";
pub(crate) const BLOCKS_PREFIX: &str = "history_blocks.";
/// Late rows a maintenance pass handles per atomic batch.
const LATE_CHUNK_ROWS: usize = 20_000;
/// Devices of a closed hot bucket per atomic batch of blocks.
const HOT_CHUNK_DEVICES: usize = 2_000;

/// Where "now" comes from: the system clock, or a fixed time in tests.
#[derive(Clone, Default)]
pub(crate) struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    pub(crate) fn now_ms(&self) -> i64 {
        match &self.0 {
            Some(fixed) => fixed.load(Ordering::Relaxed),
            None => fleetd_schemas::now_ms(),
        }
    }

    #[cfg(test)]
    pub(crate) fn fixed(at: &Arc<AtomicI64>) -> Clock {
        Clock(Some(Arc::clone(at)))
    }
}

/// The hot buckets still taking rows.
struct HotBuckets {
    /// Every bucket before this one is closed.
    open_from: i64,
    open: BTreeMap<i64, Keyspace>,
}

/// The devices that may have rows in the late tier.
///
/// A sweep of the late tier (one or more passes, from its first key to its
/// end) merges every row it finds. A row present when a sweep ends was
/// therefore written during that sweep (behind its cursor), or later:
/// `written` collects the devices of rows written since the current sweep
/// began, `before` those of the previous sweep, and `all` stands for the
/// rows a previous run left until the first sweep has ended.
#[derive(Default)]
struct LateDevices {
    all: bool,
    before: std::collections::HashSet<Vec<u8>>,
    written: std::collections::HashSet<Vec<u8>>,
}

impl LateDevices {
    fn may_hold(&self, device: &[u8]) -> bool {
        self.all || self.written.contains(device) || self.before.contains(device)
    }

    fn sweep_ended(&mut self) {
        self.all = false;
        self.before = std::mem::take(&mut self.written);
    }
}

/// What one maintenance pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Maintenance {
    /// Hot buckets turned into blocks.
    pub buckets_compacted: u64,
    /// Rows (hot and late) now held in blocks.
    pub rows_compacted: u64,
    /// Blocks written (new or merged).
    pub blocks_written: u64,
    /// Late rows deleted because they were older than the retention.
    pub rows_expired: u64,
    /// Day partitions dropped at retention.
    pub days_dropped: u64,
    /// Late rows left for the next pass (its time budget ran out).
    pub late_rows_left: bool,
}

/// The history tiers of one database.
pub(crate) struct History {
    db: Database,
    pub(crate) late: Keyspace,
    hot: RwLock<HotBuckets>,
    days: RwLock<BTreeMap<i64, Keyspace>>,
    /// Held by writers of late rows and by the merge of late rows into
    /// blocks: a row rewritten while it is being merged would otherwise be
    /// deleted with the older value in its block.
    late_lock: Mutex<()>,
    /// Where the next pass resumes in the late tier (rows before it were
    /// merged: skipping their tombstones again is wasted work).
    late_resume: Mutex<Option<Vec<u8>>>,
    /// Which devices may have late rows: a read skips the late tier for
    /// the others, whose merged rows' tombstones it would otherwise walk
    /// until fjall compacts them away.
    late_devices: Mutex<LateDevices>,
    /// Retention in ms; 0 keeps history forever.
    retention_ms: AtomicI64,
    pub(crate) clock: Clock,
}

fn hot_name(bucket: i64) -> String {
    format!("{HOT_PREFIX}{bucket}")
}

fn blocks_name(day: i64) -> String {
    format!("{BLOCKS_PREFIX}{day}")
}

pub(crate) fn bucket_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(BUCKET_MS).saturating_mul(BUCKET_MS)
}

fn day_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(DAY_MS)
}

/// `device_id 0x00 ts(bucket)`: the key prefix of a bucket's block parts.
fn block_prefix(device: &DeviceId, bucket: i64) -> Vec<u8> {
    keys::history_key(device, bucket)
}

fn block_key(prefix: &[u8], part: u16) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 2);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&part.to_be_bytes());
    key
}

/// Splits a row key into the device id bytes and the timestamp.
fn split_row_key(key: &[u8]) -> Option<(&[u8], i64)> {
    let sep = key.iter().position(|b| *b == 0)?;
    Some((&key[..sep], keys::history_key_ts(key, sep + 1)?))
}

fn parse_device(bytes: &[u8]) -> Result<DeviceId, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| DeviceId::parse(s).ok())
        .ok_or_else(|| StoreError::Corrupt("history key with an invalid device id".into()))
}

fn keyspace_suffix(name: &str, prefix: &str) -> Option<i64> {
    name.strip_prefix(prefix)?.parse().ok()
}

/// Whether `name` is one of the history keyspaces made at run time.
pub(crate) fn is_dynamic_keyspace(name: &str) -> bool {
    keyspace_suffix(name, HOT_PREFIX).is_some() || keyspace_suffix(name, BLOCKS_PREFIX).is_some()
}

impl History {
    /// The tiers of `db`, finding the hot and block keyspaces earlier runs
    /// left.
    pub(crate) fn open(db: &Database, late: Keyspace) -> Result<History, StoreError> {
        let mut open = BTreeMap::new();
        let mut days = BTreeMap::new();
        for name in db.list_keyspace_names() {
            let name: &str = &name;
            if let Some(bucket) = keyspace_suffix(name, HOT_PREFIX) {
                open.insert(bucket, db.keyspace(name, keyspace_options)?);
            } else if let Some(day) = keyspace_suffix(name, BLOCKS_PREFIX) {
                days.insert(day, db.keyspace(name, keyspace_options)?);
            }
        }
        // One scan at open, over whatever tombstones are left.
        let late_left = late.first_key_value().is_some();
        Ok(History {
            db: db.clone(),
            late,
            hot: RwLock::new(HotBuckets {
                open_from: i64::MIN,
                open,
            }),
            days: RwLock::new(days),
            late_lock: Mutex::new(()),
            late_resume: Mutex::new(None),
            late_devices: Mutex::new(LateDevices {
                all: late_left,
                ..LateDevices::default()
            }),
            retention_ms: AtomicI64::new(0),
            clock: Clock::default(),
        })
    }

    /// Keeps history for `days` (`None`: forever).
    pub(crate) fn set_retention_days(&self, days: Option<u32>) {
        let ms = days.map_or(0, |d| i64::from(d.max(1)) * DAY_MS);
        self.retention_ms.store(ms, Ordering::Relaxed);
    }

    /// fjall's memtable flush and major compaction of every history
    /// keyspace.
    pub(crate) fn major_compact(&self) -> Result<(), StoreError> {
        let hot: Vec<Keyspace> = read(&self.hot).open.values().cloned().collect();
        let days: Vec<Keyspace> = read(&self.days).values().cloned().collect();
        for ks in std::iter::once(self.late.clone()).chain(hot).chain(days) {
            // Memtables first, so that the tables hold everything.
            ks.rotate_memtable_and_wait()?;
            ks.major_compact()?;
        }
        Ok(())
    }

    /// Bytes on disk of the late rows, the hot buckets and the blocks.
    pub(crate) fn disk_space(&self) -> [(&'static str, u64); 3] {
        let hot = read(&self.hot)
            .open
            .values()
            .map(Keyspace::disk_space)
            .sum();
        let blocks = read(&self.days).values().map(Keyspace::disk_space).sum();
        [
            (table::HISTORY, self.late.disk_space()),
            ("history_hot", hot),
            ("history_blocks", blocks),
        ]
    }

    /// Adds `rows` (`(history key, position)`, one per key) to `batch` in
    /// their tier, then commits it: the tiers' locks are held until the
    /// batch is in fjall's journal, so maintenance never closes a bucket
    /// under a writer.
    pub(crate) fn write(
        &self,
        sealer: &Sealer,
        rows: Vec<(Vec<u8>, &EnrichedPosition)>,
        mut batch: OwnedWriteBatch,
    ) -> Result<(), StoreError> {
        let now_bucket = bucket_of(self.clock.now_ms());
        let window = now_bucket.saturating_sub(BUCKET_MS)..=now_bucket.saturating_add(BUCKET_MS);
        let wanted =
            |hot: &HotBuckets, bucket: i64| bucket >= hot.open_from && window.contains(&bucket);
        let missing: Vec<i64> = {
            let hot = read(&self.hot);
            let mut missing: Vec<i64> = rows
                .iter()
                .map(|(_, p)| bucket_of(p.report.ts_ms))
                .filter(|b| wanted(&hot, *b) && !hot.open.contains_key(b))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            missing
        };
        if !missing.is_empty() {
            let mut hot = write(&self.hot);
            for bucket in missing {
                if wanted(&hot, bucket) && !hot.open.contains_key(&bucket) {
                    let ks = self.db.keyspace(&hot_name(bucket), keyspace_options)?;
                    hot.open.insert(bucket, ks);
                }
            }
        }
        let hot = read(&self.hot);
        let mut late_devices: Vec<Vec<u8>> = Vec::new();
        let mut names: BTreeMap<i64, String> = BTreeMap::new();
        for (key, p) in rows {
            let bucket = bucket_of(p.report.ts_ms);
            match hot.open.get(&bucket).filter(|_| wanted(&hot, bucket)) {
                Some(ks) => {
                    let name = names.entry(bucket).or_insert_with(|| hot_name(bucket));
                    let value = sealer.seal(name, &key, codec::encode(p));
                    batch.insert(ks, key, value);
                }
                None => {
                    late_devices.push(p.report.device_id.as_str().as_bytes().to_vec());
                    let value = sealer.seal(table::HISTORY, &key, codec::encode(p));
                    batch.insert(&self.late, key, value);
                }
            }
        }
        let _late = (!late_devices.is_empty()).then(|| lock(&self.late_lock));
        if !late_devices.is_empty() {
            // Before the commit: a read in between may look for nothing.
            lock(&self.late_devices).written.extend(late_devices);
        }
        batch.commit()?;
        Ok(())
    }

    /// One page of `device`'s history in `[from_ms, to_ms]`.
    pub(crate) fn page(
        &self,
        sealer: &Sealer,
        device: &DeviceId,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let want = limit.saturating_add(1);
        // Later tiers in this list win a tie on `ts_ms` (see the module
        // doc); each yields its first `want` fixes in range.
        let mut tiers: Vec<Vec<EnrichedPosition>> = Vec::with_capacity(3);
        let hot: Vec<(i64, Keyspace)> = read(&self.hot)
            .open
            .range(bucket_of(from_ms)..=bucket_of(to_ms))
            .map(|(b, ks)| (*b, ks.clone()))
            .collect();
        let mut hot_rows = Vec::new();
        for (bucket, ks) in &hot {
            rows_in(
                sealer,
                &hot_name(*bucket),
                ks,
                device,
                from_ms,
                to_ms,
                want,
                &mut hot_rows,
            )?;
            if hot_rows.len() >= want {
                break;
            }
        }
        let mut late_rows = Vec::new();
        if lock(&self.late_devices).may_hold(device.as_str().as_bytes()) {
            rows_in(
                sealer,
                table::HISTORY,
                &self.late,
                device,
                from_ms,
                to_ms,
                want,
                &mut late_rows,
            )?;
        }
        let blocks = self.blocks_in(sealer, device, from_ms, to_ms, want)?;
        tiers.push(blocks);
        tiers.push(hot_rows);
        tiers.push(late_rows);

        tiers.retain(|tier| !tier.is_empty());
        // Mostly one tier holds the range: it is sorted and unique already.
        let merged: Vec<EnrichedPosition> = match tiers.len() {
            0 => Vec::new(),
            1 => tiers.pop().unwrap_or_default(),
            _ => {
                let mut merged: BTreeMap<i64, EnrichedPosition> = BTreeMap::new();
                for p in tiers.into_iter().flatten() {
                    merged.insert(p.report.ts_ms, p);
                }
                merged.into_values().collect()
            }
        };
        let mut page = HistoryPage::default();
        for p in merged {
            let ts = p.report.ts_ms;
            if page.items.len() == limit {
                page.next_cursor = Some(cursor::encode(ts));
                break;
            }
            page.items.push(p);
        }
        Ok(page)
    }

    /// The first `want` fixes of `device` in `[from_ms, to_ms]` held in
    /// blocks.
    fn blocks_in(
        &self,
        sealer: &Sealer,
        device: &DeviceId,
        from_ms: i64,
        to_ms: i64,
        want: usize,
    ) -> Result<Vec<EnrichedPosition>, StoreError> {
        let days: Vec<(i64, Keyspace)> = read(&self.days)
            .range(day_of(from_ms)..=day_of(to_ms))
            .map(|(d, ks)| (*d, ks.clone()))
            .collect();
        let start = block_key(&block_prefix(device, bucket_of(from_ms)), 0);
        let end = block_key(&block_prefix(device, bucket_of(to_ms)), u16::MAX);
        let mut out = Vec::new();
        for (day, ks) in days {
            let name = blocks_name(day);
            for guard in ks.range(start.as_slice()..=end.as_slice()) {
                let (key, value) = guard.into_inner()?;
                let plain = sealer.open(&name, &key, &value)?;
                for p in history_block::decode(device, &plain)? {
                    if (from_ms..=to_ms).contains(&p.report.ts_ms) {
                        out.push(p);
                        if out.len() == want {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Closes hot buckets, merges late rows, applies retention. Runs for
    /// as long as it has work; the late tier is worked through for at most
    /// `late_budget` per pass.
    pub(crate) fn maintain(
        &self,
        sealer: &Sealer,
        late_budget: Duration,
    ) -> Result<Maintenance, StoreError> {
        let now = self.clock.now_ms();
        let mut done = Maintenance::default();
        let retention = self.retention_ms.load(Ordering::Relaxed);
        let cutoff = (retention > 0).then(|| now.saturating_sub(retention));
        if let Some(cutoff) = cutoff {
            done.days_dropped = self.drop_days_before(cutoff)?;
        }
        let closed: Vec<(i64, Keyspace)> = {
            let mut hot = write(&self.hot);
            let closing: Vec<i64> = hot
                .open
                .keys()
                .copied()
                .filter(|b| b.saturating_add(BUCKET_MS + GRACE_MS) <= now)
                .collect();
            let mut closed = Vec::with_capacity(closing.len());
            for bucket in closing {
                hot.open_from = hot.open_from.max(bucket.saturating_add(BUCKET_MS));
                if let Some(ks) = hot.open.remove(&bucket) {
                    closed.push((bucket, ks));
                }
            }
            closed
        };
        for (bucket, ks) in closed {
            let expired = cutoff.is_some_and(|c| bucket.saturating_add(BUCKET_MS) <= c);
            if !expired {
                self.compact_hot(sealer, bucket, &ks, &mut done)?;
            }
            // The blocks must be durable before the rows they replace go.
            self.db.persist(PersistMode::SyncAll)?;
            self.db.delete_keyspace(ks)?;
            done.buckets_compacted += 1;
        }
        done.late_rows_left = self.merge_late(sealer, cutoff, late_budget, &mut done)?;
        Ok(done)
    }

    fn drop_days_before(&self, cutoff: i64) -> Result<u64, StoreError> {
        let mut days = write(&self.days);
        let old: Vec<i64> = days
            .keys()
            .copied()
            .filter(|d| (d + 1).saturating_mul(DAY_MS) <= cutoff)
            .collect();
        for day in &old {
            if let Some(ks) = days.remove(day) {
                self.db.delete_keyspace(ks)?;
                tracing::info!(
                    day_start_ms = day.saturating_mul(DAY_MS),
                    "history older than the retention dropped (one day's partition)"
                );
            }
        }
        Ok(old.len() as u64)
    }

    /// The block partition of `day`, created if missing.
    fn day_partition(&self, day: i64) -> Result<Keyspace, StoreError> {
        if let Some(ks) = read(&self.days).get(&day) {
            return Ok(ks.clone());
        }
        let mut days = write(&self.days);
        if let Some(ks) = days.get(&day) {
            return Ok(ks.clone());
        }
        let ks = self.db.keyspace(&blocks_name(day), keyspace_options)?;
        days.insert(day, ks.clone());
        Ok(ks)
    }

    /// Rewrites a closed hot bucket as blocks, device by device.
    fn compact_hot(
        &self,
        sealer: &Sealer,
        bucket: i64,
        ks: &Keyspace,
        done: &mut Maintenance,
    ) -> Result<(), StoreError> {
        let name = hot_name(bucket);
        let partition = self.day_partition(day_of(bucket))?;
        let mut batch = self.db.batch();
        let mut devices_in_batch = 0;
        let mut current: Option<(Vec<u8>, Vec<EnrichedPosition>)> = None;
        for guard in ks.iter() {
            let (key, value) = guard.into_inner()?;
            let (device, _) = split_row_key(&key)
                .ok_or_else(|| StoreError::Corrupt(format!("row key in {name}")))?;
            if current
                .as_ref()
                .is_some_and(|(d, _)| d.as_slice() != device)
            {
                if let Some((d, rows)) = current.take() {
                    self.merge_into_block(sealer, &partition, bucket, &d, rows, &mut batch, done)?;
                    devices_in_batch += 1;
                }
                if devices_in_batch >= HOT_CHUNK_DEVICES {
                    std::mem::replace(&mut batch, self.db.batch()).commit()?;
                    devices_in_batch = 0;
                }
            }
            let position = codec::decode(&sealer.open(&name, &key, &value)?)?;
            match &mut current {
                Some((_, rows)) => rows.push(position),
                None => current = Some((device.to_vec(), vec![position])),
            }
        }
        if let Some((d, rows)) = current {
            self.merge_into_block(sealer, &partition, bucket, &d, rows, &mut batch, done)?;
        }
        batch.commit()?;
        Ok(())
    }

    /// Adds to `batch` the blocks of `device`'s `bucket` with `rows`
    /// (sorted by time) merged in, the rows winning a tie.
    #[allow(clippy::too_many_arguments)]
    fn merge_into_block(
        &self,
        sealer: &Sealer,
        partition: &Keyspace,
        bucket: i64,
        device: &[u8],
        rows: Vec<EnrichedPosition>,
        batch: &mut OwnedWriteBatch,
        done: &mut Maintenance,
    ) -> Result<(), StoreError> {
        let device = parse_device(device)?;
        let name = blocks_name(day_of(bucket));
        let prefix = block_prefix(&device, bucket);
        done.rows_compacted += rows.len() as u64;
        let mut fixes: BTreeMap<i64, EnrichedPosition> = BTreeMap::new();
        // Most buckets have no block yet: one bloom-filtered point read
        // says so, a prefix scan only when part 0 exists.
        let mut old_parts = 0u16;
        if partition.contains_key(block_key(&prefix, 0))? {
            for guard in partition.prefix(&prefix) {
                let (key, value) = guard.into_inner()?;
                old_parts += 1;
                for p in history_block::decode(&device, &sealer.open(&name, &key, &value)?)? {
                    fixes.insert(p.report.ts_ms, p);
                }
            }
        }
        for p in rows {
            fixes.insert(p.report.ts_ms, p);
        }
        let fixes: Vec<EnrichedPosition> = fixes.into_values().collect();
        let mut parts = 0u16;
        for chunk in fixes.chunks(history_block::MAX_FIXES) {
            let key = block_key(&prefix, parts);
            let value = sealer.seal(&name, &key, history_block::encode(chunk));
            batch.insert(partition, key, value);
            parts += 1;
            done.blocks_written += 1;
        }
        for part in parts..old_parts {
            batch.remove(partition, block_key(&prefix, part));
        }
        Ok(())
    }

    /// Merges late rows into their blocks (or deletes them past the
    /// retention) for at most `budget`; returns whether rows are left.
    fn merge_late(
        &self,
        sealer: &Sealer,
        cutoff: Option<i64>,
        budget: Duration,
        done: &mut Maintenance,
    ) -> Result<bool, StoreError> {
        let started = Instant::now();
        let mut resume = lock(&self.late_resume);
        loop {
            let _writers = lock(&self.late_lock);
            let mut rows: Vec<(Vec<u8>, EnrichedPosition)> = Vec::new();
            let mut next: Option<Vec<u8>> = None;
            let iter = match resume.as_deref() {
                Some(from) => self.late.range(from.to_vec()..),
                None => self.late.iter(),
            };
            for guard in iter {
                let (key, value) = guard.into_inner()?;
                // A (device, bucket) split over two chunks is merged twice:
                // the second merge reads the block the first one wrote.
                if rows.len() >= LATE_CHUNK_ROWS {
                    next = Some(key.to_vec());
                    break;
                }
                let position = codec::decode(&sealer.open(table::HISTORY, &key, &value)?)?;
                rows.push((key.to_vec(), position));
            }
            if rows.is_empty() {
                *resume = None;
                lock(&self.late_devices).sweep_ended();
                return Ok(false);
            }
            let mut batch = self.db.batch();
            let mut group: Vec<EnrichedPosition> = Vec::new();
            let mut group_of: Option<(Vec<u8>, i64)> = None;
            for (key, position) in rows {
                let (device, ts) = split_row_key(&key)
                    .ok_or_else(|| StoreError::Corrupt("late history row key".into()))?;
                let of = (device.to_vec(), bucket_of(ts));
                if let Some((d, b)) = group_of.replace(of.clone()).filter(|g| *g != of) {
                    let rows = std::mem::take(&mut group);
                    self.settle_late(sealer, cutoff, &d, b, rows, &mut batch, done)?;
                }
                batch.remove(&self.late, key);
                group.push(position);
            }
            if let Some((d, b)) = group_of {
                self.settle_late(sealer, cutoff, &d, b, group, &mut batch, done)?;
            }
            batch.commit()?;
            *resume = next.clone();
            if next.is_none() {
                lock(&self.late_devices).sweep_ended();
                return Ok(false);
            }
            if started.elapsed() >= budget {
                return Ok(true);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn settle_late(
        &self,
        sealer: &Sealer,
        cutoff: Option<i64>,
        device: &[u8],
        bucket: i64,
        rows: Vec<EnrichedPosition>,
        batch: &mut OwnedWriteBatch,
        done: &mut Maintenance,
    ) -> Result<(), StoreError> {
        // Expired by whole days, as the partitions are: a late fix is kept
        // exactly as long as one that arrived on time.
        if cutoff.is_some_and(|c| (day_of(bucket) + 1).saturating_mul(DAY_MS) <= c) {
            done.rows_expired += rows.len() as u64;
            return Ok(());
        }
        let partition = self.day_partition(day_of(bucket))?;
        self.merge_into_block(sealer, &partition, bucket, device, rows, batch, done)
    }
}

/// Rows of `device` in `[from_ms, to_ms]` of a row keyspace, appended to
/// `out` until it holds `want`.
#[allow(clippy::too_many_arguments)]
fn rows_in(
    sealer: &Sealer,
    name: &str,
    ks: &Keyspace,
    device: &DeviceId,
    from_ms: i64,
    to_ms: i64,
    want: usize,
    out: &mut Vec<EnrichedPosition>,
) -> Result<(), StoreError> {
    let start = keys::history_key(device, from_ms);
    let end = keys::history_key(device, to_ms);
    for guard in ks.range(start..=end) {
        if out.len() >= want {
            break;
        }
        let (key, value) = guard.into_inner()?;
        out.push(codec::decode(&sealer.open(name, &key, &value)?)?);
    }
    Ok(())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
