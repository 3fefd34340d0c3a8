//! Avro encoding of internal topics with Confluent framing.
//!
//! Every internal message is `0x00` (magic) + a 4-byte big-endian schema id + one Avro
//! datum, the layout Confluent's serializers write, so standard tools (kcat, Kafka UI,
//! ksqlDB) can read our topics once the schemas are registered under these ids.
//!
//! There is no schema registry on the hot path: the schemas are compiled in from
//! `schemas/avro/*.avsc`, each with a fixed id. A reader accepts every id in
//! [`KNOWN_SCHEMAS`] and resolves the writer's schema onto the current reader schema, so a
//! consumer on version N reads what a producer on version N-1 wrote.
//!
//! # Compatibility
//!
//! A new version of a schema must be able to read every older version of it (backward
//! compatibility). `tests::every_schema_version_is_readable_by_the_current_one` enforces this
//! with [`check_backward_compatible`]; a change that breaks it fails the build's tests.
//!
//! # Errors
//!
//! Decoding is fed bytes from outside, so it never panics: short frames, a bad magic byte,
//! unknown ids and malformed datums come back as [`AvroError`]. Allocation while decoding is
//! capped by [`MAX_AVRO_ALLOCATION_BYTES`] so a forged length prefix cannot exhaust memory.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::headers::HeaderBuilder;
use apache_avro::{GenericSingleObjectReader, Schema};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::avro_event::Attrs;
use super::{Alert, DeadLetter, Event};
use crate::FastMap;

/// Confluent wire-format magic byte.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte + 4-byte schema id.
pub const FRAME_HEADER_BYTES: usize = 5;
/// Upper bound on any single allocation the Avro decoder makes for one datum. Events are
/// bounded at normalize (1 MiB by default); 16 MiB leaves room for larger configured limits.
pub const MAX_AVRO_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// Which record a schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaKind {
    Event,
    Alert,
    DeadLetter,
}

impl SchemaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Alert => "alert",
            Self::DeadLetter => "dead letter",
        }
    }
}

/// One compiled-in schema version.
#[derive(Debug, Clone, Copy)]
pub struct KnownSchema {
    /// The Confluent schema id written in every frame.
    pub id: u32,
    pub kind: SchemaKind,
    pub version: u32,
    /// File under `schemas/avro/`.
    pub file: &'static str,
    pub json: &'static str,
}

/// Every schema version we can read. Ids are fixed forever once released: kind * 100 +
/// version, so they never collide when a version is added.
pub const KNOWN_SCHEMAS: &[KnownSchema] = &[
    KnownSchema {
        id: 101,
        kind: SchemaKind::Event,
        version: 1,
        file: "event.v1.avsc",
        json: include_str!("../../schemas/avro/event.v1.avsc"),
    },
    KnownSchema {
        id: 201,
        kind: SchemaKind::Alert,
        version: 1,
        file: "alert.v1.avsc",
        json: include_str!("../../schemas/avro/alert.v1.avsc"),
    },
    KnownSchema {
        id: 301,
        kind: SchemaKind::DeadLetter,
        version: 1,
        file: "dlq.v1.avsc",
        json: include_str!("../../schemas/avro/dlq.v1.avsc"),
    },
];

#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    #[error("avro frame is {0} bytes, shorter than the 5-byte Confluent header")]
    TooShort(usize),
    #[error("avro frame starts with byte {0:#04x}, expected the Confluent magic byte 0x00")]
    BadMagic(u8),
    #[error("unknown avro schema id {0} (known: 101 event, 201 alert, 301 dead letter)")]
    UnknownSchema(u32),
    #[error("avro schema id {id} is a {found} schema, expected a {expected} schema")]
    WrongKind { id: u32, expected: &'static str, found: &'static str },
    #[error("malformed avro {kind} datum (schema id {id}): {detail}")]
    Decode { kind: &'static str, id: u32, detail: String },
    #[error("cannot encode {kind} as avro: {detail}")]
    Encode { kind: &'static str, detail: String },
}

struct Registry {
    by_id: FastMap<u32, (KnownSchema, Schema)>,
    /// A datum reader per schema id with the schema's named types resolved once:
    /// `apache_avro::from_avro_datum` resolves them on every call, which was most of the
    /// decode time of an event (39 µs of ~45 for a 1.7 KB evtx event).
    readers: FastMap<u32, GenericSingleObjectReader>,
    /// Direct decoding plans (no `Value` tree; see `avro_plan`) for data written with the
    /// current schema of its kind, the common case.
    plans: FastMap<u32, super::avro_plan::Plan>,
    current: FastMap<SchemaKind, u32>,
    /// The current event schema's id when its plan has the shape `avro_event` is written
    /// for (always, unless the schema changed and that module did not).
    event_fast_path: Option<u32>,
}

/// The Confluent wire-format header (magic byte + big-endian schema id), which is exactly
/// the "single object" header apache-avro's reader checks before a datum.
struct ConfluentHeader(u32);

impl HeaderBuilder for ConfluentHeader {
    fn build_header(&self) -> Vec<u8> {
        frame(self.0, FRAME_HEADER_BYTES)
    }
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    // Bound decoder allocations before the first decode. It can only be set once per
    // process; a second call returns the value already set, which is fine.
    apache_avro::max_allocation_bytes(MAX_AVRO_ALLOCATION_BYTES);
    let mut by_id = FastMap::default();
    let mut readers = FastMap::default();
    let mut current: HashMap<SchemaKind, (u32, u32)> = HashMap::new();
    for known in KNOWN_SCHEMAS {
        // The schemas are compiled into the binary and parsed by a unit test, so a parse
        // failure here is a build defect, never an input error.
        let schema = Schema::parse_str(known.json)
            .unwrap_or_else(|e| panic!("compiled-in schema {} is invalid: {e}", known.file));
        let reader = GenericSingleObjectReader::new_with_header_builder(schema.clone(), ConfluentHeader(known.id))
            .unwrap_or_else(|e| panic!("compiled-in schema {} does not resolve: {e}", known.file));
        readers.insert(known.id, reader);
        by_id.insert(known.id, (*known, schema));
        let entry = current.entry(known.kind).or_insert((known.id, known.version));
        if known.version > entry.1 {
            *entry = (known.id, known.version);
        }
    }
    let current: FastMap<SchemaKind, u32> = current.into_iter().map(|(k, (id, _))| (k, id)).collect();
    let plans: FastMap<u32, super::avro_plan::Plan> = current.values().filter_map(|id| Some((*id, super::avro_plan::Plan::new(&by_id[id].1)?))).collect();
    let event_fast_path: Option<u32> = current
        .get(&SchemaKind::Event)
        .copied()
        .filter(|id| plans.get(id).is_some_and(|plan| super::avro_event::shape(plan) == super::avro_event::SHAPE));
    Registry { by_id, readers, plans, current, event_fast_path }
});

