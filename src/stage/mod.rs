//! Stages: pure, synchronous record transformers, and the runner that gives them a bus.
//!
//! A [`Stage`] turns one input [`Record`] into zero or more [`OutMessage`]s and knows
//! nothing about transports, offsets or tasks; [`runner::StageRunner`] owns those. Stages
//! are a closed set ([`StageKind`]), built from config by [`build`].

pub mod alert;
pub mod checkpoint;
pub mod correlate;
pub mod ml_score;
mod passthrough;
pub mod sink;
pub mod partitioned;
pub mod quick_scan;
pub mod runner;

use serde::{Deserialize, Serialize};

use crate::bus::{CommitOffsets, OutMessage, Record};
use crate::config::AppConfig;
use crate::error::ErrorClass;

pub use runner::StageRunner;

/// The pipeline's stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageKind {
    Normalize,
    #[serde(alias = "quick_scan")]
    QuickScan,
    Correlate,
    #[serde(alias = "ml_score")]
    MlScore,
    Alert,
    /// Not a pipeline step: the role that writes scored events, alerts and dead letters to
    /// ClickHouse.
    Sink,
}

impl StageKind {
    pub const ALL: [StageKind; 5] = [Self::Normalize, Self::QuickScan, Self::Correlate, Self::MlScore, Self::Alert];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normalize => "normalize",
            Self::QuickScan => "quick-scan",
            Self::Correlate => "correlate",
            Self::MlScore => "ml-score",
            Self::Alert => "alert",
            Self::Sink => "sink",
        }
    }

    /// (input topic, output topic) for this stage.
    pub fn topics(self, config: &AppConfig) -> (String, String) {
        let t = &config.topics;
        let (input, output) = match self {
            Self::Normalize => (&t.raw, &t.normalized),
            Self::QuickScan => (&t.normalized, &t.scanned),
            Self::Correlate => (&t.scanned, &t.correlated),
            Self::MlScore => (&t.correlated, &t.scored),
            Self::Alert => (&t.scored, &t.alerts),
            // The sink writes to ClickHouse; it has no output topic.
            Self::Sink => (&t.scored, &t.dlq),
        };
        (input.clone(), output.clone())
    }

    /// Every topic this stage reads.
    pub fn inputs(self, config: &AppConfig) -> Vec<String> {
        match self {
            Self::Sink => vec![config.topics.scored.clone(), config.topics.alerts.clone(), config.topics.dlq.clone()],
            other => vec![other.topics(config).0],
        }
    }
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// An invariant of ours broke (e.g. our own schema failed to encode).
    #[error("internal error: {0}")]
    Internal(String),
    /// A service the stage depends on (e.g. its checkpoint store) stayed unreachable.
    #[error("{0}")]
    External(String),
}

impl StageError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Internal(_) => ErrorClass::Internal,
            Self::External(_) => ErrorClass::External,
        }
    }
}

/// One step of the pipeline. Bad input must become an output on the dead-letter topic, never
/// an `Err`: an `Err` stops the stage and the input is replayed after restart.
///
/// Stateful stages (correlate) also implement the partition hooks: the runner tells them when
/// a partition of their input starts a new assignment, asks them to checkpoint before every
/// commit, and never commits an offset their checkpoint does not cover.
pub trait Stage: Send + 'static {
    fn kind(&self) -> StageKind;
    fn process(&mut self, record: &Record, now_us: i64, out: &mut Vec<OutMessage>) -> Result<(), StageError>;

    /// A partition of the input was assigned to this instance (or is seen for the first
    /// time): drop anything held for it and restore its checkpoint. Called before its first
    /// record of the assignment.
    fn partition_assigned(&mut self, _topic: &str, _partition: i32) -> Result<(), StageError> {
        Ok(())
    }

    /// Called before every commit. A stateful stage makes its state durable and returns, per
    /// partition, the offset (exclusive) through which its checkpoint covers the input; the
    /// runner commits no further. State of partitions not in `owned` (`None`: all are owned)
    /// is dropped, not written: their new owner has them. Stateless stages return `None`.
    fn checkpoint(&mut self, _owned: Option<&[(String, i32)]>) -> Result<Option<CommitOffsets>, StageError> {
        Ok(None)
    }

    /// These offsets were committed: a restart resumes no earlier.
    fn committed(&mut self, _offsets: &CommitOffsets) {}

    /// The burst's last record was processed and its outputs are about to be sent. A stage
    /// that puts outside work off to do it once per burst (one network round trip, not one
    /// per record) does it now and fills in the outputs it left empty in `out` (the burst's
    /// outputs, in order, as `process` pushed them). An error fails the burst: none of it
    /// is sent or committed, and it replays.
    fn finish_burst(&mut self, _now_us: i64, _out: &mut [OutMessage]) -> Result<(), StageError> {
        Ok(())
    }

    /// True when the stage waits on an outside service as it works (a network round trip
    /// per burst): such a stage runs on a thread of its own, so the wait holds up no other
    /// stage and no live-feed client sharing the runtime's workers.
    fn waits_on_outside_service(&self) -> bool {
        false
    }
}

