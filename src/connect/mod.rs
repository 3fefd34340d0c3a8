//! SIEM connectors: `threatpipe connect FILE` feeds one SIEM from the `alerts` topic.
//!
//! A connector is a consumer group of its own on `alerts` (Avro), configured by one file in
//! `connectors/`. It reads a batch (`batch.max_alerts` or `batch.max_wait`), delivers it
//! ([`destination`]), and only then commits the batch's offsets: at-least-once, and a
//! restart resumes after the last delivered batch. What the SIEM refuses for good (4xx, or
//! a per-item rejection) goes to the connector's own dead-letter topic with the reason;
//! what fails for now (5xx, 429, timeouts, a broken connection) is retried with exponential
//! backoff and jitter until it succeeds or the connector is stopped (then it is not
//! committed, so the next run retries it). Metrics: `threatpipe_connector_{sent,failed,
//! retried}_total` and `threatpipe_connector_lag` per connector.

pub mod destination;
pub mod format;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::bus::kafka::{KafkaConsumer, KafkaProducer, KafkaSettings};
use crate::bus::{CommitMode, OutMessage, Record};
use crate::event::{avro, Alert};
pub use destination::{Destination, DestinationConfig, Outcome, TlsConfig};

/// One connector file. (No `deny_unknown_fields` here: serde cannot combine it with the
/// flattened destination; each section denies unknown keys itself.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectorConfig {
    /// Names the consumer group, the dead-letter topic and the metrics label.
    pub name: String,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub tls: destination::TlsConfig,
    #[serde(flatten)]
    pub destination: DestinationConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub brokers: String,
    pub topic: String,
    /// Default `threatpipe.connect.<name>`.
    pub group: Option<String>,
    /// Default `<topic>.dlq.<name>`.
    pub dead_letter_topic: Option<String>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self { brokers: "127.0.0.1:9092".into(), topic: "alerts".into(), group: None, dead_letter_topic: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most alerts per delivery.
    pub max_alerts: usize,
    /// Longest a batch waits to fill once it has its first alert.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_alerts: 500, max_wait: Duration::from_millis(500) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First backoff; doubles per attempt up to `max`, each with ±50% jitter.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// One request's deadline (a timeout is retried).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { initial: Duration::from_millis(250), max: Duration::from_secs(30), timeout: Duration::from_secs(10) }
    }
}

impl ConnectorConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let config: Self = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!("name {:?}: letters, digits, - and _ only", self.name));
        }
        if self.batch.max_alerts == 0 {
            return Err("batch.max_alerts must be at least 1".into());
        }
        if self.retry.initial.is_zero() || self.retry.max < self.retry.initial {
            return Err("retry.initial must be above zero and at most retry.max".into());
        }
        self.destination.validate()
    }

    pub fn group(&self) -> String {
        self.source.group.clone().unwrap_or_else(|| format!("threatpipe.connect.{}", self.name))
    }

    pub fn dead_letter_topic(&self) -> String {
        self.source.dead_letter_topic.clone().unwrap_or_else(|| format!("{}.dlq.{}", self.source.topic, self.name))
    }
}

/// The backoff before retry `attempt` (0-based): initial × 2^attempt, capped, ×[0.5, 1.5).
pub fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let base = retry.initial.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX)).min(retry.max);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let jitter = 0.5 + (xxhash_rust::xxh3::xxh3_64(&[nanos.to_le_bytes(), attempt.to_le_bytes()].concat()) % 1000) as f64 / 1000.0;
    base.mul_f64(jitter)
}

/// A dead letter for the connector's topic: the alert as JSON with the reason.
fn dead_letter(connector: &str, record: &Record, reason: &str) -> OutMessage {
    let body = serde_json::json!({
        "connector": connector,
        "reason": reason,
        "source_topic": record.topic,
        "source_partition": record.partition,
        "source_offset": record.offset,
        "time_us": chrono::Utc::now().timestamp_micros(),
        "alert": avro::decode_alert(&record.payload).ok(),
        "payload_base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &record.payload),
    });
    OutMessage { topic: "".into(), key: record.key.clone(), payload: body.to_string().into_bytes() }
}

