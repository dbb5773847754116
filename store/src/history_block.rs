//! The compact history format of the embedded store: one device's fixes of
//! one time bucket as a column-wise, delta-encoded block.
//!
//! A row per fix costs ~260 bytes on disk (key, protobuf value with the
//! device id repeated, the seal's 41 bytes). A fix is about 20 bytes of
//! information, and consecutive fixes of one vehicle differ little, so a
//! block stores each field as a column of small integers:
//!
//! * times (`ts_ms`, and `received_ms − ts_ms`): the first value, then
//!   deltas or deltas of deltas, whichever is smaller for the block, as
//!   zig-zag varints: a 1 Hz tracker costs ~1 byte a fix;
//! * coordinates and the optional floats: integers at the smallest
//!   decimal scale at which every value of the block reads back *exactly*
//!   (a fix sent as `52.5200066` is stored as `525200066` at scale 7), then
//!   delta-coded like times. When no scale up to the column's limit is
//!   exact (a full-precision double), values are rounded at the limit;
//!   [`PRECISION`] lists the limits, which are the precision kept;
//! * which optional fields are present, the derived-speed/heading bits and
//!   whether a data-quality flag is set: one 16-bit mask per fix,
//!   run-length coded (almost always one run);
//! * H3 cells: deltas, zero while the vehicle stays in its cell; flags:
//!   their codes, for the flagged fixes only.
//!
//! The device id is not in the block (it is in the key). Decoding never
//! panics on bad bytes: every length and count is checked and a block that
//! does not parse is [`StoreError::Corrupt`].

use fleetd_schemas::{DeviceId, EnrichedPosition, H3Cells, PositionReport, RejectReason};

use crate::StoreError;

/// First byte of a block: the format. `FORMAT_V1`: the columns follow;
/// `FORMAT_V1_LZ4`: the length of the columns (varint) and the columns
/// compressed with LZ4 follow. The zeros of a steady vehicle's columns (a
/// constant delta of time, sequence or battery, a cell it stays in)
/// compress away, and a sealed block cannot be compressed by fjall after.
const FORMAT_V1: u8 = 1;
const FORMAT_V1_LZ4: u8 = 2;

/// Bytes the columns of a block can take at most (~160 a fix in the worst
/// case): bounds what decompressing a damaged block allocates.
const MAX_COLUMN_BYTES: usize = 1 << 20;

/// Fixes a block holds at most; a bucket with more is stored as several
/// parts (see `crate::history`). Bounds what one decode allocates.
pub(crate) const MAX_FIXES: usize = 4096;

/// Decimal places kept at most, per column: values with more decimals are
/// rounded there (1e-9° is 0.1 mm; 0.001 m/s; 0.01° of heading; 1 cm of
/// accuracy and altitude; 0.1 % of battery).
pub const PRECISION: [(&str, u8); 7] = [
    ("lat", LAT_LON_SCALE),
    ("lon", LAT_LON_SCALE),
    ("accuracy_m", 2),
    ("altitude_m", 2),
    ("speed_mps", 3),
    ("heading_deg", 2),
    ("battery_pct", 1),
];

/// Coordinates read back exactly if sent with up to 9 decimals; beyond,
/// they are rounded to 1e-7° (~1 cm), a GPS fix's best precision.
const LAT_LON_SCALE: u8 = 9;
const LAT_LON_ROUNDED: u8 = 7;

/// Column scale byte meaning "raw IEEE bits follow".
const RAW: u8 = 0xFF;

/// Integer column modes.
const MODE_DELTA: u8 = 0;
const MODE_DELTA_OF_DELTA: u8 = 1;

/// Exact powers of ten as f64 (every one up to 1e22 is exact).
const POW10: [f64; 10] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// |q| beyond which an f64 no longer holds every integer.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

// Bits of a fix's mask.
const HAS_ACCURACY: u16 = 1 << 0;
const HAS_ALTITUDE: u16 = 1 << 1;
const HAS_SPEED: u16 = 1 << 2;
const HAS_HEADING: u16 = 1 << 3;
const HAS_BATTERY: u16 = 1 << 4;
const HAS_SEQ: u16 = 1 << 5;
const SPEED_DERIVED: u16 = 1 << 6;
const HEADING_DERIVED: u16 = 1 << 7;
const HAS_FLAG: u16 = 1 << 8;
const KNOWN_BITS: u16 = (1 << 9) - 1;

