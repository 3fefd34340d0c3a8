//! The correlate stage with the shipped chains (pipelines/correlations) and a real Redis as
//! its checkpoint store: windows survive a change of owner, replays count nothing twice and
//! carry the signals they carried the first time, and a store that is down stops commits,
//! not processing.

mod support;

use std::sync::Arc;

use threatpipe::bus::{OutMessage, Record};
use threatpipe::detect::correlation::{CorrelationRules, StateLimits};
use threatpipe::event::{avro, Event, EventClass};
use threatpipe::generator::{EventGenerator, GeneratorConfig};
use threatpipe::normalize::{NormalizeConfig, Normalizer};
use threatpipe::stage::checkpoint::CheckpointStore;
use threatpipe::stage::correlate::CorrelateStage;
use threatpipe::stage::Stage;

const TOPIC: &str = "events.scanned";
const BRUTE_FORCE: &str = "014de2fd-77b6-4add-aba7-dc9193d81a4f";
const BRUTE_FORCE_THEN_SUCCESS: &str = "89dfa039-498e-48bd-83b6-8edb459a6daa";

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn rules() -> Arc<CorrelationRules> {
    let (rules, problems) = CorrelationRules::load_all(&["pipelines/correlations".into()]);
    assert!(problems.is_empty(), "{problems:?}");
    Arc::new(rules)
}

fn stage(store: CheckpointStore) -> CorrelateStage {
    CorrelateStage::new(rules(), StateLimits::default(), store, "events.correlated".into(), "events.dlq".into())
}

fn redis_store(prefix: &str) -> CheckpointStore {
    CheckpointStore::open(&redis_url(), prefix).unwrap()
}

/// The generator's SSH brute force (20 failures, then a success) as scanned records.
fn brute_force_records() -> Vec<Record> {
    let mut generator = EventGenerator::new(GeneratorConfig { seed: 11, ..GeneratorConfig::default() });
    let now = chrono::Utc::now().timestamp_micros();
    let burst = generator.attack_burst("ssh_brute_force", now).unwrap();
    assert_eq!(burst.len(), 21);
    let normalizer = Normalizer::new(NormalizeConfig::default(), "default");
    burst
        .into_iter()
        .enumerate()
        .map(|(offset, generated)| {
            let raw = Record::from_line("raw", offset, generated.payload);
            let event = normalizer.normalize(&raw, now).unwrap();
            Record {
                topic: TOPIC.into(),
                partition: 0,
                offset: offset as i64,
                key: Some(event.partition_key.clone().into_bytes()),
                payload: avro::encode_event(&event).unwrap(),
                timestamp_ms: None,
            }
        })
        .collect()
}

/// (rule id, finding id) of every finding among `out`, and the signals attached to the
/// forwarded events.
fn findings(out: &[OutMessage]) -> (Vec<(String, String)>, Vec<String>) {
    let mut findings = Vec::new();
    let mut attached = Vec::new();
    for message in out {
        let event: Event = avro::decode_event(&message.payload).unwrap();
        if event.class == EventClass::Finding {
            findings.push((event.correlations[0].rule_id.clone(), event.id.clone()));
        } else {
            attached.extend(event.correlations.iter().map(|c| c.rule_id.clone()));
        }
    }
    (findings, attached)
}

fn run(stage: &mut CorrelateStage, records: &[Record]) -> Vec<OutMessage> {
    let mut out = Vec::new();
    for record in records {
        stage.process(record, chrono::Utc::now().timestamp_micros(), &mut out).unwrap();
    }
    out
}

