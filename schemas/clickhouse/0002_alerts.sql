-- Alerts (the alerts topic). An alert is updated in place by the alert stage (count,
-- last_seen); the newest version of an id wins.
CREATE TABLE IF NOT EXISTS {db}.alerts
(
    day Date,
    time DateTime,
    time_us Int64,
    last_seen_us Int64,
    id String,
    tenant String,
    severity String,
    title String,
    rule_ids Array(String),
    entity String,
    risk Float64,
    count Int64,
    attack_tactics Array(String),
    attack_techniques Array(String),
    event_ids Array(String),
    summary String,
    inserted_at DateTime
)
ENGINE = ReplacingMergeTree(last_seen_us)
PARTITION BY day
ORDER BY (tenant, time, id);
