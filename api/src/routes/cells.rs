//! `GET /v1/cells`: live vehicle counts per H3 cell (the heatmap), from the
//! live hub's incrementally kept counts, never from history.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use fleetd_live::{CELL_RESOLUTIONS, CellsAnswer};
use serde::{Deserialize, Serialize};

use super::geojson;
use crate::error::ApiError;
use crate::extract::Query;
use crate::params::{Format, bad, echo, parse_bbox, parse_format, parse_limit};
use crate::state::ApiState;

/// Default resolution.
const DEFAULT_RES: u8 = 7;
/// Default and largest `limit` (cells).
const DEFAULT_CELLS_LIMIT: usize = 10_000;
const MAX_CELLS_LIMIT: usize = 100_000;

/// Raw parameters.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CellsParams {
    res: Option<String>,
    bbox: Option<String>,
    limit: Option<String>,
    format: Option<String>,
}

/// JSON answer: `{"res", "cells": [{"cell", "count"}], "vehicles", "truncated"}`.
#[derive(Debug, Serialize)]
struct CellsJson {
    res: u8,
    cells: Vec<CellJson>,
    vehicles: u64,
    truncated: bool,
}

#[derive(Debug, Serialize)]
struct CellJson {
    cell: String,
    count: u32,
}

/// `GET /v1/cells?res=5..9&bbox=&limit=&format=json|geojson`: occupied cells
/// whose centre lies in `bbox` (default: everywhere), busiest first.
/// GeoJSON: one `Polygon` feature per cell (its boundary) with properties
/// `cell` and `count`, so a map needs no H3 library.
pub(crate) async fn cells(
    State(state): State<ApiState>,
    Query(params): Query<CellsParams>,
) -> Result<Response, ApiError> {
    let res = match params.res.as_deref() {
        None => DEFAULT_RES,
        Some(raw) => match raw.trim().parse::<u8>() {
            Ok(r) if CELL_RESOLUTIONS.contains(&r) => r,
            _ => {
                return Err(bad(format!(
                    "res must be an integer in [{}, {}], got {}",
                    CELL_RESOLUTIONS.start(),
                    CELL_RESOLUTIONS.end(),
                    echo(raw)
                )));
            }
        },
    };
    let resolution = h3o::Resolution::try_from(res)
        .map_err(|e| ApiError::Internal(format!("resolution {res}: {e}")))?;
    let bbox = params.bbox.as_deref().map(parse_bbox).transpose()?;
    let limit = parse_limit(
        params.limit.as_deref(),
        DEFAULT_CELLS_LIMIT,
        MAX_CELLS_LIMIT,
    )?;
    let format = parse_format(params.format.as_deref())?;
    let hub = state.live.hub.clone();
    // Linear in occupied cells (plus boundaries for GeoJSON): off the runtime.
    let body = tokio::task::spawn_blocking(move || -> Result<Response, ApiError> {
        let answer = hub
            .cells(resolution, bbox.as_ref(), limit)
            .ok_or_else(|| bad(format!("res {res} is not served")))?;
        Ok(match format {
            Format::Json => Json(to_json(res, &answer)).into_response(),
            Format::GeoJson => geojson(to_geojson(res, &answer)),
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("cells task failed: {e}")))??;
    Ok(body)
}

fn to_json(res: u8, answer: &CellsAnswer) -> CellsJson {
    CellsJson {
        res,
        cells: answer
            .cells
            .iter()
            .map(|c| CellJson {
                cell: c.cell.to_string(),
                count: c.count,
            })
            .collect(),
        vehicles: answer.vehicles,
        truncated: answer.truncated,
    }
}

fn to_geojson(res: u8, answer: &CellsAnswer) -> serde_json::Value {
    let features: Vec<serde_json::Value> = answer
        .cells
        .iter()
        .map(|c| {
            let mut ring: Vec<[f64; 2]> = c
                .cell
                .boundary()
                .iter()
                .map(|ll| [ll.lng(), ll.lat()])
                .collect();
            if let Some(first) = ring.first().copied() {
                ring.push(first);
            }
            serde_json::json!({
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"cell": c.cell.to_string(), "count": c.count},
            })
        })
        .collect();
    serde_json::json!({
        "type": "FeatureCollection",
        "features": features,
        "res": res,
        "vehicles": answer.vehicles,
        "truncated": answer.truncated,
    })
}
