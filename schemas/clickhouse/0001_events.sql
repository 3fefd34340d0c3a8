-- Normalized, scored events (events.scored). One row per event id: a replay inserts the
-- same id again and ReplacingMergeTree keeps one (query with FINAL, or GROUP BY id, for
-- exact counts before parts merge). Partitioned by day so retention drops whole days.
-- Plain types only: runs on ClickHouse 18.16 (DESIGN.md) and current releases.
CREATE TABLE IF NOT EXISTS {db}.events
(
    day Date,
    time DateTime,
    time_us Int64,
    ingest_time_us Int64,
    id String,
    tenant String,
    class String,
    partition_key String,
    severity String,
    message String,
    action String,
    outcome String,
    host String,
    user String,
    src_ip String,
    dst_ip String,
    dst_port Int32,
    process_name String,
    command_line String,
    url String,
    http_status Int32,
    dns_query String,
    prompt String,
    source_format String,
    source_topic String,
    source_partition Int32,
    source_offset Int64,
    match_rule_ids Array(String),
    match_kinds Array(String),
    match_levels Array(String),
    match_tags Array(String),
    correlation_rule_ids Array(String),
    risk Float64,
    model_version String,
    top_features Array(String),
    inserted_at DateTime
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY day
ORDER BY (tenant, time, id);
