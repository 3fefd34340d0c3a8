//! The alert stage in an alert storm, against the real Redis: how many alerts a second one
//! instance joins (dedupe, count, live-feed publication) when every event raises one.
//!
//!   CARGO_TARGET_DIR=~/.cache/threatpipe/target cargo bench --bench alert [-- EVENTS]
//!
//! (Runs only under `cargo bench`, which passes `--bench`; as a test target it does nothing.)
//! Needs Redis at REDIS_URL (default redis://127.0.0.1:6379); `scripts/services.sh` starts
//! one where none runs. Keys live under a fresh prefix and expire with the window.
//!
//! Events: high-level Sigma matches on 200 users of one tenant, round robin (a password
//! spray seen by every rule at once): each event joins its user's open alert. The stage
//! joins a burst's alerts in one Redis round trip when the runner finishes the burst, so
//! the lanes differ only in burst size: 1 (a round trip per alert, as every alert cost
//! before bursts were joined together) and larger bursts, as a busy stage takes them
//! (`runner.burst_max`, 4,000 by default). Each lane's figure is given as a ratio to the
//! first; the lanes alternate over three rounds (the machine is shared).

use std::time::{Duration, Instant};

use threatpipe::bus::{OutMessage, Record};
use threatpipe::event::{avro, Event, Match};
use threatpipe::stage::alert::{AlertConfig, AlertStage, DedupeStore};
use threatpipe::stage::Stage;

fn events(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let user = format!("user{:03}", i % 200);
            let event = Event {
                id: format!("storm-{i}"),
                tenant: "acme".into(),
                partition_key: format!("acme|{user}"),
                time_us: 1_763_596_800_000_000 + i as i64,
                message: Some(format!("Failed password for {user} from 203.0.113.7 port 22 ssh2")),
                matches: vec![Match { rule_id: "r-spray".into(), title: "Password spray".into(), level: "high".into(), kind: "sigma".into(), tags: vec!["attack.credential-access".into(), "attack.t1110.003".into()], ..Match::default() }],
                ..Event::default()
            };
            Record { topic: "events.scored".into(), partition: 0, offset: i as i64, key: None, payload: avro::encode_event(&event).expect("encodes"), timestamp_ms: None }
        })
        .collect()
}

/// Alerts joined per second through `stage`, `burst` records at a time.
fn run(stage: &mut AlertStage, records: &[Record], burst: usize) -> f64 {
    let now_us = chrono::Utc::now().timestamp_micros();
    let mut out: Vec<OutMessage> = Vec::new();
    let mut alerts = 0;
    let started = Instant::now();
    for chunk in records.chunks(burst) {
        for record in chunk {
            stage.process(record, now_us, &mut out).expect("processes");
        }
        stage.finish_burst(now_us, &mut out).expect("joins (is Redis up?)");
        alerts += out.len() / 2;
        assert!(out.iter().all(|m| !m.payload.is_empty()), "every output filled in");
        out.clear();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(alerts, records.len(), "one alert record per event");
    alerts as f64 / secs
}

fn main() {
    // `cargo bench` passes --bench; test runners (`cargo test --all-targets`, nextest's
    // --list) must find no tests here and not run a benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20_000);
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let records = events(n);
    // The largest lane is the default burst, so the bench follows the setting it measures.
    let bursts = [1, 100, threatpipe::config::RunnerConfig::default().burst_max];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); bursts.len()];
    for round in 0..3 {
        for (lane, &burst) in bursts.iter().enumerate() {
            // A fresh prefix per lane and round: every lane opens its 200 alerts, then counts.
            let prefix = format!("threatpipe-bench:alert:{}:{round}:{burst}", std::process::id());
            let config = AlertConfig { suppress: Duration::from_secs(120), channel: format!("{prefix}:channel"), stream: format!("{prefix}:stream"), stream_max_len: 1_000, ..AlertConfig::default() };
            let store = DedupeStore::open(&redis, &prefix).expect("Redis URL");
            let mut stage = AlertStage::new(config, store, "alerts".into(), "alerts.json".into(), "events.dlq".into());
            let rate = run(&mut stage, &records, burst);
            println!("round {}: bursts of {burst:>5}: {rate:>9.0} alerts/s", round + 1);
            rates[lane].push(rate);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&rates[0]);
    println!("\n{n} events, each raising an alert on one of 200 open alerts; medians of 3 rounds:");
    for (lane, &burst) in bursts.iter().enumerate() {
        let m = median(&rates[lane]);
        println!("bursts of {burst:>5}: {m:>9.0} alerts/s  ({:.1}x bursts of 1)", m / base);
    }
}