#[test]
fn a_new_owner_continues_the_windows_from_the_checkpoint_and_replays_count_once() {
    let prefix = support::unique("tp-test:correlate");
    let records = brute_force_records();

    // The first owner sees 8 failures (below the threshold of 10), checkpoints, and dies.
    let mut first = stage(redis_store(&prefix));
    first.partition_assigned(TOPIC, 0).unwrap();
    let out = run(&mut first, &records[..8]);
    assert!(findings(&out).0.is_empty(), "8 failures are not a brute force");
    let durable = first.checkpoint(None).unwrap().expect("a Redis store caps commits");
    assert_eq!(durable, vec![(TOPIC.to_string(), 0, 8)]);
    drop(first);

    // The next owner restores, is handed offsets 5.. again (the commit lagged behind the
    // checkpoint), and must neither count 5..7 twice nor miss the earlier failures.
    let mut second = stage(redis_store(&prefix));
    second.partition_assigned(TOPIC, 0).unwrap();
    let mut fired_at = Vec::new();
    for record in &records[5..] {
        let out = run(&mut second, std::slice::from_ref(record));
        for (rule, _) in findings(&out).0 {
            fired_at.push((rule, record.offset));
        }
    }
    // The 10th failure is offset 9, the success offset 20.
    assert_eq!(fired_at, vec![(BRUTE_FORCE.to_string(), 9), (BRUTE_FORCE_THEN_SUCCESS.to_string(), 20)]);
    second.checkpoint(None).unwrap();
    second.committed(&vec![(TOPIC.to_string(), 0, 9)]);
    second.checkpoint(None).unwrap();

    // A third owner replays from the committed offset 9: the same findings (same ids), the
    // same signals attached, and nothing new.
    let mut third = stage(redis_store(&prefix));
    third.partition_assigned(TOPIC, 0).unwrap();
    let replayed = run(&mut third, &records[9..]);
    let (replayed_findings, attached) = findings(&replayed);
    let rules: Vec<&str> = replayed_findings.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(rules, vec![BRUTE_FORCE, BRUTE_FORCE_THEN_SUCCESS]);
    assert_eq!(attached, vec![BRUTE_FORCE.to_string(), BRUTE_FORCE_THEN_SUCCESS.to_string()]);
    let original = findings(&run(&mut stage_with_fresh_windows(&records), &records[9..]));
    let ids: Vec<&String> = replayed_findings.iter().map(|(_, id)| id).collect();
    let original_ids: Vec<&String> = original.0.iter().map(|(_, id)| id).collect();
    assert_eq!(ids, original_ids, "a replayed signal keeps its id");
}

/// A memory-backed stage that has seen offsets 0..9 of `records` (for the signal ids).
fn stage_with_fresh_windows(records: &[Record]) -> CorrelateStage {
    let mut fresh = stage(CheckpointStore::Memory);
    run(&mut fresh, &records[..9]);
    fresh
}

#[test]
fn a_checkpoint_store_that_is_down_stops_commits_not_processing() {
    // Nothing listens on port 1.
    let mut stage = stage(CheckpointStore::open("redis://127.0.0.1:1", "tp-test").unwrap());
    let records = brute_force_records();
    let out = run(&mut stage, &records);
    assert_eq!(findings(&out).0.len(), 2, "processing goes on");
    let durable = stage.checkpoint(None).unwrap().expect("still a durable store");
    assert!(durable.is_empty(), "nothing may be committed that is not checkpointed: {durable:?}");
}

#[test]
fn memory_state_does_not_cap_commits_and_bad_avro_is_dead_lettered() {
    let mut stage = stage(CheckpointStore::Memory);
    assert_eq!(stage.checkpoint(None).unwrap(), None);
    let record = Record { topic: TOPIC.into(), partition: 0, offset: 0, key: None, payload: b"not avro".to_vec(), timestamp_ms: None };
    let out = run(&mut stage, &[record]);
    assert_eq!(out.len(), 1);
    assert_eq!(&*out[0].topic, "events.dlq");
    let dead = avro::decode_dead_letter(&out[0].payload).unwrap();
    assert_eq!(dead.reason_code, "bad_avro");
}

#[test]
fn revoked_partitions_are_dropped_not_written() {
    let prefix = support::unique("tp-test:correlate");
    let mut stage = stage(redis_store(&prefix));
    stage.partition_assigned(TOPIC, 0).unwrap();
    run(&mut stage, &brute_force_records()[..5]);
    assert!(stage.key_count() > 0);
    // Partition 0 went to another instance: its windows leave this one, and no offset of it
    // is reported durable any more.
    let durable = stage.checkpoint(Some(&[(TOPIC.to_string(), 1)])).unwrap().unwrap();
    assert!(durable.is_empty(), "{durable:?}");
    assert_eq!(stage.key_count(), 0);
}