/// Bytes of the original record kept in a dead letter written by a stage after normalize.
pub const DLQ_ORIGINAL_BYTES: usize = 64 * 1024;

/// Decodes one of our Avro events; a record that is not one becomes a `bad_avro` dead letter
/// on `dlq_topic` (pushed to `out`) and `None`.
pub fn decode_or_dead_letter(
    stage: &str,
    record: &Record,
    now_us: i64,
    dlq_topic: &crate::bus::Topic,
    out: &mut Vec<OutMessage>,
) -> Result<Option<crate::event::Event>, StageError> {
    match crate::event::avro::decode_event(&record.payload) {
        Ok(event) => Ok(Some(event)),
        Err(e) => {
            dead_letter_bad_avro(stage, record, e, now_us, dlq_topic, out)?;
            Ok(None)
        }
    }
}

/// A detection stage's decoded event (in its [`EventSlot`](crate::event::avro::EventSlot))
/// and where its detection fields begin.
pub type DecodedForDetection<'s> = (&'s mut crate::event::Event, Option<crate::event::avro::DetectionsAt>);

/// [`decode_or_dead_letter`] for a stage that changes only the event's `raw` and detection
/// fields: also where they begin, for [`crate::event::avro::encode_event_detections`]. The event
/// is decoded into the stage's `slot`, over the last record's.
pub fn decode_for_detection_or_dead_letter<'s>(
    stage: &str,
    record: &Record,
    now_us: i64,
    dlq_topic: &crate::bus::Topic,
    slot: &'s mut crate::event::avro::EventSlot,
    out: &mut Vec<OutMessage>,
) -> Result<Option<DecodedForDetection<'s>>, StageError> {
    match slot.decode_for_detection(&record.payload) {
        Ok(decoded) => Ok(Some(decoded)),
        Err(e) => {
            dead_letter_bad_avro(stage, record, e, now_us, dlq_topic, out)?;
            Ok(None)
        }
    }
}

pub(crate) fn dead_letter_bad_avro(stage: &str, record: &Record, error: crate::event::avro::AvroError, now_us: i64, dlq_topic: &crate::bus::Topic, out: &mut Vec<OutMessage>) -> Result<(), StageError> {
    let dead = crate::normalize::dead_letter(stage, record, "bad_avro", error.to_string(), DLQ_ORIGINAL_BYTES, now_us);
    let payload = crate::event::avro::encode_dead_letter(&dead).map_err(|e| StageError::Internal(e.to_string()))?;
    out.push(OutMessage { topic: dlq_topic.clone(), key: record.key.clone(), payload });
    Ok(())
}

