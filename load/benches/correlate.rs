//! Correlation throughput and state size with 100,000 active keys, on one core.
//!
//!   CARGO_TARGET_DIR=~/.cache/threatpipe/target cargo bench --bench correlate [-- EVENTS]
//!
//! (Runs only under `cargo bench`, which passes `--bench`; as a test target it does nothing.)
//!
//! Events: failed logins and firewall connections spread so the shipped chains
//! (pipelines/correlations) hold 100,000 windows at once: 25,000 (user, source) brute-force
//! windows, 25,000 per-source spraying windows, 25,000 (source, destination) port-scan
//! windows and 25,000 (source, port) host-scan windows, each with 8 entries (400,000
//! events), all inside one timespan, none over its threshold: the steady state of a large
//! estate, where the cost is bookkeeping, not firing.
//!
//! Lanes, each over the same events:
//! - `observe`: the pure core, `CorrelationRules::observe` into one partition state.
//! - `stage`: the whole stage per record (Avro decode, observe, Avro encode).
//! - `baseline_avro`: Avro decode + encode of the same records, what any stage pays; the
//!   stage's figure is reported as a ratio to it.
//! - memory per key: live heap bytes of the state (a counting allocator) / windows.
//! - checkpoint (when Redis answers at REDIS_URL): writing all windows, then an incremental
//!   checkpoint after 1% of keys changed, and the JSON bytes per window.

use std::alloc::{GlobalAlloc, Layout};

use threatpipe::allocator::Mimalloc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use threatpipe::bus::Record;
use threatpipe::detect::correlation::{CorrelationRules, PartitionState, StateLimits};
use threatpipe::event::{avro, Actor, Endpoint, Event, EventClass};
use threatpipe::stage::checkpoint::CheckpointStore;
use threatpipe::stage::correlate::CorrelateStage;
use threatpipe::stage::Stage;
use threatpipe::state::Checkpointed;

/// The allocator the binary uses (mimalloc), counting live bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { Mimalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { Mimalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { Mimalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const GROUPS: usize = 25_000;

fn events(n: usize, start_us: i64) -> Vec<Event> {
    // All inside four minutes: every window stays open (the shortest timespan is 5 min).
    let step = 240_000_000 / n as i64;
    (0..n)
        .map(|i| {
            let g = (i / 2) % GROUPS;
            let source = format!("10.{}.{}.{}", g / 62_500, (g / 250) % 250, g % 250 + 1);
            let mut event = Event {
                id: format!("bench-{i}"),
                time_us: start_us + i as i64 * step,
                ingest_time_us: start_us,
                tenant: "acme".into(),
                src: Some(Endpoint { ip: Some(source.clone()), ..Endpoint::default() }),
                ..Event::default()
            };
            if i % 2 == 0 {
                event.class = EventClass::Authentication;
                event.outcome = Some("failure".into());
                event.actor = Some(Actor { user: Some(format!("user{g}")), ..Actor::default() });
                event.partition_key = format!("acme|user{g}");
            } else {
                event.class = EventClass::NetworkActivity;
                event.action = Some("blocked".into());
                // One fixed (destination, port) per source: its port-scan and host-scan
                // windows are one each, and grow by one entry per connection.
                event.dst = Some(Endpoint { ip: Some(format!("192.168.{}.{}", g % 200, g % 250 + 1)), port: Some(1000 + (g % 7) as i32), ..Endpoint::default() });
                event.partition_key = format!("acme|{source}");
            }
            event
        })
        .collect()
}

