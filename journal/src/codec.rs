//! The journal's record format.
//!
//! A segment file is a header (`MAGIC`) followed by frames. A frame is
//! `len: u32 LE | crc32(body): u32 LE | body`, and a body is
//! `count: u32 LE` positions, each:
//!
//! ```text
//! id_len u8 | id bytes | ts_ms i64 | lat f64 | lon f64 | received_ms i64 |
//! present u8 (bit 0 accuracy, 1 altitude, 2 speed, 3 heading, 4 battery, 5 seq) |
//! the present f32s in that order | seq u64
//! ```
//!
//! all little-endian. In a sealed segment (`SEALED_MAGIC`, fleetd with a
//! store key) each body is sealed by the [`FrameSeal`] (the checksum covers
//! the sealed bytes, so a torn write is still told from a wrong key).
//! Fixed-width and schema-free on purpose: it is written
//! for every position on the hot path and read only after a crash, and a
//! frame is either whole (its checksum matches) or the torn end of the last
//! write, which was never acknowledged.

use fleetd_schemas::{DeviceId, PositionReport};

use crate::FrameSeal;

/// First bytes of every segment file (format version 1).
pub(crate) const MAGIC: &[u8; 8] = b"FLTDJRN1";
/// First bytes of a segment whose frame bodies are sealed.
pub(crate) const SEALED_MAGIC: &[u8; 8] = b"FLTDJRS1";

/// The header of a segment written with `seal` (or without).
pub(crate) fn magic(seal: Option<&dyn FrameSeal>) -> &'static [u8; 8] {
    match seal {
        Some(_) => SEALED_MAGIC,
        None => MAGIC,
    }
}

/// Bytes before a frame's body.
const FRAME_HEADER: usize = 8;

/// Appends one frame holding `positions` to `buf`, its body sealed by
/// `seal` for segment `segment` when there is one; returns its size.
pub(crate) fn encode_frame(
    positions: &[PositionReport],
    seal: Option<&dyn FrameSeal>,
    segment: u64,
    buf: &mut Vec<u8>,
) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    let body = buf.len();
    buf.extend_from_slice(&(positions.len() as u32).to_le_bytes());
    for p in positions {
        encode_position(p, buf);
    }
    if let Some(seal) = seal {
        let plain = buf.split_off(body);
        buf.extend_from_slice(&seal.seal(segment, plain));
    }
    let len = (buf.len() - body) as u32;
    let crc = crc32fast::hash(&buf[body..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    buf.len() - start
}

fn encode_position(p: &PositionReport, buf: &mut Vec<u8>) {
    let id = p.device_id.as_str().as_bytes();
    // Device ids are at most 128 bytes (MAX_DEVICE_ID_LEN).
    buf.push(id.len() as u8);
    buf.extend_from_slice(id);
    buf.extend_from_slice(&p.ts_ms.to_le_bytes());
    buf.extend_from_slice(&p.lat.to_le_bytes());
    buf.extend_from_slice(&p.lon.to_le_bytes());
    buf.extend_from_slice(&p.received_ms.to_le_bytes());
    let floats = [
        p.accuracy_m,
        p.altitude_m,
        p.speed_mps,
        p.heading_deg,
        p.battery_pct,
    ];
    let mut present = 0u8;
    for (bit, f) in floats.iter().enumerate() {
        if f.is_some() {
            present |= 1 << bit;
        }
    }
    if p.seq.is_some() {
        present |= 1 << 5;
    }
    buf.push(present);
    for f in floats.into_iter().flatten() {
        buf.extend_from_slice(&f.to_le_bytes());
    }
    if let Some(seq) = p.seq {
        buf.extend_from_slice(&seq.to_le_bytes());
    }
}

/// Why reading a segment stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Damage {
    /// The file does not start with [`MAGIC`] or [`SEALED_MAGIC`].
    NotAJournal,
    /// The segment is sealed and fleetd has no store key.
    SealedWithoutKey,
    /// A whole frame (its checksum matches) does not open with the store
    /// key: another key, or a frame moved from another segment.
    WrongKey {
        /// Offset of the frame in the file.
        at: usize,
    },
    /// A frame is cut short or its checksum does not match (a write torn
    /// by a crash, or later corruption), at this byte offset.
    BadFrame {
        /// Offset of the frame in the file.
        at: usize,
    },
}

/// The frames of one segment file, decoded.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    /// Every position of the whole frames, in file order.
    pub(crate) positions: Vec<PositionReport>,
    /// Where and why reading stopped early; everything after it is lost
    /// (it was never acknowledged if it is the torn last write).
    pub(crate) damage: Option<Damage>,
    /// Bytes after the last whole frame.
    pub(crate) trailing_bytes: usize,
}

