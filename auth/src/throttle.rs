use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts failed logins per source address in one-minute windows; an
/// address over the limit is refused unchecked until its window ends, so
/// guessing a 192-bit secret stays hopeless and costs no store reads.
#[derive(Debug)]
pub struct LoginThrottle {
    limit: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Beyond this many addresses, expired windows are swept before a new one
/// is added, and if all are live the oldest is forgotten: a flood from many
/// addresses cannot grow the map without bound.
const MAX_ADDRESSES: usize = 65_536;

impl LoginThrottle {
    /// A throttle allowing `limit` failures per address per minute (0: no
    /// throttling).
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            window: Duration::from_secs(60),
            failures: Mutex::default(),
        }
    }

    /// Whether `ip` has used up its failures for this window.
    pub fn is_throttled(&self, ip: IpAddr) -> bool {
        if self.limit == 0 {
            return false;
        }
        let failures = self.lock();
        failures
            .get(&ip)
            .is_some_and(|(start, n)| start.elapsed() < self.window && *n >= self.limit)
    }

    /// Records a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let now = Instant::now();
        let mut failures = self.lock();
        if failures.len() >= MAX_ADDRESSES && !failures.contains_key(&ip) {
            failures.retain(|_, (start, _)| now.duration_since(*start) < self.window);
            if failures.len() >= MAX_ADDRESSES
                && let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, (s, _))| *s)
                    .map(|(k, _)| *k)
            {
                failures.remove(&oldest);
            }
        }
        let entry = failures.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_throttled_after_its_limit_and_others_are_not() {
        let throttle = LoginThrottle::new(3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..2 {
            throttle.failed(a);
        }
        assert!(!throttle.is_throttled(a));
        throttle.failed(a);
        assert!(throttle.is_throttled(a));
        assert!(!throttle.is_throttled(b));
    }

    #[test]
    fn zero_disables_it() {
        let throttle = LoginThrottle::new(0);
        let a: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..100 {
            throttle.failed(a);
        }
        assert!(!throttle.is_throttled(a));
    }
}
