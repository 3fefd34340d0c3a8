//! ClickHouse: where everything that happened is kept for analysts. This module owns the
//! schema (`schemas/clickhouse/NNNN_name.sql`, compiled into the binary) and applies it:
//! versioned, recorded in a `schema_migrations` table, idempotent (every statement is
//! `IF NOT EXISTS`, and applied versions are skipped), and checked (a migration whose text
//! changed after it was applied is refused, not silently re-run).
//!
//! The SQL keeps to what ClickHouse 18.16 (the DESIGN.md server) and current releases both
//! accept: no TTL, no LowCardinality, no DateTime64; retention drops whole day partitions.

pub mod reports;
pub mod rows;

use serde::{Deserialize, Serialize};

/// `[clickhouse]`: where the warehouse is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface.
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
    /// Days of events, alerts and dead letters kept; older day partitions are dropped by
    /// `threatpipe db prune` (run it daily: cron, a Kubernetes CronJob). 0 keeps everything.
    pub retention_days: u32,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self { url: "http://127.0.0.1:8123".into(), database: "threatpipe".into(), user: "default".into(), password: String::new(), retention_days: 30 }
    }
}

impl ClickHouseConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if !valid_identifier(&self.database) {
            errors.push(format!("clickhouse.database `{}` must be letters, digits and underscores", self.database));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            errors.push(format!("clickhouse.url `{}` must be an http(s) URL of the HTTP interface (port 8123)", self.url));
        }
        errors
    }

    pub fn client(&self) -> clickhouse::Client {
        // Validation queries the schema with settings ClickHouse 18.16 rejects.
        clickhouse::Client::default().with_url(&self.url).with_user(&self.user).with_password(&self.password).with_validation(false)
    }
}

/// A database or table name we interpolate (names cannot be bound as parameters).
pub fn valid_identifier(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !name.as_bytes()[0].is_ascii_digit()
}

/// One schema step.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. New ones are appended; applied ones never change.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "events", sql: include_str!("../../schemas/clickhouse/0001_events.sql") },
    Migration { version: 2, name: "alerts", sql: include_str!("../../schemas/clickhouse/0002_alerts.sql") },
    Migration { version: 3, name: "dead_letters", sql: include_str!("../../schemas/clickhouse/0003_dead_letters.sql") },
    Migration { version: 4, name: "rollups", sql: include_str!("../../schemas/clickhouse/0004_rollups.sql") },
];

impl Migration {
    /// The statements, with `{db}` replaced: comment lines dropped, split at `;`.
    pub fn statements(&self, database: &str) -> Vec<String> {
        let text: String = self.sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
        text.split(';').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.replace("{db}", database)).collect()
    }

    pub fn checksum(&self) -> String {
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(self.sql.as_bytes()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("clickhouse.database `{0}` is not a valid name")]
    BadName(String),
    #[error("ClickHouse at {url}: {source}")]
    Query { url: String, source: clickhouse::error::Error },
    #[error("migration {version} ({name}) changed after it was applied (checksum {applied} then, {now} now); add a new migration instead")]
    Changed { version: u32, name: &'static str, applied: String, now: String },
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Applied {
    version: u32,
    checksum: String,
}

#[derive(Debug, clickhouse::Row, Serialize)]
struct AppliedRow {
    version: u32,
    name: String,
    checksum: String,
    applied_at: u32,
}

/// What `migrate` did.
#[derive(Debug, Default)]
pub struct MigrateReport {
    pub applied: Vec<(u32, &'static str)>,
    pub already: usize,
}

/// Creates the database and applies every migration not applied yet.
pub async fn migrate(config: &ClickHouseConfig) -> Result<MigrateReport, DbError> {
    let db = &config.database;
    if !valid_identifier(db) {
        return Err(DbError::BadName(db.clone()));
    }
    let client = config.client();
    let err = |source| DbError::Query { url: config.url.clone(), source };
    client.query(&format!("CREATE DATABASE IF NOT EXISTS {db}")).execute().await.map_err(err)?;
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, checksum String, applied_at DateTime) ENGINE = MergeTree ORDER BY version"
        ))
        .execute()
        .await
        .map_err(err)?;
    let applied: Vec<Applied> =
        client.query(&format!("SELECT version, any(checksum) AS checksum FROM {db}.schema_migrations GROUP BY version")).fetch_all().await.map_err(err)?;
    let mut report = MigrateReport::default();
    for migration in MIGRATIONS {
        if let Some(done) = applied.iter().find(|a| a.version == migration.version) {
            if done.checksum != migration.checksum() {
                return Err(DbError::Changed { version: migration.version, name: migration.name, applied: done.checksum.clone(), now: migration.checksum() });
            }
            report.already += 1;
            continue;
        }
        for statement in migration.statements(db) {
            client.query(&statement).execute().await.map_err(err)?;
        }
        let mut insert = client.clone().with_database(db).insert::<AppliedRow>("schema_migrations").await.map_err(err)?;
        let now = u32::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let row = AppliedRow { version: migration.version, name: migration.name.to_string(), checksum: migration.checksum(), applied_at: now };
        insert.write(&row).await.map_err(err)?;
        insert.end().await.map_err(err)?;
        report.applied.push((migration.version, migration.name));
    }
    Ok(report)
}

