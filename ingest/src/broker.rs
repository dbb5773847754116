//! The embedded MQTT broker (rumqttd) and fleetd's link into it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::error::IngestError;
use crate::topic::SUBSCRIPTIONS;

/// Settings of the embedded broker (`[ingest]` in fleetd.toml).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Where MQTT 3.1.1 clients connect.
    pub listen: SocketAddr,
    /// Hard payload limit of the broker: a client sending more is
    /// disconnected by rumqttd. Keep it above ingest's `max_payload_bytes`
    /// so that oversize payloads are counted, not just cut off.
    pub max_packet_bytes: usize,
    /// Bytes per commit-log segment the broker keeps in RAM per filter.
    pub segment_bytes: usize,
    /// Segments kept per filter. `segment_bytes × segment_count` bounds how
    /// far fleetd's ingest may fall behind before the broker drops the
    /// oldest unread data (rumqttd keeps the log in RAM only).
    pub segment_count: usize,
    /// Maximum concurrent client connections.
    pub max_connections: usize,
    /// Maximum unacknowledged QoS 1 publishes per connection.
    pub max_inflight: usize,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            max_packet_bytes: 2 * 1024 * 1024,
            segment_bytes: 8 * 1024 * 1024,
            segment_count: 4,
            max_connections: 100_000,
            max_inflight: 256,
        }
    }
}

/// A running embedded broker: the link fleetd's ingest reads from.
///
/// rumqttd has no stop API: the broker thread lives as long as the process.
/// Shutdown is the ingest loop's job (it stops reading the link).
pub struct EmbeddedBroker {
    /// The ingest link's sending half: keep it, dropping it closes the link.
    pub link_tx: LinkTx,
    /// Link carrying every publish on fleetd's ingest subscriptions.
    pub link_rx: LinkRx,
    /// A second link, subscribed to nothing, for fleetd's own publishes
    /// (alerts; see [`crate::alerts::spawn_embedded_publisher`]).
    pub alerts_link: (LinkTx, LinkRx),
}

impl EmbeddedBroker {
    /// Starts rumqttd on its own OS thread, subscribes the ingest link (its
    /// SubAcks arrive as the link's first notifications) and waits (up to 10 s) until the listener accepts TCP connections.
    pub async fn start(settings: &BrokerSettings) -> Result<Self, IngestError> {
        let config = broker_config(settings);
        let mut broker = Broker::new(config);
        let (mut link_tx, link_rx) = broker
            .link("fleetd-ingest")
            .map_err(|e| IngestError::Broker(format!("cannot create ingest link: {e}")))?;
        let alerts_link = broker
            .link("fleetd-alerts")
            .map_err(|e| IngestError::Broker(format!("cannot create alerts link: {e}")))?;
        for filter in SUBSCRIPTIONS {
            link_tx
                .subscribe(filter)
                .map_err(|e| IngestError::Broker(format!("cannot subscribe {filter}: {e}")))?;
        }
        std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded MQTT broker stopped");
                }
            })
            .map_err(IngestError::Io)?;
        wait_listening(settings.listen).await?;
        tracing::info!(listen = %settings.listen, "embedded MQTT broker listening");
        Ok(Self {
            link_tx,
            link_rx,
            alerts_link,
        })
    }
}

fn broker_config(settings: &BrokerSettings) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: settings.max_packet_bytes,
        max_inflight_count: settings.max_inflight,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4".into(),
        listen: settings.listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: settings.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: settings.segment_bytes,
            max_segment_count: settings.segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_owned(), server)])),
        ..Default::default()
    }
}

/// Polls until the broker answers an MQTT CONNECT on `listen`, since rumqttd
/// binds on its own thread and reports nothing back. A real CONNECT (and a
/// clean DISCONNECT) rather than a bare TCP probe keeps the broker from
/// logging an aborted connection at every start.
async fn wait_listening(listen: SocketAddr) -> Result<(), IngestError> {
    let probe = if listen.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], listen.port()))
    } else {
        listen
    };
    for _ in 0..200 {
        if mqtt_handshake(probe).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(IngestError::Broker(format!(
        "MQTT listener on {listen} did not come up (port in use?)"
    )))
}

/// One MQTT 3.1.1 CONNECT → CONNACK → DISCONNECT exchange.
async fn mqtt_handshake(addr: SocketAddr) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CLIENT_ID: &[u8] = b"fleetd-startup-probe";
    let mut connect = vec![0x10, (10 + 2 + CLIENT_ID.len()) as u8];
    // Protocol "MQTT", level 4, clean session, keep-alive 10 s.
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10]);
    connect.extend_from_slice(&[0, CLIENT_ID.len() as u8]);
    connect.extend_from_slice(CLIENT_ID);
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(&connect).await?;
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack).await?;
        if connack[0] != 0x20 || connack[3] != 0 {
            return Err(std::io::Error::other("broker refused the probe connection"));
        }
        stream.write_all(&[0xe0, 0x00]).await?;
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| std::io::Error::other("broker did not answer"))?
}