/// Encodes `fixes` (one device, sorted by `ts_ms`, at most [`MAX_FIXES`])
/// as a block.
pub(crate) fn encode(fixes: &[EnrichedPosition]) -> Vec<u8> {
    debug_assert!(fixes.len() <= MAX_FIXES);
    debug_assert!(
        fixes
            .windows(2)
            .all(|w| w[0].report.ts_ms < w[1].report.ts_ms)
    );
    let mut out = Vec::with_capacity(16 + fixes.len() * 16);
    out.push(FORMAT_V1);
    put_varint(&mut out, fixes.len() as u64);
    let reports = || fixes.iter().map(|p| &p.report);

    let ts: Vec<i64> = reports().map(|r| r.ts_ms).collect();
    put_ints(&mut out, &ts);
    let lag: Vec<i64> = reports()
        .map(|r| r.received_ms.wrapping_sub(r.ts_ms))
        .collect();
    put_ints(&mut out, &lag);

    let masks: Vec<u16> = fixes.iter().map(mask).collect();
    put_runs(&mut out, &masks);

    let lat: Vec<f64> = reports().map(|r| r.lat).collect();
    put_f64s(&mut out, &lat);
    let lon: Vec<f64> = reports().map(|r| r.lon).collect();
    put_f64s(&mut out, &lon);
    put_f32s(&mut out, &present(reports().map(|r| r.accuracy_m)), 2);
    put_f32s(&mut out, &present(reports().map(|r| r.altitude_m)), 2);
    put_f32s(&mut out, &present(reports().map(|r| r.speed_mps)), 3);
    put_f32s(&mut out, &present(reports().map(|r| r.heading_deg)), 2);
    put_f32s(&mut out, &present(reports().map(|r| r.battery_pct)), 1);
    let seq: Vec<i64> = reports().filter_map(|r| r.seq).map(|s| s as i64).collect();
    put_ints(&mut out, &seq);

    let area: Vec<i64> = fixes.iter().map(|p| p.h3.area as i64).collect();
    put_ints(&mut out, &area);
    let detail: Vec<i64> = fixes.iter().map(|p| p.h3.detail as i64).collect();
    put_ints(&mut out, &detail);
    for flag in fixes.iter().filter_map(|p| p.flag) {
        let code = flag.code().as_bytes();
        put_varint(&mut out, code.len() as u64);
        out.extend_from_slice(code);
    }
    let columns = &out[1..];
    let packed = lz4_flex::block::compress(columns);
    if packed.len() + 4 < columns.len() {
        let mut lz4 = Vec::with_capacity(packed.len() + 4);
        lz4.push(FORMAT_V1_LZ4);
        put_varint(&mut lz4, columns.len() as u64);
        lz4.extend_from_slice(&packed);
        return lz4;
    }
    out
}

/// Decodes a block of `device`'s fixes.
pub(crate) fn decode(device: &DeviceId, bytes: &[u8]) -> Result<Vec<EnrichedPosition>, StoreError> {
    let mut r = Reader { bytes, at: 0 };
    match r.byte()? {
        FORMAT_V1 => decode_columns(device, &bytes[1..]),
        FORMAT_V1_LZ4 => {
            let len = usize::try_from(r.varint()?).unwrap_or(usize::MAX);
            if len > MAX_COLUMN_BYTES {
                return Err(corrupt(format!("{len} bytes of columns")));
            }
            let columns = lz4_flex::block::decompress(&bytes[r.at..], len)
                .map_err(|e| corrupt(format!("lz4: {e}")))?;
            if columns.len() != len {
                return Err(corrupt("lz4: wrong length".into()));
            }
            decode_columns(device, &columns)
        }
        other => Err(corrupt(format!("unknown format {other}"))),
    }
}

