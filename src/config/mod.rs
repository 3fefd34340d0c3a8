//! Configuration: one TOML file, every key overridable from the environment.
//!
//! A component is a config that builds a running thing: each section here is an `XConfig`
//! with `deny_unknown_fields`, documented fields and named defaults. Loading goes
//! file → environment overrides → typed deserialization (which names the offending key) →
//! [`AppConfig::validate`] (cross-field checks, all errors collected at once).
//!
//! Environment overrides: `THREATPIPE_<SECTION>__<KEY>=value`, for example
//! `THREATPIPE_KAFKA__BROKERS=10.0.0.1:9092` or `THREATPIPE_NORMALIZE__MAX_EVENT_BYTES=65536`.
//! Values are read as TOML (numbers, booleans, `["a","b"]`) and fall back to a plain string.

mod env;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stage::StageKind;

/// The embedded default pipeline, compiled in so `threatpipe` runs with no file at all.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../pipelines/default.toml");

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "THREATPIPE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {detail}")]
    Syntax { path: String, detail: String },
    #[error("invalid config key `{key}`{origin}: {detail}")]
    Key { key: String, origin: String, detail: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Which transport the stages talk over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    /// In-process channels; no services needed.
    Memory,
    /// A Kafka-protocol broker (Apache Kafka, Redpanda, Tansu).
    Kafka,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub topics: TopicsConfig,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub runner: RunnerConfig,
    #[serde(default)]
    pub normalize: crate::normalize::NormalizeConfig,
    #[serde(default)]
    pub generator: crate::generator::GeneratorConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub progress: ProgressConfig,
    #[serde(default)]
    pub scan: crate::detect::ScanConfig,
    #[serde(default)]
    pub correlate: crate::stage::correlate::CorrelateConfig,
    #[serde(default)]
    pub ml: crate::stage::ml_score::MlConfig,
    #[serde(default)]
    pub clickhouse: crate::db::ClickHouseConfig,
    #[serde(default)]
    pub sink: crate::stage::sink::SinkConfig,
    #[serde(default)]
    pub alert: crate::stage::alert::AlertConfig,
    #[serde(default)]
    pub feed: crate::feed::FeedConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Transport: `memory` (embedded, one process) or `kafka`.
    #[serde(default = "default_bus")]
    pub bus: BusKind,
    /// Stages this instance runs, in pipeline order.
    #[serde(default = "default_stages", deserialize_with = "string_or_list::deserialize")]
    pub stages: Vec<StageKind>,
    /// Tenant assigned to events that do not name one.
    #[serde(default = "default_tenant")]
    pub default_tenant: String,
    /// Capacity of each in-memory topic (memory bus only), in messages.
    #[serde(default = "default_memory_topic_capacity")]
    pub memory_topic_capacity: usize,
    /// Run every stage as a pass-through that forwards records unchanged: the transport
    /// baseline that load tests quote throughput against.
    #[serde(default)]
    pub passthrough: bool,
}

fn default_bus() -> BusKind {
    BusKind::Memory
}
fn default_stages() -> Vec<StageKind> {
    StageKind::ALL.to_vec()
}
fn default_tenant() -> String {
    "default".into()
}
fn default_memory_topic_capacity() -> usize {
    crate::bus::memory::DEFAULT_TOPIC_CAPACITY
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            bus: default_bus(),
            stages: default_stages(),
            default_tenant: default_tenant(),
            memory_topic_capacity: default_memory_topic_capacity(),
            passthrough: false,
        }
    }
}

/// Topic names (DESIGN.md defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    pub raw: String,
    pub normalized: String,
    pub scanned: String,
    pub correlated: String,
    pub scored: String,
    pub alerts: String,
    /// JSON copy of every alert, for consumers that do not read Avro.
    pub alerts_json: String,
    pub dlq: String,
    /// Partitions for topics threatpipe creates itself (`kafka.create_topics`).
    pub partitions: i32,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            raw: "events.raw".into(),
            normalized: "events.normalized".into(),
            scanned: "events.scanned".into(),
            correlated: "events.correlated".into(),
            scored: "events.scored".into(),
            alerts: "alerts".into(),
            alerts_json: "alerts.json".into(),
            dlq: "events.dlq".into(),
            partitions: 6,
        }
    }
}

