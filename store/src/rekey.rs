//! `fleetd rekey`: a copy of an embedded store with its values sealed
//! under another key (or in clear, or encrypted for the first time).
//!
//! A copy rather than a rewrite in place: a run stopped half-way leaves
//! the source as it was, and the copy carries [`INCOMPLETE_MARKER`] until
//! its last row is durable, so it cannot be opened by mistake.

use std::path::Path;

use fjall::PersistMode;

use crate::fjall_tables::table;
use crate::seal::{self, StoreKey};
use crate::{FjallStore, StoreError};

/// The file a copy in progress carries; [`FjallStore::open_with_key`]
/// refuses a directory that has it.
pub const INCOMPLETE_MARKER: &str = "REKEY-INCOMPLETE";

/// Rows per atomic batch of the copy.
const COPY_BATCH_ROWS: usize = 10_000;

/// What [`rekey`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyReport {
    /// Rows copied, over every keyspace.
    pub rows: u64,
    /// Whether the copy is sealed.
    pub sealed: bool,
}

/// Copies the store in `from` (opened with `from_key`) into the new
/// directory `to`, every value opened and sealed again under `to_key`
/// (`None`: in clear). `to` must not exist or be empty. Both stores are
/// locked while it runs, so the server must be stopped. Files of the data
/// directory that are not the store (the admin token) are not copied.
pub fn rekey(
    from: &Path,
    from_key: Option<&StoreKey>,
    to: &Path,
    to_key: Option<&StoreKey>,
) -> Result<RekeyReport, StoreError> {
    if !seal::holds_store(from) {
        return Err(StoreError::Key(format!(
            "{} holds no embedded store",
            from.display()
        )));
    }
    let occupied = std::fs::read_dir(to).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        return Err(StoreError::Key(format!(
            "{} is not empty: rekey writes a new directory",
            to.display()
        )));
    }
    let source = FjallStore::open_with_key(from, from_key)?;
    std::fs::create_dir_all(to).map_err(fjall::Error::from)?;
    let marker = to.join(INCOMPLETE_MARKER);
    std::fs::write(
        &marker,
        b"fleetd rekey did not finish: delete this directory\n",
    )
    .map_err(fjall::Error::from)?;
    let target = FjallStore::open_with_key_unchecked_marker(to, to_key)?;
    let (src, dst) = (&source.inner, &target.inner);
    let mut rows = 0u64;
    // The fixed tables and the history buckets and days made at run time.
    let mut names: Vec<String> = table::ALL.iter().map(|n| n.to_string()).collect();
    names.extend(
        src.db
            .list_keyspace_names()
            .iter()
            .map(|n| n.to_string())
            .filter(|n| crate::history::is_dynamic_keyspace(n)),
    );
    for name in &names {
        let name = name.as_str();
        let (from_ks, to_ks) = if table::ALL.contains(&name) {
            (src.keyspace(name).clone(), dst.keyspace(name).clone())
        } else {
            let open =
                |db: &fjall::Database| db.keyspace(name, crate::fjall_store::keyspace_options);
            (open(&src.db)?, open(&dst.db)?)
        };
        let (from_ks, to_ks) = (&from_ks, &to_ks);
        let mut batch = dst.db.batch();
        let mut in_batch = 0usize;
        for guard in from_ks.iter() {
            let (key, value) = guard.into_inner()?;
            let value = if table::is_keys_only(name) {
                value.to_vec()
            } else {
                let plain = src.tables.open(name, &key, &value)?.into_owned();
                dst.tables.seal(name, &key, plain)
            };
            batch.insert(to_ks, key, value);
            in_batch += 1;
            rows += 1;
            if in_batch == COPY_BATCH_ROWS {
                std::mem::replace(&mut batch, dst.db.batch()).commit()?;
                in_batch = 0;
            }
        }
        batch.commit()?;
    }
    dst.db.persist(PersistMode::SyncAll)?;
    std::fs::remove_file(&marker).map_err(fjall::Error::from)?;
    Ok(RekeyReport {
        rows,
        sealed: target.is_sealed(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fleetd_schemas::test_support::position;
    use fleetd_schemas::{DeviceId, DeviceInfo};

    use super::*;
    use crate::{LatestUpdate, Store, WriteBatch};

    #[tokio::test]
    async fn a_plain_store_is_encrypted_then_rekeyed_and_reads_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (plain, a, b) = (
            dir.path().join("plain"),
            dir.path().join("a"),
            dir.path().join("b"),
        );
        let device = DeviceId::parse("truck-7").expect("id");
        {
            let store = FjallStore::open(&plain).expect("open");
            let p = position("truck-7", 1_000, 60.5, 24.5);
            let batch = WriteBatch {
                history: vec![p.clone()],
                latest: vec![LatestUpdate {
                    position: p,
                    previous_area_cell: None,
                }],
                ..WriteBatch::default()
            };
            store.write_batch(Arc::new(batch)).await.expect("write");
            store
                .put_device(&device, &DeviceInfo::default())
                .await
                .expect("device");
            store.flush().await.expect("flush");
        }
        let (key_a, key_b) = (StoreKey::generate(), StoreKey::generate());
        let report = rekey(&plain, None, &a, Some(&key_a)).expect("encrypt");
        assert_eq!(
            report,
            RekeyReport {
                rows: 3,
                sealed: true
            }
        );
        assert!(
            rekey(&plain, None, &a, Some(&key_a)).is_err(),
            "a is not empty"
        );
        let err = rekey(&a, Some(&key_b), &b, Some(&key_a)).expect_err("wrong key");
        assert!(err.to_string().contains("not the key"), "{err}");
        rekey(&a, Some(&key_a), &b, Some(&key_b)).expect("rotate");
        assert!(!b.join(INCOMPLETE_MARKER).exists());

        let store = FjallStore::open_with_key(&b, Some(&key_b)).expect("open b");
        let latest = store.latest(&device).await.expect("latest").expect("some");
        assert_eq!(latest.report.lat, 60.5);
        assert!(store.device(&device).await.expect("device").is_some());
        assert!(FjallStore::open_with_key(&b, Some(&key_a)).is_err());
    }
}
