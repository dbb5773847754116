//! The one error of every stage's settings validation.

/// A configuration value a stage refuses. The message names the key as
/// written in `fleetd.toml` (and its flag, where it has one) and what is
/// allowed, e.g. `processor.window_ms (--window-ms) must be in 10..=60000, got 0`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSetting(pub String);

impl InvalidSetting {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Returns `Err(InvalidSetting)` with a formatted message unless `cond`.
#[macro_export]
macro_rules! ensure_setting {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::InvalidSetting(format!($($arg)+)));
        }
    };
}