fn current(kind: SchemaKind) -> (u32, &'static Schema) {
    let registry = &*REGISTRY;
    // Every kind has at least one entry in KNOWN_SCHEMAS (checked by a unit test).
    let id = registry.current[&kind];
    (id, &registry.by_id[&id].1)
}

/// The current (newest) schema id for a kind.
pub fn current_schema_id(kind: SchemaKind) -> u32 {
    current(kind).0
}

/// Encodes `value` with the current schema of `kind`, framed.
pub fn encode<T: Serialize>(kind: SchemaKind, value: &T) -> Result<Vec<u8>, AvroError> {
    let (id, schema) = current(kind);
    let mut out = frame(id, 256);
    if let Some(plan) = REGISTRY.plans.get(&id) {
        // No fallback to apache-avro on error: its writer puts struct fields where they are
        // in the Rust type, not where the schema has them (tested below), so a type that
        // disagrees with its schema must fail here, loudly, rather than be written wrong.
        super::avro_plan::encode(plan, value, &mut out).map_err(|e| AvroError::Encode { kind: kind.as_str(), detail: e.to_string() })?;
        return Ok(out);
    }
    apache_avro::write_avro_datum_ref(schema, value, &mut out)
        .map_err(|e| AvroError::Encode { kind: kind.as_str(), detail: e.to_string() })?;
    Ok(out)
}

/// A buffer holding the Confluent header of schema `id`, with room for `capacity` bytes.
fn frame(id: u32, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// Reads the schema id of a framed message without decoding it.
pub fn frame_schema_id(bytes: &[u8]) -> Result<u32, AvroError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(AvroError::TooShort(bytes.len()));
    }
    if bytes[0] != MAGIC_BYTE {
        return Err(AvroError::BadMagic(bytes[0]));
    }
    Ok(u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]))
}

/// Decodes a framed message written with any known version of `kind`'s schema into the
/// current version's Rust type.
pub fn decode<T: DeserializeOwned>(kind: SchemaKind, bytes: &[u8]) -> Result<T, AvroError> {
    let id = frame_schema_id(bytes)?;
    let registry = &*REGISTRY;
    let (known, _) = registry.by_id.get(&id).ok_or(AvroError::UnknownSchema(id))?;
    if known.kind != kind {
        return Err(AvroError::WrongKind { id, expected: kind.as_str(), found: known.kind.as_str() });
    }
    if let Some(plan) = registry.plans.get(&id) {
        let decode_err = |detail: String| AvroError::Decode { kind: kind.as_str(), id, detail };
        let mut body = &bytes[FRAME_HEADER_BYTES..];
        let value = super::avro_plan::decode(plan, &mut body).map_err(|e| decode_err(e.to_string()))?;
        whole_datum_read(body).map_err(decode_err)?;
        return Ok(value);
    }
    decode_resolving(kind, id, bytes)
}

/// The generic path: apache-avro reads a `Value` with the writer's schema, resolves it onto
/// the current schema when they differ, and our type is deserialized from that.
fn decode_resolving<T: DeserializeOwned>(kind: SchemaKind, id: u32, bytes: &[u8]) -> Result<T, AvroError> {
    let registry = &*REGISTRY;
    let (current_id, reader) = current(kind);
    let decode_err = |detail: String| AvroError::Decode { kind: kind.as_str(), id, detail };
    let mut body = bytes;
    let value = registry.readers[&id].read_value(&mut body).map_err(|e| decode_err(e.to_string()))?;
    let value = if current_id == id { value } else { value.resolve(reader).map_err(|e| decode_err(e.to_string()))? };
    whole_datum_read(body).map_err(decode_err)?;
    apache_avro::from_value(&value).map_err(|e| decode_err(e.to_string()))
}

/// A frame holds exactly one datum: what is left after it is an error.
fn whole_datum_read(rest: &[u8]) -> Result<(), String> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(format!("{} trailing bytes after the datum", rest.len()))
    }
}

pub fn encode_event(event: &Event) -> Result<Vec<u8>, AvroError> {
    let registry = &*REGISTRY;
    if let Some(id) = registry.event_fast_path {
        if let Some(plan) = registry.plans.get(&id) {
            let mut out = frame(id, 512);
            super::avro_event::encode(plan, event, &mut out).map_err(|e| AvroError::Encode { kind: SchemaKind::Event.as_str(), detail: e.to_string() })?;
            return Ok(out);
        }
    }
    encode(SchemaKind::Event, event)
}

/// The first of the event fields detection stages rewrite: `raw` (which quick-scan drops
/// unless `scan.forward_raw`), then those they fill in (`matches`, `correlations`, `score`).
/// They are the schema's last fields, so those stages can leave the rest as it came.
const DETECTION_FIELDS_FROM: &str = "raw";

/// Decodes an event for a stage that will change only `raw` and its detection fields, with where
/// they begin in `bytes` (see [`encode_event_detections`]; `None` for a frame of an older
/// schema version). A stage decodes into its [`EventSlot`] instead.
pub fn decode_event_for_detection(bytes: &[u8]) -> Result<(Box<Event>, Option<DetectionsAt>), AvroError> {
    let mut slot = EventSlot::default();
    let (_, at) = slot.decode_for_detection(bytes)?;
    Ok((slot.event.unwrap_or_default(), at))
}

/// [`decode_event_for_detection`] for a frame of schema `id` the hand-written decoder does
/// not read.
fn decode_event_for_detection_generic(id: u32, bytes: &[u8]) -> Result<(Event, Option<DetectionsAt>), AvroError> {
    let (current_id, _) = current(SchemaKind::Event);
    let plan = REGISTRY.plans.get(&id).filter(|_| id == current_id);
    let Some(plan) = plan else { return Ok((decode_event(bytes)?, None)) };
    let decode_err = |detail: String| AvroError::Decode { kind: SchemaKind::Event.as_str(), id, detail };
    let mut body = &bytes[FRAME_HEADER_BYTES..];
    let (event, offset) = super::avro_plan::decode_marking(plan, &mut body, DETECTION_FIELDS_FROM).map_err(|e| decode_err(e.to_string()))?;
    whole_datum_read(body).map_err(decode_err)?;
    Ok((event, offset.map(|o| DetectionsAt(FRAME_HEADER_BYTES + o, Attrs::Read))))
}

