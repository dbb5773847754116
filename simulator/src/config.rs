//! Simulation settings ([`SimConfig`], [`Qos`]) and their one-time validation
//! into the values the runner uses.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::chaos::Chaos;
use crate::error::SimError;
use crate::phone::Outages;
use crate::roads::RoadMap;

/// MQTT quality of service for the simulated publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Qos {
    /// QoS 0: fire and forget. A publish counts as published once written
    /// to the connection.
    AtMostOnce,
    /// QoS 1: a publish counts as published once the broker's PUBACK arrives.
    #[default]
    AtLeastOnce,
}

impl Qos {
    /// The MQTT level, 0 or 1.
    pub fn level(self) -> u8 {
        match self {
            Self::AtMostOnce => 0,
            Self::AtLeastOnce => 1,
        }
    }

    pub(crate) fn to_mqtt(self) -> rumqttc::QoS {
        match self {
            Self::AtMostOnce => rumqttc::QoS::AtMostOnce,
            Self::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        }
    }
}

impl TryFrom<u8> for Qos {
    type Error = SimError;

    fn try_from(level: u8) -> Result<Self, Self::Error> {
        match level {
            0 => Ok(Self::AtMostOnce),
            1 => Ok(Self::AtLeastOnce),
            other => Err(SimError::InvalidQos(other.to_string())),
        }
    }
}

impl FromStr for Qos {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "0" => Ok(Self::AtMostOnce),
            "1" => Ok(Self::AtLeastOnce),
            other => Err(SimError::InvalidQos(other.to_owned())),
        }
    }
}

impl fmt::Display for Qos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.level())
    }
}

impl Serialize for Qos {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.level())
    }
}

/// What to simulate and where to publish it.
///
/// Build it with struct update syntax over [`Default`]:
///
/// ```
/// # use fleetd_simulator::SimConfig;
/// # use std::time::Duration;
/// let config = SimConfig {
///     broker: "127.0.0.1:1883".into(),
///     vehicles: 1000,
///     duration: Some(Duration::from_secs(60)),
///     ..SimConfig::default()
/// };
/// ```
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// MQTT broker as `host:port` (`[::1]:1883` for IPv6 literals).
    pub broker: String,
    /// Number of vehicles.
    pub vehicles: usize,
    /// `None`: each vehicle is its own MQTT client. `Some(n)`: the vehicles
    /// share `n` connections (round robin), each still publishing on its own
    /// topic; how a million-vehicle fleet runs on one machine.
    pub connections: Option<usize>,
    /// The road network the vehicles drive ([`RoadMap::named`]); `None`
    /// drives the synthetic grid around `center_lat`/`center_lon`.
    pub roads: Option<Arc<RoadMap>>,
    /// Deliberate faults and their rates (none by default).
    pub chaos: Chaos,
    /// Phones losing their network; while offline they buffer positions and
    /// flush them as `pos/batch` on return (none by default).
    pub outages: Outages,
    /// Positions per second per vehicle.
    pub rate_hz: f64,
    /// How long to publish once all vehicles have tried to connect;
    /// `None` runs until the cancellation token fires.
    pub duration: Option<Duration>,
    /// QoS of every publish.
    pub qos: Qos,
    /// Seed of the movement model: the same seed gives the same tracks.
    pub seed: u64,
    /// Latitude of the synthetic city's centre, WGS84 degrees.
    pub center_lat: f64,
    /// Longitude of the synthetic city's centre, WGS84 degrees.
    pub center_lon: f64,
    /// Blocks per side of the synthetic city ([`crate::CityGrid`]).
    pub grid_blocks: u32,
    /// Block length of the synthetic city, metres.
    pub grid_block_m: f64,
    /// Device ids are this prefix plus a zero-padded vehicle index
    /// (`sim-0000`, `sim-0001`, ...). Client id and topic use the device id.
    pub id_prefix: String,
    /// Draw a progress line on stderr (hidden anyway when stderr is not a
    /// terminal).
    pub show_progress: bool,
    /// How many connection attempts may be in progress at once. Bounds the
    /// burst of TCP and CONNECT packets a large fleet sends the broker.
    pub connect_concurrency: usize,
    /// How long one connection attempt may take, TCP plus CONNACK.
    pub connect_timeout: Duration,
    /// How long each vehicle waits, once stopped, for its QoS 1 publishes to
    /// be acknowledged before disconnecting; what is still unacknowledged
    /// then counts as failed.
    pub drain_timeout: Duration,
    /// MQTT keep-alive interval of each connection.
    pub keep_alive: Duration,
    /// What each connection logs in with.
    pub credentials: Credentials,
}

