//! File descriptors: the soft limit is raised to the hard one at start, and
//! the connection caps of the MQTT and HTTP listeners are fitted below it,
//! so that a flood of connections is refused at accept instead of taking
//! the descriptors the store, the log and the listeners themselves need.

/// The descriptor limit fleetd runs with, and what it was raised from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft RLIMIT_NOFILE now.
    pub soft: u64,
    /// The soft limit before fleetd raised it (equal to `soft` if it could
    /// not or did not need to).
    pub was: u64,
}

/// A limit beyond any connection count fleetd would reach (an unlimited
/// hard limit is reported as `u64::MAX`).
const PRACTICALLY_UNLIMITED: u64 = 1 << 24;

/// Raises the soft RLIMIT_NOFILE as far as the hard limit allows; on a
/// failure the limit stays as it was (logged).
pub fn raise_fd_limit() -> FdLimit {
    let was = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the file-descriptor limit; assuming 1024");
            return FdLimit {
                soft: 1024,
                was: 1024,
            };
        }
    };
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, limit = was, "cannot raise the file-descriptor limit");
            was
        }
    };
    FdLimit {
        soft: soft.min(PRACTICALLY_UNLIMITED),
        was: was.min(PRACTICALLY_UNLIMITED),
    }
}

/// Descriptors kept out of the connection caps: the store's files (fjall
/// keeps its segment files open), the listeners, the log, the runtime.
pub fn reserved_fds(limit: u64) -> u64 {
    (limit / 4).min(1024)
}

/// Connection caps that fit `limit`: the configured ones if both fit next
/// to the reserve; otherwise HTTP gets at most a third of what is left and
/// MQTT (the devices) the rest. `mqtt` is `None` when the embedded broker
/// does not run (external ingest): then HTTP may use it all.
pub fn connection_caps(limit: u64, mqtt: Option<usize>, http: usize) -> (Option<usize>, usize) {
    let budget = usize::try_from(limit.saturating_sub(reserved_fds(limit)))
        .unwrap_or(usize::MAX)
        .max(2);
    match mqtt {
        None => (None, http.min(budget)),
        Some(mqtt) if mqtt.saturating_add(http) <= budget => (Some(mqtt), http),
        Some(mqtt) => {
            let http = http.min(budget / 3).max(1);
            (Some(mqtt.min(budget - http).max(1)), http)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_below_the_limit_with_a_reserve() {
        // Fits as configured.
        assert_eq!(
            connection_caps(1_048_576, Some(100_000), 10_000),
            (Some(100_000), 10_000)
        );
        // 20,000: 1,024 reserved, HTTP a third of the rest, MQTT the rest.
        let (mqtt, http) = connection_caps(20_000, Some(100_000), 10_000);
        assert_eq!((mqtt, http), (Some(12_651), 6_325));
        assert!(mqtt.unwrap_or(0) + http + 1024 <= 20_000);
        // A small configured HTTP cap leaves the rest to MQTT.
        assert_eq!(
            connection_caps(20_000, Some(100_000), 100),
            (Some(18_876), 100)
        );
        // 1,024 (a common default): a quarter reserved.
        assert_eq!(
            connection_caps(1024, Some(100_000), 10_000),
            (Some(512), 256)
        );
        // External ingest: no MQTT listener.
        assert_eq!(connection_caps(20_000, None, 100_000), (None, 18_976));
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_fd_limit();
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
        assert_eq!(limit.soft, soft.min(PRACTICALLY_UNLIMITED));
        assert!(limit.soft >= limit.was);
        assert!(soft == hard || cfg!(target_os = "macos"), "{soft} < {hard}");
    }
}