/// Decodes a whole segment file (segment `segment`); a sealed one is
/// opened with `seal`.
pub(crate) fn decode_segment(bytes: &[u8], seal: Option<&dyn FrameSeal>, segment: u64) -> Decoded {
    let mut out = Decoded::default();
    let header = bytes.get(..MAGIC.len());
    let seal = match header {
        Some(h) if h == MAGIC => None,
        Some(h) if h == SEALED_MAGIC => match seal {
            Some(seal) => Some(seal),
            None => {
                out.damage = Some(Damage::SealedWithoutKey);
                out.trailing_bytes = bytes.len();
                return out;
            }
        },
        _ => {
            out.damage = Some(Damage::NotAJournal);
            out.trailing_bytes = bytes.len();
            return out;
        }
    };
    let mut at = MAGIC.len();
    while at < bytes.len() {
        match decode_frame(&bytes[at..], seal, segment, &mut out.positions) {
            Ok(size) => at += size,
            Err(wrong_key) => {
                out.damage = Some(match wrong_key {
                    true => Damage::WrongKey { at },
                    false => Damage::BadFrame { at },
                });
                out.trailing_bytes = bytes.len() - at;
                break;
            }
        }
    }
    out
}

/// Decodes the frame at the start of `bytes` into `out`; its size, or an
/// error when it is not a whole, intact frame (`false`) or does not open
/// (`true`); `out` is then unchanged.
fn decode_frame(
    bytes: &[u8],
    seal: Option<&dyn FrameSeal>,
    segment: u64,
    out: &mut Vec<PositionReport>,
) -> Result<usize, bool> {
    let (len, body) = checked_body(bytes).ok_or(false)?;
    let opened;
    let body = match seal {
        Some(seal) => {
            opened = seal.open(segment, body).ok_or(true)?;
            &opened[..]
        }
        None => body,
    };
    decode_body(body, out).ok_or(false)?;
    Ok(FRAME_HEADER + len)
}

/// The body of the frame at the start of `bytes` if it is whole and its
/// checksum matches, with its length.
fn checked_body(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let body = bytes.get(FRAME_HEADER..FRAME_HEADER.checked_add(len)?)?;
    (crc32fast::hash(body) == crc).then_some((len, body))
}

/// Decodes a frame's (plain) body into `out`, or nothing.
fn decode_body(body: &[u8], out: &mut Vec<PositionReport>) -> Option<()> {
    let mut r = Reader(body);
    let count = r.u32()? as usize;
    let before = out.len();
    // The count comes from a checked frame, but a body cannot hold more
    // positions than it has bytes for: no huge allocation from one number.
    out.reserve(count.min(body.len() / 41));
    for _ in 0..count {
        match decode_position(&mut r) {
            Some(p) => out.push(p),
            None => {
                out.truncate(before);
                return None;
            }
        }
    }
    Some(())
}

