//! Store errors.

/// Errors of a [`crate::Store`] backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The embedded engine failed (I/O, corruption).
    #[error("embedded store: {0}")]
    Fjall(#[from] fjall::Error),
    /// A stored value could not be decoded.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// A query parameter is invalid (e.g. a malformed cursor).
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The embedded store stopped taking writes after one failed (fjall
    /// is poisoned: a full disk or an I/O error); only reopening it (a
    /// restart of fleetd) recovers.
    #[error("embedded store stopped after a failed write: {0}")]
    Stopped(String),
    /// The backend is not reachable or not ready.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// ScyllaDB rejected a statement for a reason retrying cannot fix
    /// (invalid query, missing table, unauthorized, a type mismatch).
    #[error("scylla: {0}")]
    Scylla(String),
    /// A backend setting is invalid.
    #[error("store configuration: {0}")]
    Config(String),
    /// The store key is wrong, missing, unreadable or not wanted (see
    /// [`crate::seal`]); the message names the file.
    #[error("{0}")]
    Key(String),
    /// A blocking storage task panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(String),
}
