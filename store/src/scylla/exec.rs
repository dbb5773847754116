//! Executing statements: per-statement latency metrics, retries with
//! backoff on transient errors, and the mapping of driver errors to
//! [`StoreError`].

use std::future::Future;
use std::time::{Duration, Instant};

use scylla::errors::{DbError, ExecutionError, RequestAttemptError};

use crate::StoreError;

/// Longest delay between two attempts of one statement.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A failed attempt, classified.
#[derive(Debug)]
pub(crate) struct Failure {
    /// Another attempt may succeed (overload, timeout, node down).
    pub(crate) transient: bool,
    /// What went wrong, for logs and the final error.
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn permanent(message: impl Into<String>) -> Self {
        Self {
            transient: false,
            message: message.into(),
        }
    }

    pub(crate) fn transient(message: impl Into<String>) -> Self {
        Self {
            transient: true,
            message: message.into(),
        }
    }
}

impl From<ExecutionError> for Failure {
    fn from(err: ExecutionError) -> Self {
        let transient = match &err {
            ExecutionError::LastAttemptError(attempt) => match attempt {
                RequestAttemptError::DbError(db, _) => is_transient_db_error(db),
                RequestAttemptError::BrokenConnectionError(_)
                | RequestAttemptError::UnableToAllocStreamId => true,
                _ => false,
            },
            ExecutionError::ConnectionPoolError(_)
            | ExecutionError::EmptyPlan
            | ExecutionError::RequestTimeout(_) => true,
            _ => false,
        };
        Self {
            transient,
            message: err.to_string(),
        }
    }
}

/// Server errors that describe the cluster's state, not the statement.
fn is_transient_db_error(err: &DbError) -> bool {
    matches!(
        err,
        DbError::Overloaded
            | DbError::Unavailable { .. }
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::ReadFailure { .. }
            | DbError::WriteFailure { .. }
            | DbError::IsBootstrapping
            | DbError::ServerError
            | DbError::TruncateError
            | DbError::RateLimitReached { .. }
    )
}

/// Runs `attempt` until it succeeds, fails permanently, or has been retried
/// `retry_max` times; records `fleetd_scylla_statement_seconds{statement}`
/// per attempt and counts retries and final errors.
///
/// Only for idempotent statements (all of fleetd's are).
pub(crate) async fn with_retry<T, F, Fut>(
    statement: &'static str,
    retry_max: u32,
    backoff: Duration,
    mut attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut delay = backoff;
    let mut retries = 0;
    loop {
        let started = Instant::now();
        let outcome = attempt().await;
        metrics::histogram!("fleetd_scylla_statement_seconds", "statement" => statement)
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(value) => return Ok(value),
            Err(failure) if failure.transient && retries < retry_max => {
                retries += 1;
                metrics::counter!("fleetd_scylla_retries_total", "statement" => statement)
                    .increment(1);
                tracing::debug!(statement, retries, error = %failure.message, "scylla statement failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
            Err(failure) => {
                let kind = if failure.transient {
                    "unavailable"
                } else {
                    "rejected"
                };
                metrics::counter!("fleetd_scylla_errors_total", "statement" => statement, "kind" => kind)
                    .increment(1);
                return Err(if failure.transient {
                    StoreError::Unavailable(format!(
                        "scylla {statement} failed after {} attempts: {}",
                        retries + 1,
                        failure.message
                    ))
                } else {
                    StoreError::Scylla(format!("{statement}: {}", failure.message))
                });
            }
        }
    }
}