fn per_second(n: usize, took: std::time::Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; test runners (`cargo test --all-targets`, nextest's
    // --list) must find no tests here and not run a benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(400_000);
    let (rules, problems) = CorrelationRules::load_all(&["pipelines/correlations".into()]);
    assert!(problems.is_empty(), "{problems:?}");
    let rules = Arc::new(rules);
    let limits = StateLimits::default();
    let start_us = chrono::Utc::now().timestamp_micros();
    let events = events(n, start_us);
    let records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Record {
            topic: "events.scanned".into(),
            partition: 0,
            offset: i as i64,
            key: Some(e.partition_key.clone().into_bytes()),
            payload: avro::encode_event(e).unwrap(),
            timestamp_ms: None,
        })
        .collect();

    // The pure core, and the state's heap.
    let live_before = LIVE.load(Ordering::Relaxed);
    let mut state = PartitionState::default();
    let t = Instant::now();
    let mut signals = 0;
    for event in &events {
        signals += rules.observe(&mut state, event, &limits).signals.len();
    }
    let observe = per_second(n, t.elapsed());
    state.entries_mut().take_changes();
    let keys = state.key_count();
    let entries = state.entry_count();
    let bytes = LIVE.load(Ordering::Relaxed) - live_before;

    // The stage and its baseline, alternated twice so drift on a shared machine shows.
    let mut stage_runs = Vec::new();
    let mut baseline_runs = Vec::new();
    for _ in 0..2 {
        let t = Instant::now();
        for record in &records {
            let event = avro::decode_event(&record.payload).unwrap();
            std::hint::black_box(avro::encode_event(&event).unwrap());
        }
        baseline_runs.push(per_second(n, t.elapsed()));
        let mut stage = CorrelateStage::new(rules.clone(), limits, CheckpointStore::Memory, "out".into(), "dlq".into());
        let mut out = Vec::new();
        let t = Instant::now();
        for record in &records {
            out.clear();
            stage.process(record, start_us, &mut out).unwrap();
        }
        stage_runs.push(per_second(n, t.elapsed()));
    }

    println!("correlation, one core: {n} events, {keys} windows, {entries} entries, {signals} signals");
    println!("  observe (pure core)      {observe:>10.0} events/s");
    for (i, (stage, baseline)) in stage_runs.iter().zip(&baseline_runs).enumerate() {
        println!("  round {}: stage {stage:>10.0} events/s, baseline_avro {baseline:>10.0} events/s, ratio {:.2}", i + 1, stage / baseline);
    }
    println!("  memory: {:.0} bytes per window ({:.0} per entry), {:.1} MiB for {keys} windows", bytes as f64 / keys as f64, bytes as f64 / entries as f64, bytes as f64 / 1048576.0);

    // Checkpoints into the real Redis, when there is one.
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("tp-bench:{}", std::process::id());
    let Ok(mut store) = CheckpointStore::open(&url, &prefix) else { return };
    state.entries_mut().mark_all_changed();
    let t = Instant::now();
    match store.save("bench", 0, &mut state) {
        Ok(written) => {
            let full = t.elapsed();
            // 1% of the windows change, then an incremental checkpoint.
            // (From the newest events: older ones are beyond the allowed lateness now.)
            for event in events.iter().rev().take(keys / 100) {
                let mut later = event.clone();
                later.time_us += 1;
                rules.observe(&mut state, &later, &limits);
            }
            let (dirty, removed) = state.entries_mut().take_changes();
            let changed = dirty.len();
            state.entries_mut().requeue(dirty, removed);
            let t = Instant::now();
            store.save("bench", 0, &mut state).unwrap();
            let incremental = t.elapsed();
            let json: usize = state_keys(&state).iter().take(1000).map(|k| serde_json::to_string(state.window(k).unwrap()).unwrap().len() + k.len()).sum();
            println!(
                "  checkpoint to {url}: all {written} windows in {:.2} s ({:.0} windows/s); {changed} changed in {:.0} ms; ~{} bytes per window",
                full.as_secs_f64(),
                per_second(written, full),
                incremental.as_secs_f64() * 1000.0,
                json / 1000
            );
            if let Ok(client) = redis::Client::open(url.as_str()) {
                if let Ok(mut c) = client.get_connection() {
                    let _: Result<(), _> = redis::cmd("DEL").arg(format!("{prefix}:bench:0")).query(&mut c);
                }
            }
        }
        Err(e) => println!("  checkpoint: skipped ({e})"),
    }
}

fn state_keys(state: &PartitionState) -> Vec<String> {
    state.keys().map(str::to_string).collect()
}
