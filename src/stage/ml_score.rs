//! The ml-score stage: every event on `events.correlated` leaves for `events.scored` with a
//! risk score (0–100), its parts and the features that drove it.
//!
//! Parts, each 0–100, fused into one risk ("noisy or", `ml::fuse`):
//! - `rules`: what quick-scan and correlate found (highest level; correlation signals);
//! - `baseline`: how far the event is from its entity's own normal (hours, networks, peers,
//!   volume), from per-entity baselines this stage keeps, bounded and checkpointed like
//!   correlation windows;
//! - `similarity`: closeness of the command line, URL or prompt to known-threat exemplars;
//! - `anomaly` and `classifier`: the trained model (hot-reloaded), when one is configured.
//!
//! A replayed record (offset at or below the state's applied offset) does not teach the
//! baseline twice and carries the score it got the first time. Scores are kept for that
//! only with a checkpoint store that keeps state: with `memory` a (re)assigned partition
//! starts empty, so no replay meets a state that saw the record.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checkpoint::CheckpointStore;
use super::partitioned::PartitionedState;
use super::{Stage, StageError, StageKind};
use crate::bus::{CommitOffsets, OutMessage, Record};
use crate::event::{avro, Event, Score};
use crate::ml::baseline::{Baseline, BaselineState};
use crate::ml::features::event_features;
use crate::ml::handle::ModelHandle;
use crate::ml::similarity::{similarity_risk, ThreatIndex, TextKind};
use crate::ml::fuse;
use crate::telemetry::names;

/// Features named on a score.
const TOP_FEATURES: usize = 5;

/// `[ml]`: the model, exemplars and baseline state of the ml-score stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlConfig {
    /// Model file from `threatpipe train`; hot-reloaded. Absent: scores use rules,
    /// baselines and similarity only.
    pub model: PathBuf,
    /// Known-threat exemplar files or directories (`.toml`).
    pub exemplars: Vec<PathBuf>,
    /// How often the model file is checked for changes; `0s` turns hot reload off.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// `memory` or a Redis URL. Unset: `memory` on the in-process bus, Redis on Kafka.
    pub checkpoint: Option<String>,
    pub checkpoint_prefix: String,
    /// Entity baselines per instance; the least recently seen are evicted beyond it.
    pub max_entities: usize,
    /// Search exemplars on this Qdrant server (gRPC URL, e.g. `http://qdrant:6334`) instead
    /// of the embedded index. Unreachable at start: the embedded index is used (logged).
    pub qdrant: Option<String>,
    pub qdrant_collection: String,
}

impl Default for MlConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from("models/model.json"),
            exemplars: vec![PathBuf::from("pipelines/exemplars")],
            reload_interval: Duration::from_secs(2),
            checkpoint: None,
            checkpoint_prefix: "threatpipe:ml".into(),
            max_entities: 1_000_000,
            qdrant: None,
            qdrant_collection: "threatpipe_exemplars".into(),
        }
    }
}

impl MlConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for path in &self.exemplars {
            if !path.exists() {
                errors.push(format!("ml.exemplars: {} does not exist (paths are relative to the working directory)", path.display()));
            }
        }
        if let Some(spec) = &self.checkpoint {
            if let Err(e) = CheckpointStore::open(spec, &self.checkpoint_prefix) {
                errors.push(format!("ml.checkpoint: {e} (use `memory` or redis://host:port)"));
            }
        }
        if self.max_entities == 0 {
            errors.push("ml.max_entities must be at least 1".into());
        }
        errors
    }
}

/// The `rules` part: the strongest finding already on the event.
pub fn rules_risk(event: &Event) -> f64 {
    let level = |l: &str| match l {
        "critical" => 95.0,
        "high" => 75.0,
        "medium" => 50.0,
        "low" => 25.0,
        _ => 0.0,
    };
    let matches = event.matches.iter().map(|m| level(&m.level)).fold(0.0, f64::max);
    let correlations = event.correlations.iter().map(|c| level(&c.level)).fold(0.0, f64::max);
    matches.max(correlations)
}