/// How the simulated fleet logs in to the broker.
#[derive(Debug, Clone, Default)]
pub enum Credentials {
    /// No user name or password: only a broker in anonymous mode
    /// (`fleetd serve --allow-anonymous`) lets such a fleet in.
    #[default]
    Anonymous,
    /// The same user name and password on every connection: for fleetd an
    /// API token with `write` scope as the password, which may publish for
    /// any device (and is the only way multiplexed connections log in).
    Shared {
        /// MQTT user name (fleetd ignores it for a token).
        username: String,
        /// MQTT password.
        password: String,
    },
    /// One secret per device, as `fleetd credentials issue` prints them:
    /// each vehicle connects as its own device.
    PerDevice(Arc<std::collections::HashMap<String, String>>),
}

impl Credentials {
    /// The user name and password connection `client` (a device id, or a
    /// multiplexed connection's id) logs in with.
    pub(crate) fn login(&self, client: &str) -> Option<(String, String)> {
        match self {
            Self::Anonymous => None,
            Self::Shared { username, password } => Some((username.clone(), password.clone())),
            Self::PerDevice(secrets) => secrets
                .get(client)
                .map(|password| (client.to_owned(), password.clone())),
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            broker: "127.0.0.1:1883".to_owned(),
            vehicles: 10,
            connections: None,
            roads: None,
            chaos: Chaos::default(),
            outages: Outages {
                per_hour: 0.0,
                min: Duration::from_secs(10),
                max: Duration::from_secs(120),
            },
            rate_hz: 1.0,
            duration: None,
            qos: Qos::AtLeastOnce,
            seed: 0,
            center_lat: 52.52,
            center_lon: 13.405,
            grid_blocks: crate::CityGrid::DEFAULT_BLOCKS,
            grid_block_m: crate::CityGrid::DEFAULT_BLOCK_M,
            id_prefix: "sim-".to_owned(),
            show_progress: false,
            connect_concurrency: 32,
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(30),
            credentials: Credentials::Anonymous,
        }
    }
}

/// Highest accepted per-vehicle rate; above it the wall-clock millisecond
/// timestamps could no longer be strictly increasing at the nominal rate.
const MAX_RATE_HZ: f64 = 500.0;

/// A [`SimConfig`] checked once, in the units the runner uses.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) period: Duration,
    pub(crate) device_ids: Vec<String>,
}

impl SimConfig {
    /// The device ids the fleet publishes as (`{prefix}0000`, ...), for
    /// provisioning their credentials.
    pub fn device_ids(&self) -> Vec<String> {
        device_ids(&self.id_prefix, self.vehicles)
    }

    /// Checks every setting and derives the broker host/port, the publish
    /// period and the device ids.
    pub(crate) fn plan(&self) -> Result<Plan, SimError> {
        let (host, port) = parse_broker(&self.broker)?;
        if self.vehicles == 0 {
            return Err(invalid("vehicles", "must be at least 1".to_owned()));
        }
        if self.connections.is_some() && matches!(self.credentials, Credentials::PerDevice(_)) {
            return Err(invalid(
                "credentials",
                "multiplexed connections carry many devices: log them in with one API token \
                 (shared credentials), not per-device secrets"
                    .to_owned(),
            ));
        }
        if let Some(c) = self.connections
            && !(1..=self.vehicles).contains(&c)
        {
            return Err(invalid(
                "connections",
                format!("{c} is not in 1..={} (the vehicle count)", self.vehicles),
            ));
        }
        self.chaos.validate()?;
        let o = &self.outages;
        if !(o.per_hour.is_finite() && o.per_hour >= 0.0) || o.min > o.max || o.min.is_zero() {
            return Err(invalid(
                "outages",
                format!(
                    "{} per hour, {:?}..{:?}: need a rate ≥ 0 and 0 < min ≤ max",
                    o.per_hour, o.min, o.max
                ),
            ));
        }
        if !(self.rate_hz.is_finite() && self.rate_hz > 0.0 && self.rate_hz <= MAX_RATE_HZ) {
            return Err(invalid(
                "rate_hz",
                format!("{} is not in (0, {MAX_RATE_HZ}]", self.rate_hz),
            ));
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err(invalid("duration", "must be positive".to_owned()));
        }
        if !(self.center_lat.is_finite() && self.center_lat.abs() <= 80.0) {
            return Err(invalid(
                "center_lat",
                format!("{} is not in [-80, 80]", self.center_lat),
            ));
        }
        if !(self.center_lon.is_finite() && self.center_lon.abs() <= 180.0) {
            return Err(invalid(
                "center_lon",
                format!("{} is not in [-180, 180]", self.center_lon),
            ));
        }
        if self.connect_concurrency == 0 {
            return Err(invalid(
                "connect_concurrency",
                "must be at least 1".to_owned(),
            ));
        }
        if self.connect_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "connect_timeout",
                "must be at least 100 ms".to_owned(),
            ));
        }
        if !self.keep_alive.is_zero() && self.keep_alive < Duration::from_secs(1) {
            return Err(invalid(
                "keep_alive",
                "must be 0 or at least 1 s".to_owned(),
            ));
        }
        let device_ids = device_ids(&self.id_prefix, self.vehicles);
        // All ids share the prefix and the widest index, so the last is the longest.
        if let Some(longest) = device_ids.last() {
            fleetd_schemas::DeviceId::parse(longest)
                .map_err(|err| invalid("id_prefix", err.to_string()))?;
            if longest.contains('/') {
                return Err(invalid("id_prefix", "must not contain '/'".to_owned()));
            }
        }
        Ok(Plan {
            host,
            port,
            period: Duration::from_secs_f64(1.0 / self.rate_hz),
            device_ids,
        })
    }
}

