//! Records that stages after normalize attach to an event or emit on their own topics.
//!
//! They live beside [`super::Event`] because they share its schema versioning: each type
//! mirrors a record in `schemas/avro/*.avsc`.

use serde::{Deserialize, Serialize};

/// One rule, IoC or pattern that matched an event (quick-scan).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Match {
    pub rule_id: String,
    pub title: String,
    pub level: String,
    /// `sigma`, `ioc` or `pattern`.
    pub kind: String,
    pub tags: Vec<String>,
    /// Matched field → matched value.
    pub fields: super::FieldMap<String>,
}

/// A correlation signal (correlate): a rule whose window condition held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Correlation {
    pub rule_id: String,
    pub title: String,
    pub level: String,
    pub kind: String,
    pub group_key: String,
    pub window_start_us: i64,
    pub window_end_us: i64,
    pub count: i64,
    pub event_ids: Vec<String>,
}

/// The ml-score stage's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Score {
    /// Fused risk, 0–100.
    pub risk: f64,
    pub model_version: String,
    pub parts: super::FieldMap<f64>,
    pub top_features: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    #[default]
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

/// An alert on the `alerts` topic (schema `alert.v1.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Alert {
    pub id: String,
    pub tenant: String,
    pub time_us: i64,
    pub last_seen_us: i64,
    pub severity: Severity,
    pub title: String,
    pub rule_ids: Vec<String>,
    pub entity: String,
    pub risk: Option<f64>,
    pub count: i64,
    pub attack_tactics: Vec<String>,
    pub attack_techniques: Vec<String>,
    pub event_ids: Vec<String>,
    pub summary: Option<String>,
}

/// Input a stage could not process (schema `dlq.v1.avsc`), with the reason and the
/// original bytes so nothing is lost and an operator can replay it after a fix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DeadLetter {
    pub stage: String,
    pub reason_code: String,
    pub reason: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    #[serde(with = "apache_avro::serde_avro_bytes_opt")]
    pub source_key: Option<Vec<u8>>,
    pub time_us: i64,
    #[serde(with = "apache_avro::serde_avro_bytes")]
    pub original: Vec<u8>,
    pub original_size: i64,
    pub truncated: bool,
}
