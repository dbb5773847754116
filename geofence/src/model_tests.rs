//! Parsing, validation and GeoJSON round trips of geofences.

use fleetd_schemas::GeofenceId;
use serde_json::json;

use super::*;

fn id() -> GeofenceId {
    GeofenceId::parse("zone-1").expect("valid id")
}

/// Parses `input` with default limits and compares with `expected`: `Ok`
/// is the serialized fence, `Err` the exact error message.
fn check(input: serde_json::Value, expected: Result<serde_json::Value, &str>) {
    check_with(input, &GeofenceLimits::default(), expected);
}

fn check_with(
    input: serde_json::Value,
    limits: &GeofenceLimits,
    expected: Result<serde_json::Value, &str>,
) {
    let got = Geofence::parse(id(), &input.to_string(), limits);
    match (got, expected) {
        (Ok(fence), Ok(want)) => {
            assert_eq!(fence.to_geojson(), want, "input {input}");
            // What is stored parses back to the same fence.
            let again = Geofence::parse(id(), &fence.to_geojson_string(), limits)
                .expect("serialized fence parses");
            assert_eq!(again, fence);
        }
        (Err(e), Err(want)) => assert_eq!(e.to_string(), want, "input {input}"),
        (got, want) => panic!("input {input}: got {got:?}, want {want:?}"),
    }
}

fn square(x0: f64, y0: f64, s: f64) -> serde_json::Value {
    json!([
        [x0, y0],
        [x0 + s, y0],
        [x0 + s, y0 + s],
        [x0, y0 + s],
        [x0, y0]
    ])
}

#[test]
fn accepted_forms() {
    let ring = square(13.0, 52.0, 0.01);
    // A Feature: properties kept as they are, name and dwell read from them.
    check(
        json!({"type": "Feature", "id": "ignored", "geometry": {"type": "Polygon", "coordinates": [ring]},
               "properties": {"name": "Depot", "dwell_s": 300, "tags": ["a"]}}),
        Ok(json!({"type": "Feature", "id": "zone-1",
                  "geometry": {"type": "Polygon", "coordinates": [ring]},
                  "properties": {"name": "Depot", "dwell_s": 300, "tags": ["a"]}})),
    );
    // A bare geometry, with an altitude that is dropped.
    check(
        json!({"type": "Polygon", "coordinates": [[[0, 0, 5], [1, 0, 5], [0, 1, 5], [0, 0, 5]]]}),
        Ok(json!({"type": "Feature", "id": "zone-1",
                  "geometry": {"type": "Polygon", "coordinates": [[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]]},
                  "properties": {}})),
    );
    // A MultiPolygon with a hole in its first part.
    let hole = json!([
        [13.002, 52.002],
        [13.002, 52.004],
        [13.004, 52.004],
        [13.004, 52.002],
        [13.002, 52.002]
    ]);
    check(
        json!({"type": "Feature", "geometry": {"type": "MultiPolygon",
               "coordinates": [[ring, hole], [square(14.0, 52.0, 0.01)]]}}),
        Ok(
            json!({"type": "Feature", "id": "zone-1", "geometry": {"type": "MultiPolygon",
                  "coordinates": [[ring, hole], [square(14.0, 52.0, 0.01)]]}, "properties": {}}),
        ),
    );
    // A circle stays a circle.
    check(
        json!({"center": [13.4, 52.5], "radius_m": 250, "properties": {"name": "Yard"}}),
        Ok(
            json!({"id": "zone-1", "center": [13.4, 52.5], "radius_m": 250.0, "properties": {"name": "Yard"}}),
        ),
    );
    // Repeated consecutive positions are dropped.
    check(
        json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 0], [0, 1], [0, 0]]]}),
        Ok(json!({"type": "Feature", "id": "zone-1",
                  "geometry": {"type": "Polygon", "coordinates": [[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]]},
                  "properties": {}})),
    );
    // Rings touching at one point are valid (OGC).
    check(
        json!({"type": "Polygon", "coordinates": [square(0.0, 0.0, 4.0), [[0, 2], [1, 1], [1, 3], [0, 2]]]}),
        Ok(
            json!({"type": "Feature", "id": "zone-1", "geometry": {"type": "Polygon",
                  "coordinates": [square(0.0, 0.0, 4.0), [[0.0, 2.0], [1.0, 1.0], [1.0, 3.0], [0.0, 2.0]]]},
                  "properties": {}}),
        ),
    );
}