fn invalid(field: &'static str, reason: String) -> SimError {
    SimError::InvalidConfig { field, reason }
}

/// Splits `host:port`, accepting `[v6-literal]:port`.
fn parse_broker(addr: &str) -> Result<(String, u16), SimError> {
    let bad = |reason| SimError::InvalidBroker {
        addr: addr.to_owned(),
        reason,
    };
    let (host, port) = addr
        .trim()
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    let host = match host.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .ok_or_else(|| bad("unclosed '[' in IPv6 literal"))?,
        None if host.contains(':') => return Err(bad("IPv6 literals need brackets: [::1]:1883")),
        None => host,
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| bad("port is not a number in 1..=65535"))?;
    if port == 0 {
        return Err(bad("port 0 is not connectable"));
    }
    Ok((host.to_owned(), port))
}

/// `prefix` plus the index, zero-padded to at least four digits so ids sort
/// in index order.
fn device_ids(prefix: &str, vehicles: usize) -> Vec<String> {
    let width = vehicles.saturating_sub(1).to_string().len().max(4);
    (0..vehicles)
        .map(|i| format!("{prefix}{i:0width$}"))
        .collect()
}

/// Parses a command-line duration: `90`, `90s`, `250ms`, `5m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 60s, 5m or 1h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        assert_eq!(
            parse_broker("127.0.0.1:1883").expect("test value"),
            ("127.0.0.1".to_owned(), 1883)
        );
        assert_eq!(
            parse_broker("broker.local:8883").expect("test value"),
            ("broker.local".to_owned(), 8883)
        );
        assert_eq!(
            parse_broker("[::1]:1883").expect("test value"),
            ("::1".to_owned(), 1883)
        );
        for bad in [
            "",
            "localhost",
            ":1883",
            "host:",
            "host:0",
            "host:70000",
            "::1:1883",
            "[::1:1883",
        ] {
            assert!(
                matches!(parse_broker(bad), Err(SimError::InvalidBroker { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn ids_are_padded_and_validated() {
        assert_eq!(device_ids("sim-", 3), ["sim-0000", "sim-0001", "sim-0002"]);
        assert_eq!(
            device_ids("v", 12_000).last().expect("test value"),
            "v11999"
        );
        let config = SimConfig {
            id_prefix: "bad prefix ".into(),
            ..SimConfig::default()
        };
        assert!(matches!(
            config.plan(),
            Err(SimError::InvalidConfig {
                field: "id_prefix",
                ..
            })
        ));
    }

    #[test]
    fn out_of_range_settings_are_rejected() {
        let cases: [(&str, SimConfig); 5] = [
            (
                "vehicles",
                SimConfig {
                    vehicles: 0,
                    ..SimConfig::default()
                },
            ),
            (
                "rate_hz",
                SimConfig {
                    rate_hz: 0.0,
                    ..SimConfig::default()
                },
            ),
            (
                "rate_hz",
                SimConfig {
                    rate_hz: f64::NAN,
                    ..SimConfig::default()
                },
            ),
            (
                "center_lat",
                SimConfig {
                    center_lat: 91.0,
                    ..SimConfig::default()
                },
            ),
            (
                "connect_concurrency",
                SimConfig {
                    connect_concurrency: 0,
                    ..SimConfig::default()
                },
            ),
        ];
        for (field, config) in cases {
            match config.plan() {
                Err(SimError::InvalidConfig { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
        let plan = SimConfig {
            rate_hz: 4.0,
            ..SimConfig::default()
        }
        .plan()
        .expect("test value");
        assert_eq!(plan.period, Duration::from_millis(250));
    }

    #[test]
    fn qos_parses_zero_and_one_only() {
        assert_eq!("0".parse::<Qos>().expect("test value"), Qos::AtMostOnce);
        assert_eq!(Qos::try_from(1).expect("test value"), Qos::AtLeastOnce);
        assert!(matches!(Qos::try_from(2), Err(SimError::InvalidQos(s)) if s == "2"));
        assert!("x".parse::<Qos>().is_err());
        assert_eq!(Qos::default(), Qos::AtLeastOnce);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