fn decode_columns(device: &DeviceId, bytes: &[u8]) -> Result<Vec<EnrichedPosition>, StoreError> {
    let mut r = Reader { bytes, at: 0 };
    let n = usize::try_from(r.varint()?).unwrap_or(usize::MAX);
    if n == 0 || n > MAX_FIXES {
        return Err(corrupt(format!("{n} fixes")));
    }
    let ts = r.ints(n)?;
    let lag = r.ints(n)?;
    let masks = r.runs(n)?;
    let count = |bit: u16| masks.iter().filter(|m| *m & bit != 0).count();
    let lat = r.f64s(n)?;
    let lon = r.f64s(n)?;
    let mut accuracy = r.f32s(count(HAS_ACCURACY))?.into_iter();
    let mut altitude = r.f32s(count(HAS_ALTITUDE))?.into_iter();
    let mut speed = r.f32s(count(HAS_SPEED))?.into_iter();
    let mut heading = r.f32s(count(HAS_HEADING))?.into_iter();
    let mut battery = r.f32s(count(HAS_BATTERY))?.into_iter();
    let mut seq = r.ints(count(HAS_SEQ))?.into_iter();
    let area = r.ints(n)?;
    let detail = r.ints(n)?;

    let mut fixes = Vec::with_capacity(n);
    for i in 0..n {
        let m = masks[i];
        let take = |bit: u16, column: &mut std::vec::IntoIter<f32>| {
            if m & bit == 0 { None } else { column.next() }
        };
        let flag = if m & HAS_FLAG == 0 {
            None
        } else {
            let len = usize::try_from(r.varint()?).unwrap_or(usize::MAX);
            // A code this build does not know (a newer fleetd's) reads as
            // unflagged, as in the row format.
            std::str::from_utf8(r.slice(len)?)
                .ok()
                .and_then(RejectReason::from_code)
        };
        fixes.push(EnrichedPosition {
            report: PositionReport {
                device_id: device.clone(),
                ts_ms: ts[i],
                lat: lat[i],
                lon: lon[i],
                accuracy_m: take(HAS_ACCURACY, &mut accuracy),
                altitude_m: take(HAS_ALTITUDE, &mut altitude),
                speed_mps: take(HAS_SPEED, &mut speed),
                heading_deg: take(HAS_HEADING, &mut heading),
                battery_pct: take(HAS_BATTERY, &mut battery),
                seq: if m & HAS_SEQ == 0 {
                    None
                } else {
                    seq.next().map(|s| s as u64)
                },
                received_ms: ts[i].wrapping_add(lag[i]),
            },
            h3: H3Cells {
                area: area[i] as u64,
                detail: detail[i] as u64,
            },
            speed_derived: m & SPEED_DERIVED != 0,
            heading_derived: m & HEADING_DERIVED != 0,
            flag,
        });
    }
    if r.at != bytes.len() {
        return Err(corrupt(format!(
            "{} bytes after the last column",
            bytes.len() - r.at
        )));
    }
    if fixes
        .windows(2)
        .any(|w| w[0].report.ts_ms >= w[1].report.ts_ms)
    {
        return Err(corrupt("fixes out of order".into()));
    }
    Ok(fixes)
}

fn corrupt(what: String) -> StoreError {
    StoreError::Corrupt(format!("history block: {what}"))
}

fn mask(p: &EnrichedPosition) -> u16 {
    let r = &p.report;
    let bit = |on: bool, bit: u16| if on { bit } else { 0 };
    bit(r.accuracy_m.is_some(), HAS_ACCURACY)
        | bit(r.altitude_m.is_some(), HAS_ALTITUDE)
        | bit(r.speed_mps.is_some(), HAS_SPEED)
        | bit(r.heading_deg.is_some(), HAS_HEADING)
        | bit(r.battery_pct.is_some(), HAS_BATTERY)
        | bit(r.seq.is_some(), HAS_SEQ)
        | bit(p.speed_derived, SPEED_DERIVED)
        | bit(p.heading_derived, HEADING_DERIVED)
        | bit(p.flag.is_some(), HAS_FLAG)
}

