//! threatpipe: an event-streaming threat-detection pipeline.
//!
//! Apps produce security events to Kafka; stateless stages (normalize → quick-scan →
//! correlate → ml-score → alert) turn them into scored, deduplicated alerts. The same
//! binary runs every stage in one process over in-memory channels (embedded mode) or any
//! subset of stages against a Kafka-protocol broker. See README.md and DESIGN.md.
//!
//! Layout: `event` (the model and its Avro schemas), `bus` (transports; the only module that
//! touches rdkafka), `stage` (the pure stage trait and the at-least-once runner),
//! `normalize` (the first stage), `generator` (synthetic traffic), `serve` (HTTP), `feed` (the live
//! WebSocket feed and `threatpipe tail`),
//! `telemetry`, `config`, `app` (wiring and shutdown).

#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod bus;
pub mod cli;
pub mod config;
pub mod connect;
pub mod db;
pub mod detect;
pub mod error;
pub mod event;
pub mod feed;
pub mod generator;
pub mod load_cli;
pub mod ml;
pub mod ml_cli;
pub mod normalize;
pub mod progress;
pub mod rules_cli;
pub mod serve;
pub mod stage;
pub mod state;
pub mod telemetry;

/// A hash map for per-record lookups (partitions, schema ids, offsets): std's default
/// SipHash resists flooding by untrusted keys, which these keys are not, and it cost ~5% of
/// the embedded pipeline's instructions.
pub type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
