-- Rollups kept by materialized views at insert time. They count inserted rows: a replayed
-- batch counts again until its base rows merge, so exact figures come from the base tables
-- (FINAL); the rollups serve dashboards over long ranges.
CREATE TABLE IF NOT EXISTS {db}.alerts_per_minute
(
    minute DateTime,
    tenant String,
    severity String,
    rule_id String,
    alerts UInt64
)
ENGINE = SummingMergeTree(alerts)
PARTITION BY toDate(minute)
ORDER BY (tenant, minute, severity, rule_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.alerts_per_minute_mv TO {db}.alerts_per_minute AS
SELECT toStartOfMinute(time) AS minute, tenant, severity, arrayJoin(if(empty(rule_ids), [''], rule_ids)) AS rule_id, toUInt64(1) AS alerts
FROM {db}.alerts;

CREATE TABLE IF NOT EXISTS {db}.alerts_per_hour
(
    hour DateTime,
    tenant String,
    severity String,
    rule_id String,
    alerts UInt64
)
ENGINE = SummingMergeTree(alerts)
PARTITION BY toDate(hour)
ORDER BY (tenant, hour, severity, rule_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.alerts_per_hour_mv TO {db}.alerts_per_hour AS
SELECT toStartOfHour(time) AS hour, tenant, severity, arrayJoin(if(empty(rule_ids), [''], rule_ids)) AS rule_id, toUInt64(1) AS alerts
FROM {db}.alerts;

CREATE TABLE IF NOT EXISTS {db}.events_per_class_minute
(
    minute DateTime,
    tenant String,
    class String,
    events UInt64
)
ENGINE = SummingMergeTree(events)
PARTITION BY toDate(minute)
ORDER BY (tenant, minute, class);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.events_per_class_minute_mv TO {db}.events_per_class_minute AS
SELECT toStartOfMinute(time) AS minute, tenant, class, toUInt64(1) AS events
FROM {db}.events;