fn present(values: impl Iterator<Item = Option<f32>>) -> Vec<f32> {
    values.flatten().collect()
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// An integer column: a mode byte, the first value, then deltas (or
/// deltas of deltas), all zig-zag varints. Wrapping arithmetic, so any
/// `i64` (and any `u64` cast to one) round-trips.
fn put_ints(out: &mut Vec<u8>, values: &[i64]) {
    let Some((&first, _)) = values.split_first() else {
        return;
    };
    let deltas: Vec<i64> = values.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    let second: Vec<i64> = std::iter::once(deltas.first().copied().unwrap_or(0))
        .chain(deltas.windows(2).map(|w| w[1].wrapping_sub(w[0])))
        .take(deltas.len())
        .collect();
    let size = |column: &[i64]| column.iter().map(|v| varint_len(zigzag(*v))).sum::<usize>();
    let (mode, column) = if size(&second) < size(&deltas) {
        (MODE_DELTA_OF_DELTA, second)
    } else {
        (MODE_DELTA, deltas)
    };
    out.push(mode);
    put_varint(out, zigzag(first));
    for v in column {
        put_varint(out, zigzag(v));
    }
}

/// Run-length coded masks: (mask, run length) pairs.
fn put_runs(out: &mut Vec<u8>, masks: &[u16]) {
    let mut i = 0;
    while i < masks.len() {
        let run = masks[i..].iter().take_while(|m| **m == masks[i]).count();
        put_varint(out, u64::from(masks[i]));
        put_varint(out, run as u64);
        i += run;
    }
}

fn f64_at(q: i64, scale: u8) -> f64 {
    q as f64 / POW10[usize::from(scale)]
}

fn f32_at(q: i64, scale: u8) -> f32 {
    f64_at(q, scale) as f32
}

/// `v` as an integer at `scale`, if it fits an f64's exact integers.
fn quantize(v: f64, scale: u8) -> Option<i64> {
    let q = (v * POW10[usize::from(scale)]).round();
    (q.is_finite() && q.abs() < MAX_EXACT).then_some(q as i64)
}

/// The smallest scale up to `max` at which `decode(quantize(v)) == v` for
/// every value (bit for bit), if any.
fn exact_scale<T: Copy>(
    values: &[T],
    max: u8,
    as_f64: impl Fn(T) -> f64,
    same: impl Fn(i64, u8, T) -> bool,
) -> Option<u8> {
    (0..=max).find(|&s| {
        values
            .iter()
            .all(|&v| quantize(as_f64(v), s).is_some_and(|q| same(q, s, v)))
    })
}

fn put_scaled(out: &mut Vec<u8>, scale: u8, values: impl Iterator<Item = Option<i64>>) -> bool {
    let Some(column) = values.collect::<Option<Vec<i64>>>() else {
        return false;
    };
    out.push(scale);
    put_ints(out, &column);
    true
}

fn put_f64s(out: &mut Vec<u8>, values: &[f64]) {
    if values.is_empty() {
        return;
    }
    let scale = exact_scale(
        values,
        LAT_LON_SCALE,
        |v| v,
        |q, s, v| f64_at(q, s).to_bits() == v.to_bits(),
    )
    .unwrap_or(LAT_LON_ROUNDED);
    if !put_scaled(out, scale, values.iter().map(|v| quantize(*v, scale))) {
        out.push(RAW);
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

fn put_f32s(out: &mut Vec<u8>, values: &[f32], max: u8) {
    if values.is_empty() {
        return;
    }
    let scale = exact_scale(values, max, f64::from, |q, s, v| {
        f32_at(q, s).to_bits() == v.to_bits()
    })
    .unwrap_or(max);
    let quantized = values.iter().map(|v| quantize(f64::from(*v), scale));
    if !put_scaled(out, scale, quantized) {
        out.push(RAW);
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, StoreError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| corrupt("truncated".into()))?;
        self.at += 1;
        Ok(b)
    }

    fn slice(&mut self, len: usize) -> Result<&'a [u8], StoreError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| corrupt("truncated".into()))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, StoreError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt("varint too long".into()))
    }

    fn ints(&mut self, n: usize) -> Result<Vec<i64>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mode = self.byte()?;
        if mode > MODE_DELTA_OF_DELTA {
            return Err(corrupt(format!("integer mode {mode}")));
        }
        let mut values = Vec::with_capacity(n);
        let mut value = unzigzag(self.varint()?);
        values.push(value);
        let mut delta = 0i64;
        for i in 1..n {
            let v = unzigzag(self.varint()?);
            delta = match (mode, i) {
                (MODE_DELTA, _) | (_, 1) => v,
                _ => delta.wrapping_add(v),
            };
            value = value.wrapping_add(delta);
            values.push(value);
        }
        Ok(values)
    }

    fn runs(&mut self, n: usize) -> Result<Vec<u16>, StoreError> {
        let mut masks = Vec::with_capacity(n);
        while masks.len() < n {
            let mask = u16::try_from(self.varint()?)
                .ok()
                .filter(|m| m & !KNOWN_BITS == 0)
                .ok_or_else(|| corrupt("unknown field bits".into()))?;
            let run = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
            if run == 0 || run > n - masks.len() {
                return Err(corrupt(format!("run of {run}")));
            }
            masks.extend(std::iter::repeat_n(mask, run));
        }
        Ok(masks)
    }

    fn scale(&mut self, max: u8) -> Result<Option<u8>, StoreError> {
        match self.byte()? {
            RAW => Ok(None),
            s if s <= max => Ok(Some(s)),
            s => Err(corrupt(format!("scale {s}"))),
        }
    }

    fn f64s(&mut self, n: usize) -> Result<Vec<f64>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        match self.scale(LAT_LON_SCALE)? {
            Some(s) => Ok(self.ints(n)?.into_iter().map(|q| f64_at(q, s)).collect()),
            None => (0..n)
                .map(|_| {
                    let bytes = self
                        .slice(8)?
                        .try_into()
                        .map_err(|_| corrupt("f64".into()))?;
                    Ok(f64::from_le_bytes(bytes))
                })
                .collect(),
        }
    }

    fn f32s(&mut self, n: usize) -> Result<Vec<f32>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        match self.scale(3)? {
            Some(s) => Ok(self.ints(n)?.into_iter().map(|q| f32_at(q, s)).collect()),
            None => (0..n)
                .map(|_| {
                    let bytes = self
                        .slice(4)?
                        .try_into()
                        .map_err(|_| corrupt("f32".into()))?;
                    Ok(f32::from_le_bytes(bytes))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
#[path = "history_block_tests.rs"]
mod tests;
