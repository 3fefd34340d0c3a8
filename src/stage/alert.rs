//! The alert stage: scored events become alerts people act on, once.
//!
//! Policy (`[alert]`): an event is alert-worthy at the highest of its rule levels, its
//! correlation levels and its risk band; below the tenant's minimum severity nothing is
//! raised. Alerts are keyed by (tenant, primary rule, entity): within the suppression window
//! repeats do not raise new alerts but increment the count of the existing one (same id,
//! re-emitted with the new count and last-seen time). The dedupe state lives in Redis (TTL
//! = window) so every instance agrees, and each event counts once however often it is
//! replayed. ATT&CK tactics and techniques come from the rules' tags.
//!
//! Each alert goes to `alerts` (Avro), to the JSON companion topic, and to the live feed:
//! with Redis, published on the channel every instance's feed subscribes to and appended to
//! a bounded stream (`alert.stream`, for clients resuming after a disconnect); without,
//! straight to this process's feed hub.
//!
//! The joins of a burst's alerts go to Redis together, in one script call when the runner
//! finishes the burst ([`Stage::finish_burst`]): an alert storm costs a round trip per
//! burst, not per alert (load/README.md, session 35). Until then an alert's outputs wait,
//! empty, in the burst's outputs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Stage, StageError, StageKind};
use crate::bus::{OutMessage, Record};
use crate::event::{avro, Alert, Event, Severity};

/// `[alert]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// Alerts below this severity are not raised.
    pub min_severity: Severity,
    /// Repeats of an alert (same tenant, rule and entity) within this window increment its
    /// count instead of raising a new one.
    #[serde(with = "humantime_serde")]
    pub suppress: Duration,
    /// Risk at or above which an event is medium / high / critical on its score alone.
    pub risk_medium: f64,
    pub risk_high: f64,
    pub risk_critical: f64,
    /// Per-tenant minimum severity.
    pub tenants: BTreeMap<String, Severity>,
    /// `memory` or a Redis URL for cross-instance dedupe and the live-feed channel. Unset:
    /// `memory` on the in-process bus, the local Redis on Kafka.
    pub dedupe: Option<String>,
    pub dedupe_prefix: String,
    /// Redis pub/sub channel alerts are published on.
    pub channel: String,
    /// Redis stream holding the latest alerts for resuming live-feed clients.
    pub stream: String,
    /// Alerts the stream (or, embedded, the feed's memory) holds: about this many.
    pub stream_max_len: usize,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            min_severity: Severity::Medium,
            suppress: Duration::from_secs(600),
            risk_medium: 50.0,
            risk_high: 75.0,
            risk_critical: 90.0,
            tenants: BTreeMap::new(),
            dedupe: None,
            dedupe_prefix: "threatpipe:alert".into(),
            channel: "threatpipe:alerts".into(),
            stream: "threatpipe:alerts:recent".into(),
            stream_max_len: 10_000,
        }
    }
}

fn severity_of_level(level: &str) -> Severity {
    match level {
        "critical" => Severity::Critical,
        "high" => Severity::High,
        "medium" => Severity::Medium,
        "low" => Severity::Low,
        _ => Severity::Informational,
    }
}

/// What an event would raise, before deduplication.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub severity: Severity,
    /// The rule (or correlation, or `risk`) the alert is about: part of its key.
    pub primary: String,
    pub title: String,
    pub rule_ids: Vec<String>,
    pub tactics: Vec<String>,
    pub techniques: Vec<String>,
}

