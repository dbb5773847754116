//! Settings of the ScyllaDB backend.

use std::time::Duration;

use super::tls::ScyllaTls;
use crate::StoreError;

/// How fleetd connects to and uses a ScyllaDB cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ScyllaSettings {
    /// Contact points, `host:port`; the driver discovers the other nodes.
    pub contact_points: Vec<String>,
    /// Keyspace of fleetd's tables (`[A-Za-z0-9_]`, at most 48 characters,
    /// because it is spliced into CQL text).
    pub keyspace: String,
    /// Replication factor used when the migration creates the keyspace
    /// (NetworkTopologyStrategy, every datacenter); ignored once it exists.
    pub replication_factor: u32,
    /// Consistency of every read and write. `LOCAL_QUORUM` with RF 3 keeps
    /// reads seeing completed writes while one replica per DC is down.
    pub consistency: Consistency,
    /// Datacenter to prefer in the token-aware load balancing, if any.
    pub local_datacenter: Option<String>,
    /// Username and password for PasswordAuthenticator, if set.
    pub credentials: Option<Credentials>,
    /// TLS to every node, if set; plain TCP otherwise.
    pub tls: Option<ScyllaTls>,
    /// Most statements of one call in flight at once (a write batch, an area
    /// read): bounds the load one micro-batch puts on the cluster and the
    /// memory of its futures.
    pub max_inflight: usize,
    /// Retries of one statement after a transient error (overloaded,
    /// timeout, unavailable, broken connection), with exponential backoff
    /// from `retry_backoff`. On top of this the processor retries a whole
    /// failed batch until it is stored.
    pub retry_max: u32,
    /// First retry delay; doubles per retry, capped at 2 s.
    pub retry_backoff: Duration,
    /// Client-side timeout of one statement attempt.
    pub request_timeout: Duration,
    /// Timeout of connecting to a node.
    pub connect_timeout: Duration,
    /// Largest number of res-7 cells an area read looks up in
    /// `devices_by_cell`; larger areas scan `latest_position` instead.
    pub area_max_cells: usize,
    /// Minute buckets an area read looks at: the current one and the ones
    /// before it. Devices that have not reported for longer are not "in
    /// the area now". At least 2, so a minute boundary loses nobody.
    pub area_minutes: u32,
}

impl Default for ScyllaSettings {
    fn default() -> Self {
        Self {
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: "fleetd".into(),
            replication_factor: 3,
            consistency: Consistency::LocalQuorum,
            local_datacenter: None,
            credentials: None,
            tls: None,
            max_inflight: 256,
            retry_max: 3,
            retry_backoff: Duration::from_millis(50),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            area_max_cells: 2000,
            area_minutes: 2,
        }
    }
}

/// A username and password. `Debug` does not print the password, so
/// settings can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The role name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The consistency levels fleetd offers (a subset of CQL's: the serial and
/// `ANY` levels make no sense for its statements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
#[non_exhaustive]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority of replicas in the local datacenter.
    LocalQuorum,
    /// A majority of all replicas.
    Quorum,
    /// Every replica.
    All,
}

impl std::str::FromStr for Consistency {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Consistency {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl Consistency {
    /// Parses `one`, `local_quorum`, `quorum` or `all` (any case).
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        match s.to_ascii_lowercase().as_str() {
            "one" => Ok(Self::One),
            "local_quorum" => Ok(Self::LocalQuorum),
            "quorum" => Ok(Self::Quorum),
            "all" => Ok(Self::All),
            _ => Err(StoreError::Config(format!(
                "consistency {s:?} is not one of one, local_quorum, quorum, all"
            ))),
        }
    }

    pub(crate) fn to_driver(self) -> scylla::statement::Consistency {
        use scylla::statement::Consistency as C;
        match self {
            Self::One => C::One,
            Self::LocalQuorum => C::LocalQuorum,
            Self::Quorum => C::Quorum,
            Self::All => C::All,
        }
    }
}

impl ScyllaSettings {
    /// Parses a comma-separated `host:port` list into contact points.
    pub fn parse_contact_points(uri: &str) -> Result<Vec<String>, StoreError> {
        let points: Vec<String> = uri
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if points.is_empty() {
            return Err(StoreError::Config(format!(
                "scylla uri {uri:?} names no host:port"
            )));
        }
        for point in &points {
            let ok = point
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(StoreError::Config(format!(
                    "scylla contact point {point:?} is not host:port"
                )));
            }
        }
        Ok(points)
    }

    /// Checks what the driver would only reject later, or what would be
    /// spliced into CQL text.
    pub fn validate(&self) -> Result<(), StoreError> {
        let ks = &self.keyspace;
        if ks.is_empty()
            || ks.len() > 48
            || !ks.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(StoreError::Config(format!(
                "scylla keyspace {ks:?} must be 1-48 characters of A-Z a-z 0-9 _"
            )));
        }
        if self.contact_points.is_empty() {
            return Err(StoreError::Config("no scylla contact points".into()));
        }
        if self.replication_factor == 0 || self.max_inflight == 0 || self.area_max_cells == 0 {
            return Err(StoreError::Config(
                "scylla replication_factor, max_inflight and area_max_cells must be > 0".into(),
            ));
        }
        if self.area_minutes < 2 {
            return Err(StoreError::Config(format!(
                "scylla area_minutes must be >= 2, got {}",
                self.area_minutes
            )));
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_points_and_keyspaces_are_checked() {
        let points = ScyllaSettings::parse_contact_points("a:9042, b:9043").expect("valid");
        assert_eq!(points, ["a:9042", "b:9043"]);
        for bad in ["", ",", "a", "a:x", ":9042"] {
            assert!(ScyllaSettings::parse_contact_points(bad).is_err(), "{bad}");
        }
        let mut s = ScyllaSettings::default();
        s.validate().expect("defaults are valid");
        s.keyspace = "x; DROP".into();
        assert!(s.validate().is_err());
        assert_eq!(
            Consistency::parse("LOCAL_QUORUM").ok(),
            Some(Consistency::LocalQuorum)
        );
        assert!(Consistency::parse("two").is_err());
    }
}
