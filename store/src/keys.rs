//! Key encodings of the embedded store's keyspaces.
//!
//! Keys are compared as byte strings, so every number is big-endian and
//! every variable-length part either comes last or is followed by a byte that
//! cannot occur inside it:
//!
//! * `latest`: `device_id`
//! * `history`: `device_id 0x00 ts` where `ts` is [`encode_ts`]
//!
//! Device ids only contain `[A-Za-z0-9._:/-]`, never `0x00`, so in `history`
//! the separator both ends the id and sorts below every id byte: all rows of
//! device `a` sort before those of device `a0`, and a prefix scan of `a 0x00`
//! never sees another device.

use std::ops::RangeInclusive;

use fleetd_schemas::{DeviceId, H3Cells};
use h3o::{CellIndex, Resolution};

/// Separates the device id from the timestamp in `history` keys.
const SEPARATOR: u8 = 0x00;

/// Bits per H3 digit.
const DIGIT_BITS: u32 = 3;
/// Bit offset of the resolution field of an H3 index.
const RES_OFFSET: u32 = 52;
/// Mask of the resolution field (before shifting).
const RES_MASK: u64 = 0xF;
/// Deepest H3 resolution: an index always holds 15 digit slots.
const MAX_RES: u32 = 15;

/// Key of a device in the `latest` keyspace.
pub(crate) fn latest_key(device: &DeviceId) -> Vec<u8> {
    device.as_str().as_bytes().to_vec()
}

/// Key of one history row: `device_id 0x00 encode_ts(ts_ms)`.
pub(crate) fn history_key(device: &DeviceId, ts_ms: i64) -> Vec<u8> {
    let id = device.as_str().as_bytes();
    let mut key = Vec::with_capacity(id.len() + 1 + 8);
    key.extend_from_slice(id);
    key.push(SEPARATOR);
    key.extend_from_slice(&encode_ts(ts_ms));
    key
}

/// Reads the timestamp back from a history key of a device whose prefix is
/// `prefix_len` bytes long; `None` if the key is not shaped like one.
pub(crate) fn history_key_ts(key: &[u8], prefix_len: usize) -> Option<i64> {
    let tail: [u8; 8] = key.get(prefix_len..)?.try_into().ok()?;
    Some(decode_ts(tail))
}

/// Key of a device-scoped row ordered by a time: `device_id 0x00
/// encode_ts(ts_ms)` (`history`, `trips`).
pub(crate) fn device_ts_key(device: &DeviceId, ts_ms: i64) -> Vec<u8> {
    history_key(device, ts_ms)
}

/// Key of an alert in `alerts_by_device`: `device_id 0x00 alert_id`.
pub(crate) fn device_alert_key(device: &DeviceId, alert_id: &str) -> Vec<u8> {
    let id = device.as_str().as_bytes();
    let mut key = Vec::with_capacity(id.len() + 1 + alert_id.len());
    key.extend_from_slice(id);
    key.push(SEPARATOR);
    key.extend_from_slice(alert_id.as_bytes());
    key
}

/// The smallest alert id at `ts_ms` (alert ids are `{ts_ms:013}-{hash}`;
/// see `fleetd_schemas::Alert`), so `[alert_id_floor(a), alert_id_ceil(b)]`
/// holds every id with a time in `[a, b]`.
pub(crate) fn alert_id_floor(ts_ms: i64) -> String {
    format!("{:013}-", ts_ms.clamp(0, 9_999_999_999_999))
}

/// The largest alert-id prefix at `ts_ms` (`g` sorts after every hex digit).
pub(crate) fn alert_id_ceil(ts_ms: i64) -> String {
    format!("{:013}-g", ts_ms.clamp(0, 9_999_999_999_999))
}

