//! History page cursors.
//!
//! A cursor names the first row of the next page by its `ts_ms`: rows are
//! unique per (device, `ts_ms`), so that is enough to resume exactly, and it
//! stays valid while rows are added or expire. Clients must treat it as
//! opaque; it is the encoded key timestamp in 16 lowercase hex digits.

use crate::StoreError;
use crate::keys::{decode_ts, encode_ts};

/// Length of an encoded cursor.
const CURSOR_LEN: usize = 16;

/// The cursor of a page that starts at `ts_ms`.
pub(crate) fn encode(ts_ms: i64) -> String {
    format!("{:016x}", u64::from_be_bytes(encode_ts(ts_ms)))
}

/// The `ts_ms` a cursor resumes at; anything else is an `InvalidQuery`.
pub(crate) fn decode(cursor: &str) -> Result<i64, StoreError> {
    let malformed = || StoreError::InvalidQuery(format!("malformed history cursor {cursor:?}"));
    // `from_str_radix` alone would accept a leading `+`.
    if cursor.len() != CURSOR_LEN || !cursor.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed());
    }
    let raw = u64::from_str_radix(cursor, 16).map_err(|_| malformed())?;
    Ok(decode_ts(raw.to_be_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        for ts in [i64::MIN, -1, 0, 1_700_000_000_123, i64::MAX] {
            assert_eq!(decode(&encode(ts)).ok(), Some(ts));
        }
        for bad in [
            "",
            "123",
            "zzzzzzzzzzzzzzzz",
            "+000000000000001",
            "00000000000000000",
            "é00000000000000",
        ] {
            assert!(
                matches!(decode(bad), Err(StoreError::InvalidQuery(_))),
                "{bad:?}"
            );
        }
    }
}
