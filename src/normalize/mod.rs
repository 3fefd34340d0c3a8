//! The normalize stage: whatever apps send on `events.raw` becomes one canonical [`Event`],
//! or a dead letter that says why not.
//!
//! Accepted: JSON (generic, OCSF, ECS, Windows event JSON), CEF, syslog (RFC 5424 and
//! 3164, including CEF over syslog) and Avro in our own event schema (Confluent framing).
//! The format is sniffed from the first bytes, so one topic can carry all of them.
//!
//! # Guarantees
//!
//! - Never panics on input: every failure is a [`NormalizeError`] with a stable
//!   `reason_code` and a readable reason (a proptest in `tests/normalize_fuzz.rs` feeds it
//!   arbitrary and mutated bytes).
//! - Bounded: events over `max_event_bytes` are rejected before parsing; `raw` and `attrs`
//!   are capped; dead letters keep at most `dlq_max_original_bytes` of the original.
//! - Stable ids: the producer's id is kept; otherwise the id is a hash of the source
//!   position and bytes, so a replay after a crash yields the same id and downstream
//!   idempotent writes absorb the duplicate.
//! - Times are UTC microseconds; the original text stays in `raw`.

mod cef;
mod fields;
mod json;
mod json_value;
mod syslog;
pub mod time;

use serde::{Deserialize, Serialize};

use crate::bus::{OutMessage, Record};
use crate::error::ErrorClass;
use crate::event::{avro, DeadLetter, Event, EventClass};

/// Default upper bound on one raw event: 1 MiB, the Kafka default message size.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Default cap on the `raw` copy kept in the normalized event. Larger events keep their
/// parsed fields but not a second copy of the text, so the normalized message stays
/// within the broker's message size.
pub const DEFAULT_MAX_RAW_BYTES: usize = 64 * 1024;
/// Default cap on the original bytes kept in a dead letter.
pub const DEFAULT_DLQ_MAX_ORIGINAL_BYTES: usize = 1024 * 1024;
/// Longest producer-supplied id kept as is; longer ids are hashed.
pub const MAX_ID_BYTES: usize = 256;
/// Longest tenant name accepted.
pub const MAX_TENANT_BYTES: usize = 128;

/// The entity fields a partition key can be built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityField {
    User,
    Host,
    SrcIp,
    DstIp,
    Session,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NormalizeConfig {
    /// Largest raw event accepted, in bytes; larger ones are dead-lettered as `oversized`.
    pub max_event_bytes: usize,
    /// Largest raw text copied into the event's `raw` field, in bytes.
    pub max_raw_bytes: usize,
    /// Original bytes kept in a dead letter, at most; the record notes the real size.
    pub dlq_max_original_bytes: usize,
    /// Partition key = tenant + the first of these fields the event has (falls back to the
    /// event id), so per-entity state lives on one partition.
    #[serde(deserialize_with = "crate::config::string_or_list::deserialize")]
    pub partition_key: Vec<EntityField>,
    /// Keep the original text in `raw` (for rules that read raw fields).
    pub keep_raw: bool,
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_raw_bytes: DEFAULT_MAX_RAW_BYTES,
            dlq_max_original_bytes: DEFAULT_DLQ_MAX_ORIGINAL_BYTES,
            partition_key: vec![EntityField::User, EntityField::Host, EntityField::SrcIp],
            keep_raw: true,
        }
    }
}