impl AlertConfig {
    /// The policy's verdict on one event.
    pub fn decide(&self, event: &Event) -> Option<Candidate> {
        // (severity, rule id, title) of every finding on the event.
        let mut findings: Vec<(Severity, String, String)> = Vec::new();
        findings.extend(event.correlations.iter().map(|c| (severity_of_level(&c.level), c.rule_id.clone(), c.title.clone())));
        findings.extend(event.matches.iter().map(|m| (severity_of_level(&m.level), m.rule_id.clone(), m.title.clone())));
        if let Some(score) = &event.score {
            let band = if score.risk >= self.risk_critical {
                Some(Severity::Critical)
            } else if score.risk >= self.risk_high {
                Some(Severity::High)
            } else if score.risk >= self.risk_medium {
                Some(Severity::Medium)
            } else {
                None
            };
            if let Some(band) = band {
                let why = score.top_features.first().map(|f| format!("High risk ({f})")).unwrap_or_else(|| "High risk".into());
                findings.push((band, "risk".into(), why));
            }
        }
        // Strongest first; correlations before single matches of the same level (stable sort).
        findings.sort_by_key(|f| std::cmp::Reverse(f.0));
        let (severity, primary, title) = findings.first().cloned()?;
        let minimum = self.tenants.get(&event.tenant).copied().unwrap_or(self.min_severity);
        if severity < minimum {
            return None;
        }
        let mut tactics = Vec::new();
        let mut techniques = Vec::new();
        for tag in event.matches.iter().flat_map(|m| &m.tags) {
            let Some(name) = tag.strip_prefix("attack.") else { continue };
            let is_technique = name.len() >= 5 && name.starts_with('t') && name[1..5].bytes().all(|b| b.is_ascii_digit());
            let list = if is_technique { &mut techniques } else { &mut tactics };
            let value = if is_technique { name.to_ascii_uppercase() } else { name.to_string() };
            if !list.contains(&value) {
                list.push(value);
            }
        }
        let mut rule_ids: Vec<String> = findings.iter().map(|f| f.1.clone()).collect();
        rule_ids.dedup();
        Some(Candidate { severity, primary, title, rule_ids, tactics, techniques })
    }
}

/// Where alert keys, counts and counted events live.
pub enum DedupeStore {
    /// One process: a map with expiry (embedded mode).
    Memory(HashMap<String, MemoryEntry>),
    Redis(Box<RedisDedupe>),
}

pub struct RedisDedupe {
    url: String,
    client: redis::Client,
    /// The connection and the SHA1 of [`JOIN_AND_PUBLISH`] as loaded on it.
    connection: Option<(redis::Connection, String)>,
    prefix: String,
}

pub struct MemoryEntry {
    id: String,
    count: i64,
    events: HashSet<String>,
    expires_us: i64,
}

/// The alert an event joins: its id, how many events it now counts, and whether this event
/// was new to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub id: String,
    pub count: i64,
    pub new_event: bool,
    /// Whether the live-feed message offered with the join went out (it does when the
    /// alert's id and count came out as the message says, and no earlier join of the same
    /// key in the batch had its message held back).
    pub published: bool,
}

/// What joins an alert: the event `event_id`, to the alert keyed `key`, which is named
/// `new_id` if this event opens it; with the live-feed message offered for it.
pub struct Joining<'a> {
    pub key: &'a str,
    pub new_id: &'a str,
    pub event_id: &'a str,
    pub offer: Offer<'a>,
}

/// A live-feed message offered with a join: the alert as JSON, built for the id and count
/// the stage expects. Published only if the join gives exactly those; otherwise the stage
/// rebuilds it and calls [`DedupeStore::publish`].
pub struct Offer<'a> {
    pub id: &'a str,
    pub count: i64,
    pub message: &'a str,
}

/// Where the live feed is reached: the Redis channel and bounded stream, or (memory store)
/// this process's hub.
pub struct FeedTarget<'a> {
    pub hub: Option<&'a crate::feed::FeedHub>,
    pub channel: &'a str,
    pub stream: &'a str,
    pub max_len: usize,
}

