//! Live fleet-wide totals ([`Counters`]) and the optional progress line on
//! stderr that shows them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How often the progress line is redrawn.
const REFRESH: Duration = Duration::from_millis(250);

/// Fleet-wide totals, updated by every vehicle as it goes; the report's own
/// counts come from the per-vehicle ledgers, these are for watching.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    published: AtomicU64,
    failed: AtomicU64,
    connected: AtomicUsize,
}

/// A consistent-enough reading of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) published: u64,
    pub(crate) failed: u64,
    pub(crate) connected: usize,
}

impl Counters {
    pub(crate) fn add_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_failed(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn connection_up(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_down(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            published: self.published.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
        }
    }
}

/// The progress line: a spinner with elapsed time, connected vehicles,
/// published positions and the current rate. Drawn on stderr only when it
/// is a terminal (indicatif hides it otherwise), redrawn by a task that
/// stops when this value is finished or dropped.
pub(crate) struct Progress {
    bar: ProgressBar,
    _updater: Option<DropGuard>,
}

impl Progress {
    /// Starts the line (or a hidden stand-in when `enabled` is false or
    /// stderr is not a terminal) for a fleet of `vehicles`.
    pub(crate) fn start(enabled: bool, counters: Arc<Counters>, vehicles: usize) -> Self {
        let target = if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        if bar.is_hidden() {
            return Self {
                bar,
                _updater: None,
            };
        }
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix:.bold} {msg}")
        {
            bar.set_style(style);
        }
        bar.set_prefix("connecting");
        let stop = CancellationToken::new();
        tokio::spawn(redraw(bar.clone(), counters, vehicles, stop.clone()));
        Self {
            bar,
            _updater: Some(stop.drop_guard()),
        }
    }

    /// Names the phase shown first on the line (connecting, publishing, draining).
    pub(crate) fn phase(&self, phase: &'static str) {
        self.bar.set_prefix(phase);
    }

    /// Removes the line, so the caller's summary starts on a clean terminal.
    pub(crate) fn finish(self) {
        self.bar.finish_and_clear();
    }
}

async fn redraw(
    bar: ProgressBar,
    counters: Arc<Counters>,
    vehicles: usize,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(REFRESH);
    // The rate is measured over about the last second.
    let mut window: std::collections::VecDeque<(Instant, u64)> = std::collections::VecDeque::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let s = counters.snapshot();
        window.push_back((now, s.published));
        // Keep the newest sample that is at least a second old as the base.
        while window
            .get(1)
            .is_some_and(|(t, _)| now - *t >= Duration::from_secs(1))
        {
            window.pop_front();
        }
        let rate = match window.front() {
            Some((t, n)) if now > *t => (s.published - n) as f64 / (now - *t).as_secs_f64(),
            _ => 0.0,
        };
        bar.set_message(format!(
            "{}/{vehicles} connected · {} published · {rate:.0}/s · {} failed",
            s.connected, s.published, s.failed
        ));
        bar.tick();
    }
}