/// Shared resources stages are built with (loaded once per process, not per stage).
#[derive(Clone)]
pub struct StageResources {
    /// Rules, IoCs and patterns for quick-scan; hot-reloaded in place.
    pub detector: crate::detect::DetectorHandle,
    /// Correlation rules for the correlate stage.
    pub correlations: std::sync::Arc<crate::detect::correlation::CorrelationRules>,
    /// The ml-score stage's model (hot-reloaded) and known-threat exemplars.
    pub model: crate::ml::handle::ModelHandle,
    pub exemplars: std::sync::Arc<dyn crate::ml::similarity::ThreatIndex>,
    /// This process's live feed (the alert stage hands alerts to it when there is no Redis).
    pub feed: Option<std::sync::Arc<crate::feed::FeedHub>>,
}

/// Where stateful stages checkpoint when the config does not say: nowhere on the in-process
/// bus (its input dies with the process too), the local Redis on Kafka.
pub fn default_checkpoint(bus: crate::config::BusKind) -> String {
    match bus {
        crate::config::BusKind::Memory => "memory".into(),
        crate::config::BusKind::Kafka => "redis://127.0.0.1:6379".into(),
    }
}

/// The checkpoint store of a stateful stage's `[section]` (`checkpoint` unset: the bus's
/// default); warns when state would not survive a restart on Kafka.
fn state_store(section: &str, spec: Option<&str>, prefix: &str, config: &AppConfig) -> Result<checkpoint::CheckpointStore, StageError> {
    let spec = spec.map(str::to_string).unwrap_or_else(|| default_checkpoint(config.pipeline.bus));
    let store = checkpoint::CheckpointStore::open(&spec, prefix).map_err(|e| StageError::External(e.to_string()))?;
    if !store.is_durable() && config.pipeline.bus == crate::config::BusKind::Kafka {
        tracing::warn!("{section}.checkpoint = memory on Kafka: this stage's state restarts empty after a restart or rebalance.");
    }
    Ok(store)
}

/// Builds the stage `kind` from the application config.
pub fn build(kind: StageKind, config: &AppConfig, resources: &StageResources) -> Result<Box<dyn Stage>, StageError> {
    let (_, output) = kind.topics(config);
    if config.pipeline.passthrough {
        return Ok(Box::new(passthrough::Passthrough::new(kind, output)));
    }
    Ok(match kind {
        StageKind::QuickScan => {
            Box::new(quick_scan::QuickScanStage::new(resources.detector.clone(), output, config.topics.dlq.clone()).forwarding_raw(config.scan.forward_raw))
        }
        StageKind::Normalize => Box::new(crate::normalize::NormalizeStage::new(
            crate::normalize::Normalizer::new(config.normalize.clone(), config.pipeline.default_tenant.clone()),
            output,
            config.topics.dlq.clone(),
        )),
        StageKind::Correlate => {
            let store = state_store("correlate", config.correlate.checkpoint.as_deref(), &config.correlate.checkpoint_prefix, config)?;
            Box::new(correlate::CorrelateStage::new(
                resources.correlations.clone(),
                config.correlate.state,
                store,
                output,
                config.topics.dlq.clone(),
            ))
        }
        StageKind::MlScore => {
            let store = state_store("ml", config.ml.checkpoint.as_deref(), &config.ml.checkpoint_prefix, config)?;
            Box::new(ml_score::MlScoreStage::new(
                resources.model.clone(),
                resources.exemplars.clone(),
                config.ml.max_entities,
                store,
                output,
                config.topics.dlq.clone(),
            ))
        }
        StageKind::Alert => {
            let spec = config.alert.dedupe.clone().unwrap_or_else(|| default_checkpoint(config.pipeline.bus));
            let store = alert::DedupeStore::open(&spec, &config.alert.dedupe_prefix).map_err(StageError::External)?;
            Box::new(
                alert::AlertStage::new(config.alert.clone(), store, output, config.topics.alerts_json.clone(), config.topics.dlq.clone())
                    .with_feed(resources.feed.clone()),
            )
        }
        StageKind::Sink => Box::new(sink::SinkStage::new(
            &config.clickhouse,
            config.sink.clone(),
            config.topics.scored.clone(),
            config.topics.alerts.clone(),
            config.topics.dlq.clone(),
        )?),
    })
}