pub struct MlScoreStage {
    model: ModelHandle,
    exemplars: Arc<dyn ThreatIndex>,
    /// Nearest exemplars of recent texts (the exemplars do not change while the stage runs).
    nearest: std::cell::RefCell<crate::ml::similarity::NearestCache>,
    max_entities: usize,
    state: PartitionedState<BaselineState>,
    output_topic: crate::bus::Topic,
    dlq_topic: crate::bus::Topic,
    /// Where events are decoded, record after record, without their `attrs`: nothing here
    /// reads them (features come from the event's fields and `features`).
    slot: avro::EventSlot,
    /// `ML_RISK`, registered once (a lookup in the registry per event cost ~400 instructions).
    risk: metrics::Histogram,
    /// The last event's score, written over for the next ([`Self::score_into`]).
    spare_score: Score,
    /// Scratch space of [`Self::score_into`].
    reasons: std::cell::RefCell<Vec<(f64, String)>>,
}

impl MlScoreStage {
    pub fn new(model: ModelHandle, exemplars: Arc<dyn ThreatIndex>, max_entities: usize, store: CheckpointStore, output_topic: String, dlq_topic: String) -> Self {
        let nearest = std::cell::RefCell::new(crate::ml::similarity::NearestCache::new(crate::ml::similarity::NearestCache::DEFAULT_CAPACITY));
        Self { model, exemplars, nearest, max_entities, state: PartitionedState::new("ml-score", store), output_topic: output_topic.into(), dlq_topic: dlq_topic.into(), slot: avro::EventSlot::without_attrs(), risk: metrics::histogram!(names::ML_RISK), spare_score: Score::default(), reasons: Default::default() }
    }

    /// The score of `event` given its baseline deviations.
    pub fn score(&self, event: &Event, deviations: crate::ml::baseline::Deviations) -> Score {
        let mut score = Score::default();
        self.score_into(event, deviations, &mut score, &mut Vec::new());
        score
    }

    /// [`Self::score`], written over `score` (an earlier event's, or a default one): its part
    /// names, model version and explanation list are rewritten in place. The stage scores
    /// every event; building a fresh score (a hash map, three to five key strings, the
    /// version string, two vectors) was ~8 allocations and three map inserts an event.
    /// `reasons` is scratch space, emptied here.
    fn score_into(&self, event: &Event, deviations: crate::ml::baseline::Deviations, score: &mut Score, reasons: &mut Vec<(f64, String)>) {
        // (strength, feature) candidates for the explanation.
        reasons.clear();
        let parts = &mut score.parts;
        let rules = rules_risk(event);
        set_part(parts, "rules", Some(rules));
        for m in event.matches.iter().take(3) {
            reasons.push((rules, format!("rule:{}", m.rule_id)));
        }
        for c in event.correlations.iter().take(3) {
            reasons.push((rules, format!("correlation:{}", c.rule_id)));
        }
        let baseline = Baseline::risk(&deviations);
        set_part(parts, "baseline", Some(baseline));
        for (name, value) in deviations.iter() {
            let flag = matches!(name, "baseline.unusual_hour" | "baseline.new_place" | "baseline.new_public_place" | "baseline.new_peer") && value > 0.0;
            let ratio = name.ends_with("_ratio") && value > 1.5;
            if flag || ratio {
                reasons.push((baseline, name.to_string()));
            }
        }
        let texts = [
            (TextKind::Command, event.process.as_ref().and_then(|p| p.command_line.as_deref())),
            (TextKind::Url, event.http.as_ref().and_then(|h| h.url.as_deref())),
            (TextKind::Prompt, event.llm.as_ref().and_then(|l| l.prompt.as_deref())),
        ];
        let mut similarity = 0.0;
        if !self.exemplars.is_empty() {
            for (kind, text) in texts {
                let Some(text) = text else { continue };
                if let Some(nearest) = self.nearest.borrow_mut().nearest(self.exemplars.as_ref(), kind, text) {
                    let risk = similarity_risk(nearest.similarity);
                    if risk > 0.0 {
                        reasons.push((risk, format!("similar:{}", nearest.id)));
                    }
                    similarity = f64::max(similarity, risk);
                }
            }
        }
        set_part(parts, "similarity", Some(similarity));
        let model = self.model.current();
        let (mut anomaly, mut classifier) = (None, None);
        if let Some(model) = &model {
            let mut features = event_features(event);
            features.extend(deviations.features());
            let scored = model.score(&features);
            for (slot, part) in [(&mut anomaly, &scored.anomaly), (&mut classifier, &scored.classifier)] {
                if let Some(part) = part {
                    *slot = Some(part.risk);
                    reasons.extend(part.top_features.iter().take(3).map(|(f, _)| (part.risk, f.clone())));
                }
            }
        }
        set_part(parts, "anomaly", anomaly);
        set_part(parts, "classifier", classifier);
        reasons.sort_by(|a, b| b.0.total_cmp(&a.0));
        score.top_features.clear();
        for (strength, name) in reasons.drain(..) {
            if strength > 0.0 && !score.top_features.contains(&name) && score.top_features.len() < TOP_FEATURES {
                score.top_features.push(name);
            }
        }
        score.risk = fuse(score.parts.values().copied());
        score.model_version.clear();
        match &model {
            Some(model) => score.model_version.push_str(model.version()),
            None => score.model_version.push_str("none"),
        }
    }