/// A signed timestamp as 8 bytes that sort like the numbers: big-endian with
/// the sign bit flipped, so negative times sort before positive ones.
pub(crate) fn encode_ts(ts_ms: i64) -> [u8; 8] {
    ((ts_ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`encode_ts`].
pub(crate) fn decode_ts(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// The res-7 indexes that descend from `cell`, as one inclusive range of raw
/// index values. A cell finer than res 7 yields the range of its res-7
/// ancestor (a single index).
///
/// An H3 index is `mode | res | base cell | digit 1 … digit 15`, and a cell at
/// resolution `r` has digits `r+1 … 15` set to 7 (unused). Its res-7
/// descendants share mode, base cell and digits `1 … r`, have `res = 7`,
/// digits `r+1 … 7` anywhere in `0 … 6` and digits `8 … 15` equal to 7. As
/// numbers they therefore all lie between the descendant with digits
/// `r+1 … 7` all 0 and the one with them all 6, and every res-7 index in
/// between descends from `cell`. (Pentagons lack the digit-1 children, which
/// leaves gaps in the range but no foreign cells in it.)
pub(crate) fn area_children(cell: CellIndex) -> RangeInclusive<u64> {
    // `parent` is `None` for cells coarser than res 7, which are kept as is.
    let cell = cell.parent(area_resolution()).unwrap_or(cell);
    let res = u32::from(u8::from(cell.resolution()));
    let area_res = u32::from(H3Cells::AREA_RES);
    let with_res =
        (u64::from(cell) & !(RES_MASK << RES_OFFSET)) | (u64::from(area_res) << RES_OFFSET);
    // Digit d (1-based) occupies bits [3*(15-d), 3*(15-d)+3).
    let mut first = with_res;
    let mut last = with_res;
    for digit in (res + 1)..=area_res {
        let offset = DIGIT_BITS * (MAX_RES - digit);
        first &= !(0b111 << offset);
        last = (last & !(0b111 << offset)) | (0b110 << offset);
    }
    first..=last
}

/// The H3 resolution of [`H3Cells::AREA_RES`] as an h3o value.
pub(crate) fn area_resolution() -> Resolution {
    Resolution::Seven
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).expect("test ids are valid")
    }

    #[test]
    fn timestamps_sort_numerically() {
        let times = [i64::MIN, -1_000, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(encode_ts(pair[0]) < encode_ts(pair[1]), "{pair:?}");
        }
        for ts in times {
            assert_eq!(decode_ts(encode_ts(ts)), ts);
        }
    }

    #[test]
    fn history_keys_of_a_device_are_contiguous() {
        let a = id("a");
        let a0 = id("a0");
        // Every row of `a`, even at the largest time, sorts before `a0`'s.
        assert!(history_key(&a, i64::MAX) < history_key(&a0, i64::MIN));
        let key = history_key(&a, 42);
        assert_eq!(history_key_ts(&key, "a".len() + 1), Some(42));
        assert_eq!(history_key_ts(&key[..key.len() - 1], 2), None);
    }

    #[test]
    fn area_children_match_h3o() {
        let berlin = h3o::LatLng::new(52.52, 13.405).expect("finite");
        let pentagon = CellIndex::try_from(0x8009fffffffffff).expect("a res-0 pentagon");
        for res in 0..=7u8 {
            let res = Resolution::try_from(res).expect("0..=7 are resolutions");
            for cell in [
                berlin.to_cell(res),
                pentagon.center_child(res).expect("finer or equal"),
            ] {
                let range = area_children(cell);
                let children: Vec<u64> = cell.children(area_resolution()).map(u64::from).collect();
                assert_eq!(children.first(), Some(range.start()), "{cell}");
                assert_eq!(children.last(), Some(range.end()), "{cell}");
                assert!(children.iter().all(|c| range.contains(c)));
                // Neighbours' children never fall inside the range.
                for neighbour in cell.grid_disk::<Vec<_>>(1) {
                    if neighbour != cell {
                        let other = area_children(neighbour);
                        assert!(other.end() < range.start() || other.start() > range.end());
                    }
                }
            }
        }
        // A res-7 cell is its own range.
        let cell = berlin.to_cell(Resolution::Seven);
        assert_eq!(area_children(cell), u64::from(cell)..=u64::from(cell));
    }
}