fn decode_position(r: &mut Reader<'_>) -> Option<PositionReport> {
    let id_len = r.u8()? as usize;
    let id = std::str::from_utf8(r.take(id_len)?).ok()?;
    let device_id = DeviceId::parse(id).ok()?;
    let ts_ms = r.i64()?;
    let lat = r.f64()?;
    let lon = r.f64()?;
    let received_ms = r.i64()?;
    let present = r.u8()?;
    let mut float = |bit: u8| -> Option<Option<f32>> {
        if present & (1 << bit) != 0 {
            Some(Some(r.f32()?))
        } else {
            Some(None)
        }
    };
    let accuracy_m = float(0)?;
    let altitude_m = float(1)?;
    let speed_mps = float(2)?;
    let heading_deg = float(3)?;
    let battery_pct = float(4)?;
    let seq = if present & (1 << 5) != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    Some(PositionReport {
        device_id,
        ts_ms,
        lat,
        lon,
        accuracy_m,
        altitude_m,
        speed_mps,
        heading_deg,
        battery_pct,
        seq,
        received_ms,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.array()?))
    }

    fn f32(&mut self) -> Option<f32> {
        Some(f32::from_le_bytes(self.array()?))
    }

    fn f64(&mut self) -> Option<f64> {
        Some(f64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use fleetd_schemas::test_support::report;

    use super::*;

    fn sample() -> Vec<PositionReport> {
        let mut full = report("truck-1", 1_700_000_000_123, 52.5, 13.4);
        full.accuracy_m = Some(4.5);
        full.altitude_m = Some(-3.0);
        full.speed_mps = Some(12.25);
        full.heading_deg = Some(359.5);
        full.battery_pct = Some(87.0);
        full.seq = Some(u64::MAX);
        full.received_ms = 1_700_000_000_500;
        let mut sparse = report("alice/phone", 1, -90.0, 180.0);
        sparse.speed_mps = Some(0.0);
        vec![full, sparse]
    }

    fn segment(frames: &[&[PositionReport]]) -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        for f in frames {
            encode_frame(f, None, 7, &mut buf);
        }
        buf
    }

    #[test]
    fn frames_round_trip_every_field() {
        let positions = sample();
        let bytes = segment(&[&positions, &positions[..1]]);
        let decoded = decode_segment(&bytes, None, 7);
        assert_eq!(decoded.damage, None);
        assert_eq!(decoded.positions.len(), 3);
        assert_eq!(decoded.positions[..2], positions[..]);
        assert_eq!(decoded.positions[2], positions[0]);
    }

    #[test]
    fn a_torn_tail_keeps_every_whole_frame() {
        let positions = sample();
        let whole = segment(&[&positions]);
        let full = segment(&[&positions, &positions]);
        for cut in whole.len()..full.len() {
            let decoded = decode_segment(&full[..cut], None, 7);
            assert_eq!(decoded.positions, positions, "cut at {cut}");
            if cut > whole.len() {
                assert_eq!(
                    decoded.damage,
                    Some(Damage::BadFrame { at: whole.len() }),
                    "cut at {cut}"
                );
                assert_eq!(decoded.trailing_bytes, cut - whole.len());
            }
        }
    }

    #[test]
    fn a_flipped_bit_is_detected_not_decoded() {
        let positions = sample();
        let whole = segment(&[&positions]);
        let mut bytes = segment(&[&positions, &positions]);
        let last = bytes.len() - 3;
        bytes[last] ^= 0x10;
        let decoded = decode_segment(&bytes, None, 7);
        assert_eq!(decoded.positions, positions);
        assert_eq!(decoded.damage, Some(Damage::BadFrame { at: whole.len() }));
    }

    #[test]
    fn a_file_that_is_not_a_journal_yields_nothing() {
        let decoded = decode_segment(b"hello world, not a journal", None, 7);
        assert!(decoded.positions.is_empty());
        assert_eq!(decoded.damage, Some(Damage::NotAJournal));
    }

    /// A stand-in cipher that binds a body to its segment, enough to test
    /// the framing (fleetd seals with XChaCha20-Poly1305, see the store).
    struct XorSeal;

    impl FrameSeal for XorSeal {
        fn seal(&self, segment: u64, mut plain: Vec<u8>) -> Vec<u8> {
            plain.iter_mut().for_each(|b| *b ^= 0x5a);
            plain.extend_from_slice(&segment.to_le_bytes());
            plain
        }

        fn open(&self, segment: u64, sealed: &[u8]) -> Option<Vec<u8>> {
            let (body, tag) = sealed.split_at(sealed.len().checked_sub(8)?);
            (tag == segment.to_le_bytes()).then(|| body.iter().map(|b| b ^ 0x5a).collect())
        }
    }

    fn sealed_segment(frames: &[&[PositionReport]], id: u64) -> Vec<u8> {
        let mut buf = SEALED_MAGIC.to_vec();
        for f in frames {
            encode_frame(f, Some(&XorSeal), id, &mut buf);
        }
        buf
    }

    #[test]
    fn sealed_frames_open_only_with_the_seal_and_in_their_segment() {
        let positions = sample();
        let bytes = sealed_segment(&[&positions], 3);
        let id = positions[0].device_id.as_str().as_bytes();
        assert!(!bytes.windows(id.len()).any(|w| w == id), "no id in clear");
        let decoded = decode_segment(&bytes, Some(&XorSeal), 3);
        assert_eq!((decoded.damage, decoded.positions), (None, positions));
        let without = decode_segment(&bytes, None, 3);
        assert_eq!(without.damage, Some(Damage::SealedWithoutKey));
        assert!(without.positions.is_empty());
        let moved = decode_segment(&bytes, Some(&XorSeal), 4);
        assert_eq!(
            moved.damage,
            Some(Damage::WrongKey {
                at: SEALED_MAGIC.len()
            })
        );
        // A plain segment still reads with a seal (written before the key).
        let plain = decode_segment(&segment(&[&sample()]), Some(&XorSeal), 7);
        assert_eq!(plain.damage, None);
    }
}
