//! Rows of the warehouse tables and their mapping to and from our records: what the sink
//! writes and what `threatpipe train --clickhouse` reads back. Column order follows
//! `schemas/clickhouse/0001_events.sql` (RowBinary is positional).

use serde::{Deserialize, Serialize};

use crate::event::{Actor, Correlation, Dns, Endpoint, Event, EventClass, Http, Llm, Match, Process, Score};

/// One row of `events`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct EventRow {
    /// Days since the epoch (`Date`).
    pub day: u16,
    /// Seconds since the epoch (`DateTime`).
    pub time: u32,
    pub time_us: i64,
    pub ingest_time_us: i64,
    pub id: String,
    pub tenant: String,
    pub class: String,
    pub partition_key: String,
    pub severity: String,
    pub message: String,
    pub action: String,
    pub outcome: String,
    pub host: String,
    pub user: String,
    pub src_ip: String,
    pub dst_ip: String,
    pub dst_port: i32,
    pub process_name: String,
    pub command_line: String,
    pub url: String,
    pub http_status: i32,
    pub dns_query: String,
    pub prompt: String,
    pub source_format: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub match_rule_ids: Vec<String>,
    pub match_kinds: Vec<String>,
    pub match_levels: Vec<String>,
    pub match_tags: Vec<String>,
    pub correlation_rule_ids: Vec<String>,
    pub risk: f64,
    pub model_version: String,
    pub top_features: Vec<String>,
    pub inserted_at: u32,
}

/// The column list of `events`, in row order (for SELECTs).
pub const EVENT_COLUMNS: &str = "day, time, time_us, ingest_time_us, id, tenant, class, partition_key, severity, message, action, \
     outcome, host, user, src_ip, dst_ip, dst_port, process_name, command_line, url, http_status, dns_query, prompt, \
     source_format, source_topic, source_partition, source_offset, match_rule_ids, match_kinds, match_levels, match_tags, \
     correlation_rule_ids, risk, model_version, top_features, inserted_at";

fn seconds(us: i64) -> u32 {
    u32::try_from(us.div_euclid(1_000_000)).unwrap_or(0)
}

fn day(us: i64) -> u16 {
    u16::try_from(us.div_euclid(86_400_000_000)).unwrap_or(0)
}

fn text(value: &Option<String>) -> String {
    value.clone().unwrap_or_default()
}

