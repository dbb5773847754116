//! Encryption at rest of the embedded store: every value is sealed with
//! XChaCha20-Poly1305 under the store key before fjall sees it.
//!
//! * A sealed value is `0x01 ‖ nonce (24 bytes) ‖ ciphertext ‖ tag (16
//!   bytes)`: 41 bytes more than the plain value.
//! * The nonce is a random 128-bit prefix drawn when the store opens and a
//!   64-bit counter: unique per value without a system call per value, and
//!   with 2^128 prefixes two runs never share one in practice (XChaCha's
//!   long nonce is why a random prefix is safe at all).
//! * The associated data is the keyspace's name and the row's key, so a
//!   value moved to another row (or another table) no longer opens: someone
//!   who can write the data directory cannot swap a credential or a
//!   position between devices unnoticed.
//! * Keys stay in clear: fjall sorts and ranges over them (device ids,
//!   timestamps of history rows, alert ids, fence ids, token ids).
//!
//! The key is checked before fjall opens the directory: [`KEY_CHECK_FILE`]
//! holds a known text sealed with it, so a wrong key is an error that
//! changes nothing on disk, and a directory whose values were sealed cannot
//! be opened without a key (or the other way round).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::StoreError;

/// The file in the data directory that says the store is sealed and lets
/// a key be checked against it.
pub const KEY_CHECK_FILE: &str = "store-key.check";

/// The first line of [`KEY_CHECK_FILE`].
const CHECK_HEADER: &str = "fleetd sealed store v1 xchacha20poly1305";
/// The text sealed in [`KEY_CHECK_FILE`].
const CHECK_TEXT: &[u8] = b"fleetd store key check";
/// The associated data of the check text (no keyspace has this name).
const CHECK_TABLE: &str = "#check";