/// Where an event frame's rewritable fields (`raw`, then the detection fields) begin: the
/// length of the frame before them; and whether the event was decoded with its `attrs`
/// (which [`encode_event_detections`] copies from the frame either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectionsAt(usize, Attrs);

/// Where a stage decodes its events for detection, record after record: the event of the
/// last record, whose strings the next one is written over (see
/// `avro_event::decode_into`), and strings kept for fields a later record has.
#[derive(Default)]
pub struct EventSlot {
    event: Option<Box<Event>>,
    spare: Vec<String>,
    attrs: Attrs,
}

impl EventSlot {
    /// A slot for a stage that reads no `attrs` (ML score): frames of the current schema
    /// are decoded without them (stepped over, the event's `attrs` empty), which saved
    /// ~15% of the decoding; they still leave in the stage's output, copied with the rest
    /// of the frame by [`encode_event_detections`].
    pub fn without_attrs() -> Self {
        Self { attrs: Attrs::StepOver, ..Self::default() }
    }

    /// What [`decode_event_for_detection`] gives, in this slot. Valid until the next call.
    pub fn decode_for_detection(&mut self, bytes: &[u8]) -> Result<(&mut Event, Option<DetectionsAt>), AvroError> {
        let id = frame_schema_id(bytes)?;
        let event = self.event.get_or_insert_with(Box::default);
        let (spare, attrs) = (&mut self.spare, self.attrs);
        if let Some(decoded) = on_event_fast_path(id, bytes, |plan, input| super::avro_event::decode_into(plan, input, event, spare, attrs)) {
            let at = decoded?;
            return Ok((event, Some(DetectionsAt(FRAME_HEADER_BYTES + at, attrs))));
        }
        let (decoded, at) = decode_event_for_detection_generic(id, bytes)?;
        **event = decoded;
        Ok((event, at))
    }
}

/// [`EventSlot`] for the alert stage's narrow decoding ([`decode_event_summary`]): the
/// fields it does not read stay at their defaults, so it is a type of its own.
#[derive(Default)]
pub struct SummarySlot {
    event: Option<Box<Event>>,
    spare: Vec<String>,
}

impl SummarySlot {
    /// What [`decode_event_summary`] gives, in this slot; for a frame it does not read,
    /// what `fallback` makes of the frame (an event whose other fields are at their defaults).
    pub fn decode(&mut self, bytes: &[u8], fallback: impl FnOnce(&[u8]) -> Result<Event, AvroError>) -> Result<&Event, AvroError> {
        let event = self.event.get_or_insert_with(Box::default);
        match decode_event_summary_into(bytes, event, &mut self.spare) {
            Some(result) => result?,
            None => **event = fallback(bytes)?,
        }
        Ok(event)
    }
}

/// Encodes `event`, which was decoded from the frame `input` (by
/// [`decode_event_for_detection`], which gave `at`) and has changed since in `raw` and its
/// detection fields only (`matches`, `correlations`, `score`): the bytes of `input` before
/// them are copied and only they are written. Encoding the whole event again was ~15% of the
/// pipeline's instructions, and three of the five stages (quick-scan, correlate, ML score)
/// change nothing else. Without `at`, the event is encoded whole. In debug builds the
/// result is checked to decode to `event`.
pub fn encode_event_detections(input: &[u8], at: Option<DetectionsAt>, event: &Event) -> Result<Vec<u8>, AvroError> {
    let (id, _) = current(SchemaKind::Event);
    let plan = REGISTRY.plans.get(&id);
    let (Some(plan), Some(DetectionsAt(at, attrs))) = (plan, at) else { return encode_event(event) };
    let encode_err = |e: super::avro_plan::PlanError| AvroError::Encode { kind: SchemaKind::Event.as_str(), detail: e.to_string() };
    let prefix = input.get(..at).ok_or_else(|| AvroError::Encode { kind: SchemaKind::Event.as_str(), detail: format!("detections at {at} of a {}-byte frame", input.len()) })?;
    let mut out = Vec::with_capacity(input.len() + 256);
    out.extend_from_slice(prefix);
    if REGISTRY.event_fast_path == Some(id) {
        super::avro_event::encode_detections(plan, event, &mut out).map_err(encode_err)?;
    } else {
        use serde::ser::SerializeStruct;
        let mut fields = super::avro_plan::suffix_writer(plan, DETECTION_FIELDS_FROM, &mut out).map_err(encode_err)?;
        fields.serialize_field("raw", &event.raw).map_err(encode_err)?;
        fields.serialize_field("matches", &event.matches).map_err(encode_err)?;
        fields.serialize_field("correlations", &event.correlations).map_err(encode_err)?;
        fields.serialize_field("score", &event.score).map_err(encode_err)?;
        fields.end().map_err(encode_err)?;
    }
    // (An event decoded without its attrs is compared without them.)
    let written = || decode_event(&out).ok().map(|mut written| {
        if attrs == Attrs::StepOver {
            written.attrs.clear();
        }
        written
    });
    debug_assert_eq!(written().as_ref(), Some(event), "only raw and the detection fields may differ from the input");
    Ok(out)
}

pub fn decode_event(bytes: &[u8]) -> Result<Event, AvroError> {
    if let Some(decoded) = decode_event_fast(frame_schema_id(bytes)?, bytes) {
        return decoded.map(|(event, _)| *event);
    }
    decode(SchemaKind::Event, bytes)
}

/// What the alert stage reads of an event (id, class, times, tenant, partition key,
/// message, detection fields; the rest left at defaults), by the hand-written decoder;
/// `None` when the frame is not of the schema it is written for (decode a narrow type
/// through [`decode`] then).
pub fn decode_event_summary(bytes: &[u8]) -> Option<Result<Box<Event>, AvroError>> {
    let mut event = Box::<Event>::default();
    decode_event_summary_into(bytes, &mut event, &mut Vec::new()).map(|decoded| decoded.map(|()| event))
}

