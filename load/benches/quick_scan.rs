//! Quick-scan throughput on one core with the whole detection load in force: the SigmaHQ
//! collection (3,141 rules) plus our rules, 1,000,000 IoCs plus the shipped feeds, and every
//! pattern pack.
//!
//! Lanes, all over the same ~1 KB events (SigmaHQ's own regression samples — Sysmon and
//! Windows evtx-JSON — and generator traffic: web, DNS, LLM prompts, logins, firewall):
//! - `scan`: `Detector::scan` on a normalized event (what quick-scan adds per event);
//! - `stage`: the stage's full CPU cost: Avro decode + scan + Avro encode;
//! - `avro_decode`, `avro_encode`: the stage's codec cost alone;
//! - `rsigma_engine_all_rules` (baseline, same run): the same Sigma rules in one plain rsigma
//!   `Engine` (as the rsigma CLI builds it), `evaluate` on the same flat documents — no
//!   logsource routing, no IoCs, no packs.
//!
//! Needs THREATPIPE_DATA (../shared/data) for the SigmaHQ rules.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use threatpipe::bus::Record;
use threatpipe::detect::ioc::IocSetBuilder;
use rsigma_eval::event::JsonEvent;
use threatpipe::detect::sigma;
use threatpipe::detect::{Detector, ScanConfig};
use threatpipe::event::{avro, Event};
use threatpipe::generator::{EventGenerator, GeneratorConfig};
use threatpipe::normalize::{NormalizeConfig, Normalizer};

/// The binary's allocator (src/main.rs), so the figures are the binary's.
#[global_allocator]
static GLOBAL: threatpipe::allocator::Mimalloc = threatpipe::allocator::Mimalloc;

const NOW: i64 = 1_736_676_000_000_000;

fn data_dir() -> PathBuf {
    std::env::var("THREATPIPE_DATA").map(PathBuf::from).unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

fn detector() -> Detector {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = ScanConfig {
        sigma: vec![data_dir().join("sigma/rules"), root.join("pipelines/rules")],
        intel: vec![root.join("pipelines/intel")],
        patterns: vec![root.join("pipelines/patterns")],
        ..ScanConfig::default()
    };
    let (mut detector, report) = Detector::load(&config);
    let mut builder = IocSetBuilder::new();
    builder.load_path(&root.join("pipelines/intel"));
    // `cargo bench` passes --bench; the test suite runs each lane once as a smoke test, where
    // a million indicators (a minute to build in a debug build) would only cost time.
    let synthetic = if std::env::args().any(|a| a == "--bench") { 1_000_000 } else { 10_000 };
    let feed = threatpipe::rules_cli::synthetic_feed(synthetic);
    let started = std::time::Instant::now();
    builder.load_text(Path::new("synthetic"), &feed, &Arc::from("synthetic"));
    detector.iocs = builder.build();
    // The "1M indicators load in under 5 s" is measured here, not in a test.
    eprintln!("{report}; plus {} indicators, {synthetic} synthetic ones parsed and built in {:.2?}", detector.iocs.len(), started.elapsed());
    detector
}

/// One plain rsigma engine holding every rule, as the rsigma CLI builds it.
fn rsigma_engine(paths: &[PathBuf]) -> rsigma_eval::Engine {
    let mut files = Vec::new();
    let mut stack = paths.to_vec();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).into_iter().flatten().flatten().map(|e| e.path()));
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            files.push(path);
        }
    }
    let mut rules = Vec::new();
    for file in files {
        if let Ok(collection) = std::fs::read_to_string(&file).map_err(|e| e.to_string()).and_then(|t| rsigma_parser::parse_sigma_yaml(&t).map_err(|e| e.to_string())) {
            rules.extend(collection.rules);
        }
    }
    let mut engine = rsigma_eval::Engine::new();
    let _ = engine.add_rules(rules.iter());
    engine
}

/// Regression-sample evtx events and generator traffic, normalized.
pub fn events() -> Vec<Event> {
    let normalizer = Normalizer::new(NormalizeConfig::default(), "default");
    let mut events = Vec::new();
    let mut stack = vec![data_dir().join("sigma/regression_data")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                let bytes = std::fs::read(&path).unwrap_or_default();
                for value in serde_json::Deserializer::from_slice(&bytes).into_iter::<serde_json::Value>().flatten() {
                    let payload = serde_json::to_vec(&value).unwrap_or_default();
                    let record = Record { topic: "raw".into(), partition: 0, offset: 0, key: None, payload, timestamp_ms: None };
                    if let Ok(event) = normalizer.normalize(&record, NOW) {
                        events.push(event);
                    }
                }
            }
        }
    }
    let evtx = events.len();
    assert!(evtx > 0, "no Sigma regression samples under {}: set THREATPIPE_DATA to the shared data directory (../shared/data)", data_dir().display());
    let mut generator = EventGenerator::new(GeneratorConfig { attack_every: 50, malformed_ratio: 0.0, ..GeneratorConfig::default() });
    for offset in 0..evtx as i64 {
        let record = Record { topic: "raw".into(), partition: 0, offset, key: None, payload: generator.next_record(NOW).payload, timestamp_ms: None };
        if let Ok(event) = normalizer.normalize(&record, NOW) {
            events.push(event);
        }
    }
    events
}

fn bench(c: &mut Criterion) {
    let detector = detector();
    let events = events();
    let avg = events.iter().map(|e| avro::encode_event(e).map(|b| b.len()).unwrap_or(0)).sum::<usize>() / events.len();
    let hits: usize = events.iter().map(|e| detector.scan(e).len()).sum();
    eprintln!("{} events, {avg} bytes (Avro) on average, {hits} matches per pass", events.len());
    let payloads: Vec<Record> = events
        .iter()
        .map(|e| Record { topic: "n".into(), partition: 0, offset: 0, key: None, payload: avro::encode_event(e).unwrap_or_default(), timestamp_ms: None })
        .collect();

    let mut group = c.benchmark_group("quick_scan");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(20);
    group.bench_function("scan", |b| {
        b.iter(|| {
            let mut n = 0;
            for e in &events {
                n += detector.scan(black_box(e)).len();
            }
            n
        })
    });
    group.bench_function("stage", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for r in &payloads {
                let mut e = avro::decode_event(black_box(&r.payload)).unwrap_or_default();
                e.matches = detector.scan(&e);
                bytes += avro::encode_event(&e).map(|p| p.len()).unwrap_or(0);
            }
            bytes
        })
    });
    group.bench_function("avro_decode", |b| {
        b.iter(|| payloads.iter().map(|r| avro::decode_event(black_box(&r.payload)).map(|e| e.attrs.len()).unwrap_or(0)).sum::<usize>())
    });
    group.bench_function("avro_encode", |b| {
        b.iter(|| events.iter().map(|e| avro::encode_event(black_box(e)).map(|p| p.len()).unwrap_or(0)).sum::<usize>())
    });
    let engine = rsigma_engine(&[data_dir().join("sigma/rules"), Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/rules")]);
    let documents: Vec<serde_json::Value> = events.iter().map(sigma::document).collect();
    group.bench_function("rsigma_engine_all_rules", |b| {
        b.iter(|| {
            let mut n = 0;
            for d in &documents {
                n += engine.evaluate(&JsonEvent::borrow(black_box(d))).len();
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
