//! Correlate on the real broker, two instances in one consumer group, state in the real
//! Redis: the generator's brute-force and port-scan scenarios each give exactly one signal
//! per window, even when the instance that saw the first half of every window is killed
//! and the survivor finishes them after the rebalance.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::{create_topics, produce_all, require_broker, stage_env, unique, wait_assigned, StageProcess, TopicReader};
use threatpipe::bus::Record;
use threatpipe::event::{avro, Event, EventClass};
use threatpipe::generator::{EventGenerator, GeneratorConfig};
use threatpipe::normalize::{NormalizeConfig, Normalizer};

const BRUTE_FORCE: &str = "014de2fd-77b6-4add-aba7-dc9193d81a4f";
const BRUTE_FORCE_THEN_SUCCESS: &str = "89dfa039-498e-48bd-83b6-8edb459a6daa";
const PORT_SCAN: &str = "e7550360-c333-4b39-9983-f9a089f421ca";
/// How long after the completing events the signals may take (rebalance included).
const ON_TIME: Duration = Duration::from_secs(45);

/// Scanned-topic records of `bursts` scenarios, each split into the part before and the
/// part after the kill (the first part alone stays below every threshold).
struct Scenario {
    before: Vec<(String, Vec<u8>)>,
    after: Vec<(String, Vec<u8>)>,
    /// (rule id, group key) that must fire exactly once.
    expected: BTreeSet<(String, String)>,
}

fn scenario() -> Scenario {
    let mut generator = EventGenerator::new(GeneratorConfig { seed: 23, tenants: vec!["acme".into()], ..GeneratorConfig::default() });
    let normalizer = Normalizer::new(NormalizeConfig::default(), "acme");
    let now = chrono::Utc::now().timestamp_micros();
    let mut out = Scenario { before: Vec::new(), after: Vec::new(), expected: BTreeSet::new() };
    let mut users = BTreeSet::new();
    for (kind, count, split) in [("ssh_brute_force", 4, 8), ("port_scan", 3, 15)] {
        let mut made = 0;
        while made < count {
            let burst = generator.attack_burst(kind, now).unwrap();
            let events: Vec<Event> = burst
                .iter()
                .enumerate()
                .map(|(i, g)| normalizer.normalize(&Record::from_line("raw", i, g.payload.clone()), now).unwrap())
                .collect();
            let first = &events[0];
            if kind == "ssh_brute_force" {
                // One burst per account, so each group is one scenario.
                if !users.insert(first.user().unwrap().to_string()) {
                    continue;
                }
                let group = format!("user={}, src_ip={}", first.user().unwrap(), first.src_ip().unwrap());
                out.expected.insert((BRUTE_FORCE.into(), group.clone()));
                out.expected.insert((BRUTE_FORCE_THEN_SUCCESS.into(), group));
            } else {
                out.expected.insert((PORT_SCAN.into(), format!("src_ip={}, dst_ip={}", first.src_ip().unwrap(), first.dst_ip().unwrap())));
            }
            for (i, event) in events.iter().enumerate() {
                let record = (event.partition_key.clone(), avro::encode_event(event).unwrap());
                if i < split {
                    out.before.push(record);
                } else {
                    out.after.push(record);
                }
            }
            made += 1;
        }
    }
    out
}

/// (rule id, group key) → distinct finding ids.
type Findings = BTreeMap<(String, String), BTreeSet<String>>;

/// The findings read so far, and the ids of the forwarded events.
fn signals(reader: &TopicReader) -> (Findings, BTreeSet<String>) {
    let mut findings = Findings::new();
    let mut events = BTreeSet::new();
    for record in &reader.records {
        let event = avro::decode_event(&record.payload).unwrap();
        if event.class == EventClass::Finding {
            let signal = &event.correlations[0];
            findings.entry((signal.rule_id.clone(), signal.group_key.clone())).or_default().insert(event.id.clone());
        } else {
            events.insert(event.id.clone());
        }
    }
    (findings, events)
}

fn restored_keys(log: &str) -> Vec<usize> {
    log.lines()
        .filter(|l| l.contains("State restored.") && l.contains("correlate"))
        .filter_map(|l| l.split("keys=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn the_survivor_of_a_kill_finishes_the_windows_and_each_fires_once() {
    require_broker();
    let scanned = unique("corr.scanned");
    let correlated = unique("corr.correlated");
    let dlq = unique("corr.dlq");
    create_topics(&[&scanned, &correlated, &dlq], 4);
    let mut env = stage_env("corr-kill", "correlate");
    for (key, value) in [
        ("TOPICS__SCANNED", scanned.clone()),
        ("TOPICS__CORRELATED", correlated.clone()),
        ("TOPICS__DLQ", dlq.clone()),
        ("CORRELATE__CHECKPOINT", std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())),
        ("CORRELATE__CHECKPOINT_PREFIX", unique("tp-test:corr-kill")),
    ] {
        env.insert(format!("THREATPIPE_{key}"), value);
    }
    let data = scenario();
    let mut a = StageProcess::start("corr-a", &[], &env);
    let b = StageProcess::start("corr-b", &[], &env);
    wait_assigned(&[&a, &b]);
    std::thread::sleep(Duration::from_secs(2));

    // First halves: both instances hold part of the windows; nothing fires yet.
    produce_all(&scanned, &data.before);
    let mut reader = TopicReader::new(&correlated);
    let forwarded = reader.read_until(Duration::from_secs(60), |r| r.len() >= data.before.len());
    assert!(forwarded, "first halves not correlated; logs:\n{}\n---\n{}", a.log_text(), b.log_text());
    let (early, _) = signals(&reader);
    assert!(early.is_empty(), "no window is complete yet: {early:?}");
    // Several commit intervals, so both instances checkpointed what they hold.
    std::thread::sleep(Duration::from_secs(2));
    let a_log = a.log_text();
    a.sigkill();
    let b_log_at_kill = b.log_text().len();

    // Second halves: only B is left; it must take over A's partitions with their windows.
    let produced_at = Instant::now();
    produce_all(&scanned, &data.after);
    let deadline = produced_at + ON_TIME;
    while Instant::now() < deadline {
        reader.poll_for(Duration::from_millis(500));
        let fired: BTreeSet<(String, String)> = signals(&reader).0.into_keys().collect();
        if fired.is_superset(&data.expected) {
            break;
        }
    }
    let took = produced_at.elapsed();
    // A duplicate would arrive right behind; look a little longer.
    reader.poll_for(Duration::from_secs(3));
    let (found, events) = signals(&reader);
    let b_log = b.log_text();
    let fired: BTreeSet<(String, String)> = found.keys().cloned().collect();
    assert_eq!(fired, data.expected, "every window fires, nothing else does; A:\n{a_log}\n---\nB:\n{b_log}");
    for (group, ids) in &found {
        assert_eq!(ids.len(), 1, "{group:?} fired more than once: {ids:?}");
    }
    assert_eq!(events.len(), data.before.len() + data.after.len(), "every event forwarded");
    eprintln!("signals after the kill in {took:?} ({} findings, {} records read)", found.len(), reader.records.len());
    // The survivor really continued A's windows (not just its own).
    let restored_after_kill = restored_keys(&b_log[b_log_at_kill..]);
    assert!(restored_after_kill.iter().any(|&k| k > 0), "B restored A's windows after the kill: {restored_after_kill:?}\n{b_log}");
}
