//! The sink role on the real broker and the real ClickHouse: scored events, alerts and dead
//! letters land in their tables; a sink killed mid-stream and restarted leaves exact counts
//! (nothing lost; replayed rows fold into one per id); a ClickHouse stopped for 30 s
//! mid-run loses nothing.

mod support;

use std::time::{Duration, Instant};

use support::{create_topics, produce_all, require_broker, stage_env, unique, wait_assigned, StageProcess};
use threatpipe::db::{migrate, ClickHouseConfig};
use threatpipe::event::{avro, Alert, DeadLetter, Event, EventClass, Severity};

const EVENTS: usize = 100_000;
const ALERTS: usize = 5_000;
const DEAD: usize = 300;

async fn count(config: &ClickHouseConfig, sql: &str) -> u64 {
    config.client().query(sql).fetch_one::<u64>().await.unwrap()
}

fn scored_events(now: i64, range: std::ops::Range<usize>) -> Vec<(String, Vec<u8>)> {
    range
        .map(|i| {
            let e = Event { id: format!("e{i}"), class: EventClass::Authentication, time_us: now + i as i64, tenant: "acme".into(), partition_key: format!("acme|u{}", i % 50), ..Event::default() };
            (e.partition_key.clone(), avro::encode_event(&e).unwrap())
        })
        .collect()
}

/// Overrides for a sink reading `topics` (scored, alerts, dlq) into `config`'s database.
fn sink_env(test: &str, topics: [&String; 3], config: &ClickHouseConfig) -> std::collections::HashMap<String, String> {
    let mut env = stage_env(test, "sink");
    for (key, value) in [
        ("TOPICS__SCORED", topics[0].clone()),
        ("TOPICS__ALERTS", topics[1].clone()),
        ("TOPICS__DLQ", topics[2].clone()),
        ("CLICKHOUSE__URL", config.url.clone()),
        ("CLICKHOUSE__DATABASE", config.database.clone()),
        ("SINK__BATCH_ROWS", "500".into()),
    ] {
        env.insert(format!("THREATPIPE_{key}"), value);
    }
    env
}

#[test]
fn a_clickhouse_stopped_for_30_seconds_mid_run_loses_nothing() {
    require_broker();
    let mut server = support::PrivateClickHouse::start();
    let config = ClickHouseConfig { url: server.url(), database: "tp_outage".into(), ..ClickHouseConfig::default() };
    support::runtime().block_on(migrate(&config)).unwrap();
    let (scored, alerts, dlq) = (unique("outage.scored"), unique("outage.alerts"), unique("outage.dlq"));
    create_topics(&[&scored, &alerts, &dlq], 2);
    let sink = StageProcess::start("sink-outage", &[], &sink_env("sink-outage", [&scored, &alerts, &dlq], &config));
    wait_assigned(&[&sink]);
    let now = chrono::Utc::now().timestamp_micros();
    produce_all(&scored, &scored_events(now, 0..3_000));
    let events = |config: &ClickHouseConfig| support::runtime().block_on(count(config, "SELECT uniqExact(id) FROM tp_outage.events"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while events(&config) < 3_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(events(&config), 3_000, "before the outage; log:\n{}", sink.log_text());

    // Outage: events keep coming for 30 s while nothing can be inserted.
    server.stop();
    let outage = Instant::now();
    for part in 0..3 {
        produce_all(&scored, &scored_events(now, 3_000 + part * 1_000..4_000 + part * 1_000));
        std::thread::sleep(Duration::from_secs(9));
    }
    while outage.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    server.resume();
    let deadline = Instant::now() + Duration::from_secs(90);
    while events(&config) < 6_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(events(&config), 6_000, "everything produced during the outage lands after it; log:\n{}", sink.log_text());
    assert_eq!(support::runtime().block_on(count(&config, "SELECT count() FROM tp_outage.events FINAL")), 6_000);
    // The sink logs the recovery after the insert returns, so the rows can be counted a
    // moment before the line is written.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sink.log_text().contains("succeed again") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = sink.log_text();
    assert!(log.contains("ClickHouse insert failed") && log.contains("succeed again"), "the outage was noticed and recovered from:\n{log}");
}

#[test]
fn a_sink_killed_mid_stream_leaves_exact_counts() {
    require_broker();
    let url = std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let config = ClickHouseConfig { url, database: unique("tp_sink").replace('-', "_"), ..ClickHouseConfig::default() };
    let db = config.database.clone();
    support::runtime().block_on(migrate(&config)).unwrap();
    let (scored, alerts, dlq) = (unique("sink.scored"), unique("sink.alerts"), unique("sink.dlq"));
    create_topics(&[&scored, &alerts, &dlq], 2);

    let now = chrono::Utc::now().timestamp_micros();
    let events = scored_events(now, 0..EVENTS);
    let alert_records: Vec<(String, Vec<u8>)> = (0..ALERTS)
        .map(|i| {
            let a = Alert { id: format!("a{i}"), tenant: "acme".into(), time_us: now, last_seen_us: now, severity: Severity::High, title: "t".into(), rule_ids: vec!["r1".into()], count: 1, ..Alert::default() };
            (a.id.clone(), avro::encode_alert(&a).unwrap())
        })
        .collect();
    let dead_records: Vec<(String, Vec<u8>)> = (0..DEAD)
        .map(|i| {
            let d = DeadLetter { stage: "normalize".into(), reason_code: "bad_json".into(), reason: "x".into(), source_topic: "events.raw".into(), source_offset: i as i64, time_us: now, original: b"{".to_vec(), original_size: 1, ..DeadLetter::default() };
            (format!("d{i}"), avro::encode_dead_letter(&d).unwrap())
        })
        .collect();

    let env = sink_env("sink", [&scored, &alerts, &dlq], &config);
    let mut first = StageProcess::start("sink-a", &[], &env);
    wait_assigned(&[&first]);
    produce_all(&alerts, &alert_records);
    produce_all(&dlq, &dead_records);
    produce_all(&scored, &events);

    // Kill it once some, not all, events are in.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut landed = 0;
    while Instant::now() < deadline {
        landed = support::runtime().block_on(count(&config, &format!("SELECT count() FROM {db}.events")));
        if landed > 10_000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(landed > 0, "the sink inserted nothing; log:\n{}", first.log_text());
    first.sigkill();
    let second = StageProcess::start("sink-b", &[], &env);

    let deadline = Instant::now() + Duration::from_secs(120);
    let totals = |config: &ClickHouseConfig| {
        support::runtime().block_on(async {
            (
                count(config, &format!("SELECT uniqExact(id) FROM {db}.events")).await,
                count(config, &format!("SELECT uniqExact(id) FROM {db}.alerts")).await,
                count(config, &format!("SELECT uniqExact(id) FROM {db}.dead_letters")).await,
            )
        })
    };
    let mut seen = totals(&config);
    while seen != (EVENTS as u64, ALERTS as u64, DEAD as u64) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        seen = totals(&config);
    }
    assert_eq!(seen, (EVENTS as u64, ALERTS as u64, DEAD as u64), "nothing lost across the kill; log:\n{}", second.log_text());
    let (rows_final, raw_rows) = support::runtime().block_on(async {
        (count(&config, &format!("SELECT count() FROM {db}.events FINAL")).await, count(&config, &format!("SELECT count() FROM {db}.events")).await)
    });
    assert_eq!(rows_final, EVENTS as u64, "one row per event after dedup");
    eprintln!("kill at {landed} events; {raw_rows} rows before dedup for {EVENTS} events");
    support::runtime().block_on(async { config.client().query(&format!("DROP DATABASE {db}")).execute().await.unwrap() });
}