#[test]
fn name_and_dwell() {
    let f = Geofence::parse(
        id(),
        &json!({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square(0.0, 0.0, 1.0)]},
                "properties": {"name": "A", "dwell_s": 90.5}})
        .to_string(),
        &GeofenceLimits::default(),
    )
    .expect("valid");
    assert_eq!(f.name.as_deref(), Some("A"));
    assert_eq!(f.dwell_s, Some(90.5));
    assert_eq!(f.vertex_count(), 5);
}

#[test]
fn rejected_inputs() {
    let poly = |rings: serde_json::Value| json!({"type": "Polygon", "coordinates": rings});
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!([1, 2]), "geofence must be a JSON object"),
        (
            json!({"foo": 1}),
            "expected a GeoJSON Feature or geometry (member \"type\") or a circle (members \"center\" and \"radius_m\")",
        ),
        (
            json!({"type": "Feature", "geometry": null}),
            "feature has no geometry",
        ),
        (
            json!({"type": "Point", "coordinates": [1, 2]}),
            "unsupported geometry type \"Point\": expected Polygon, MultiPolygon or a circle {\"center\": [lon, lat], \"radius_m\": r}",
        ),
        (poly(json!([])), "geometry has no coordinates"),
        (
            poly(json!([[[0, 0], [1, 0], [0, 1], [0, 0.5]]])),
            "ring 0 (outer): ring is not closed: first position [0.0, 0.0], last position [0.0, 0.5]",
        ),
        (
            poly(json!([[[0, 0], [1, 0], [0, 0]]])),
            "ring 0 (outer): ring has 3 positions, at least 4 are needed (3 distinct and the first repeated)",
        ),
        (
            poly(json!([[[0, 0], [1, 0], [1, 0], [0, 0]]])),
            "ring 0 (outer): ring has 3 positions, at least 4 are needed (3 distinct and the first repeated)",
        ),
        (
            poly(json!([[[0, 0], [181, 0], [0, 1], [0, 0]]])),
            "ring 0 (outer) position 1: [181, 0] is out of range (longitude -180..180, latitude -90..90)",
        ),
        (
            poly(json!([[[0, 0], [1, -90.5], [0, 1], [0, 0]]])),
            "ring 0 (outer) position 1: [1, -90.5] is out of range (longitude -180..180, latitude -90..90)",
        ),
        (
            poly(json!([[[0, 0], ["1", 0], [0, 1], [0, 0]]])),
            "ring 0 (outer) position 1: position must hold numbers",
        ),
        (
            poly(json!([[[0, 0], [1], [0, 1], [0, 0]]])),
            "ring 0 (outer) position 1: position must be [lon, lat], got [1]",
        ),
        // A bow tie.
        (
            poly(json!([[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]])),
            "ring 0 (outer): ring intersects itself near [0.5, 0.5]",
        ),
        // A spike folding back along the previous edge.
        (
            poly(json!([[[0, 0], [2, 0], [1, 0], [1, 1], [0, 0]]])),
            "ring 0 (outer): ring intersects itself near [2, 0]",
        ),
        // A ring touching itself at a vertex (an "inverted hole").
        (
            poly(json!([[[0, 0], [4, 0], [4, 4], [2, 0], [0, 4], [0, 0]]])),
            "ring 0 (outer): ring intersects itself near [2, 0]",
        ),
        (
            poly(json!([square(0.0, 0.0, 1.0), square(5.0, 5.0, 1.0)])),
            "ring 1 (hole 0): hole is not inside the outer ring or lies inside another hole",
        ),
        (
            poly(json!([square(0.0, 0.0, 4.0), square(3.0, 1.0, 2.0)])),
            "ring 0 (outer) and ring 1 (hole 0) intersect near [4, 1]",
        ),
        (
            poly(json!([
                square(0.0, 0.0, 4.0),
                square(1.0, 1.0, 2.0),
                square(1.5, 1.5, 0.5)
            ])),
            "ring 2 (hole 1): hole is not inside the outer ring or lies inside another hole",
        ),
        (
            json!({"type": "MultiPolygon", "coordinates": [[square(0.0, 0.0, 2.0)], [square(1.0, 1.0, 2.0)]]}),
            "polygons 0 and 1 of the multipolygon overlap or share an edge",
        ),
        (
            json!({"type": "MultiPolygon", "coordinates": [[square(0.0, 0.0, 1.0)], [square(1.0, 0.0, 1.0)]]}),
            "polygons 0 and 1 of the multipolygon overlap or share an edge",
        ),
        (
            json!({"type": "MultiPolygon", "coordinates": [[square(0.0, 0.0, 4.0)], [square(1.0, 1.0, 1.0)]]}),
            "polygons 0 and 1 of the multipolygon overlap or share an edge",
        ),
        (
            json!({"type": "MultiPolygon", "coordinates": [[square(0.0, 0.0, 1.0)], [[[5, 5], [6, 5], [5, 5]]]]}),
            "polygon 1 ring 0 (outer): ring has 3 positions, at least 4 are needed (3 distinct and the first repeated)",
        ),
        (
            poly(json!([[[179.5, 0], [-179.5, 0], [-179.5, 1], [179.5, 0]]])),
            "ring 0 (outer) position 1: edge from longitude 179.5 to -179.5 spans more than 180 degrees; split a fence that crosses the antimeridian into a MultiPolygon",
        ),
        (
            json!({"center": [13.4, 52.5], "radius_m": 0}),
            "radius_m 0 is out of range: must be > 0 and at most 1000000",
        ),
        (
            json!({"center": [13.4, 52.5], "radius_m": -5}),
            "radius_m -5 is out of range: must be > 0 and at most 1000000",
        ),
        (
            json!({"center": [13.4, 52.5], "radius_m": 2e6}),
            "radius_m 2000000 is out of range: must be > 0 and at most 1000000",
        ),
        (
            json!({"center": [13.4, 52.5], "radius_m": "big"}),
            "radius_m must be a number, got \"big\"",
        ),
        (
            json!({"center": [13.4, 95.0], "radius_m": 5}),
            "circle center [13.4, 95] is out of range (longitude -180..180, latitude -90..90)",
        ),
        (
            json!({"center": [13.4], "radius_m": 5}),
            "circle center must be [lon, lat], got 1 numbers",
        ),
        (
            json!({"radius_m": 5}),
            "circle needs \"center\": [lon, lat]",
        ),
        (
            json!({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square(0.0, 0.0, 1.0)]},
                "properties": {"dwell_s": -1}}),
            "property \"dwell_s\": must be a positive number of seconds, got -1",
        ),
        (
            json!({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square(0.0, 0.0, 1.0)]},
                "properties": {"name": 7}}),
            "property \"name\": must be a string, got 7",
        ),
        (
            json!({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square(0.0, 0.0, 1.0)]},
                "properties": [1]}),
            "\"properties\" must be an object, got [1]",
        ),
    ];
    for (input, message) in cases {
        check(input, Err(message));
    }
    match Geofence::parse(id(), "{\"type\": ", &GeofenceLimits::default()) {
        Err(GeofenceError::Json(m)) => assert!(m.contains("EOF"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn vertex_limit() {
    let limits = GeofenceLimits {
        max_vertices: 8,
        ..GeofenceLimits::default()
    };
    let ring = |n: usize| {
        let mut pts: Vec<[f64; 2]> = (0..n)
            .map(|i| {
                let a = i as f64 / n as f64 * std::f64::consts::TAU;
                [a.cos(), a.sin()]
            })
            .collect();
        pts.push(pts[0]);
        json!({"type": "Polygon", "coordinates": [pts]})
    };
    assert!(Geofence::parse(id(), &ring(7).to_string(), &limits).is_ok());
    check_with(ring(8), &limits, Err("too many vertices: 9 (at most 8)"));
    // The default limit, with a valid 20,000-vertex ring: refused quickly.
    check(
        ring(20_000),
        Err("too many vertices: 20001 (at most 10000)"),
    );
    // 9,999 vertices are accepted (validated by the sweep line).
    assert!(Geofence::parse(id(), &ring(9_999).to_string(), &GeofenceLimits::default()).is_ok());
}