/// [`decode_event_summary`] into `event` (see [`SummarySlot`]); strings it no longer needs
/// go to `spare`, and come back from it.
fn decode_event_summary_into(bytes: &[u8], event: &mut Event, spare: &mut Vec<String>) -> Option<Result<(), AvroError>> {
    let id = match frame_schema_id(bytes) {
        Ok(id) => id,
        Err(e) => return Some(Err(e)),
    };
    on_event_fast_path(id, bytes, |plan, input| super::avro_event::decode_summary_into(plan, input, event, spare))
}

/// The hand-written decoder (`avro_event`) for a frame of the schema it is written for,
/// with where the detection fields begin in the datum; `None`: take the generic path.
fn decode_event_fast(id: u32, bytes: &[u8]) -> Option<Result<(Box<Event>, usize), AvroError>> {
    on_event_fast_path(id, bytes, super::avro_event::decode)
}

/// `decode` (one of `avro_event`'s) over the datum of the frame `bytes` of schema `id`, when
/// that is the schema the hand-written code is for; a datum must fill its frame.
fn on_event_fast_path<T>(
    id: u32,
    bytes: &[u8],
    decode: impl FnOnce(&super::avro_plan::Plan, &mut &[u8]) -> Result<T, super::avro_plan::PlanError>,
) -> Option<Result<T, AvroError>> {
    let registry = &*REGISTRY;
    if registry.event_fast_path != Some(id) {
        return None;
    }
    let plan = registry.plans.get(&id)?;
    let decode_err = |detail: String| AvroError::Decode { kind: SchemaKind::Event.as_str(), id, detail };
    let mut body = &bytes[FRAME_HEADER_BYTES..];
    Some(decode(plan, &mut body).map_err(|e| decode_err(e.to_string())).and_then(|decoded| whole_datum_read(body).map_err(decode_err).map(|()| decoded)))
}

pub fn encode_alert(alert: &Alert) -> Result<Vec<u8>, AvroError> {
    encode(SchemaKind::Alert, alert)
}

pub fn decode_alert(bytes: &[u8]) -> Result<Alert, AvroError> {
    decode(SchemaKind::Alert, bytes)
}

pub fn encode_dead_letter(dead: &DeadLetter) -> Result<Vec<u8>, AvroError> {
    encode(SchemaKind::DeadLetter, dead)
}

pub fn decode_dead_letter(bytes: &[u8]) -> Result<DeadLetter, AvroError> {
    decode(SchemaKind::DeadLetter, bytes)
}