fn some(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

impl EventRow {
    pub fn from_event(event: &Event, inserted_at_us: i64) -> Self {
        let process = event.process.as_ref();
        let http = event.http.as_ref();
        let score = event.score.as_ref();
        Self {
            day: day(event.time_us),
            time: seconds(event.time_us),
            time_us: event.time_us,
            ingest_time_us: event.ingest_time_us,
            id: event.id.clone(),
            tenant: event.tenant.clone(),
            class: event.class.as_str().into(),
            partition_key: event.partition_key.clone(),
            severity: text(&event.severity),
            message: text(&event.message),
            action: text(&event.action),
            outcome: text(&event.outcome),
            host: text(&event.host),
            user: event.user().unwrap_or_default().into(),
            src_ip: event.src_ip().unwrap_or_default().into(),
            dst_ip: event.dst_ip().unwrap_or_default().into(),
            dst_port: event.dst.as_ref().and_then(|d| d.port).unwrap_or(0),
            process_name: process.map(|p| text(&p.name)).unwrap_or_default(),
            command_line: process.map(|p| text(&p.command_line)).unwrap_or_default(),
            url: http.map(|h| text(&h.url)).unwrap_or_default(),
            http_status: http.and_then(|h| h.status).unwrap_or(0),
            dns_query: event.dns.as_ref().map(|d| text(&d.query)).unwrap_or_default(),
            prompt: event.llm.as_ref().map(|l| text(&l.prompt)).unwrap_or_default(),
            source_format: event.source.format.clone(),
            source_topic: event.source.topic.clone(),
            source_partition: event.source.partition,
            source_offset: event.source.offset,
            match_rule_ids: event.matches.iter().map(|m| m.rule_id.clone()).collect(),
            match_kinds: event.matches.iter().map(|m| m.kind.clone()).collect(),
            match_levels: event.matches.iter().map(|m| m.level.clone()).collect(),
            match_tags: event.matches.iter().flat_map(|m| m.tags.iter().cloned()).collect(),
            correlation_rule_ids: event.correlations.iter().map(|c| c.rule_id.clone()).collect(),
            risk: score.map_or(0.0, |s| s.risk),
            model_version: score.map(|s| s.model_version.clone()).unwrap_or_default(),
            top_features: score.map(|s| s.top_features.clone()).unwrap_or_default(),
            inserted_at: seconds(inserted_at_us),
        }
    }

    /// The event as far as the row keeps it (raw text, attributes and score parts are not
    /// stored).
    pub fn to_event(&self) -> Event {
        let mut event = Event {
            id: self.id.clone(),
            class: EventClass::from_name(&self.class).unwrap_or_default(),
            time_us: self.time_us,
            ingest_time_us: self.ingest_time_us,
            tenant: self.tenant.clone(),
            partition_key: self.partition_key.clone(),
            severity: some(&self.severity),
            message: some(&self.message),
            action: some(&self.action),
            outcome: some(&self.outcome),
            host: some(&self.host),
            ..Event::default()
        };
        event.source.format = self.source_format.clone();
        event.source.topic = self.source_topic.clone();
        event.source.partition = self.source_partition;
        event.source.offset = self.source_offset;
        if !self.user.is_empty() {
            event.actor = Some(Actor { user: some(&self.user), ..Actor::default() });
        }
        if !self.src_ip.is_empty() {
            event.src = Some(Endpoint { ip: some(&self.src_ip), ..Endpoint::default() });
        }
        if !self.dst_ip.is_empty() || self.dst_port != 0 {
            event.dst = Some(Endpoint { ip: some(&self.dst_ip), port: (self.dst_port != 0).then_some(self.dst_port), ..Endpoint::default() });
        }
        if !self.process_name.is_empty() || !self.command_line.is_empty() {
            event.process = Some(Process { name: some(&self.process_name), command_line: some(&self.command_line), ..Process::default() });
        }
        if !self.url.is_empty() || self.http_status != 0 {
            event.http = Some(Http { url: some(&self.url), status: (self.http_status != 0).then_some(self.http_status), ..Http::default() });
        }
        if !self.dns_query.is_empty() {
            event.dns = Some(Dns { query: some(&self.dns_query), ..Dns::default() });
        }
        if !self.prompt.is_empty() {
            event.llm = Some(Llm { prompt: some(&self.prompt), ..Llm::default() });
        }
        event.matches = self
            .match_rule_ids
            .iter()
            .enumerate()
            .map(|(i, id)| Match {
                rule_id: id.clone(),
                kind: self.match_kinds.get(i).cloned().unwrap_or_default(),
                level: self.match_levels.get(i).cloned().unwrap_or_default(),
                ..Match::default()
            })
            .collect();
        event.correlations = self.correlation_rule_ids.iter().map(|id| Correlation { rule_id: id.clone(), ..Correlation::default() }).collect();
        if !self.model_version.is_empty() || self.risk != 0.0 {
            event.score = Some(Score { risk: self.risk, model_version: self.model_version.clone(), top_features: self.top_features.clone(), ..Score::default() });
        }
        event
    }
}

/// One row of `alerts`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct AlertRow {
    pub day: u16,
    pub time: u32,
    pub time_us: i64,
    pub last_seen_us: i64,
    pub id: String,
    pub tenant: String,
    pub severity: String,
    pub title: String,
    pub rule_ids: Vec<String>,
    pub entity: String,
    pub risk: f64,
    pub count: i64,
    pub attack_tactics: Vec<String>,
    pub attack_techniques: Vec<String>,
    pub event_ids: Vec<String>,
    pub summary: String,
    pub inserted_at: u32,
}

impl AlertRow {
    pub fn from_alert(alert: &crate::event::Alert, inserted_at_us: i64) -> Self {
        let severity = serde_json::to_value(alert.severity).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        Self {
            day: day(alert.time_us),
            time: seconds(alert.time_us),
            time_us: alert.time_us,
            last_seen_us: alert.last_seen_us,
            id: alert.id.clone(),
            tenant: alert.tenant.clone(),
            severity,
            title: alert.title.clone(),
            rule_ids: alert.rule_ids.clone(),
            entity: alert.entity.clone(),
            risk: alert.risk.unwrap_or(0.0),
            count: alert.count,
            attack_tactics: alert.attack_tactics.clone(),
            attack_techniques: alert.attack_techniques.clone(),
            event_ids: alert.event_ids.clone(),
            summary: alert.summary.clone().unwrap_or_default(),
            inserted_at: seconds(inserted_at_us),
        }
    }
}

/// One row of `dead_letters`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct DeadLetterRow {
    pub day: u16,
    pub time: u32,
    pub time_us: i64,
    /// `{source_topic}:{partition}:{offset}:{stage}`: the same dead letter replayed is the
    /// same row.
    pub id: String,
    pub stage: String,
    pub reason_code: String,
    pub reason: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub original_size: i64,
    /// The original bytes, lossily as text (they failed to parse; kept for inspection).
    pub original: String,
    pub inserted_at: u32,
}

impl DeadLetterRow {
    pub fn from_dead_letter(dead: &crate::event::DeadLetter, inserted_at_us: i64) -> Self {
        Self {
            day: day(dead.time_us),
            time: seconds(dead.time_us),
            time_us: dead.time_us,
            id: format!("{}:{}:{}:{}", dead.source_topic, dead.source_partition, dead.source_offset, dead.stage),
            stage: dead.stage.clone(),
            reason_code: dead.reason_code.clone(),
            reason: dead.reason.clone(),
            source_topic: dead.source_topic.clone(),
            source_partition: dead.source_partition,
            source_offset: dead.source_offset,
            original_size: dead.original_size,
            original: String::from_utf8_lossy(&dead.original).into_owned(),
            inserted_at: seconds(inserted_at_us),
        }
    }
}
