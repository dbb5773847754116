use fleetd_store::StoreError;

/// Why an access operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The store could not read or write credentials or tokens.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request itself is wrong (no scope, a bad name).
    #[error("{0}")]
    Invalid(String),
    /// The admin token file could not be read or written.
    #[error("admin token file {path}: {source}")]
    AdminFile {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Why a login or bearer token was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// No user name or password (or no token) was offered.
    #[error("no credentials")]
    NoCredentials,
    /// Unknown user name, wrong password or unknown token.
    #[error("wrong credentials")]
    Wrong,
    /// The API token has expired.
    #[error("token expired")]
    Expired,
    /// Too many failed attempts from this address: try again later.
    #[error("too many failed logins")]
    Throttled,
    /// A verified client certificate whose subject names no device (no
    /// CN, or a CN that is not a valid device id).
    #[error("the client certificate names no device")]
    BadCertificate,
    /// The store could not be asked: neither yes nor no.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LoginError {
    /// A short stable name for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoCredentials => "no_credentials",
            Self::Wrong => "wrong_credentials",
            Self::Expired => "expired",
            Self::Throttled => "throttled",
            Self::BadCertificate => "bad_certificate_subject",
            Self::Store(_) => "store_unavailable",
        }
    }
}
