//! The correlate stage: Sigma correlation rules over `events.scanned`, one window state per
//! input partition, checkpointed so the partition's next owner continues its windows.
//!
//! Every event goes on to `events.correlated` with the signals it completed attached
//! (`correlations`); each signal also leaves as its own `finding` event, whose id is the
//! signal's deterministic id, so a replay produces the same finding, never a second one.
//!
//! # Delivery
//!
//! - The state of a partition records the offset it includes (`applied_offset`). A record at
//!   or below it is a replay: it is not observed again (that would count it twice) and gets
//!   the signals it produced the first time, remembered per offset until committed.
//! - Before every commit the runner calls [`CorrelateStage::checkpoint`]; the offsets it
//!   returns cap the commit, so the committed offset never runs ahead of the saved state.
//! - A checkpoint store that is down is an outside failure: processing goes on, commits stop
//!   advancing, and the next checkpoint writes everything that changed meanwhile.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::checkpoint::CheckpointStore;
use super::partitioned::PartitionedState;
use super::{Stage, StageError, StageKind};
use crate::bus::{CommitOffsets, OutMessage, Record};
use crate::detect::correlation::{signal_id, CorrelationRules, PartitionState, StateLimits};
use crate::event::{avro, Correlation, Event, EventClass, Source};
use crate::telemetry::names;


/// `[correlate]`: which correlation rules run and where their state lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrelateConfig {
    /// Sigma correlation rule files or directories, with the detection rules they refer to
    /// (rules quick-scan already matched are referred to by id).
    pub rules: Vec<PathBuf>,
    /// `memory` (state dies with the process) or a Redis URL. Unset: `memory` on the
    /// in-process bus, `redis://127.0.0.1:6379` on Kafka.
    pub checkpoint: Option<String>,
    /// Prefix of the Redis keys (`{prefix}:{topic}:{partition}`); pipelines sharing a Redis
    /// need different prefixes.
    pub checkpoint_prefix: String,
    /// Allowed lateness and state bounds.
    pub state: StateLimits,
}

impl Default for CorrelateConfig {
    fn default() -> Self {
        Self {
            rules: vec![PathBuf::from("pipelines/correlations")],
            checkpoint: None,
            checkpoint_prefix: "threatpipe:correlate".into(),
            state: StateLimits::default(),
        }
    }
}

impl CorrelateConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for path in &self.rules {
            if !path.exists() {
                errors.push(format!("correlate.rules: {} does not exist (paths are relative to the working directory)", path.display()));
            }
        }
        if let Some(spec) = &self.checkpoint {
            if let Err(e) = CheckpointStore::open(spec, &self.checkpoint_prefix) {
                errors.push(format!("correlate.checkpoint: {e} (use `memory` or redis://host:port)"));
            }
        }
        if self.state.max_entries_per_key == 0 || self.state.max_keys == 0 {
            errors.push("correlate.state.max_entries_per_key and max_keys must be at least 1".into());
        }
        errors
    }
}

pub struct CorrelateStage {
    rules: Arc<CorrelationRules>,
    limits: StateLimits,
    max_span_us: i64,
    state: PartitionedState<PartitionState>,
    output_topic: crate::bus::Topic,
    dlq_topic: crate::bus::Topic,
    /// Where events are decoded, record after record.
    slot: avro::EventSlot,
}

impl CorrelateStage {
    pub fn new(rules: Arc<CorrelationRules>, limits: StateLimits, store: CheckpointStore, output_topic: String, dlq_topic: String) -> Self {
        let max_span_us = rules.max_span_us();
        Self { rules, limits, max_span_us, state: PartitionedState::new("correlate", store), output_topic: output_topic.into(), dlq_topic: dlq_topic.into(), slot: avro::EventSlot::default() }
    }

    /// Windows held across all partitions.
    pub fn key_count(&self) -> usize {
        self.state.key_count()
    }

    /// Keeps the key budget (`max_keys` windows per instance).
    fn enforce_key_budget(&mut self, topic: &str, partition: i32) {
        let evicted = self.state.enforce_key_budget(topic, partition, self.limits.max_keys, PartitionState::evict_oldest);
        if evicted > 0 {
            metrics::counter!(names::CORRELATION_EVICTED_KEYS).increment(evicted as u64);
        }
    }
}