/// Tables whose day partitions retention drops.
pub const DAY_PARTITIONED: &[&str] = &["events", "alerts", "dead_letters", "alerts_per_minute", "alerts_per_hour", "events_per_class_minute"];

#[derive(Debug, clickhouse::Row, Deserialize)]
struct PartitionRow {
    table: String,
    partition: String,
}

/// Drops day partitions older than `days` days from every day-partitioned table; returns
/// (table, partition) dropped. `days` = 0 keeps everything.
pub async fn prune(config: &ClickHouseConfig, days: u32) -> Result<Vec<(String, String)>, DbError> {
    let db = &config.database;
    if !valid_identifier(db) {
        return Err(DbError::BadName(db.clone()));
    }
    if days == 0 {
        return Ok(Vec::new());
    }
    let client = config.client();
    let err = |source| DbError::Query { url: config.url.clone(), source };
    let cutoff = (chrono::Utc::now() - chrono::Duration::days(i64::from(days))).format("%Y-%m-%d").to_string();
    // A day partition's id is its date as YYYYMMDD; its `partition` value is the date text.
    let partitions: Vec<PartitionRow> = client
        .query("SELECT DISTINCT table, partition FROM system.parts WHERE database = ? AND active AND has(?, table) AND partition_id < ?")
        .bind(db.as_str())
        .bind(DAY_PARTITIONED)
        .bind(cutoff.replace('-', ""))
        .fetch_all()
        .await
        .map_err(err)?;
    let mut dropped = Vec::new();
    for PartitionRow { table, partition } in partitions {
        let value = partition.trim_matches('\'').to_string();
        if !value.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            continue; // not a day partition: leave it
        }
        client.query(&format!("ALTER TABLE {db}.{table} DROP PARTITION '{value}'")).execute().await.map_err(err)?;
        dropped.push((table, value));
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_and_name_the_database() {
        let rollups = &MIGRATIONS[3];
        let statements = rollups.statements("tp");
        assert_eq!(statements.len(), 6);
        assert!(statements.iter().all(|s| !s.contains("{db}") && !s.contains("--")));
        assert!(statements[1].starts_with("CREATE MATERIALIZED VIEW IF NOT EXISTS tp.alerts_per_minute_mv"));
        assert!(valid_identifier("threatpipe_2") && !valid_identifier("x; DROP") && !valid_identifier("1x") && !valid_identifier(""));
        let versions: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=MIGRATIONS.len() as u32).collect::<Vec<_>>(), "versions are 1, 2, … in order");
    }
}
