//! `threatpipe load` against a real pipeline on the real broker and Redis: what it reports
//! from the far end (alerts topic, live-feed client, recall, throughput) must be what the
//! pipeline did. The figures themselves are benchmarks (load/e2e.sh); this checks the
//! instrument.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{create_topics, free_port, stage_env, unique, wait_assignments, StageProcess};

#[test]
fn load_reports_alerts_feed_and_recall_measured_from_the_far_end() {
    support::require_broker();
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let topic = |name: &str| unique(&format!("load.{name}"));
    let (raw, normalized, scanned, correlated, scored, alerts, alerts_json, dlq) =
        (topic("raw"), topic("normalized"), topic("scanned"), topic("correlated"), topic("scored"), topic("alerts"), topic("alerts.json"), topic("dlq"));
    create_topics(&[&raw, &normalized, &scanned, &correlated, &scored, &alerts, &alerts_json, &dlq], 2);
    let token = unique("tok-load");
    let mut env = stage_env("load", "normalize,quick-scan,correlate,ml-score,alert");
    for (key, value) in [
        ("TOPICS__RAW", raw.clone()),
        ("TOPICS__NORMALIZED", normalized),
        ("TOPICS__SCANNED", scanned),
        ("TOPICS__CORRELATED", correlated),
        ("TOPICS__SCORED", scored),
        ("TOPICS__ALERTS", alerts),
        ("TOPICS__ALERTS_JSON", alerts_json.clone()),
        ("TOPICS__DLQ", dlq),
        ("CORRELATE__CHECKPOINT", "memory".into()),
        ("ML__CHECKPOINT", "memory".into()),
        ("ALERT__DEDUPE", redis),
        ("ALERT__DEDUPE_PREFIX", unique("tp-test:load:dedupe")),
        ("ALERT__CHANNEL", unique("tp-test:load:channel")),
        ("ALERT__STREAM", unique("tp-test:load:stream")),
        (&format!("FEED__TOKENS__{token}"), "*".into()),
    ] {
        env.insert(format!("THREATPIPE_{key}"), value);
    }
    let port = free_port();
    let pipeline = StageProcess::start_serving("load-pipeline", &format!("127.0.0.1:{port}"), &[], &env);
    // The five stages of the pipeline each get their partitions.
    wait_assignments(&[&pipeline], 5, Duration::from_secs(90));

    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("load.json");
    let count = 3000;
    let status = Command::new(env!("CARGO_BIN_EXE_threatpipe"))
        .args(["load", "--brokers", &support::brokers(), "--raw-topic", &raw, "--measure-topic", &alerts_json])
        .args(["--rate", "1000", "--count", &count.to_string(), "--drain", "90s"])
        .args(["--feed", &format!("ws://127.0.0.1:{port}"), "--feed-token", &token])
        .args(["--metrics", &format!("http://127.0.0.1:{port}/metrics")])
        .arg("--json")
        .arg(&json)
        .status()
        .unwrap();
    assert!(status.success(), "threatpipe load failed; pipeline log:\n{}", pipeline.log_text());
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());

    assert_eq!(report["produced"], count);
    assert_eq!(report["all_taken_by_last_stage"], true, "the last stage did not take every event: {report}");
    let throughput = report["pipeline_events_per_second"].as_f64().unwrap();
    assert!(throughput > 100.0 && throughput < 2000.0, "throughput {throughput} at a 1,000/s target");
    // Alerts named events, and each such event has a latency; the feed client, holding a
    // token for every tenant, saw alerts for exactly the same events.
    let named = report["results"].as_u64().unwrap();
    assert!(named > 0, "no alert named a produced event: {report}");
    let latency = &report["latency_ms"];
    assert!(latency["p50"].as_f64().unwrap() > 0.0 && latency["p99"].as_f64() >= latency["p50"].as_f64());
    assert_eq!(latency["samples"], named);
    let feed = &report["feed"];
    assert_eq!(feed["events_named"], named, "the feed client and the alerts topic disagree: {report}");
    assert_eq!(feed["lagged_notices"], 0);
    assert!(feed["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    // Recall counts only labelled attack events named by alerts.
    let recall = &report["recall"];
    let (in_alerts, attacks) = (recall["attack_events_in_alerts"].as_u64().unwrap(), recall["attack_events"].as_u64().unwrap());
    assert!(attacks > 0 && in_alerts > 0 && in_alerts <= attacks, "recall {in_alerts} of {attacks}: {report}");
    assert!(recall["scenarios_detected"].as_u64().unwrap() >= 1);
    assert!(in_alerts <= named);
    // The per-second timeline accounts for every result.
    let rows = report["latency_by_second"]["rows"].as_array().unwrap();
    assert_eq!(rows.iter().map(|row| row[1].as_u64().unwrap()).sum::<u64>(), named, "{report}");
    let worst = report["latency_by_second"]["worst"]["p99_ms"].as_f64().unwrap();
    assert!(worst > 0.0 && worst <= latency["max"].as_f64().unwrap() + 0.1, "worst second's p99 {worst} against {latency}");

    // librdkafka's statistics (every 5 s) became the Kafka latency gauges: the producer's
    // queue and round trip, and each stage's fetch round trip (labelled with its group).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let wanted = ["threatpipe_kafka_producer_queue_seconds{client=\"producer\",quantile=\"0.99\"}", "threatpipe_kafka_broker_rtt_seconds{client=\"producer\",quantile=\"0.5\"}"];
    let has_stage_rtt = |scrape: &str| scrape.lines().any(|l| l.starts_with("threatpipe_kafka_broker_rtt_seconds{client=\"") && !l.contains("client=\"producer\""));
    let mut scrape = String::new();
    while std::time::Instant::now() < deadline {
        scrape = support::http_get(port, "/metrics").map(|(_, body)| body).unwrap_or_default();
        if wanted.iter().all(|w| scrape.contains(w)) && has_stage_rtt(&scrape) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for w in wanted {
        let value: f64 = scrape.lines().find_map(|l| l.strip_prefix(w)).and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("{w} not in /metrics:\n{scrape}"));
        assert!(value > 0.0 && value < 10.0, "{w} = {value}");
    }
    assert!(has_stage_rtt(&scrape), "no stage's fetch round trip in /metrics:\n{scrape}");
}
