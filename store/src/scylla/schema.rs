//! The versioned CQL schema (`schemas/cql/`) and its idempotent migration.

use scylla::client::session::Session;

use super::ScyllaSettings;
use crate::StoreError;

/// The schema files, oldest first: (version, name, CQL text).
pub const SCHEMA_FILES: &[(i32, &str, &str)] = &[
    (
        1,
        "001_init",
        include_str!("../../../schemas/cql/001_init.cql"),
    ),
    (
        2,
        "002_state_alerts_registry",
        include_str!("../../../schemas/cql/002_state_alerts_registry.cql"),
    ),
    (
        3,
        "003_geofences",
        include_str!("../../../schemas/cql/003_geofences.cql"),
    ),
    (
        4,
        "004_access",
        include_str!("../../../schemas/cql/004_access.cql"),
    ),
    (
        5,
        "005_webhooks",
        include_str!("../../../schemas/cql/005_webhooks.cql"),
    ),
];

/// The statements of a schema file: `--` comment lines dropped, split at
/// semicolons, whitespace trimmed.
pub fn schema_statements(file: &str) -> Vec<String> {
    let text: String = file
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

/// The `CREATE KEYSPACE` of `settings` (NetworkTopologyStrategy, the
/// replication factor in every datacenter).
pub fn create_keyspace_cql(settings: &ScyllaSettings) -> String {
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = \
         {{'class': 'NetworkTopologyStrategy', 'replication_factor': {}}}",
        settings.keyspace, settings.replication_factor
    )
}

/// Creates the keyspace and applies every schema file. Safe to run at every
/// start and from several instances at once: each statement is
/// `IF NOT EXISTS`, and recording a version twice writes the same row.
pub(crate) async fn migrate(
    session: &Session,
    settings: &ScyllaSettings,
) -> Result<(), StoreError> {
    let ddl_error = |what: &str, err: &dyn std::fmt::Display| {
        StoreError::Scylla(format!("migration: {what}: {err}"))
    };
    let keyspace = create_keyspace_cql(settings);
    session
        .query_unpaged(keyspace, ())
        .await
        .map_err(|err| ddl_error("create keyspace", &err))?;
    session
        .use_keyspace(&settings.keyspace, false)
        .await
        .map_err(|err| ddl_error("use keyspace", &err))?;
    for &(version, name, text) in SCHEMA_FILES {
        for statement in schema_statements(text) {
            session
                .query_unpaged(statement.clone(), ())
                .await
                .map_err(|err| ddl_error(&statement, &err))?;
        }
        // Constants only, so formatting them into the text is safe.
        let record = format!(
            "INSERT INTO schema_migrations (version, name, applied_at) \
             VALUES ({version}, '{name}', toTimestamp(now()))"
        );
        session
            .query_unpaged(record, ())
            .await
            .map_err(|err| ddl_error("record version", &err))?;
        tracing::info!(version, name, keyspace = %settings.keyspace, "scylla schema applied");
    }
    // Preparing against a node that has not seen the new tables yet would
    // fail; waiting for agreement avoids that. Not fatal: the prepare step
    // that follows reports a missing table clearly.
    if let Err(err) = session.await_schema_agreement().await {
        tracing::warn!(error = %err, "scylla schema agreement not reached after migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_file_splits_into_create_statements() {
        let statements: Vec<String> = SCHEMA_FILES
            .iter()
            .flat_map(|(_, _, text)| schema_statements(text))
            .collect();
        assert_eq!(statements.len(), 15, "{statements:#?}");
        for s in &statements {
            assert!(s.starts_with("CREATE TABLE IF NOT EXISTS "), "{s}");
            assert!(!s.contains("--"), "{s}");
        }
        let all = statements.join("\n").to_ascii_uppercase();
        // The design forbids these: every read names one partition.
        for banned in [
            "MATERIALIZED VIEW",
            "CREATE INDEX",
            "ALLOW FILTERING",
            "BATCH",
        ] {
            assert!(!all.contains(banned), "{banned}");
        }
    }
}
