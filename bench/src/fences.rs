//! `fleetd bench --geofences N`: N fences over the fleet's area, created
//! through the HTTP API before the phases, so the run measures ingest with
//! every position evaluated against them.
//!
//! Fences are star-shaped 50-vertex polygons, 100–1000 m in radius
//! (log-uniform), placed uniformly over the grid city, as in the processor's
//! criterion benchmark; `--city-km` sets their density.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Vertices per fence.
const VERTICES: usize = 50;
/// PUTs in flight: enough to keep the server's two cores busy.
const CONCURRENCY: usize = 16;

/// What creating the fences took.
#[derive(Debug, Clone, Serialize)]
pub struct FenceSetup {
    /// Fences created.
    pub fences: usize,
    /// Wall time of all PUTs, s.
    pub seconds: f64,
    /// PUTs per second.
    pub per_s: f64,
}

/// One fence's GeoJSON: a star around (lat, lon) of radius `r_m`.
fn star(rng: &mut SmallRng, lat: f64, lon: f64, r_m: f64) -> serde_json::Value {
    let m_lat = 111_195.0;
    let m_lon = m_lat * lat.to_radians().cos();
    let mut ring: Vec<[f64; 2]> = (0..VERTICES)
        .map(|i| {
            let a = i as f64 / VERTICES as f64 * std::f64::consts::TAU;
            let r = r_m * rng.random_range(0.6..1.0);
            [lon + r * a.cos() / m_lon, lat + r * a.sin() / m_lat]
        })
        .collect();
    ring.push(ring[0]);
    json!({
        "type": "Feature",
        "properties": {"name": "bench fence"},
        "geometry": {"type": "Polygon", "coordinates": [ring]}
    })
}

/// PUTs `n` fences `bench-fence-{i}` spread over a square of `side_km`
/// around `center`, with a progress line every 10%.
pub(crate) async fn create(
    client: &reqwest::Client,
    http: &str,
    n: usize,
    center: (f64, f64),
    side_km: f64,
    seed: u64,
    show_progress: bool,
) -> anyhow::Result<FenceSetup> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xfe_9ce5);
    let half_lat = side_km * 1000.0 / 2.0 / 111_195.0;
    let half_lon = half_lat / center.0.to_radians().cos().max(0.01);
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = JoinSet::new();
    let mut done = 0usize;
    for i in 0..n {
        let lat = center.0 + rng.random_range(-half_lat..half_lat);
        let lon = center.1 + rng.random_range(-half_lon..half_lon);
        let r_m = 10f64.powf(rng.random_range(2.0..3.0));
        let body = star(&mut rng, lat, lon, r_m);
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .context("fence semaphore")?;
        let (client, url) = (
            client.clone(),
            format!("{http}/v1/geofences/bench-fence-{i}"),
        );
        tasks.spawn(async move {
            let _permit = permit;
            let r = client.put(&url).json(&body).send().await?;
            let status = r.status();
            if !status.is_success() {
                bail!(
                    "PUT {url}: {status}: {}",
                    r.text().await.unwrap_or_default()
                );
            }
            Ok(())
        });
        while let Some(result) = tasks.try_join_next() {
            result.context("fence task")??;
            done += 1;
            if show_progress && n >= 10 && done.is_multiple_of(n / 10) {
                eprintln!("geofences: {done}/{n} created");
            }
        }
    }
    while let Some(result) = tasks.join_next().await {
        result.context("fence task")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(FenceSetup {
        fences: n,
        seconds,
        per_s: n as f64 / seconds.max(1e-9),
    })
}
