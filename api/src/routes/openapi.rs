//! `GET /openapi.json`: the OpenAPI 3.1 description of this API.
//!
//! Written by hand (`api/openapi.json`) and embedded, rather than derived
//! from annotations: the handlers build their JSON by hand too, and tests
//! (`openapi_tests.rs`) hold the document to the router (every route and
//! method, both ways) and to real responses.

use std::sync::OnceLock;

use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// The document as written.
pub(crate) const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// `GET /openapi.json`: the OpenAPI document, its `POST /v1/positions`
/// examples dated a minute ago (positions older than the stale limit are
/// refused, so an example with a fixed date would stop working: copied
/// from the served document, or sent by a tool that tries the examples, it
/// must be accepted).
pub(crate) async fn spec() -> Response {
    static PARSED: OnceLock<Option<Value>> = OnceLock::new();
    let body = match PARSED.get_or_init(|| serde_json::from_str(OPENAPI_JSON).ok()) {
        Some(doc) => {
            let mut doc = doc.clone();
            freshen_examples(&mut doc, fleetd_schemas::now_ms() - 60_000);
            serde_json::to_string(&doc).unwrap_or_else(|_| OPENAPI_JSON.to_owned())
        }
        None => OPENAPI_JSON.to_owned(),
    };
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

/// Moves the device times of the position examples so that the earliest
/// is `at_ms`, keeping their spacing.
fn freshen_examples(doc: &mut Value, at_ms: i64) {
    let Some(examples) = doc
        .pointer_mut("/paths/~1v1~1positions/post/requestBody/content/application~1json/examples")
    else {
        return;
    };
    let mut earliest = i64::MAX;
    visit(examples, &mut |key, v| {
        if let Some(n) = v.as_i64() {
            let ms = if key == "tst" { n * 1000 } else { n };
            earliest = earliest.min(ms);
        }
    });
    if earliest == i64::MAX {
        return;
    }
    let shift = at_ms - earliest;
    visit(examples, &mut |key, v| {
        if let Some(n) = v.as_i64() {
            *v = if key == "tst" {
                (n + shift / 1000).into()
            } else {
                (n + shift).into()
            };
        }
    });
}

/// Calls `f` on every `ts_ms` and `tst` member inside `value`.
fn visit(value: &mut Value, f: &mut impl FnMut(&str, &mut Value)) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "ts_ms" || key == "tst" {
                    f(key, v);
                } else {
                    visit(v, f);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| visit(v, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_examples_are_dated_now_with_their_spacing() {
        let mut doc: Value = serde_json::from_str(OPENAPI_JSON).expect("json");
        freshen_examples(&mut doc, 2_000_000_000_000);
        let examples = doc
            .pointer("/paths/~1v1~1positions/post/requestBody/content/application~1json/examples")
            .expect("examples");
        // The OwnTracks `tst` (seconds) is the earliest; the others keep
        // their milliseconds after it.
        assert_eq!(examples["many"]["value"][0]["ts_ms"], 2_000_000_000_123i64);
        assert_eq!(examples["many"]["value"][1]["ts_ms"], 2_000_000_000_456i64);
        assert_eq!(examples["one"]["value"]["ts_ms"], 2_000_000_000_123i64);
        assert_eq!(examples["owntracks"]["value"]["tst"], 2_000_000_000i64);
    }
}