/// Whether data written with `old` can be read with `new` (Avro schema resolution rules:
/// new fields need defaults, types may only widen, enum symbols may only be added when a
/// default exists, ...). The error names the first incompatibility found.
pub fn check_backward_compatible(old: &Schema, new: &Schema) -> Result<(), String> {
    SchemaCompatibility::can_read(old, new).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    fn full_event() -> Event {
        Event {
            id: "evt-1".into(),
            class: EventClass::HttpActivity,
            time_us: 1_700_000_000_123_456,
            ingest_time_us: 1_700_000_001_000_000,
            tenant: "acme".into(),
            partition_key: "acme|10.0.0.5".into(),
            source: Source {
                format: "json".into(),
                topic: "events.raw".into(),
                partition: 3,
                offset: 42,
                vendor: Some("nginx".into()),
                product: None,
            },
            severity: Some("low".into()),
            message: Some("GET /".into()),
            action: None,
            outcome: Some("success".into()),
            host: Some("web-1".into()),
            actor: Some(Actor { user: Some("alice".into()), domain: None, session_id: None }),
            src: Some(Endpoint { ip: Some("10.0.0.5".into()), port: Some(51234), hostname: None }),
            dst: Some(Endpoint { ip: Some("10.0.0.1".into()), port: Some(443), hostname: None }),
            process: Some(Process { pid: Some(4242), name: Some("nginx".into()), ..Default::default() }),
            http: Some(Http {
                method: Some("GET".into()),
                url: Some("/index.html?q=1".into()),
                status: Some(200),
                ..Default::default()
            }),
            dns: Some(Dns { query: Some("example.com".into()), answers: vec!["1.2.3.4".into()], ..Default::default() }),
            file: Some(File { sha256: Some("ab".repeat(32)), ..Default::default() }),
            llm: Some(Llm { prompt: Some("hello".into()), tokens_in: Some(3), ..Default::default() }),
            tags: vec!["a".into(), "b".into()],
            attrs: [("k".to_string(), "v".to_string())].into_iter().collect(),
            features: [("duration".to_string(), 1.5)].into_iter().collect(),
            raw: Some("{}".into()),
            matches: vec![Match {
                rule_id: "r1".into(),
                title: "t".into(),
                level: "high".into(),
                kind: "sigma".into(),
                tags: vec!["attack.t1059".into()],
                fields: [("CommandLine".to_string(), "x".to_string())].into_iter().collect(),
            }],
            correlations: vec![Correlation { rule_id: "c1".into(), count: 5, ..Default::default() }],
            score: Some(Score {
                risk: 87.5,
                model_version: "m1".into(),
                parts: [("anomaly".to_string(), 0.25)].into_iter().collect(),
                top_features: vec!["failed_logins".into()],
            }),
        }
    }

    #[test]
    fn every_compiled_in_schema_parses_and_every_kind_has_one() {
        for known in KNOWN_SCHEMAS {
            Schema::parse_str(known.json).unwrap_or_else(|e| panic!("{}: {e}", known.file));
            assert_eq!(known.id, known_id(known.kind, known.version), "{}: id rule", known.file);
        }
        for kind in [SchemaKind::Event, SchemaKind::Alert, SchemaKind::DeadLetter] {
            assert!(KNOWN_SCHEMAS.iter().any(|k| k.kind == kind), "{kind:?} has no schema");
        }
    }

    fn known_id(kind: SchemaKind, version: u32) -> u32 {
        let base = match kind {
            SchemaKind::Event => 100,
            SchemaKind::Alert => 200,
            SchemaKind::DeadLetter => 300,
        };
        base + version
    }

    #[test]
    fn direct_encoding_and_decoding_agree_with_apache_avro() {
        let registry = &*REGISTRY;
        for kind in [SchemaKind::Event, SchemaKind::Alert, SchemaKind::DeadLetter] {
            assert!(registry.plans.contains_key(&current_schema_id(kind)), "{kind:?}: the current schema has no direct plan");
        }
        let mut events = vec![full_event(), Event { id: "x".into(), ..Default::default() }];
        let mut generator = crate::generator::EventGenerator::new(crate::generator::GeneratorConfig::default());
        let normalizer = crate::normalize::Normalizer::new(crate::normalize::NormalizeConfig::default(), "default");
        for n in 0..500 {
            let record = generator.next_record(1_700_000_000_000_000 + n);
            let record = crate::bus::Record { topic: "events.raw".into(), partition: 0, offset: n, key: None, payload: record.payload, timestamp_ms: None };
            if let Ok(event) = normalizer.normalize(&record, 1_700_000_000_000_000 + n) {
                events.push(event);
            }
        }
        assert!(events.len() > 400);
        for event in &events {
            let bytes = encode_event(event).unwrap();
            assert_eq!(bytes, apache_avro_frame(SchemaKind::Event, event), "direct encoding differs from apache-avro's for {}", event.id);
            let generic: Event = decode_resolving(SchemaKind::Event, 101, &bytes).unwrap();
            assert_eq!(&decode_event(&bytes).unwrap(), event);
            assert_eq!(generic, *event);
            // Every cut of the datum is an error on both paths, never a panic.
            for cut in [bytes.len() - 1, bytes.len() / 2, FRAME_HEADER_BYTES] {
                assert!(decode_event(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    /// `full_event()`'s frame with `edits` applied after its header: (where, byte, what),
    /// what being 0 to flip the byte there, 1 to cut the frame there, 2 to insert the byte.
    fn damaged_full_event(edits: &[(usize, u8, u8)]) -> Vec<u8> {
        let mut bytes = encode_event(&full_event()).unwrap();
        for &(at, byte, kind) in edits {
            let at = FRAME_HEADER_BYTES + at % (bytes.len() - FRAME_HEADER_BYTES).max(1);
            match kind {
                0 => {
                    let last = bytes.len() - 1;
                    bytes[at.min(last)] = byte;
                }
                1 => bytes.truncate(at.max(FRAME_HEADER_BYTES + 1)),
                _ => {
                    let end = bytes.len();
                    bytes.insert(at.min(end), byte);
                }
            }
        }
        bytes
    }

    proptest::proptest! {
        /// Damaged frames (bytes flipped, cut, or inserted anywhere in a real event's
        /// encoding) never panic the direct decoder, and what it accepts apache-avro
        /// accepts too, with the same value. The converse does not hold: apache-avro 0.20
        /// reads a datum cut inside a trailing union (`score`) as null and returns the
        /// event without its score; the direct decoder calls that frame truncated.
        #[test]
        fn direct_decoding_of_damaged_frames_agrees_with_apache_avro(
            edits in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY, 0u8..3), 1..6),
        ) {
            let bytes = damaged_full_event(&edits);
            let direct = decode_event(&bytes);
            let generic: Result<Event, _> = decode_resolving(SchemaKind::Event, 101, &bytes);
            if let Ok(direct) = direct {
                match generic {
                    Ok(generic) => proptest::prop_assert_eq!(comparable(direct), comparable(generic)),
                    Err(e) => proptest::prop_assert!(false, "direct decoded {} but apache-avro refused: {e}", direct.id),
                }
            }
        }
    }

    /// The event decoded along the serde path (what `avro_event` stands in for), with where
    /// its detection fields begin.
    fn decode_event_through_serde(bytes: &[u8]) -> Result<(Event, Option<usize>), String> {
        let plan = &REGISTRY.plans[&frame_schema_id(bytes).map_err(|e| e.to_string())?];
        let mut body = &bytes[FRAME_HEADER_BYTES..];
        let decoded = super::super::avro_plan::decode_marking(plan, &mut body, DETECTION_FIELDS_FROM).map_err(|e| e.to_string())?;
        whole_datum_read(body)?;
        Ok(decoded)
    }

    #[test]
    fn the_current_event_schema_takes_the_hand_written_decoder() {
        assert_eq!(REGISTRY.event_fast_path, Some(current_schema_id(SchemaKind::Event)), "{}", super::super::avro_event::shape(&REGISTRY.plans[&101]));
    }

    #[test]
    fn the_hand_written_event_decoder_agrees_with_serde() {
        let events = [
            full_event(),
            Event { id: "x".into(), ..Default::default() },
            Event { matches: vec![], correlations: vec![], score: None, raw: Some("é ☃ non-ASCII".into()), ..full_event() },
            Event {
                attrs: (0..40).map(|i| (format!("k{i}"), "v".repeat(i))).collect(),
                tags: (0..70).map(|i| i.to_string()).collect(),
                class: EventClass::Other,
                time_us: -1,
                ..full_event()
            },
        ];
        for event in events {
            let bytes = encode_event(&event).unwrap();
            let (fast, at) = decode_event_for_detection(&bytes).unwrap();
            let (serde, serde_at) = decode_event_through_serde(&bytes).unwrap();
            assert_eq!(*fast, event);
            assert_eq!(serde, event);
            assert_eq!(at, serde_at.map(|at| DetectionsAt(FRAME_HEADER_BYTES + at, Attrs::Read)));
            assert_eq!(decode_event(&bytes).unwrap(), event);
            // And the hand-written encoder writes what serde writes.
            assert_eq!(bytes, encode(SchemaKind::Event, &event).unwrap());
        }
    }

    #[test]
    fn a_slot_decodes_each_event_as_a_fresh_decoding_would() {
        // One slot over events that add, drop and change parts, so strings are written
        // over, kept and reused; a damaged frame in between leaves the slot half written.
        let full = full_event();
        let events = [
            full.clone(),
            Event { id: "x".into(), ..Default::default() },
            Event { process: None, dns: None, raw: None, tags: vec![], attrs: Default::default(), ..full.clone() },
            Event {
                attrs: (0..40).map(|i| (format!("k{i}"), "v".repeat(i))).collect(),
                tags: (0..70).map(|i| i.to_string()).collect(),
                features: [("f".to_string(), 1.5)].into_iter().collect(),
                ..full.clone()
            },
            Event { host: Some("a much longer host name than before".into()), actor: None, src: None, ..full.clone() },
            Event { tags: vec!["one".into()], attrs: [("k3".to_string(), "w".to_string())].into_iter().collect(), ..Default::default() },
            full.clone(),
        ];
        let mut slot = EventSlot::default();
        let mut summaries = SummarySlot::default();
        for (i, event) in events.iter().enumerate() {
            let bytes = encode_event(event).unwrap();
            if i == 3 {
                assert!(slot.decode_for_detection(&bytes[..bytes.len() / 2]).is_err());
                assert!(summaries.decode(&bytes[..bytes.len() - 1], |_| unreachable!("the current schema")).is_err());
            }
            let (fresh, fresh_at) = decode_event_for_detection(&bytes).unwrap();
            let (reused, at) = slot.decode_for_detection(&bytes).unwrap();
            assert_eq!((&*reused, at), (event, fresh_at), "event {i}");
            assert_eq!(*fresh, *event);
            let summary = summaries.decode(&bytes, |_| unreachable!("the current schema")).unwrap();
            assert_eq!(summary, &*decode_event_summary(&bytes).unwrap().unwrap(), "summary {i}");
        }
    }

    #[test]
    fn a_slot_without_attrs_decodes_the_rest_and_its_output_keeps_them() {
        let full = full_event();
        assert!(!full.attrs.is_empty());
        let events = [
            full.clone(),
            Event { attrs: (0..40).map(|i| (format!("k{i}"), "v".repeat(i))).collect(), tags: vec![], ..full.clone() },
            Event { id: "x".into(), ..Default::default() },
            full.clone(),
        ];
        let mut slot = EventSlot::without_attrs();
        for (i, event) in events.iter().enumerate() {
            let bytes = encode_event(event).unwrap();
            let (decoded, at) = slot.decode_for_detection(&bytes).unwrap();
            assert_eq!(*decoded, Event { attrs: Default::default(), ..event.clone() }, "event {i}: all but attrs");
            assert_eq!(at, Some(DetectionsAt(decode_event_for_detection(&bytes).unwrap().1.unwrap().0, Attrs::StepOver)));
            // A detection stage's output still carries them, from the input's bytes.
            decoded.matches.push(Match { rule_id: "r".into(), level: "high".into(), ..Default::default() });
            let written = encode_event_detections(&bytes, at, decoded).unwrap();
            let mut expected = event.clone();
            expected.matches.push(Match { rule_id: "r".into(), level: "high".into(), ..Default::default() });
            assert_eq!(decode_event(&written).unwrap(), expected, "event {i}: written whole");
        }
        // Stepping over still checks lengths: a frame cut inside its attrs (most of this
        // one's bytes) is refused.
        let bytes = encode_event(&events[1]).unwrap();
        assert!(slot.decode_for_detection(&bytes[..bytes.len() / 2]).is_err());
    }

    /// What two decodings of an event are compared by: the event with each NaN set to 0,
    /// and where the NaNs were. A damaged frame can hold a NaN in a float (a byte set to
    /// 0x7f in `features` did), and NaN != NaN would fail two decoders that agree.
    fn comparable(mut event: Event) -> (Event, Vec<String>) {
        let mut nans = Vec::new();
        for (key, value) in event.features.iter_mut() {
            clear_nan(value, || format!("features.{key}"), &mut nans);
        }
        score_nans_cleared(&mut event.score, &mut nans);
        nans.sort();
        (event, nans)
    }

    /// Sets `value` to 0 if it is NaN, noting `name()` in `nans`.
    fn clear_nan(value: &mut f64, name: impl FnOnce() -> String, nans: &mut Vec<String>) {
        if value.is_nan() {
            *value = 0.0;
            nans.push(name());
        }
    }

    /// [`clear_nan`] over `score`'s floats.
    fn score_nans_cleared(score: &mut Option<Score>, nans: &mut Vec<String>) {
        let Some(score) = score else { return };
        clear_nan(&mut score.risk, || "score.risk".into(), nans);
        for (key, value) in score.parts.iter_mut() {
            clear_nan(value, || format!("score.parts.{key}"), nans);
        }
    }

    #[test]
    fn comparable_events_agree_on_nans_and_only_on_them() {
        let with = |risk: f64, duration: f64| Event { features: [("duration".to_string(), duration)].into_iter().collect(), score: Some(Score { risk, ..Score::default() }), ..full_event() };
        assert_ne!(with(f64::NAN, 1.0), with(f64::NAN, 1.0), "why comparable exists");
        assert_eq!(comparable(with(f64::NAN, f64::NAN)), comparable(with(f64::NAN, f64::NAN)));
        assert_ne!(comparable(with(f64::NAN, 1.0)), comparable(with(0.0, 1.0)));
        assert_ne!(comparable(with(1.0, f64::NAN)), comparable(with(1.0, 0.0)));
        assert_ne!(comparable(with(1.0, 2.0)), comparable(with(1.0, 3.0)));
    }

    /// What the alert stage reads, decoded through serde (as for frames of other schemas).
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Summary {
        id: String,
        class: EventClass,
        time_us: i64,
        ingest_time_us: i64,
        tenant: String,
        partition_key: String,
        message: Option<String>,
        matches: Vec<Match>,
        correlations: Vec<Correlation>,
        score: Option<SummaryScore>,
    }

    /// What the alert stage reads of a score: all but its parts.
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct SummaryScore {
        risk: f64,
        model_version: String,
        top_features: Vec<String>,
    }

    impl Summary {
        /// As [`comparable`] for events: the risk's NaN set to 0, and whether it was one.
        fn comparable(mut self) -> (Summary, Vec<String>) {
            let mut nans = Vec::new();
            if let Some(score) = &mut self.score {
                clear_nan(&mut score.risk, || "score.risk".into(), &mut nans);
            }
            (self, nans)
        }

        fn of(event: &Event) -> Summary {
            let e = event.clone();
            let score = e.score.map(|s| SummaryScore { risk: s.risk, model_version: s.model_version, top_features: s.top_features });
            Summary { id: e.id, class: e.class, time_us: e.time_us, ingest_time_us: e.ingest_time_us, tenant: e.tenant, partition_key: e.partition_key, message: e.message, matches: e.matches, correlations: e.correlations, score }
        }
    }

    #[test]
    fn the_alert_stages_summary_holds_what_it_reads_and_defaults() {
        let bytes = encode_event(&full_event()).unwrap();
        let summary = decode_event_summary(&bytes).expect("current schema").unwrap();
        assert_eq!(Summary::of(&summary), Summary::of(&full_event()));
        assert_eq!(Summary::of(&summary), decode::<Summary>(SchemaKind::Event, &bytes).unwrap());
        assert_eq!((summary.raw, summary.src, summary.attrs.len()), (None, None, 0), "the rest is not built");
        let score = summary.score.as_ref().expect("a score");
        assert!(score.parts.is_empty() && !full_event().score.unwrap().parts.is_empty(), "the score's parts are stepped over");
        assert_eq!(score.top_features, ["failed_logins"]);
        assert!(decode_event_summary(&bytes[..bytes.len() - 1]).expect("current schema").is_err());
    }

    proptest::proptest! {
        /// On damaged frames the hand-written decoder and the serde path accept the same
        /// frames, with the same event.
        #[test]
        fn the_hand_written_event_decoder_agrees_with_serde_on_damaged_frames(
            edits in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY, 0u8..3), 1..6),
        ) {
            let bytes = damaged_full_event(&edits);
            let fast = decode_event(&bytes).map_err(|e| e.to_string());
            let serde = decode_event_through_serde(&bytes).map(|(event, _)| event);
            match (fast, serde) {
                (Ok(fast), Ok(serde)) => proptest::prop_assert_eq!(comparable(fast), comparable(serde)),
                (Err(_), Err(_)) => {}
                (fast, serde) => proptest::prop_assert!(false, "hand-written: {fast:?}\nserde: {serde:?}"),
            }
            // A slot used for every case so far (whatever they left in it) decodes as a
            // fresh decoding does.
            thread_local! {
                static SLOT: std::cell::RefCell<(EventSlot, SummarySlot)> = std::cell::RefCell::default();
            }
            SLOT.with(|slots| -> Result<(), proptest::test_runner::TestCaseError> {
                let (slot, summaries) = &mut *slots.borrow_mut();
                let reused = slot.decode_for_detection(&bytes).map(|(event, at)| (comparable(event.clone()), at)).map_err(|e| e.to_string());
                let fresh = decode_event_for_detection(&bytes).map(|(event, at)| (comparable(*event), at)).map_err(|e| e.to_string());
                proptest::prop_assert_eq!(reused, fresh);
                let reused = summaries.decode(&bytes, |b| decode::<Summary>(SchemaKind::Event, b).map(|_| Event::default())).map(|e| Summary::of(e).comparable()).map_err(|e| e.to_string());
                if let Some(fresh) = decode_event_summary(&bytes) {
                    proptest::prop_assert_eq!(reused, fresh.map(|event| Summary::of(&event).comparable()).map_err(|e| e.to_string()));
                }
                Ok(())
            })?;
            // And the alert stage's summary agrees with serde's narrow decoding.
            let summary = decode_event_summary(&bytes).map(|decoded| decoded.map(|event| Summary::of(&event)).map_err(|e| e.to_string()));
            let narrow = decode::<Summary>(SchemaKind::Event, &bytes).map_err(|e| e.to_string());
            match (summary, narrow) {
                (None, _) => {} // a damaged schema id: not the hand-written decoder's frame
                (Some(Ok(summary)), Ok(narrow)) => proptest::prop_assert_eq!(summary.comparable(), narrow.comparable()),
                (Some(Err(_)), Err(_)) => {}
                (summary, narrow) => proptest::prop_assert!(false, "summary: {summary:?}\nserde: {narrow:?}"),
            }
        }
    }

    #[test]
    fn event_round_trips_with_every_field_set() {
        let event = full_event();
        let bytes = encode_event(&event).unwrap();
        assert_eq!(bytes[0], MAGIC_BYTE);
        assert_eq!(frame_schema_id(&bytes).unwrap(), 101);
        assert_eq!(decode_event(&bytes).unwrap(), event);
    }

    #[test]
    fn a_detection_stage_rewrites_only_the_detection_fields() {
        // As a stage gets it (with last stage's detections), and as it passes it on.
        let input = encode_event(&full_event()).unwrap();
        let (mut changed, at) = decode_event_for_detection(&input).unwrap();
        assert_eq!(*changed, full_event());
        changed.matches.push(Match { rule_id: "r2".into(), level: "critical".into(), ..Default::default() });
        changed.correlations.clear();
        changed.score = None;
        let spliced = encode_event_detections(&input, at, &changed).unwrap();
        // Byte for byte what encoding the whole event writes.
        assert_eq!(spliced, encode_event(&changed).unwrap());
        // The other way round: no detections in, some out.
        let bare = encode_event(&Event { matches: vec![], correlations: vec![], score: None, ..full_event() }).unwrap();
        let (_, at) = decode_event_for_detection(&bare).unwrap();
        let raw = full_event().raw.map_or(0, |r| r.len());
        assert!(raw > 0 && raw < 64, "a one-byte length");
        assert_eq!(at, Some(DetectionsAt(bare.len() - 3 - (2 + raw), Attrs::Read)), "raw (union index, length, text), then three empty fields: two zero counts and a null");
        assert_eq!(encode_event_detections(&bare, at, &full_event()).unwrap(), encode_event(&full_event()).unwrap());
        // Not known where: encoded whole.
        assert_eq!(encode_event_detections(&bare, None, &full_event()).unwrap(), encode_event(&full_event()).unwrap());
        // A damaged frame is refused when decoding, as always.
        assert!(decode_event_for_detection(&input[..input.len() / 3]).is_err());
    }

    #[test]
    fn a_type_with_fewer_fields_steps_over_the_rest() {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        struct Narrow {
            id: String,
            tenant: String,
            score: Option<Score>,
        }
        let bytes = encode_event(&full_event()).unwrap();
        let narrow: Narrow = decode(SchemaKind::Event, &bytes).unwrap();
        assert_eq!(narrow, Narrow { id: "evt-1".into(), tenant: "acme".into(), score: full_event().score });
        // Data of an older schema version goes through apache-avro's reader: same result.
        assert_eq!(decode_resolving::<Narrow>(SchemaKind::Event, 101, &bytes).unwrap(), narrow);
        // What is stepped over is still checked for length: a cut frame is refused.
        for cut in [bytes.len() / 2, bytes.len() - 1] {
            assert!(decode::<Narrow>(SchemaKind::Event, &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn minimal_event_round_trips() {
        let event = Event { id: "x".into(), ..Default::default() };
        assert_eq!(decode_event(&encode_event(&event).unwrap()).unwrap(), event);
    }

    #[test]
    fn alert_and_dead_letter_round_trip() {
        let alert = Alert {
            id: "a1".into(),
            tenant: "acme".into(),
            severity: Severity::Critical,
            risk: Some(99.0),
            count: 3,
            event_ids: vec!["e1".into()],
            ..Default::default()
        };
        assert_eq!(decode_alert(&encode_alert(&alert).unwrap()).unwrap(), alert);
        let dead = DeadLetter {
            stage: "normalize".into(),
            reason_code: "bad_json".into(),
            reason: "expected value at line 1 column 1".into(),
            source_key: Some(vec![1, 2, 3]),
            original: vec![0xff, 0x00, b'{'],
            original_size: 3,
            ..Default::default()
        };
        assert_eq!(decode_dead_letter(&encode_dead_letter(&dead).unwrap()).unwrap(), dead);
        // The direct encoder writes what apache-avro writes.
        assert_eq!(encode_alert(&alert).unwrap(), apache_avro_frame(SchemaKind::Alert, &alert));
        assert_eq!(encode_dead_letter(&dead).unwrap(), apache_avro_frame(SchemaKind::DeadLetter, &dead));
    }

    #[test]
    fn a_type_whose_fields_disagree_with_the_schema_is_refused_not_written_wrong() {
        // The alert's fields in another order than the schema's.
        #[derive(Serialize)]
        struct Reordered<'a> {
            tenant: &'a str,
            id: &'a str,
            time_us: i64,
            last_seen_us: i64,
            severity: Severity,
            title: &'a str,
            rule_ids: Vec<String>,
            entity: &'a str,
            risk: Option<f64>,
            count: i64,
            attack_tactics: Vec<String>,
            attack_techniques: Vec<String>,
            event_ids: Vec<String>,
            summary: Option<String>,
        }
        let reordered = Reordered {
            tenant: "acme",
            id: "a1",
            time_us: 5,
            last_seen_us: 6,
            severity: Severity::High,
            title: "t",
            rule_ids: vec!["r".into()],
            entity: "e",
            risk: None,
            count: 2,
            attack_tactics: vec![],
            attack_techniques: vec![],
            event_ids: vec!["x".into()],
            summary: Some("s".into()),
        };
        let error = encode(SchemaKind::Alert, &reordered).unwrap_err().to_string();
        assert!(error.contains("field tenant where the schema has id"), "{error}");
        // apache-avro 0.20 writes it by position: the tenant lands in the id.
        let written_by_apache_avro = decode_alert(&apache_avro_frame(SchemaKind::Alert, &reordered)).unwrap();
        assert_eq!((written_by_apache_avro.id.as_str(), written_by_apache_avro.tenant.as_str()), ("acme", "a1"));
    }

    /// `value` framed and encoded by apache-avro's own writer: the reference.
    fn apache_avro_frame<T: Serialize>(kind: SchemaKind, value: &T) -> Vec<u8> {
        let (id, schema) = current(kind);
        let mut out = vec![MAGIC_BYTE];
        out.extend_from_slice(&id.to_be_bytes());
        apache_avro::write_avro_datum_ref(schema, value, &mut out).unwrap();
        out
    }

    #[test]
    fn decoding_rejects_bad_frames_with_a_reason() {
        assert!(matches!(decode_event(&[0, 0]), Err(AvroError::TooShort(2))));
        assert!(matches!(decode_event(b"{\"a\":1}"), Err(AvroError::BadMagic(b'{'))));
        assert!(matches!(decode_event(&[0, 0, 0, 0, 9, 1]), Err(AvroError::UnknownSchema(9))));
        let alert = encode_alert(&Alert::default()).unwrap();
        assert!(matches!(decode_event(&alert), Err(AvroError::WrongKind { .. })));
        let mut event = encode_event(&full_event()).unwrap();
        event.truncate(event.len() / 2);
        assert!(matches!(decode_event(&event), Err(AvroError::Decode { .. })));
    }

    #[test]
    fn forged_length_prefix_does_not_allocate_unbounded() {
        // id string with a length of ~2^62: must be an error, not an abort.
        let mut bytes = vec![0, 0, 0, 0, 101];
        bytes.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(decode_event(&bytes).is_err());
    }

    #[test]
    fn every_schema_version_is_readable_by_the_current_one() {
        for known in KNOWN_SCHEMAS {
            let (_, current_schema) = current(known.kind);
            let old = Schema::parse_str(known.json).unwrap();
            check_backward_compatible(&old, current_schema)
                .unwrap_or_else(|e| panic!("{} cannot be read by the current schema: {e}", known.file));
        }
    }

    fn with_field_added(json: &str, field: &str) -> Schema {
        let mut value: serde_json::Value = serde_json::from_str(json).unwrap();
        let field: serde_json::Value = serde_json::from_str(field).unwrap();
        value["fields"].as_array_mut().unwrap().push(field);
        Schema::parse(&value).unwrap()
    }

    #[test]
    fn adding_a_required_field_without_default_breaks_compatibility() {
        let v1 = Schema::parse_str(KNOWN_SCHEMAS[0].json).unwrap();
        let broken = with_field_added(KNOWN_SCHEMAS[0].json, r#"{"name": "risk_band", "type": "string"}"#);
        let err = check_backward_compatible(&v1, &broken).unwrap_err();
        assert!(!err.is_empty());
        let fine = with_field_added(
            KNOWN_SCHEMAS[0].json,
            r#"{"name": "risk_band", "type": ["null", "string"], "default": null}"#,
        );
        check_backward_compatible(&v1, &fine).unwrap();
    }

    #[test]
    fn changing_a_field_type_breaks_compatibility() {
        let v1 = Schema::parse_str(KNOWN_SCHEMAS[0].json).unwrap();
        let mut value: serde_json::Value = serde_json::from_str(KNOWN_SCHEMAS[0].json).unwrap();
        // tenant: string -> int
        for field in value["fields"].as_array_mut().unwrap() {
            if field["name"] == "tenant" {
                field["type"] = "int".into();
            }
        }
        let broken = Schema::parse(&value).unwrap();
        assert!(check_backward_compatible(&v1, &broken).is_err());
    }

    #[test]
    fn data_written_with_an_older_version_decodes_into_the_current_type() {
        // Simulate v1 writer data being read after a compatible v2 added a field: encode with
        // v1, resolve onto an extended reader schema.
        let v1 = Schema::parse_str(KNOWN_SCHEMAS[0].json).unwrap();
        let v2 = with_field_added(
            KNOWN_SCHEMAS[0].json,
            r#"{"name": "risk_band", "type": ["null", "string"], "default": null}"#,
        );
        let mut datum = Vec::new();
        apache_avro::write_avro_datum_ref(&v1, &full_event(), &mut datum).unwrap();
        let value = apache_avro::from_avro_datum(&v1, &mut datum.as_slice(), Some(&v2)).unwrap();
        let event: Event = apache_avro::from_value(&value).unwrap();
        assert_eq!(event, full_event());
    }
}