impl TopicsConfig {
    pub fn all(&self) -> Vec<String> {
        vec![
            self.raw.clone(),
            self.normalized.clone(),
            self.scanned.clone(),
            self.correlated.clone(),
            self.scored.clone(),
            self.alerts.clone(),
            self.alerts_json.clone(),
            self.dlq.clone(),
        ]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// Consumer group of a stage = `<group_prefix>.<stage>`.
    pub group_prefix: String,
    /// Create missing topics at startup.
    pub create_topics: bool,
    /// Consumer session timeout; a dead member's partitions move after this.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Longest gap between polls before the member is considered stuck. Short on Tansu so a
    /// restarted member rejoins quickly (DESIGN.md).
    #[serde(with = "humantime_serde")]
    pub max_poll_interval: Duration,
    /// Extra librdkafka consumer properties (e.g. `"security.protocol" = "ssl"`).
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka producer properties (e.g. `"compression.type" = "lz4"`).
    pub producer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_prefix: "threatpipe".into(),
            create_topics: true,
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(30),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// How each stage consumes, acknowledges and commits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerConfig {
    /// Input records processed but not yet acknowledged downstream, per stage. When reached,
    /// the stage stops reading until acks arrive (backpressure).
    pub max_in_flight: usize,
    /// How often acknowledged offsets are committed.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// At shutdown, how long to wait for in-flight acks before giving up (what was not
    /// acknowledged is not committed and will be replayed). Must stay below
    /// `kafka.session_timeout` or the member is evicted mid-drain.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Input records a stage takes back to back, while more are ready, before it hands
    /// their outputs to the broker at once (one produce batch per partition instead of one
    /// per linger). 1 sends each output as soon as it is made. 4,000: fewer, larger
    /// produce requests where the broker's cost is per request (on a slow host, flat out,
    /// 4,000 against 2,000 cut the broker's CPU per event by ~12% and the pipeline
    /// instance's by ~6%; on a quick one they were even; session 36), but not 10,000: a
    /// burst's records and outputs are all live until it is handed over, and at 10,000
    /// (~10 MB with the pipeline's records) they no longer stayed in cache; flat out the
    /// pipeline instance spent ~5% more CPU per event than at 2,000 (session 32; both in
    /// load/README.md). Only a stage that is behind fills a burst.
    pub burst_max: usize,
    /// The longest a burst goes on taking input while the stage is behind (the records it
    /// takes had waited longer than this since they were produced); a stage that keeps up
    /// ends its bursts after 2 ms, a producer linger.
    #[serde(with = "humantime_serde")]
    pub burst_max_wait: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 10_000,
            commit_interval: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(8),
            burst_max: 4_000,
            burst_max_wait: Duration::from_millis(50),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve `/metrics`, `/health` and `/ready`.
    pub enabled: bool,
    /// Listen address.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { enabled: true, listen: SocketAddr::from(([127, 0, 0, 1], 8080)) }
    }
}

/// The progress line printed on the terminal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProgressConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for ProgressConfig {
    fn default() -> Self {
        Self { enabled: true, interval: Duration::from_secs(2) }
    }
}