impl NormalizeConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if !(64..=64 * 1024 * 1024).contains(&self.max_event_bytes) {
            errors.push(format!("normalize.max_event_bytes must be 64 B to 64 MiB, got {}", self.max_event_bytes));
        }
        if self.dlq_max_original_bytes == 0 {
            errors.push("normalize.dlq_max_original_bytes must be above zero".into());
        }
        if self.partition_key.is_empty() {
            errors.push("normalize.partition_key needs at least one field".into());
        }
        errors
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum NormalizeError {
    #[error("empty event")]
    Empty,
    #[error("event is {size} bytes, over the {limit}-byte limit (normalize.max_event_bytes)")]
    Oversized { size: usize, limit: usize },
    #[error("event is not valid UTF-8 (first bad byte at offset {valid_up_to}) and not Avro")]
    InvalidUtf8 { valid_up_to: usize },
    #[error("malformed JSON: {0}")]
    BadJson(String),
    #[error("JSON event must be an object, got {0}")]
    JsonNotObject(&'static str),
    #[error("malformed CEF: {0}")]
    BadCef(String),
    #[error("malformed syslog: {0}")]
    BadSyslog(String),
    #[error("malformed Avro: {0}")]
    BadAvro(String),
    #[error("unrecognized format (expected JSON, CEF, syslog or Avro); starts with `{0}`")]
    UnknownFormat(String),
    #[error("field `{field}` has invalid value `{value}`: {why}")]
    InvalidField { field: &'static str, value: String, why: &'static str },
}

impl NormalizeError {
    pub fn invalid_field(field: &'static str, value: &str, why: &'static str) -> Self {
        Self::InvalidField { field, value: fields::preview(value, 80), why }
    }

    /// Stable machine-readable reason, used in dead letters and metric labels.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Oversized { .. } => "oversized",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::BadJson(_) | Self::JsonNotObject(_) => "bad_json",
            Self::BadCef(_) => "bad_cef",
            Self::BadSyslog(_) => "bad_syslog",
            Self::BadAvro(_) => "bad_avro",
            Self::UnknownFormat(_) => "unknown_format",
            Self::InvalidField { .. } => "invalid_field",
        }
    }

    /// Every normalize error is about the input.
    pub fn class(&self) -> ErrorClass {
        ErrorClass::Input
    }
}

/// What a format parser found besides the fields it set on the event directly.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub format: &'static str,
    pub id: Option<String>,
    pub time_text: Option<String>,
    pub time_us: Option<i64>,
    pub tenant: Option<String>,
    pub class_known: bool,
}

/// Turns raw records into events. Pure and synchronous: no I/O, no clock reads (the caller
/// passes `now_us`).
#[derive(Debug, Clone)]
pub struct Normalizer {
    config: NormalizeConfig,
    default_tenant: String,
}

impl Normalizer {
    pub fn new(config: NormalizeConfig, default_tenant: impl Into<String>) -> Self {
        Self { config, default_tenant: default_tenant.into() }
    }

    pub fn config(&self) -> &NormalizeConfig {
        &self.config
    }

