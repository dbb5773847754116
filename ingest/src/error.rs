//! Ingest errors (start-up and link failures; bad input is never an error).

/// Errors that stop ingest. Bad device input is counted, never returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The embedded broker could not start or its link failed.
    #[error("MQTT broker: {0}")]
    Broker(String),
    /// The MQTT listener could not bind (address in use, no permission).
    #[error("cannot listen for MQTT on {addr}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// An I/O error (e.g. spawning the broker thread).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