/// Runs the connector until `stop`; returns the number of alerts delivered.
pub async fn run(config: ConnectorConfig, kafka: KafkaSettings, stop: CancellationToken) -> anyhow::Result<u64> {
    let name = config.name.clone();
    let dlq_topic = config.dead_letter_topic();
    crate::bus::kafka::ensure_topics(&kafka, std::slice::from_ref(&dlq_topic), 1).await?;
    let mut consumer = KafkaConsumer::subscribe(&kafka, &config.group(), std::slice::from_ref(&config.source.topic))?;
    let producer = KafkaProducer::new(&kafka)?;
    let mut destination = Destination::open(&config.destination, &config.retry, &config.tls).await.map_err(anyhow::Error::msg)?;
    let labels = [("connector", name.clone())];
    let sent = metrics::counter!(crate::telemetry::names::CONNECTOR_SENT, &labels);
    let failed = metrics::counter!(crate::telemetry::names::CONNECTOR_FAILED, &labels);
    let retried = metrics::counter!(crate::telemetry::names::CONNECTOR_RETRIED, &labels);
    let lag = metrics::gauge!(crate::telemetry::names::CONNECTOR_LAG, &labels);
    tracing::info!(connector = %name, group = %config.group(), topic = %config.source.topic, dead_letters = %dlq_topic, destination = %destination.describe(), "connector started");
    let mut delivered_total = 0u64;
    let mut failing = false;
    let mut lag_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        // A batch: wait for the first record, then up to max_wait for more.
        let first = loop {
            tokio::select! {
                _ = stop.cancelled() => break None,
                // While idle too, so the gauge reaches 0 after the last batch.
                _ = lag_tick.tick() => if let Some(l) = consumer.lag() { lag.set(l as f64) },
                r = consumer.recv() => break Some(r?),
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + config.batch.max_wait;
        while batch.len() < config.batch.max_alerts {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stop.cancelled() => break,
                r = consumer.recv() => batch.push(r?),
            }
        }
        // Decode; what is not an alert is dead-lettered, not sent.
        let mut dead: Vec<OutMessage> = Vec::new();
        let mut pending: Vec<(usize, Alert)> = Vec::new();
        for (i, record) in batch.iter().enumerate() {
            match avro::decode_alert(&record.payload) {
                Ok(alert) => pending.push((i, alert)),
                Err(e) => dead.push(dead_letter(&name, record, &format!("not an alert: {e}"))),
            }
        }
        let mut attempt = 0u32;
        let mut stopped = false;
        while !pending.is_empty() {
            let alerts: Vec<&Alert> = pending.iter().map(|(_, a)| a).collect();
            let outcomes = destination.deliver(&alerts).await;
            let mut again = Vec::new();
            let mut retry_reason = None;
            for ((i, alert), outcome) in pending.into_iter().zip(outcomes) {
                match outcome {
                    Outcome::Delivered => {
                        sent.increment(1);
                        delivered_total += 1;
                    }
                    Outcome::Rejected(reason) => {
                        failed.increment(1);
                        dead.push(dead_letter(&name, &batch[i], &reason));
                    }
                    Outcome::Retry(reason) => {
                        retry_reason = Some(reason);
                        again.push((i, alert));
                    }
                }
            }
            pending = again;
            if let Some(reason) = retry_reason {
                retried.increment(pending.len() as u64);
                let wait = backoff(&config.retry, attempt);
                // The first few failures each, then every tenth: a long outage does not flood the log.
                failing = true;
                if attempt < 5 || attempt.is_multiple_of(10) {
                    tracing::warn!(connector = %name, alerts = pending.len(), attempt = attempt + 1, retry_in = ?wait, %reason, "delivery failed; retrying");
                }
                attempt += 1;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => { stopped = true; break; }
                }
            } else if std::mem::take(&mut failing) {
                tracing::info!(connector = %name, "delivery recovered");
            }
        }
        if stopped {
            // Not committed: the next run delivers this batch again.
            tracing::info!(connector = %name, undelivered = pending.len(), "stopping with a batch undelivered; it is redelivered on the next run");
            break;
        }
        for mut message in dead {
            message.topic = dlq_topic.as_str().into();
            let ack = producer.send(message).await?;
            ack.await?;
        }
        // Everything in the batch is delivered or dead-lettered: commit past it.
        let mut offsets: Vec<(String, i32, i64)> = Vec::new();
        for record in &batch {
            match offsets.iter_mut().find(|(t, p, _)| **t == *record.topic && *p == record.partition) {
                Some(entry) => entry.2 = entry.2.max(record.offset + 1),
                None => offsets.push((record.topic.to_string(), record.partition, record.offset + 1)),
            }
        }
        if let Err(error) = consumer.commit(&offsets, CommitMode::Blocking) {
            // Lost the partitions in a rebalance: the new owner redelivers (at-least-once).
            tracing::warn!(connector = %name, %error, "commit failed; the batch may be delivered again");
        }
        if let Some(l) = consumer.lag() {
            lag.set(l as f64);
        }
    }
    Ok(delivered_total)
}