    /// Normalizes one raw record.
    pub fn normalize(&self, record: &Record, now_us: i64) -> Result<Event, NormalizeError> {
        let payload = record.payload.as_slice();
        if payload.len() > self.config.max_event_bytes {
            return Err(NormalizeError::Oversized { size: payload.len(), limit: self.config.max_event_bytes });
        }
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Err(NormalizeError::Empty);
        }
        let mut event = Event::default();
        let parsed = if payload[0] == avro::MAGIC_BYTE {
            event = avro::decode_event(payload).map_err(|e| NormalizeError::BadAvro(e.to_string()))?;
            Parsed {
                format: "avro",
                id: Some(std::mem::take(&mut event.id)),
                time_us: Some(event.time_us),
                tenant: Some(std::mem::take(&mut event.tenant)),
                class_known: true,
                ..Parsed::default()
            }
        } else {
            let text = std::str::from_utf8(payload)
                .map_err(|e| NormalizeError::InvalidUtf8 { valid_up_to: e.valid_up_to() })?;
            let parsed = self.parse_text(text, now_us, &mut event)?;
            if self.config.keep_raw {
                if text.len() <= self.config.max_raw_bytes {
                    event.raw = Some(text.to_string());
                } else {
                    event.tags.push("raw_dropped".into());
                }
            }
            parsed
        };
        self.finish(record, parsed, now_us, event)
    }

    fn parse_text(&self, text: &str, now_us: i64, event: &mut Event) -> Result<Parsed, NormalizeError> {
        let trimmed = text.trim_start_matches('\u{feff}').trim();
        match trimmed.as_bytes().first() {
            Some(b'{') | Some(b'[') => {
                let value = json_value::Json::parse(trimmed).map_err(|e| NormalizeError::BadJson(e.to_string()))?;
                match &value {
                    json_value::Json::Object(map) => json::map_object(map, event),
                    json_value::Json::Array(_) => Err(NormalizeError::JsonNotObject("an array")),
                    _ => Err(NormalizeError::JsonNotObject("a scalar")),
                }
            }
            Some(b'<') => syslog::map(trimmed, now_us, event),
            _ if trimmed.starts_with("CEF:") => cef::map(trimmed, event),
            _ if starts_with_month(trimmed) => syslog::map(trimmed, now_us, event),
            _ => match trimmed.get(..trimmed.len().min(256)).and_then(|head| head.find("CEF:")) {
                Some(start) => cef::map(&trimmed[start..], event),
                None => Err(NormalizeError::UnknownFormat(fields::preview(trimmed, 24))),
            },
        }
    }

    fn finish(&self, record: &Record, parsed: Parsed, now_us: i64, mut event: Event) -> Result<Event, NormalizeError> {
        event.time_us = match (parsed.time_us, &parsed.time_text) {
            (Some(us), _) => us,
            (None, Some(text)) => time::parse_text(text)
                .ok_or_else(|| NormalizeError::invalid_field("time", text, "not a recognized timestamp"))?,
            (None, None) => match record.timestamp_ms.and_then(|ms| time::from_epoch_number(ms as f64)) {
                Some(us) => {
                    event.tags.push("time_from_broker".into());
                    us
                }
                None => {
                    event.tags.push("time_inferred".into());
                    now_us
                }
            },
        };
        event.ingest_time_us = now_us;
        event.id = match parsed.id.map(trimmed) {
            Some(id) if !id.is_empty() && id.len() <= MAX_ID_BYTES => id,
            Some(id) if !id.is_empty() => crate::hex_id("h-", xxhash_rust::xxh3::xxh3_128(id.as_bytes())),
            _ => derived_id(record),
        };
        event.tenant = match parsed.tenant.map(trimmed) {
            Some(t) if !t.is_empty() && t.len() <= MAX_TENANT_BYTES => t,
            Some(t) if !t.is_empty() => {
                return Err(NormalizeError::invalid_field("tenant", &t, "longer than 128 bytes"));
            }
            _ => self.default_tenant.clone(),
        };
        if !parsed.class_known && event.class == EventClass::Other {
            event.class = infer_class(&event);
        }
        event.source.format = parsed.format.to_string();
        event.source.topic = record.topic.to_string();
        event.source.partition = record.partition;
        event.source.offset = record.offset;
        event.partition_key = self.partition_key(&event);
        Ok(event)
    }

    fn partition_key(&self, event: &Event) -> String {
        let entity = self.config.partition_key.iter().find_map(|field| match field {
            EntityField::User => event.user(),
            EntityField::Host => event.host.as_deref(),
            EntityField::SrcIp => event.src_ip(),
            EntityField::DstIp => event.dst_ip(),
            EntityField::Session => event
                .actor
                .as_ref()
                .and_then(|a| a.session_id.as_deref())
                .or_else(|| event.llm.as_ref().and_then(|l| l.session_id.as_deref())),
        });
        let entity = entity.unwrap_or(&event.id);
        let mut key = String::with_capacity(event.tenant.len() + 1 + entity.len());
        key.push_str(&event.tenant);
        key.push('|');
        key.push_str(entity);
        key
    }
}