/// The event a signal becomes on `events.correlated`: a finding about the triggering event's
/// entity, with the signal attached.
pub fn finding_event(signal: &Correlation, trigger: &Event, record: &Record, now_us: i64) -> Event {
    Event {
        id: signal_id(signal, &trigger.tenant),
        class: EventClass::Finding,
        time_us: signal.window_end_us,
        ingest_time_us: now_us,
        tenant: trigger.tenant.clone(),
        partition_key: trigger.partition_key.clone(),
        source: Source {
            format: "correlation".into(),
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            vendor: Some("threatpipe".into()),
            product: Some("correlate".into()),
        },
        severity: Some(signal.level.clone()),
        message: Some(format!("{}: {} ({} in window)", signal.title, signal.group_key, signal.count)),
        host: trigger.host.clone(),
        actor: trigger.actor.clone(),
        src: trigger.src.clone(),
        dst: trigger.dst.clone(),
        correlations: vec![signal.clone()],
        ..Event::default()
    }
}

impl CorrelateStage {
    fn process_in(&mut self, slot: &mut avro::EventSlot, record: &Record, now_us: i64, out: &mut Vec<OutMessage>) -> Result<(), StageError> {
        let Some((event, detections_at)) = super::decode_for_detection_or_dead_letter("correlate", record, now_us, &self.dlq_topic, slot, out)? else { return Ok(()) };
        let state = self.state.get_mut(&record.topic, record.partition);
        let signals = if state.applied_offset.is_some_and(|applied| record.offset <= applied) {
            // Replay of a record this state already includes.
            state.recalled_signals(record.offset)
        } else {
            let observed = self.rules.observe(state, event, &self.limits);
            if observed.late {
                metrics::counter!(names::CORRELATION_LATE_EVENTS).increment(1);
            }
            if observed.truncated_entries > 0 {
                metrics::counter!(names::CORRELATION_TRUNCATED_ENTRIES).increment(observed.truncated_entries);
            }
            state.applied_offset = Some(record.offset);
            state.remember_signals(record.offset, &observed.signals);
            state.sweep(&self.limits, self.max_span_us);
            for signal in &observed.signals {
                metrics::counter!(names::CORRELATION_SIGNALS, "rule" => signal.rule_id.clone()).increment(1);
            }
            observed.signals
        };
        self.enforce_key_budget(&record.topic, record.partition);

        let findings: Vec<Event> = signals.iter().map(|s| finding_event(s, event, record, now_us)).collect();
        // Most events complete nothing: they leave as they came, without encoding.
        let payload = if signals.is_empty() && event.correlations.is_empty() {
            record.payload.clone()
        } else {
            event.correlations = signals;
            avro::encode_event_detections(&record.payload, detections_at, event).map_err(|e| StageError::Internal(e.to_string()))?
        };
        out.push(OutMessage { topic: self.output_topic.clone(), key: record.key.clone(), payload });
        for finding in findings {
            let payload = avro::encode_event(&finding).map_err(|e| StageError::Internal(e.to_string()))?;
            out.push(OutMessage { topic: self.output_topic.clone(), key: record.key.clone(), payload });
        }
        Ok(())
    }
}

impl Stage for CorrelateStage {
    fn kind(&self) -> StageKind {
        StageKind::Correlate
    }

    fn process(&mut self, record: &Record, now_us: i64, out: &mut Vec<OutMessage>) -> Result<(), StageError> {
        // Out of `self` for the record, so the event can be held while `self` is used.
        let mut slot = std::mem::take(&mut self.slot);
        let result = self.process_in(&mut slot, record, now_us, out);
        self.slot = slot;
        result
    }

    fn partition_assigned(&mut self, topic: &str, partition: i32) -> Result<(), StageError> {
        self.state.assigned(topic, partition)
    }

    fn checkpoint(&mut self, owned: Option<&[(String, i32)]>) -> Result<Option<CommitOffsets>, StageError> {
        let durable = self.state.checkpoint(owned);
        metrics::gauge!(names::CORRELATION_ACTIVE_KEYS).set(self.key_count() as f64);
        Ok(durable)
    }

    fn committed(&mut self, offsets: &CommitOffsets) {
        self.state.committed(offsets);
    }
}
