-- Dead letters (events.dlq): what could not be processed, and why.
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    day Date,
    time DateTime,
    time_us Int64,
    id String,
    stage String,
    reason_code String,
    reason String,
    source_topic String,
    source_partition Int32,
    source_offset Int64,
    original_size Int64,
    original String,
    inserted_at DateTime
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY day
ORDER BY (stage, reason_code, time, id);