/// One round trip per burst: every join of the burst's alert-worthy events, in order (the
/// first instance to see a key names the alert; each event counts once), and, for each
/// join whose offered message is right, its publication on the channel and the resume
/// stream. Once a key's offer was wrong, its later offers in the batch are held back too,
/// so the stage publishes that key's messages, rebuilt, in order. Atomic, so a key cannot
/// expire between reading and joining it. Counted-event and count keys are named in the
/// script: fine on one Redis (not on Redis Cluster, which wants every key in KEYS).
///
/// KEYS: stream, then each join's alert key. ARGV: prefix, window ms, channel, stream
/// length, then per join: new id, event id, offered id, offered count, message. Returns
/// {id, count, added, published} per join.
const JOIN_AND_PUBLISH: &str = r#"
local prefix, ttl, channel, max_len = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local held_back = {}
local results = {}
for j = 2, #KEYS do
  local key, at = KEYS[j], 4 + (j - 2) * 5
  local new_id, event_id, offered_id, offered_count, message = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], tonumber(ARGV[at + 4]), ARGV[at + 5]
  redis.call('SET', key, new_id, 'NX', 'PX', ttl)
  local id = redis.call('GET', key) or new_id
  local events = prefix .. ':events:' .. id
  local count_key = prefix .. ':count:' .. id
  local added = redis.call('SADD', events, event_id)
  redis.call('PEXPIRE', events, ttl)
  local count
  if added == 1 then
    count = redis.call('INCR', count_key)
    redis.call('PEXPIRE', count_key, ttl)
  else
    count = tonumber(redis.call('GET', count_key) or '1')
  end
  local published = 0
  if not held_back[key] and id == offered_id and count == offered_count then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', max_len, '*', 'alert', message)
    redis.call('PUBLISH', channel, message)
    published = 1
  else
    held_back[key] = true
  end
  results[#results + 1] = {id, count, added, published}
end
return results
"#;

impl DedupeStore {
    pub fn open(spec: &str, prefix: &str) -> Result<Self, String> {
        if spec == "memory" {
            return Ok(Self::Memory(HashMap::new()));
        }
        let client = redis::Client::open(spec).map_err(|e| format!("alert.dedupe {spec}: {e}"))?;
        Ok(Self::Redis(Box::new(RedisDedupe { url: spec.into(), client, connection: None, prefix: prefix.into() })))
    }

    /// Joins each event to its alert, in order (opening the alert if none is open within
    /// `window`), and hands each offer to the feed if the alert's id and count come out as
    /// offered (see `JOIN_AND_PUBLISH` for the ones held back). With Redis, one round
    /// trip for them all.
    pub fn join(&mut self, joins: &[Joining<'_>], window: Duration, now_us: i64, feed: &FeedTarget<'_>) -> Result<Vec<Joined>, String> {
        if joins.is_empty() {
            return Ok(Vec::new());
        }
        let window_us = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
        match self {
            Self::Memory(map) => {
                map.retain(|_, e| e.expires_us > now_us);
                let mut held_back: HashSet<&str> = HashSet::new();
                let mut results = Vec::with_capacity(joins.len());
                for joining in joins {
                    let Joining { key, new_id, event_id, ref offer } = *joining;
                    let entry = map.entry(key.to_string()).or_insert_with(|| MemoryEntry { id: new_id.into(), count: 0, events: HashSet::new(), expires_us: now_us + window_us });
                    let new_event = entry.events.insert(event_id.to_string());
                    if new_event {
                        entry.count += 1;
                    }
                    let published = !held_back.contains(key) && entry.id == offer.id && entry.count == offer.count;
                    results.push(Joined { id: entry.id.clone(), count: entry.count, new_event, published });
                    if published {
                        Self::publish_memory(feed, offer.message)?;
                    } else {
                        held_back.insert(key);
                    }
                }
                Ok(results)
            }
            Self::Redis(redis) => {
                let RedisDedupe { url, client, connection, prefix } = &mut **redis;
                let ttl = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
                let result = (|| -> redis::RedisResult<Vec<(String, i64, i64, i64)>> {
                    if connection.is_none() {
                        let mut c = client.get_connection_with_timeout(Duration::from_secs(2))?;
                        let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(JOIN_AND_PUBLISH).query(&mut c)?;
                        *connection = Some((c, sha));
                    }
                    let Some((c, sha)) = connection.as_mut() else { unreachable!("connected above") };
                    let mut call = redis::cmd("EVALSHA");
                    call.arg(&*sha).arg(joins.len() + 1).arg(feed.stream);
                    for joining in joins {
                        call.arg(format!("{prefix}:key:{}", joining.key));
                    }
                    call.arg(&*prefix).arg(ttl).arg(feed.channel).arg(feed.max_len);
                    for Joining { new_id, event_id, offer, .. } in joins {
                        call.arg(*new_id).arg(*event_id).arg(offer.id).arg(offer.count).arg(offer.message);
                    }
                    call.query(c)
                })();
                // Any failure drops the connection: the next join reconnects and loads the
                // script again (which also covers a Redis restart's NOSCRIPT).
                let results = result.map_err(|e| {
                    *connection = None;
                    format!("{url}: {e}")
                })?;
                if results.len() != joins.len() {
                    *connection = None;
                    return Err(format!("{url}: {} join results for {} joins", results.len(), joins.len()));
                }
                Ok(results.into_iter().map(|(id, count, added, published)| Joined { id, count, new_event: added == 1, published: published == 1 }).collect())
            }
        }
    }

    fn publish_memory(feed: &FeedTarget<'_>, message: &str) -> Result<(), String> {
        feed.hub.map_or(Ok(()), |hub| hub.publish_json(message))
    }

    /// Hands `messages` to the live feed, in order: with Redis, publishes each on the
    /// channel and appends it to the stream (trimmed to about `max_len`), all in one round
    /// trip; in memory, to the hub.
    pub fn publish(&mut self, feed: &FeedTarget<'_>, messages: &[&str]) -> Result<(), String> {
        if messages.is_empty() {
            return Ok(());
        }
        match self {
            Self::Memory(_) => messages.iter().try_for_each(|message| Self::publish_memory(feed, message)),
            Self::Redis(redis) => {
                let RedisDedupe { url, connection, .. } = &mut **redis;
                // Only called after a join, which leaves a connection (or an error).
                let Some((c, _)) = connection.as_mut() else { return Err(format!("{url}: not connected")) };
                let mut pipe = redis::pipe();
                for message in messages {
                    pipe.cmd("XADD").arg(feed.stream).arg("MAXLEN").arg("~").arg(feed.max_len).arg("*").arg("alert").arg(*message).ignore();
                    pipe.cmd("PUBLISH").arg(feed.channel).arg(*message).ignore();
                }
                pipe.query::<()>(c).map_err(|e| {
                    *connection = None;
                    format!("{url}: {e}")
                })
            }
        }
    }
}

/// The part of an event the alert stage reads. The rest of the event (its fields, attributes,
/// features, raw text: most of its bytes) is stepped over when decoding, not built: the
/// stage decodes every event and raises alerts on few. Frames of the current schema take
/// the hand-written `avro::decode_event_summary`, which reads the same; this type is for
/// any other.
#[derive(Deserialize)]
struct AlertInput {
    id: String,
    time_us: i64,
    ingest_time_us: i64,
    tenant: String,
    partition_key: String,
    message: Option<String>,
    matches: Vec<crate::event::Match>,
    correlations: Vec<crate::event::Correlation>,
    score: Option<crate::event::Score>,
}

impl AlertInput {
    fn into_event(self) -> Event {
        let AlertInput { id, time_us, ingest_time_us, tenant, partition_key, message, matches, correlations, score } = self;
        Event { id, time_us, ingest_time_us, tenant, partition_key, message, matches, correlations, score, ..Event::default() }
    }
}

pub struct AlertStage {
    config: AlertConfig,
    store: DedupeStore,
    /// This process's live feed, for the memory store (Redis reaches every instance's).
    feed: Option<std::sync::Arc<crate::feed::FeedHub>>,
    output_topic: crate::bus::Topic,
    json_topic: crate::bus::Topic,
    dlq_topic: crate::bus::Topic,
    /// The id and count each alert key had after this stage's last join of it: the next
    /// event of the key most likely makes it (id, count + 1), so the feed message is built
    /// for that and goes out with the join in one round trip. Only a guess (another
    /// instance, a replay or an expired window makes it wrong, and then the message is
    /// rebuilt); bounded by [`EXPECTED_KEYS`], overflow policy: forget them all. Within a
    /// burst it runs ahead of Redis: each event's offer assumes the ones before it joined
    /// as offered.
    expected: HashMap<String, (String, i64)>,
    /// The burst's alerts, waiting for their joins (made at the burst's end, all in one
    /// round trip). At most one per record of the burst (`runner.burst_max`).
    pending: Vec<PendingAlert>,
    /// Where events are decoded (narrowly), record after record.
    slot: avro::SummarySlot,
}

/// An alert raised by a record of the current burst, before its join.
struct PendingAlert {
    /// Built for the offered id and count; corrected from the join when they differ.
    alert: Alert,
    /// The live-feed message: `alert` as JSON.
    json: String,
    key: String,
    new_id: String,
    /// Where its two outputs (Avro on `alerts`, then JSON) wait in the burst's outputs,
    /// empty until the join.
    at: usize,
    ingest_time_us: i64,
}

/// Alert keys whose id and count the stage remembers (see `AlertStage::expected`).
const EXPECTED_KEYS: usize = 65_536;

impl AlertStage {
    pub fn new(config: AlertConfig, store: DedupeStore, output_topic: String, json_topic: String, dlq_topic: String) -> Self {
        Self {
            config,
            store,
            feed: None,
            output_topic: output_topic.into(),
            json_topic: json_topic.into(),
            dlq_topic: dlq_topic.into(),
            expected: HashMap::new(),
            pending: Vec::new(),
            slot: avro::SummarySlot::default(),
        }
    }

    /// Hands alerts to `hub` when there is no Redis between the stage and the feed.
    pub fn with_feed(mut self, hub: Option<std::sync::Arc<crate::feed::FeedHub>>) -> Self {
        self.feed = hub;
        self
    }
}

/// Notes the id and count `key` had after its last join (or, within a burst, is expected to
/// have): see [`AlertStage::expected`].
fn remember(expected: &mut HashMap<String, (String, i64)>, key: String, id_and_count: (String, i64)) {
    if expected.len() >= EXPECTED_KEYS && !expected.contains_key(&key) {
        expected.clear();
    }
    expected.insert(key, id_and_count);
}

impl Stage for AlertStage {
    fn kind(&self) -> StageKind {
        StageKind::Alert
    }

    /// With Redis, each burst's alerts are joined in a blocking round trip.
    fn waits_on_outside_service(&self) -> bool {
        matches!(self.store, DedupeStore::Redis(_))
    }

    /// Decides whether the event raises an alert and, if so, builds it for the id and count
    /// it most likely gets and leaves its two outputs empty in `out` until
    /// [`Stage::finish_burst`] joins it.
    fn process(&mut self, record: &Record, now_us: i64, out: &mut Vec<OutMessage>) -> Result<(), StageError> {
        let decoded = self.slot.decode(&record.payload, |bytes| avro::decode::<AlertInput>(avro::SchemaKind::Event, bytes).map(AlertInput::into_event));
        let event = match decoded {
            Ok(event) => event,
            Err(e) => {
                super::dead_letter_bad_avro("alert", record, e, now_us, &self.dlq_topic, out)?;
                return Ok(());
            }
        };
        let Some(candidate) = self.config.decide(event) else { return Ok(()) };
        let key = format!("{}|{}|{}", event.tenant, candidate.primary, event.partition_key);
        // Named after the event that opens it: stable if that event is replayed to open it.
        let new_id = crate::hex_id("alert-", xxhash_rust::xxh3::xxh3_128(format!("{key}|{}", event.id).as_bytes()));
        let (offered_id, offered_count) = match self.expected.get(&key) {
            Some((id, count)) => (id.clone(), count + 1),
            None => (new_id.clone(), 1),
        };
        let alert = Alert {
            id: offered_id,
            tenant: event.tenant.clone(),
            time_us: now_us,
            last_seen_us: event.time_us,
            severity: candidate.severity,
            title: candidate.title,
            rule_ids: candidate.rule_ids,
            entity: event.partition_key.clone(),
            risk: event.score.as_ref().map(|s| s.risk),
            count: offered_count,
            attack_tactics: candidate.tactics,
            attack_techniques: candidate.techniques,
            event_ids: vec![event.id.clone()],
            summary: event.message.clone(),
        };
        let json = serde_json::to_string(&alert).map_err(|e| StageError::Internal(e.to_string()))?;
        // The next event of this key in the burst is offered the count after this one.
        remember(&mut self.expected, key.clone(), (alert.id.clone(), alert.count));
        let at = out.len();
        out.push(OutMessage { topic: self.output_topic.clone(), key: None, payload: Vec::new() });
        out.push(OutMessage { topic: self.json_topic.clone(), key: None, payload: Vec::new() });
        self.pending.push(PendingAlert { alert, json, key, new_id, at, ingest_time_us: event.ingest_time_us });
        Ok(())
    }

    /// Joins the burst's alerts in one round trip and fills in their outputs. The live feed
    /// gets an alert on replays too (it drops what it already showed by id and count), so a
    /// crash between counting the event and publishing it cannot cost the feed an alert. An
    /// unreachable store or a failed publish is an outside failure: the stage stops and the
    /// burst replays (each event counts once when it does).
    fn finish_burst(&mut self, now_us: i64, out: &mut [OutMessage]) -> Result<(), StageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.pending);
        let feed = FeedTarget { hub: self.feed.as_deref(), channel: &self.config.channel, stream: &self.config.stream, max_len: self.config.stream_max_len };
        let joins: Vec<Joining<'_>> = pending
            .iter()
            .map(|p| Joining {
                key: &p.key,
                new_id: &p.new_id,
                event_id: p.alert.event_ids.first().map_or("", String::as_str),
                offer: Offer { id: &p.alert.id, count: p.alert.count, message: &p.json },
            })
            .collect();
        let joined = self.store.join(&joins, self.config.suppress, now_us, &feed).map_err(StageError::External)?;
        drop(joins);
        // Offers that came out wrong: rebuilt with the real id and count, published in order.
        for (p, j) in pending.iter_mut().zip(&joined).filter(|(_, j)| !j.published) {
            p.alert.id.clone_from(&j.id);
            p.alert.count = j.count;
            p.json = serde_json::to_string(&p.alert).map_err(|e| StageError::Internal(e.to_string()))?;
        }
        let held_back: Vec<&str> = pending.iter().zip(&joined).filter(|(_, j)| !j.published).map(|(p, _)| p.json.as_str()).collect();
        self.store.publish(&feed, &held_back).map_err(StageError::External)?;
        drop(held_back);
        let outputs = out.len();
        for (p, j) in pending.into_iter().zip(joined) {
            remember(&mut self.expected, p.key, (j.id, j.count));
            let [avro_out, json_out] = out.get_mut(p.at..p.at + 2).and_then(|s| <&mut [OutMessage; 2]>::try_from(s).ok()).ok_or_else(|| StageError::Internal(format!("alert outputs expected at {} of {outputs}", p.at)))?;
            if *avro_out.topic != *self.output_topic || *json_out.topic != *self.json_topic {
                return Err(StageError::Internal(format!("alert outputs expected at {}, found {} and {}", p.at, avro_out.topic, json_out.topic)));
            }
            metrics::counter!(crate::telemetry::names::ALERTS_RAISED, "severity" => crate::connect::format::severity_name(p.alert.severity)).increment(1);
            if p.ingest_time_us > 0 {
                metrics::histogram!(crate::telemetry::names::ALERT_LATENCY).record((now_us - p.ingest_time_us).max(0) as f64 / 1e6);
            }
            avro_out.payload = avro::encode_alert(&p.alert).map_err(|e| StageError::Internal(e.to_string()))?;
            avro_out.key = Some(p.alert.id.clone().into_bytes());
            json_out.key = Some(p.alert.id.into_bytes());
            json_out.payload = p.json.into_bytes();
        }
        Ok(())
    }
}