/// First byte of a sealed value: the format version.
const SEALED_V1: u8 = 0x01;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed value has beyond its plain value.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// A 256-bit store key, read from a key file (64 hex digits).
#[derive(Clone)]
pub struct StoreKey {
    bytes: Zeroizing<[u8; 32]>,
    source: PathBuf,
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl StoreKey {
    /// Reads a key file: 64 hex digits (32 bytes), surrounding whitespace
    /// allowed. The error names the file and what is wrong with it, never
    /// its content.
    pub fn load(path: &Path) -> Result<StoreKey, StoreError> {
        let bad =
            |why: String| StoreError::Key(format!("store key file {}: {why}", path.display()));
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?);
        let hex = text.trim();
        if hex.len() != 64 {
            return Err(bad(format!(
                "expected 64 hex digits (a 256-bit key), found {} characters; \
                 `fleetd store-key new FILE` makes one",
                hex.len()
            )));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let digit = |b: u8| (b as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => bytes[i] = (hi * 16 + lo) as u8,
                _ => return Err(bad("not hexadecimal".into())),
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    file = %path.display(),
                    "the store key file is readable by other users; chmod 600 it"
                );
            }
        }
        Ok(StoreKey {
            bytes,
            source: path.to_path_buf(),
        })
    }

    /// A new random key.
    pub fn generate() -> StoreKey {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(bytes.as_mut());
        StoreKey {
            bytes,
            source: PathBuf::new(),
        }
    }

    /// Writes a new random key to `path` (mode 0600), refusing to replace a
    /// file that exists.
    pub fn create_file(path: &Path) -> Result<StoreKey, StoreError> {
        let key = StoreKey::generate();
        let bad =
            |e: std::io::Error| StoreError::Key(format!("cannot create {}: {e}", path.display()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(bad)?;
        let hex = Zeroizing::new(key.to_hex());
        use std::io::Write;
        file.write_all(format!("{}\n", hex.as_str()).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(bad)?;
        Ok(StoreKey {
            source: path.to_path_buf(),
            ..key
        })
    }

    fn to_hex(&self) -> String {
        self.bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The file the key was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// Seals and opens the values of one open store (or passes them through
/// when the store is not encrypted); the ingest journal seals its frames
/// with one too.
pub struct Sealer {
    cipher: Option<XChaCha20Poly1305>,
    prefix: [u8; 16],
    counter: AtomicU64,
}

impl Sealer {
    /// A sealer that leaves values as they are.
    pub(crate) fn plain() -> Sealer {
        Sealer {
            cipher: None,
            prefix: [0; 16],
            counter: AtomicU64::new(0),
        }
    }

    /// A sealer under `key`, with a fresh random nonce prefix.
    pub fn new(key: &StoreKey) -> Sealer {
        let mut prefix = [0u8; 16];
        OsRng.fill_bytes(&mut prefix);
        Sealer {
            cipher: Some(XChaCha20Poly1305::new(key.bytes.as_ref().into())),
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    /// Whether values are sealed.
    pub(crate) fn is_sealed(&self) -> bool {
        self.cipher.is_some()
    }

    /// Seals the value of row `key` of keyspace `table`.
    pub fn seal(&self, table: &str, key: &[u8], plain: Vec<u8>) -> Vec<u8> {
        let Some(cipher) = &self.cipher else {
            return plain;
        };
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..16].copy_from_slice(&self.prefix);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        nonce[16..].copy_from_slice(&n.to_be_bytes());
        let aad = associated_data(table, key);
        let payload = Payload {
            msg: &plain,
            aad: &aad,
        };
        // Encryption fails only for messages beyond 256 GiB.
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plain.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens the value of row `key` of keyspace `table`; a value that does
    /// not open (another key, another row, damaged) is corrupt.
    pub fn open<'a>(
        &self,
        table: &str,
        key: &[u8],
        stored: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, StoreError> {
        let Some(cipher) = &self.cipher else {
            return Ok(std::borrow::Cow::Borrowed(stored));
        };
        if stored.len() < SEAL_OVERHEAD || stored[0] != SEALED_V1 {
            return Err(StoreError::Corrupt(format!(
                "{table}: a value is not sealed (the store is encrypted)"
            )));
        }
        let nonce = XNonce::from_slice(&stored[1..1 + NONCE_LEN]);
        let aad = associated_data(table, key);
        let payload = Payload {
            msg: &stored[1 + NONCE_LEN..],
            aad: &aad,
        };
        cipher
            .decrypt(nonce, payload)
            .map(std::borrow::Cow::Owned)
            .map_err(|_| {
                StoreError::Corrupt(format!(
                    "{table}: a sealed value does not open with the store key (damaged or moved)"
                ))
            })
    }
}

fn associated_data(table: &str, key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(table.len() + 1 + key.len());
    aad.extend_from_slice(table.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key);
    aad
}

/// Whether `dir` already holds an embedded store.
pub(crate) fn holds_store(dir: &Path) -> bool {
    // fjall writes its version marker when it creates a database.
    dir.join("version").exists()
}

/// Checks `key` against the directory before anything in it is opened,
/// and returns the sealer to open the store with:
///
/// * a key and a check file: the key must open it;
/// * a key, no check file and no store yet: the check file is written
///   (the store will be sealed from its first value);
/// * a key, no check file, an existing store: its values are in clear,
///   refused (`fleetd rekey` encrypts a copy);
/// * no key and a check file: refused (the values would not open);
/// * neither: plain.
pub(crate) fn prepare(dir: &Path, key: Option<&StoreKey>) -> Result<Sealer, StoreError> {
    prepare_or_check(dir, key, true)
}

/// Checks `key_file` against the data directory `dir` as opening the store
/// would, writing nothing: for a start-up that must fail before it creates
/// or probes anything.
pub fn check(dir: &Path, key_file: Option<&Path>) -> Result<(), StoreError> {
    let key = key_file.map(StoreKey::load).transpose()?;
    prepare_or_check(dir, key.as_ref(), false).map(|_| ())
}

fn prepare_or_check(dir: &Path, key: Option<&StoreKey>, write: bool) -> Result<Sealer, StoreError> {
    let check = dir.join(KEY_CHECK_FILE);
    let exists = match check.try_exists() {
        Ok(exists) => exists,
        // `dir` is a file, or lies under one: it holds no check file, and
        // the data directory's own check names that problem.
        Err(_) if !dir.is_dir() => false,
        Err(e) => {
            return Err(StoreError::Key(format!(
                "cannot read {}: {e}",
                check.display()
            )));
        }
    };
    match (key, exists) {
        (Some(key), true) => {
            let sealer = Sealer::new(key);
            let text = std::fs::read_to_string(&check)
                .map_err(|e| StoreError::Key(format!("cannot read {}: {e}", check.display())))?;
            let sealed = parse_check(&text).ok_or_else(|| {
                StoreError::Key(format!(
                    "{} is not a fleetd key check file",
                    check.display()
                ))
            })?;
            match sealer.open(CHECK_TABLE, &[], &sealed) {
                Ok(text) if text.as_ref() == CHECK_TEXT => Ok(sealer),
                _ => Err(StoreError::Key(format!(
                    "the store key in {} is not the key the store in {} was encrypted with \
                     (nothing was opened or changed)",
                    key.source.display(),
                    dir.display()
                ))),
            }
        }
        (Some(key), false) if holds_store(dir) => Err(StoreError::Key(format!(
            "the store in {} is not encrypted, but a store key ({}) was given; \
             `fleetd rekey --to-key` makes an encrypted copy of it",
            dir.display(),
            key.source.display()
        ))),
        (Some(key), false) if !write => Ok(Sealer::new(key)),
        (Some(key), false) => {
            std::fs::create_dir_all(dir).map_err(fjall::Error::from)?;
            let sealer = Sealer::new(key);
            let sealed = sealer.seal(CHECK_TABLE, &[], CHECK_TEXT.to_vec());
            let hex: String = sealed.iter().map(|b| format!("{b:02x}")).collect();
            write_synced(&check, format!("{CHECK_HEADER}\n{hex}\n").as_bytes())
                .map_err(|e| StoreError::Key(format!("cannot write {}: {e}", check.display())))?;
            Ok(sealer)
        }
        (None, true) => Err(StoreError::Key(format!(
            "the store in {} is encrypted: give its key (--store-key FILE, store.key_file)",
            dir.display()
        ))),
        (None, false) => Ok(Sealer::plain()),
    }
}

fn parse_check(text: &str) -> Option<Vec<u8>> {
    let mut lines = text.lines();
    if lines.next()? != CHECK_HEADER {
        return None;
    }
    let hex = lines.next()?.trim();
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|p| {
            let s = std::str::from_utf8(p).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

/// Writes a file and makes it and its directory entry durable.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    if let Some(parent) = path.parent()
        && let Ok(dir) = std::fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_in_its_own_row_with_its_own_key() {
        let key = StoreKey::generate();
        let sealer = Sealer::new(&key);
        let sealed = sealer.seal("latest", b"truck-1", b"60.17,24.94".to_vec());
        assert_eq!(sealed.len(), b"60.17,24.94".len() + SEAL_OVERHEAD);
        assert!(!sealed.windows(5).any(|w| w == b"60.17"));
        let opened = sealer.open("latest", b"truck-1", &sealed).expect("opens");
        assert_eq!(opened.as_ref(), b"60.17,24.94");
        // Another row, another table, another key, a flipped bit: corrupt.
        assert!(sealer.open("latest", b"truck-2", &sealed).is_err());
        assert!(sealer.open("history", b"truck-1", &sealed).is_err());
        assert!(
            Sealer::new(&StoreKey::generate())
                .open("latest", b"truck-1", &sealed)
                .is_err()
        );
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(sealer.open("latest", b"truck-1", &flipped).is_err());
        // Two seals of one value differ (fresh nonces).
        let again = sealer.seal("latest", b"truck-1", b"60.17,24.94".to_vec());
        assert_ne!(again, sealed);
        // Plain values are refused by a sealing store.
        assert!(sealer.open("latest", b"truck-1", b"60.17").is_err());
    }

    #[test]
    fn key_files_are_checked_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.key");
        let key = StoreKey::create_file(&path).expect("create");
        let loaded = StoreKey::load(&path).expect("load");
        assert_eq!(loaded.bytes.as_ref(), key.bytes.as_ref());
        assert!(
            StoreKey::create_file(&path).is_err(),
            "never replaces a key"
        );
        std::fs::write(&path, "abcd\n").expect("write");
        let err = StoreKey::load(&path).expect_err("short").to_string();
        assert!(
            err.contains("store.key") && err.contains("64 hex digits"),
            "{err}"
        );
        std::fs::write(&path, "zz".repeat(32)).expect("write");
        let err = StoreKey::load(&path).expect_err("not hex").to_string();
        assert!(err.contains("not hexadecimal"), "{err}");
        let err = StoreKey::load(&dir.path().join("missing")).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn the_check_file_decides_before_the_store_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let key = StoreKey::generate();
        assert!(prepare(&data, Some(&key)).expect("fresh").is_sealed());
        assert!(prepare(&data, Some(&key)).expect("same key").is_sealed());
        let err = prepare(&data, Some(&StoreKey::generate()))
            .err()
            .expect("wrong key")
            .to_string();
        assert!(err.contains("not the key"), "{err}");
        let err = prepare(&data, None).err().expect("no key").to_string();
        assert!(err.contains("is encrypted"), "{err}");

        // A data directory that is a file is left to the data directory's
        // own check.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        assert!(check(&file.join("d"), None).is_ok());
        assert!(check(&file, None).is_ok());

        let plain = dir.path().join("plain");
        std::fs::create_dir_all(&plain).expect("mkdir");
        std::fs::write(plain.join("version"), b"x").expect("marker");
        assert!(!prepare(&plain, None).expect("plain").is_sealed());
        let err = prepare(&plain, Some(&key))
            .err()
            .expect("plain store")
            .to_string();
        assert!(err.contains("not encrypted"), "{err}");
        assert!(!plain.join(KEY_CHECK_FILE).exists());
    }
}