/// `text` without surrounding whitespace, in its own buffer when it has none (ids and
/// tenants almost never do; copying them cost two allocations an event).
fn trimmed(text: String) -> String {
    if text.trim().len() == text.len() {
        text
    } else {
        text.trim().to_string()
    }
}

fn starts_with_month(text: &str) -> bool {
    const MONTHS: [&str; 12] = ["Jan ", "Feb ", "Mar ", "Apr ", "May ", "Jun ", "Jul ", "Aug ", "Sep ", "Oct ", "Nov ", "Dec "];
    MONTHS.iter().any(|m| text.starts_with(m))
}

/// Id for events the producer did not name: the same record always gets the same id.
fn derived_id(record: &Record) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(record.topic.as_bytes());
    hasher.update(&record.partition.to_le_bytes());
    hasher.update(&record.offset.to_le_bytes());
    hasher.update(&record.payload);
    crate::hex_id("", hasher.digest128())
}

fn infer_class(event: &Event) -> EventClass {
    if event.llm.is_some() {
        EventClass::LlmActivity
    } else if event.dns.is_some() {
        EventClass::DnsActivity
    } else if event.http.as_ref().is_some_and(|h| h.url.is_some() || h.method.is_some()) {
        EventClass::HttpActivity
    } else if event.process.as_ref().is_some_and(|p| p.command_line.is_some() || p.path.is_some()) {
        EventClass::ProcessActivity
    } else if event.file.is_some() {
        EventClass::FileActivity
    } else if event.user().is_some() && event.outcome.is_some() {
        EventClass::Authentication
    } else if event.src.is_some() || event.dst.is_some() {
        EventClass::NetworkActivity
    } else {
        EventClass::Other
    }
}

/// Builds the dead letter for a record a stage rejected.
pub fn dead_letter(
    stage: &str,
    record: &Record,
    reason_code: &str,
    reason: String,
    max_original_bytes: usize,
    now_us: i64,
) -> DeadLetter {
    let keep = record.payload.len().min(max_original_bytes);
    DeadLetter {
        stage: stage.to_string(),
        reason_code: reason_code.to_string(),
        reason,
        source_topic: record.topic.to_string(),
        source_partition: record.partition,
        source_offset: record.offset,
        source_key: record.key.clone(),
        time_us: now_us,
        original: record.payload[..keep].to_vec(),
        original_size: record.payload.len() as i64,
        truncated: keep < record.payload.len(),
    }
}

/// The stage wrapper: one output per input, to the normalized topic or the dead-letter topic.
pub struct NormalizeStage {
    normalizer: Normalizer,
    output_topic: crate::bus::Topic,
    dlq_topic: crate::bus::Topic,
}

impl NormalizeStage {
    pub fn new(normalizer: Normalizer, output_topic: String, dlq_topic: String) -> Self {
        Self { normalizer, output_topic: output_topic.into(), dlq_topic: dlq_topic.into() }
    }
}

impl crate::stage::Stage for NormalizeStage {
    fn kind(&self) -> crate::stage::StageKind {
        crate::stage::StageKind::Normalize
    }

    fn process(&mut self, record: &Record, now_us: i64, out: &mut Vec<OutMessage>) -> Result<(), crate::stage::StageError> {
        match self.normalizer.normalize(record, now_us) {
            Ok(event) => {
                let payload = avro::encode_event(&event).map_err(|e| crate::stage::StageError::Internal(e.to_string()))?;
                out.push(OutMessage { topic: self.output_topic.clone(), key: Some(event.partition_key.into_bytes()), payload });
            }
            Err(error) => {
                let dead = dead_letter(
                    "normalize",
                    record,
                    error.reason_code(),
                    error.to_string(),
                    self.normalizer.config.dlq_max_original_bytes,
                    now_us,
                );
                let payload = avro::encode_dead_letter(&dead).map_err(|e| crate::stage::StageError::Internal(e.to_string()))?;
                out.push(OutMessage { topic: self.dlq_topic.clone(), key: record.key.clone(), payload });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