impl AppConfig {
    /// Loads `path` (or the compiled-in default), applies environment overrides from `vars`,
    /// deserializes and validates.
    pub fn load(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p)
                    .map_err(|source| ConfigError::Read { path: p.display().to_string(), source })?,
                p.display().to_string(),
            ),
            None => (DEFAULT_CONFIG_TOML.to_string(), "<built-in pipelines/default.toml>".into()),
        };
        Self::from_toml_str(&text, &origin, vars)
    }

    pub fn from_toml_str(
        text: &str,
        origin: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax { path: origin.into(), detail: e.to_string() })?;
        let overridden = env::apply_overrides(&mut table, vars)?;
        let config: AppConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                let detail = e.into_inner().to_string();
                let env_origin = overridden
                    .iter()
                    .find(|(k, _)| {
                        let leaf = k.rsplit('.').next().unwrap_or(k);
                        *k == key
                            || (detail.contains(&format!("`{leaf}`"))
                                && (key == "." || k.starts_with(&format!("{key}."))))
                    })
                    .map(|(_, var)| format!(" (from environment variable {var})"))
                    .unwrap_or_else(|| format!(" (in {origin})"));
                ConfigError::Key { key, origin: env_origin, detail }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Cross-field checks; reports every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.pipeline.stages.is_empty() {
            errors.push("pipeline.stages: at least one stage is needed".to_string());
        }
        if self.runner.max_in_flight == 0 {
            errors.push("runner.max_in_flight must be at least 1".to_string());
        }
        if self.runner.burst_max == 0 {
            errors.push("runner.burst_max must be at least 1 (1 sends each output as soon as it is made)".to_string());
        }
        if self.runner.commit_interval.is_zero() {
            errors.push("runner.commit_interval must be above zero".to_string());
        }
        if self.pipeline.bus == BusKind::Kafka {
            if self.kafka.brokers.trim().is_empty() {
                errors.push("kafka.brokers must name at least one broker".to_string());
            }
            if self.runner.drain_timeout >= self.kafka.session_timeout {
                errors.push(format!(
                    "runner.drain_timeout ({:?}) must be below kafka.session_timeout ({:?}), or the member is evicted while draining",
                    self.runner.drain_timeout, self.kafka.session_timeout
                ));
            }
        }
        if self.topics.partitions < 1 {
            errors.push("topics.partitions must be at least 1".to_string());
        }
        errors.extend(self.normalize.validate());
        errors.extend(self.generator.validate());
        if self.http.enabled && self.feed.enabled {
            errors.extend(self.feed.validate());
        }
        if self.pipeline.stages.contains(&StageKind::QuickScan) {
            errors.extend(self.scan.validate());
        }
        if self.pipeline.stages.contains(&StageKind::Correlate) {
            errors.extend(self.correlate.validate());
        }
        if self.pipeline.stages.contains(&StageKind::MlScore) {
            errors.extend(self.ml.validate());
        }
        if self.pipeline.stages.contains(&StageKind::Sink) {
            errors.extend(self.clickhouse.validate());
            if self.pipeline.bus == BusKind::Memory {
                errors.push("the sink role reads three topics and needs bus = \"kafka\" (run it with --bus kafka or pipelines/kafka.toml)".into());
            }
            if self.sink.batch_rows == 0 || self.sink.max_buffered_rows < self.sink.batch_rows {
                errors.push("sink.batch_rows must be at least 1 and at most sink.max_buffered_rows".into());
            }
        }
        let topics = self.topics.all();
        for (i, topic) in topics.iter().enumerate() {
            if topic.trim().is_empty() {
                errors.push("topics: topic names must not be empty".to_string());
            } else if topics[..i].contains(topic) {
                errors.push(format!("topics: `{topic}` is used for two different topics"));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(errors)) }
    }

    pub fn kafka_settings(&self) -> crate::bus::kafka::KafkaSettings {
        crate::bus::kafka::KafkaSettings {
            brokers: self.kafka.brokers.clone(),
            session_timeout: self.kafka.session_timeout,
            max_poll_interval: self.kafka.max_poll_interval,
            // Room for the largest normalized event (raw text is capped separately) plus
            // the envelope; the broker's own limit must be at least this.
            max_message_bytes: self.normalize.max_event_bytes + self.normalize.max_raw_bytes + 64 * 1024,
            consumer_options: self.kafka.consumer.clone(),
            producer_options: self.kafka.producer.clone(),
        }
    }
}