    fn enforce_entity_budget(&mut self, topic: &str, partition: i32) {
        let evicted = self.state.enforce_key_budget(topic, partition, self.max_entities, BaselineState::evict_oldest);
        if evicted > 0 {
            metrics::counter!(names::ML_EVICTED_ENTITIES).increment(evicted as u64);
        }
    }
}

/// Sets part `name` of a score to `value`, or removes it (`None`), keeping the key string
/// already in the map when there is one.
fn set_part(parts: &mut crate::event::FieldMap<f64>, name: &str, value: Option<f64>) {
    match (parts.get_mut(name), value) {
        (Some(slot), Some(value)) => *slot = value,
        (None, Some(value)) => {
            parts.insert(name.to_string(), value);
        }
        (Some(_), None) => {
            parts.remove(name);
        }
        (None, None) => {}
    }
}

/// The entity an event's baseline belongs to: its partition key (tenant + user, host or
/// source address), else tenant + host.
fn entity_of(event: &Event) -> std::borrow::Cow<'_, str> {
    if !event.partition_key.is_empty() {
        return std::borrow::Cow::Borrowed(&event.partition_key);
    }
    std::borrow::Cow::Owned(format!("{}|{}", event.tenant, event.host.as_deref().unwrap_or("-")))
}

impl MlScoreStage {
    fn process_in(&mut self, slot: &mut avro::EventSlot, record: &Record, now_us: i64, out: &mut Vec<OutMessage>) -> Result<(), StageError> {
        let Some((event, detections_at)) = super::decode_for_detection_or_dead_letter("ml-score", record, now_us, &self.dlq_topic, slot, out)? else { return Ok(()) };
        let entity = entity_of(event);
        let state = self.state.get_mut(&record.topic, record.partition);
        let replayed = state.applied_offset.is_some_and(|applied| record.offset <= applied);
        // The score is written over the last event's (its strings and map kept).
        let mut score = std::mem::take(&mut self.spare_score);
        match (replayed, replayed.then(|| state.recalled_score(record.offset)).flatten()) {
            (true, Some(recalled)) => score = recalled,
            (true, None) => {
                // Committed long ago and replayed anyway (a reset): judge without learning.
                let deviations = state.deviations(&entity, event);
                self.score_into(event, deviations, &mut score, &mut self.reasons.borrow_mut());
            }
            (false, _) => {
                // Findings made by correlate describe other events; they teach no baseline.
                let deviations = if event.class == crate::event::EventClass::Finding {
                    state.deviations(&entity, event)
                } else {
                    state.observe(&entity, event)
                };
                state.applied_offset = Some(record.offset);
                self.score_into(event, deviations, &mut score, &mut self.reasons.borrow_mut());
                // A copy of every score until committed, for replays: only where a replay
                // can meet this state (a store that keeps it).
                if self.state.is_durable() {
                    self.state.get_mut(&record.topic, record.partition).remember_score(record.offset, &score);
                }
            }
        }
        drop(entity);
        if !replayed {
            self.enforce_entity_budget(&record.topic, record.partition);
        }
        self.risk.record(score.risk);
        event.score = Some(score);
        let encoded = avro::encode_event_detections(&record.payload, detections_at, event);
        self.spare_score = event.score.take().unwrap_or_default();
        let payload = encoded.map_err(|e| StageError::Internal(e.to_string()))?;
        out.push(OutMessage { topic: self.output_topic.clone(), key: record.key.clone(), payload });
        Ok(())
    }
}

impl Stage for MlScoreStage {
    fn kind(&self) -> StageKind {
        StageKind::MlScore
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
        metrics::gauge!(names::ML_ENTITIES).set(self.state.key_count() as f64);
        Ok(durable)
    }

    fn committed(&mut self, offsets: &CommitOffsets) {
        self.state.committed(offsets);
    }
}
