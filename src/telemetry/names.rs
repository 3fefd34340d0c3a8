//! Every metric name in one place, so dashboards and alert rules have one source of truth.

pub const STAGE_RECORDS_IN: &str = "threatpipe_stage_records_in_total";
pub const STAGE_RECORDS_OUT: &str = "threatpipe_stage_records_out_total";
pub const STAGE_DEAD_LETTERED: &str = "threatpipe_stage_dead_lettered_total";
pub const STAGE_COMMITS: &str = "threatpipe_stage_commits_total";
pub const STAGE_IN_FLIGHT: &str = "threatpipe_stage_in_flight";
pub const STAGE_UP: &str = "threatpipe_stage_up";
pub const GENERATOR_EVENTS: &str = "threatpipe_generator_events_total";
pub const GENERATOR_ATTACKS: &str = "threatpipe_generator_attacks_total";
pub const ALERTS_SEEN: &str = "threatpipe_alerts_total";
pub const DEAD_LETTERS_SEEN: &str = "threatpipe_dead_letters_total";
pub const RULES_RELOADS: &str = "threatpipe_rules_reloads_total";
pub const SCAN_MATCHES: &str = "threatpipe_scan_matches_total";
pub const SCAN_LOADED: &str = "threatpipe_scan_loaded";
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