/// Accepts `["a", "b"]` or `"a,b"` (the latter is what an environment variable carries).
pub mod string_or_list {
    use serde::de::{DeserializeOwned, Deserializer, IntoDeserializer};
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }

    pub fn deserialize<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned,
    {
        let items = match Either::deserialize(deserializer)? {
            Either::One(s) => s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
            Either::Many(v) => v,
        };
        items
            .into_iter()
            .map(|item| {
                let de: serde::de::value::StringDeserializer<D::Error> = item.into_deserializer();
                T::deserialize(de)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, vars: &[(&str, &str)]) -> Result<AppConfig, ConfigError> {
        AppConfig::from_toml_str(
            text,
            "test.toml",
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn the_shipped_default_parses_and_validates() {
        let config = load(DEFAULT_CONFIG_TOML, &[]).unwrap();
        assert_eq!(config.pipeline.bus, BusKind::Memory);
        assert_eq!(config.pipeline.stages, StageKind::ALL.to_vec());
        assert_eq!(config.normalize.max_event_bytes, 1024 * 1024);
    }

    #[test]
    fn every_example_pipeline_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                AppConfig::load(Some(&path), []).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 2, "expected the default and the kafka example");
    }

    #[test]
    fn unknown_key_is_rejected_naming_it() {
        let err = load("[kafka]\nbrokerz = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("kafka") && err.contains("brokerz"), "{err}");
    }

    #[test]
    fn bad_value_is_rejected_naming_the_key() {
        let err = load("[runner]\nmax_in_flight = \"lots\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("runner.max_in_flight"), "{err}");
        let err = load("[runner]\ncommit_interval = \"soon\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("runner.commit_interval"), "{err}");
    }

    #[test]
    fn environment_overrides_any_key() {
        let config = load(
            "",
            &[
                ("THREATPIPE_KAFKA__BROKERS", "10.1.1.1:9092"),
                ("THREATPIPE_NORMALIZE__MAX_EVENT_BYTES", "4096"),
                ("THREATPIPE_PIPELINE__STAGES", "normalize,quick-scan"),
                ("THREATPIPE_RUNNER__COMMIT_INTERVAL", "2s"),
                ("THREATPIPE_KAFKA__CONSUMER__FETCH_MIN_BYTES", "1"),
                ("UNRELATED", "x"),
                ("THREATPIPE_CONFIG", "ignored: no double underscore"),
            ],
        )
        .unwrap();
        assert_eq!(config.kafka.brokers, "10.1.1.1:9092");
        assert_eq!(config.normalize.max_event_bytes, 4096);
        assert_eq!(config.pipeline.stages, vec![StageKind::Normalize, StageKind::QuickScan]);
        assert_eq!(config.runner.commit_interval, Duration::from_secs(2));
        assert_eq!(config.kafka.consumer.get("fetch.min.bytes").map(String::as_str), Some("1"));
    }

    #[test]
    fn unknown_environment_key_is_rejected_naming_the_variable() {
        let err = load("", &[("THREATPIPE_KAFKA__BROKER", "x")]).unwrap_err().to_string();
        assert!(err.contains("THREATPIPE_KAFKA__BROKER"), "{err}");
        let err = load("", &[("THREATPIPE_PIPELINE__STAGES", "normalize,bogus")]).unwrap_err().to_string();
        assert!(err.contains("pipeline.stages") && err.contains("bogus"), "{err}");
    }

    #[test]
    fn cross_field_errors_are_all_reported() {
        let err = load(
            "[pipeline]\nbus = \"kafka\"\n[runner]\nmax_in_flight = 0\nburst_max = 0\ndrain_timeout = \"1m\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_in_flight") && err.contains("drain_timeout"), "{err}");
        assert!(err.contains("runner.burst_max must be at least 1"), "{err}");
    }
}
