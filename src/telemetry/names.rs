//! Every metric name in one place, so dashboards and alert rules have one source of truth.

pub const STAGE_RECORDS_IN: &str = "threatpipe_stage_records_in_total";
pub const STAGE_RECORDS_OUT: &str = "threatpipe_stage_records_out_total";
pub const STAGE_DEAD_LETTERED: &str = "threatpipe_stage_dead_lettered_total";
pub const STAGE_COMMITS: &str = "threatpipe_stage_commits_total";
pub const STAGE_IN_FLIGHT: &str = "threatpipe_stage_in_flight";
pub const STAGE_UP: &str = "threatpipe_stage_up";
/// Records behind the end of a stage's input topic (Kafka).
pub const STAGE_LAG: &str = "threatpipe_stage_lag";
/// Seconds between a record being produced to a stage's input and the stage taking it.
pub const STAGE_INPUT_AGE: &str = "threatpipe_stage_input_age_seconds";
/// Where a hop's time goes on the Kafka side, from librdkafka's statistics (every 5 s, over
/// the last 5 s; label `quantile` 0.5 or 0.99, and `client`: `producer` or the consumer
/// group). Queue: a record's wait in the producer before its request is sent (linger and
/// the request in flight ahead of it). Round trip: request to response at the broker
/// (for a consumer's fetch, including the broker's wait for records).
pub const KAFKA_PRODUCER_QUEUE: &str = "threatpipe_kafka_producer_queue_seconds";
pub const KAFKA_BROKER_RTT: &str = "threatpipe_kafka_broker_rtt_seconds";
/// Alerts emitted (new alerts and count updates), by severity.
pub const ALERTS_RAISED: &str = "threatpipe_alerts_raised_total";
/// Seconds from an event's normalization to the alert it raised.
pub const ALERT_LATENCY: &str = "threatpipe_alert_latency_seconds";
pub const GENERATOR_EVENTS: &str = "threatpipe_generator_events_total";
pub const GENERATOR_ATTACKS: &str = "threatpipe_generator_attacks_total";
pub const ALERTS_SEEN: &str = "threatpipe_alerts_total";
pub const DEAD_LETTERS_SEEN: &str = "threatpipe_dead_letters_total";
pub const RULES_RELOADS: &str = "threatpipe_rules_reloads_total";
pub const SCAN_MATCHES: &str = "threatpipe_scan_matches_total";
pub const CORRELATION_SIGNALS: &str = "threatpipe_correlation_signals_total";
pub const CORRELATION_LATE_EVENTS: &str = "threatpipe_correlation_late_events_total";
pub const CORRELATION_EVICTED_KEYS: &str = "threatpipe_correlation_evicted_keys_total";
pub const CORRELATION_TRUNCATED_ENTRIES: &str = "threatpipe_correlation_truncated_entries_total";
pub const CORRELATION_ACTIVE_KEYS: &str = "threatpipe_correlation_active_keys";
pub const STATE_CHECKPOINT_FAILURES: &str = "threatpipe_state_checkpoint_failures_total";
pub const MODEL_RELOADS: &str = "threatpipe_model_reloads_total";
pub const ML_EVICTED_ENTITIES: &str = "threatpipe_ml_evicted_entities_total";
pub const ML_ENTITIES: &str = "threatpipe_ml_entities";
pub const ML_RISK: &str = "threatpipe_ml_risk";
pub const SIMILARITY_ERRORS: &str = "threatpipe_similarity_errors_total";
pub const SINK_ROWS: &str = "threatpipe_sink_rows_total";
pub const SINK_INSERT_SECONDS: &str = "threatpipe_sink_insert_seconds";
pub const SINK_INSERT_FAILURES: &str = "threatpipe_sink_insert_failures_total";
pub const SINK_SKIPPED: &str = "threatpipe_sink_skipped_total";
pub const FEED_CLIENTS: &str = "threatpipe_feed_clients";
pub const FEED_ALERTS: &str = "threatpipe_feed_alerts_total";
pub const FEED_DELIVERED: &str = "threatpipe_feed_delivered_total";
/// Writes to live-feed clients (one carries one or more alerts; see `feed.coalesce`).
pub const FEED_WRITES: &str = "threatpipe_feed_writes_total";
pub const FEED_SKIPPED: &str = "threatpipe_feed_skipped_total";
pub const FEED_DROPPED_CLIENTS: &str = "threatpipe_feed_dropped_clients_total";
pub const FEED_DEAD_CLIENTS: &str = "threatpipe_feed_dead_clients_total";
pub const FEED_REFUSED: &str = "threatpipe_feed_refused_total";
pub const FEED_REPLAYS_DROPPED: &str = "threatpipe_feed_replays_dropped_total";
pub const CONNECTOR_SENT: &str = "threatpipe_connector_sent_total";
pub const CONNECTOR_FAILED: &str = "threatpipe_connector_failed_total";
pub const CONNECTOR_RETRIED: &str = "threatpipe_connector_retried_total";
pub const CONNECTOR_LAG: &str = "threatpipe_connector_lag";

/// Every name above: what dashboards and alert rules may query (checked by tests/deploy.rs).
pub const ALL: &[&str] = &[
    STAGE_RECORDS_IN,
    STAGE_RECORDS_OUT,
    STAGE_DEAD_LETTERED,
    STAGE_COMMITS,
    STAGE_IN_FLIGHT,
    STAGE_UP,
    STAGE_LAG,
    STAGE_INPUT_AGE,
    KAFKA_PRODUCER_QUEUE,
    KAFKA_BROKER_RTT,
    ALERTS_RAISED,
    ALERT_LATENCY,
    GENERATOR_EVENTS,
    GENERATOR_ATTACKS,
    ALERTS_SEEN,
    DEAD_LETTERS_SEEN,
    RULES_RELOADS,
    SCAN_MATCHES,
    CORRELATION_SIGNALS,
    CORRELATION_LATE_EVENTS,
    CORRELATION_EVICTED_KEYS,
    CORRELATION_TRUNCATED_ENTRIES,
    CORRELATION_ACTIVE_KEYS,
    STATE_CHECKPOINT_FAILURES,
    MODEL_RELOADS,
    ML_EVICTED_ENTITIES,
    ML_ENTITIES,
    ML_RISK,
    SIMILARITY_ERRORS,
    SINK_ROWS,
    SINK_INSERT_SECONDS,
    SINK_INSERT_FAILURES,
    SINK_SKIPPED,
    FEED_CLIENTS,
    FEED_ALERTS,
    FEED_DELIVERED,
    FEED_WRITES,
    FEED_SKIPPED,
    FEED_DROPPED_CLIENTS,
    FEED_DEAD_CLIENTS,
    FEED_REFUSED,
    FEED_REPLAYS_DROPPED,
    CONNECTOR_SENT,
    CONNECTOR_FAILED,
    CONNECTOR_RETRIED,
    CONNECTOR_LAG,
];
