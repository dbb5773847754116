use fleetd_schemas::test_support::{full_position, position};
use rand::{Rng, SeedableRng};

use super::*;

fn id() -> DeviceId {
    DeviceId::parse("car-1").expect("id")
}

/// A real trace of `tests/data/traces/` as positions with the fields a
/// tracker sends (speed from the file where it has it).
fn trace(name: &str) -> Vec<EnrichedPosition> {
    let path = format!("{}/../tests/data/traces/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("trace file");
    let mut fixes: Vec<EnrichedPosition> = text
        .lines()
        .skip(1)
        .map(|line| {
            let cols: Vec<&str> = line.split(',').collect();
            let ts: i64 = cols[0].parse().expect("ts");
            let lat: f64 = cols[1].parse().expect("lat");
            let lon: f64 = cols[2].parse().expect("lon");
            let mut p = position("car-1", ts, lat, lon);
            p.report.speed_mps = cols.get(3).map(|s| s.parse().expect("speed"));
            p.report.accuracy_m = Some(4.0);
            p.report.received_ms = ts + 180 + (ts % 7) * 13;
            p
        })
        .collect();
    fixes.dedup_by_key(|p| p.report.ts_ms);
    fixes
}

fn round_trip(fixes: &[EnrichedPosition]) -> (Vec<EnrichedPosition>, usize) {
    let mut decoded = Vec::new();
    let mut bytes = 0;
    for chunk in fixes.chunks(300) {
        let block = encode(chunk);
        bytes += block.len();
        decoded.extend(decode(&id(), &block).expect("decodes"));
    }
    (decoded, bytes)
}

#[test]
fn real_traces_read_back_exactly_in_a_fraction_of_the_row_size() {
    // Every file's coordinates have at most 9 decimals except Višnjan's 10.
    for (name, exact, max_bytes) in [
        ("car-vincennes-rtk-1hz.csv", true, 12.0),
        ("run-kent-tomtom-1hz.csv", true, 10.0),
        ("boat-plaka-nmea.csv", true, 14.0),
        ("ais-276780000-ferry.csv", true, 16.0),
        ("car-visnjan-etrex.csv", false, 16.0),
    ] {
        let fixes = trace(name);
        let (decoded, bytes) = round_trip(&fixes);
        assert_eq!(decoded.len(), fixes.len(), "{name}");
        let per_fix = bytes as f64 / fixes.len() as f64;
        println!("{name}: {per_fix:.2} bytes a fix");
        assert!(per_fix <= max_bytes, "{name}: {per_fix:.1} bytes a fix");
        if exact {
            assert_eq!(decoded, fixes, "{name}");
        } else {
            for (a, b) in decoded.iter().zip(&fixes) {
                assert!((a.report.lat - b.report.lat).abs() <= 0.5e-7, "{name}");
                assert!((a.report.lon - b.report.lon).abs() <= 0.5e-7, "{name}");
                assert_eq!(a.report.speed_mps, b.report.speed_mps);
            }
        }
    }
}

#[test]
fn every_field_round_trips_and_full_precision_is_rounded_at_the_stated_limits() {
    let mut fixes: Vec<EnrichedPosition> = (0..50)
        .map(|i| {
            let mut p = full_position("car-1", 1_700_000_000_000 + i * 997, 52.52, 13.405);
            p.report.seq = if i % 3 == 0 {
                None
            } else {
                Some(u64::MAX - i as u64)
            };
            p.flag = (i % 7 == 0).then_some(RejectReason::Teleport);
            p.heading_derived = i % 2 == 0;
            p.report.altitude_m = (i % 5 != 0).then_some(-12.5);
            p
        })
        .collect();
    let block = encode(&fixes);
    assert_eq!(decode(&id(), &block).expect("decodes"), fixes);

    // Values with more decimals than kept (a double from a filter, a
    // derived speed) come back within half the last kept digit.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for p in &mut fixes {
        p.report.lat = 52.5 + rng.random::<f64>() * 0.1;
        p.report.lon = 13.4 + rng.random::<f64>() * 0.1;
        p.report.speed_mps = Some(rng.random::<f32>() * 40.0);
        p.report.heading_deg = Some(rng.random::<f32>() * 360.0);
    }
    let back = decode(&id(), &encode(&fixes)).expect("decodes");
    for (a, b) in back.iter().zip(&fixes) {
        assert!((a.report.lat - b.report.lat).abs() <= 0.5e-7 + 1e-12);
        assert!((a.report.lon - b.report.lon).abs() <= 0.5e-7 + 1e-12);
        let speed = (a.report.speed_mps.expect("speed") - b.report.speed_mps.expect("speed")).abs();
        assert!(speed <= 0.0005 + 1e-5, "{speed}");
        let heading =
            (a.report.heading_deg.expect("heading") - b.report.heading_deg.expect("heading")).abs();
        assert!(heading <= 0.005 + 1e-4, "{heading}");
        assert_eq!(a.report.ts_ms, b.report.ts_ms);
        assert_eq!(a.report.received_ms, b.report.received_ms);
        assert_eq!(a.h3, b.h3);
    }
}

#[test]
fn extreme_values_round_trip() {
    let mut a = position("car-1", i64::MIN + 1, -90.0, -180.0);
    a.report.received_ms = i64::MAX;
    a.report.seq = Some(0);
    let mut b = position("car-1", i64::MAX, 90.0, 180.0);
    b.report.received_ms = i64::MIN;
    b.report.seq = Some(u64::MAX);
    b.h3 = H3Cells {
        area: u64::MAX,
        detail: 0,
    };
    let fixes = vec![a, b];
    assert_eq!(decode(&id(), &encode(&fixes)).expect("decodes"), fixes);
    let one = vec![position("car-1", 5, 1.0, 2.0)];
    assert_eq!(decode(&id(), &encode(&one)).expect("decodes"), one);
}

#[test]
fn damaged_blocks_are_errors_never_panics() {
    let fixes: Vec<EnrichedPosition> = (0..40)
        .map(|i| full_position("car-1", 1_000 * i, 60.1 + i as f64 * 1e-4, 24.9))
        .collect();
    let block = encode(&fixes);
    assert!(decode(&id(), &[]).is_err());
    assert!(decode(&id(), &[FORMAT_V1, 0]).is_err(), "no fixes");
    assert!(decode(&id(), &[3, 1]).is_err(), "unknown version");
    assert!(
        decode(&id(), &[FORMAT_V1_LZ4, 0xFF, 0xFF, 0xFF, 0x7F, 0]).is_err(),
        "huge length"
    );
    assert_eq!(block[0], FORMAT_V1_LZ4, "40 similar fixes compress");
    let mut longer = block.clone();
    longer.push(0);
    assert!(decode(&id(), &longer).is_err(), "trailing bytes");
    for cut in 0..block.len() {
        assert!(decode(&id(), &block[..cut]).is_err(), "cut at {cut}");
    }
    // Flipped bytes: whatever they decode to, no panic and no huge
    // allocation (counts are bounded by MAX_FIXES).
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261207);
    for _ in 0..20_000 {
        let mut bad = block.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..bad.len());
            bad[at] = rng.random();
        }
        let _ = decode(&id(), &bad);
    }
}
