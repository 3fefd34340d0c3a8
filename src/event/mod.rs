//! The normalized event and the records later stages attach to it.
//!
//! Everything after `normalize` speaks this one shape, so a rule, a feature or a report is
//! written once whatever the producer sent (JSON, OCSF, ECS, CEF, syslog, Avro). The shape is
//! OCSF-inspired and versioned: the Rust types here mirror `schemas/avro/event.v1.avsc`
//! field for field, and `avro::tests` round-trips them so the two cannot drift apart.

pub mod avro;
mod avro_event;
pub mod avro_plan;
mod records;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use records::{Alert, Correlation, DeadLetter, Match, Score, Severity};

/// A map of an event keyed by field name (`attrs`, `features`, a match's fields). Every
/// stage decodes and fills these for every event, and std's default SipHash was ~5% of the
/// embedded pipeline's instructions; the keys are producer field names, and a map holds at
/// most a few dozen entries, so a fast hash keyed per process ([`crate::FastHasher`]) is
/// enough. Its key is drawn once and cloned into each map: `ahash::RandomState::new()`,
/// used before, drew each map's seed from a counter shared by all threads, and under load
/// that one cache line bounced between the stages' threads (`perf`, load/README.md
/// session 28).
pub type FieldMap<V> = HashMap<String, V, crate::FastHasher>;

/// What kind of activity an event records (OCSF class, simplified).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EventClass {
    Authentication,
    ProcessActivity,
    NetworkActivity,
    HttpActivity,
    DnsActivity,
    FileActivity,
    LlmActivity,
    Finding,
    #[default]
    Other,
}

impl EventClass {
    /// Every class, in schema order; used for metric labels and `--help` text.
    pub const ALL: [EventClass; 9] = [
        Self::Authentication,
        Self::ProcessActivity,
        Self::NetworkActivity,
        Self::HttpActivity,
        Self::DnsActivity,
        Self::FileActivity,
        Self::LlmActivity,
        Self::Finding,
        Self::Other,
    ];

    /// The class's position in [`EventClass::ALL`] (and among the schema's symbols).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authentication => "authentication",
            Self::ProcessActivity => "process_activity",
            Self::NetworkActivity => "network_activity",
            Self::HttpActivity => "http_activity",
            Self::DnsActivity => "dns_activity",
            Self::FileActivity => "file_activity",
            Self::LlmActivity => "llm_activity",
            Self::Finding => "finding",
            Self::Other => "other",
        }
    }

    /// Parses a class name as producers spell it (ours, OCSF's and ECS's common names).
    pub fn from_name(name: &str) -> Option<Self> {
        let lower = name.trim().to_ascii_lowercase();
        Some(match lower.as_str() {
            "authentication" | "auth" | "login" | "logon" => Self::Authentication,
            "process_activity" | "process" => Self::ProcessActivity,
            "network_activity" | "network" | "network_connection" | "connection" => {
                Self::NetworkActivity
            }
            "http_activity" | "http" | "web" => Self::HttpActivity,
            "dns_activity" | "dns" => Self::DnsActivity,
            "file_activity" | "file" | "file_system_activity" => Self::FileActivity,
            "llm_activity" | "llm" | "prompt" => Self::LlmActivity,
            "finding" | "detection_finding" | "alert" => Self::Finding,
            "other" => Self::Other,
            _ => return None,
        })
    }
}

/// Where the event came from on the bus, and in what format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Source {
    pub format: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub vendor: Option<String>,
    pub product: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Actor {
    pub user: Option<String>,
    pub domain: Option<String>,
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Endpoint {
    pub ip: Option<String>,
    pub port: Option<i32>,
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Process {
    pub pid: Option<i64>,
    pub name: Option<String>,
    pub path: Option<String>,
    pub command_line: Option<String>,
    pub user: Option<String>,
    pub parent_name: Option<String>,
    pub parent_command_line: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Http {
    pub method: Option<String>,
    pub url: Option<String>,
    pub status: Option<i32>,
    pub user_agent: Option<String>,
    pub referrer: Option<String>,
    pub bytes_in: Option<i64>,
    pub bytes_out: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Dns {
    pub query: Option<String>,
    pub qtype: Option<String>,
    pub rcode: Option<String>,
    pub answers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct File {
    pub path: Option<String>,
    pub name: Option<String>,
    pub size: Option<i64>,
    pub md5: Option<String>,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Llm {
    pub model: Option<String>,
    pub session_id: Option<String>,
    pub prompt: Option<String>,
    pub response: Option<String>,
    pub tokens_in: Option<i64>,
    pub tokens_out: Option<i64>,
}

/// A normalized event. Field order and types follow `schemas/avro/event.v1.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Event {
    pub id: String,
    pub class: EventClass,
    /// Event time, UTC microseconds since the epoch.
    pub time_us: i64,
    /// When normalize accepted the event, UTC microseconds.
    pub ingest_time_us: i64,
    pub tenant: String,
    pub partition_key: String,
    pub source: Source,
    pub severity: Option<String>,
    pub message: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub host: Option<String>,
    pub actor: Option<Actor>,
    pub src: Option<Endpoint>,
    pub dst: Option<Endpoint>,
    pub process: Option<Process>,
    pub http: Option<Http>,
    pub dns: Option<Dns>,
    pub file: Option<File>,
    pub llm: Option<Llm>,
    pub tags: Vec<String>,
    pub attrs: FieldMap<String>,
    pub features: FieldMap<f64>,
    pub raw: Option<String>,
    pub matches: Vec<Match>,
    pub correlations: Vec<Correlation>,
    pub score: Option<Score>,
}

impl Event {
    /// The user the event is about, wherever the producer put it.
    pub fn user(&self) -> Option<&str> {
        self.actor
            .as_ref()
            .and_then(|a| a.user.as_deref())
            .or_else(|| self.process.as_ref().and_then(|p| p.user.as_deref()))
    }

    pub fn src_ip(&self) -> Option<&str> {
        self.src.as_ref().and_then(|s| s.ip.as_deref())
    }

    pub fn dst_ip(&self) -> Option<&str> {
        self.dst.as_ref().and_then(|s| s.ip.as_deref())
    }
}
