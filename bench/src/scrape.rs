//! Reading fleetd's `/metrics` (Prometheus text): counters, and histograms
//! as bucket deltas between two scrapes, from which the bench derives batch
//! sizes and durations over exactly its own run.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;

/// One scrape of `/metrics`: every sample line, by series (name plus labels
/// as printed).
#[derive(Debug, Clone, Default)]
pub(crate) struct Scrape {
    samples: BTreeMap<String, f64>,
}

/// Summary of a histogram over an interval.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct HistogramDelta {
    /// Observations in the interval.
    pub count: u64,
    /// Their mean.
    pub mean: f64,
    /// Median, interpolated within its bucket.
    pub p50: f64,
    /// 99th percentile, interpolated within its bucket.
    pub p99: f64,
}

impl Scrape {
    /// GETs `{base}/metrics` and parses it.
    pub(crate) async fn fetch(client: &reqwest::Client, base: &str) -> anyhow::Result<Scrape> {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .context("GET /metrics")?
            .error_for_status()
            .context("GET /metrics")?
            .text()
            .await
            .context("GET /metrics body")?;
        Ok(Scrape::parse(&text))
    }

    /// Parses Prometheus text exposition; comment and malformed lines are skipped.
    pub(crate) fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.trim().to_owned(), value.trim().parse::<f64>().ok()?))
            })
            .collect();
        Scrape { samples }
    }

    /// The sum of every series of metric `name` (all label sets); 0 when absent.
    pub(crate) fn total(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| {
                series
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Histogram `name` (no labels other than `le`) between `before` and
    /// this scrape; `None` when nothing was observed in between.
    pub(crate) fn histogram_since(&self, before: &Scrape, name: &str) -> Option<HistogramDelta> {
        let delta = |s: &str| {
            self.samples.get(s).copied().unwrap_or(0.0)
                - before.samples.get(s).copied().unwrap_or(0.0)
        };
        let count = delta(&format!("{name}_count"));
        if count < 1.0 {
            return None;
        }
        let sum = delta(&format!("{name}_sum"));
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .keys()
            .filter_map(|series| {
                let le = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, delta(series)))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let quantile = |q: f64| {
            let rank = q * count;
            let mut lower = 0.0;
            let mut below = 0.0;
            for &(bound, cumulative) in &buckets {
                if cumulative >= rank {
                    if !bound.is_finite() {
                        return lower;
                    }
                    let in_bucket = (cumulative - below).max(1.0);
                    return lower + (bound - lower) * ((rank - below) / in_bucket).clamp(0.0, 1.0);
                }
                lower = bound;
                below = cumulative;
            }
            lower
        };
        Some(HistogramDelta {
            count: count as u64,
            mean: sum / count,
            p50: quantile(0.5),
            p99: quantile(0.99),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE fleetd_batch_positions histogram
fleetd_batch_positions_bucket{le=\"10\"} 1
fleetd_batch_positions_bucket{le=\"100\"} 1
fleetd_batch_positions_bucket{le=\"1000\"} 1
fleetd_batch_positions_bucket{le=\"+Inf\"} 1
fleetd_batch_positions_sum 5
fleetd_batch_positions_count 1
fleetd_rejected_total{reason=\"malformed\"} 2
fleetd_rejected_total{reason=\"bad_coordinates\"} 3
fleetd_positions_stored_total 10
";
    const AFTER: &str = "\
fleetd_batch_positions_bucket{le=\"10\"} 1
fleetd_batch_positions_bucket{le=\"100\"} 3
fleetd_batch_positions_bucket{le=\"1000\"} 5
fleetd_batch_positions_bucket{le=\"+Inf\"} 5
fleetd_batch_positions_sum 1005
fleetd_batch_positions_count 5
fleetd_positions_stored_total 1010
";

    #[test]
    fn counters_sum_over_labels() {
        let s = Scrape::parse(BEFORE);
        assert_eq!(s.total("fleetd_rejected_total"), 5.0);
        assert_eq!(s.total("fleetd_positions_stored_total"), 10.0);
        assert_eq!(s.total("fleetd_positions_stored"), 0.0);
        assert_eq!(s.total("absent"), 0.0);
    }

    #[test]
    fn histogram_deltas_interpolate_within_buckets() {
        let (before, after) = (Scrape::parse(BEFORE), Scrape::parse(AFTER));
        let h = after
            .histogram_since(&before, "fleetd_batch_positions")
            .expect("observations");
        assert_eq!(h.count, 4);
        assert_eq!(h.mean, 250.0);
        // Ranks 2 and 3.96 of 4: in (10, 100] and (100, 1000].
        assert_eq!(h.p50, 100.0);
        assert!((h.p99 - 982.0).abs() < 1e-9, "{}", h.p99);
        assert!(
            before
                .histogram_since(&before, "fleetd_batch_positions")
                .is_none()
        );
    }
}
