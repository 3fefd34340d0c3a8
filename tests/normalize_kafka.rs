//! Normalize against the real broker: many instances in one group, malformed input, a
//! SIGKILL mid-stream and a SIGTERM drain. Identity is asserted, not just counts: every
//! valid event's id must appear on the normalized topic, every malformed record's key on
//! the dead-letter topic with the right reason and its original bytes.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use support::{produce_all, wait_assigned, NormalizeEnv, ReadRecord, TopicReader};
use threatpipe::event::avro;

/// Small event limit for these tests so "oversized" records stay cheap to produce.
const TEST_MAX_EVENT_BYTES: usize = 16 * 1024;
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(240);

struct Dataset {
    records: Vec<(String, Vec<u8>)>,
    valid_ids: HashSet<String>,
    /// malformed record key → expected reason code
    malformed: HashMap<String, &'static str>,
    payloads: HashMap<String, Vec<u8>>,
}

/// `n` records, one in twenty malformed (5%), valid ones spread over the input formats.
fn dataset(n: usize, tag: &str) -> Dataset {
    let mut data = Dataset { records: Vec::new(), valid_ids: HashSet::new(), malformed: HashMap::new(), payloads: HashMap::new() };
    for i in 0..n {
        if i % 20 == 0 {
            let key = format!("{tag}-bad-{i}");
            let (payload, reason): (Vec<u8>, &'static str) = match (i / 20) % 6 {
                0 => (format!(r#"{{"id":"{tag}-{i}","user":"a","#).into_bytes(), "bad_json"),
                1 => (b"CEF:0|Vendor|Product|1.0|100|Name".to_vec(), "bad_cef"),
                2 => (vec![b'{', 0xff, 0xfe, b'}'], "invalid_utf8"),
                3 => (format!(r#"{{"message":"{}"}}"#, "x".repeat(TEST_MAX_EVENT_BYTES)).into_bytes(), "oversized"),
                4 => (Vec::new(), "empty"),
                _ => (format!(r#"{{"id":"{tag}-{i}","src_ip":"300.1.2.3"}}"#).into_bytes(), "invalid_field"),
            };
            data.malformed.insert(key.clone(), reason);
            data.payloads.insert(key.clone(), payload.clone());
            data.records.push((key, payload));
            continue;
        }
        let id = format!("{tag}-{i}");
        let user = format!("user{}", i % 97);
        let payload = match i % 4 {
            0 => format!(r#"{{"id":"{id}","time":"2025-01-12T10:00:00Z","tenant":"t{}","type":"login","user":"{user}","src_ip":"10.0.{}.{}","outcome":"success"}}"#, i % 3, i % 250, i % 200 + 1),
            1 => format!(r#"{{"@timestamp":"2025-01-12T10:00:00Z","ecs":{{"version":"8.11"}},"event":{{"id":"{id}","category":["process"]}},"user":{{"name":"{user}"}},"process":{{"pid":{i},"command_line":"cmd.exe /c whoami"}}}}"#),
            2 => format!(r#"{{"class_uid":4003,"time":1736676000000,"metadata":{{"uid":"{id}","product":{{"name":"dns"}}}},"query":{{"hostname":"h{i}.example.com"}},"src_endpoint":{{"ip":"10.1.{}.{}"}}}}"#, i % 250, i % 200 + 1),
            _ => format!("CEF:0|Acme|Firewall|1.0|{i}|Connection allowed|3|externalId={id} rt=1736676000000 src=10.2.{}.{} dst=8.8.8.8 dpt=53 suser={user}", i % 250, i % 200 + 1),
        };
        data.valid_ids.insert(id);
        data.records.push((format!("k{}", i % 500), payload.into_bytes()));
    }
    data
}

/// Decodes normalized output: id → number of copies; also checks each key is the partition key.
fn normalized_ids(records: &[ReadRecord]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for record in records {
        let event = avro::decode_event(&record.payload).expect("normalized topic carries Avro events");
        assert_eq!(record.key.as_deref(), Some(event.partition_key.as_bytes()), "message key is the partition key");
        *ids.entry(event.id).or_insert(0) += 1;
    }
    ids
}

fn dead_letter_keys(records: &[ReadRecord]) -> HashSet<String> {
    records.iter().filter_map(|r| r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned())).collect()
}

/// Counts distinct event ids, decoding only records not seen before (the readers call this
/// every 200 ms while waiting, so it must not re-decode everything).
#[derive(Default)]
struct IdCounter {
    decoded: usize,
    ids: HashSet<String>,
}

impl IdCounter {
    fn update(&mut self, records: &[ReadRecord]) -> usize {
        for record in &records[self.decoded..] {
            if let Ok(event) = avro::decode_event(&record.payload) {
                self.ids.insert(event.id);
            }
        }
        self.decoded = records.len();
        self.ids.len()
    }
}

fn check_dead_letters(data: &Dataset, records: &[ReadRecord], raw_topic: &str) {
    let mut seen = HashSet::new();
    for record in records {
        let dead = avro::decode_dead_letter(&record.payload).expect("dead-letter topic carries Avro dead letters");
        let key = String::from_utf8(dead.source_key.clone().expect("dead letter keeps the source key")).unwrap();
        let expected_reason = data.malformed.get(&key).unwrap_or_else(|| panic!("valid record {key} was dead-lettered: {}", dead.reason));
        assert_eq!(dead.reason_code, *expected_reason, "{key}: {}", dead.reason);
        assert!(!dead.reason.is_empty());
        assert_eq!(dead.source_topic, raw_topic);
        assert_eq!(dead.original, data.payloads[&key], "{key}: original bytes kept");
        assert_eq!(dead.original_size as usize, data.payloads[&key].len());
        seen.insert(key);
    }
    let expected: HashSet<String> = data.malformed.keys().cloned().collect();
    assert_eq!(seen, expected, "every malformed record is dead-lettered");
}

/// For a failure message: how many valid events are missing from `normalized`, where
/// their raw records sit, and any offsets the test's own reader skipped (a gap there is the
/// broker losing records for a consumer, not the stage).
fn where_missing(env: &NormalizeEnv, data: &Dataset, normalized: &[ReadRecord]) -> String {
    let seen: HashSet<String> = normalized_ids(normalized).into_keys().collect();
    let mut raw = TopicReader::new(&env.raw);
    raw.read_until(Duration::from_secs(30), |r| r.len() >= data.records.len());
    let normalizer = threatpipe::normalize::Normalizer::new(Default::default(), "t");
    let mut missing_positions = Vec::new();
    for record in &raw.records {
        let as_record = threatpipe::bus::Record { topic: "raw".into(), partition: 0, offset: 0, key: None, payload: record.payload.clone(), timestamp_ms: None };
        if let Ok(event) = normalizer.normalize(&as_record, 0) {
            if data.valid_ids.contains(&event.id) && !seen.contains(&event.id) {
                missing_positions.push((record.partition, record.offset));
            }
        }
    }
    missing_positions.sort();
    let mut read: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for record in normalized {
        read.entry(record.partition).or_default().push(record.offset);
    }
    let reader_gaps: Vec<(i32, i64, i64)> = read
        .iter_mut()
        .flat_map(|(partition, offsets)| {
            offsets.sort_unstable();
            offsets.dedup();
            offsets.windows(2).filter(|w| w[1] != w[0] + 1).map(|w| (*partition, w[0], w[1])).collect::<Vec<_>>()
        })
        .collect();
    format!(
        "only {} of {} events normalized (raw has {} records); missing raw positions {:?} ({} of them); gaps in what the reader read of the normalized topic (partition, last, next): {:?}",
        seen.len(), data.valid_ids.len(), raw.records.len(), missing_positions.iter().take(20).collect::<Vec<_>>(), missing_positions.len(), reader_gaps
    )
}

fn env_with_limit(test: &str) -> NormalizeEnv {
    let mut env = NormalizeEnv::new(test, 4);
    env.env.insert("THREATPIPE_NORMALIZE__MAX_EVENT_BYTES".into(), TEST_MAX_EVENT_BYTES.to_string());
    env
}

#[test]
fn two_instances_normalize_every_valid_event_exactly_once_and_dead_letter_the_rest() {
    let env = env_with_limit("norm-two");
    let a = env.start("norm-two-a");
    let b = env.start("norm-two-b");
    wait_assigned(&[&a, &b]);
    // Give the group a moment to settle after the second member's rebalance.
    std::thread::sleep(Duration::from_secs(2));
    let data = dataset(20_000, "two");
    produce_all(&env.raw, &data.records);

    let mut normalized = TopicReader::new(&env.normalized);
    let mut dlq = TopicReader::new(&env.dlq);
    let valid = data.valid_ids.len();
    let mut counter = IdCounter::default();
    let complete = normalized.read_until(COMPLETION_TIMEOUT, |r| counter.update(r) >= valid);
    assert!(complete, "{}; logs:\n{}\n---\n{}", where_missing(&env, &data, &normalized.records), a.log_text(), b.log_text());
    assert!(dlq.read_until(Duration::from_secs(60), |r| dead_letter_keys(r).len() >= data.malformed.len()));
    // Anything duplicated would arrive right behind; look a little longer.
    normalized.poll_for(Duration::from_secs(2));

    let ids = normalized_ids(&normalized.records);
    let seen: HashSet<String> = ids.keys().cloned().collect();
    assert_eq!(seen, data.valid_ids, "every valid event, and only valid events, normalized");
    // At-least-once: a rebalance (Tansu sometimes rebalances a settled group) may replay
    // in-flight records; the copies carry the same id, so id-keyed consumers see each once.
    let duplicates: usize = ids.values().map(|n| n - 1).sum();
    eprintln!("two instances: {} records for {} ids ({duplicates} replayed copies)", normalized.records.len(), ids.len());
    assert!(duplicates < 2_000, "replays are bounded by in-flight work, got {duplicates}");
    check_dead_letters(&data, &dlq.records, &env.raw);
    let partitions: HashSet<i32> = normalized.records.iter().map(|r| r.partition).collect();
    assert!(partitions.len() > 1, "events are spread over partitions by entity key");
}

#[test]
fn an_instance_killed_mid_stream_loses_nothing() {
    let env = env_with_limit("norm-kill");
    let mut a = env.start("norm-kill-a");
    let b = env.start("norm-kill-b");
    wait_assigned(&[&a, &b]);
    let data = dataset(20_000, "kill");
    // Half the stream before the kill and half after, so the kill lands mid-stream however
    // fast the stages get through a burst: `a` dies with work taken and not committed, and
    // its partitions have more to come.
    let (before_kill, after_kill) = data.records.split_at(data.records.len() / 2);
    produce_all(&env.raw, before_kill);

    let mut normalized = TopicReader::new(&env.normalized);
    assert!(normalized.read_until(COMPLETION_TIMEOUT, |r| r.len() >= 3_000), "stages did not start producing");
    a.sigkill();
    let progress_at_kill = normalized.records.len();
    produce_all(&env.raw, after_kill);
    let a2 = env.start("norm-kill-a2");

    let valid = data.valid_ids.len();
    let mut counter = IdCounter::default();
    let complete = normalized.read_until(COMPLETION_TIMEOUT, |r| counter.update(r) >= valid);
    if !complete {
        panic!("{} after the kill; logs:\n{}\n---\n{}\n---\n{}", where_missing(&env, &data, &normalized.records), a.log_text(), b.log_text(), a2.log_text());
    }
    let ids = normalized_ids(&normalized.records);
    let seen: HashSet<String> = ids.keys().cloned().collect();
    assert_eq!(seen, data.valid_ids, "nothing lost across the kill");
    assert!(progress_at_kill < normalized.records.len(), "the kill happened mid-stream");
    let duplicates: usize = ids.values().map(|n| n - 1).sum();
    eprintln!("kill test: {} records, {duplicates} duplicates (allowed; identical ids)", normalized.records.len());

    let mut dlq = TopicReader::new(&env.dlq);
    assert!(dlq.read_until(Duration::from_secs(60), |r| dead_letter_keys(r).len() >= data.malformed.len()));
    let keys = dead_letter_keys(&dlq.records);
    let expected: HashSet<String> = data.malformed.keys().cloned().collect();
    assert_eq!(keys, expected, "every malformed record dead-lettered across the kill");
}

#[test]
fn sigterm_drains_and_commits_so_a_restart_rereads_nothing() {
    let env = NormalizeEnv::new("norm-term", 3);
    let mut first = env.start("norm-term-1");
    let batch = |from: usize, to: usize| -> Vec<(String, Vec<u8>)> {
        (from..to)
            .map(|i| (format!("k{}", i % 50), format!(r#"{{"id":"term-{i}","user":"u{}","src_ip":"10.0.0.{}"}}"#, i % 50, i % 200 + 1).into_bytes()))
            .collect()
    };
    produce_all(&env.raw, &batch(0, 2_000));
    let mut normalized = TopicReader::new(&env.normalized);
    let mut counter = IdCounter::default();
    assert!(normalized.read_until(COMPLETION_TIMEOUT, |r| counter.update(r) >= 2_000), "first run incomplete:\n{}", first.log_text());

    let code = first.sigterm(Duration::from_secs(30));
    assert_eq!(code, Some(0), "clean exit after SIGTERM; log:\n{}", first.log_text());
    assert!(first.log_text().contains("Stage stopped."), "{}", first.log_text());

    produce_all(&env.raw, &batch(2_000, 3_000));
    let second = env.start("norm-term-2");
    assert!(normalized.read_until(COMPLETION_TIMEOUT, |r| counter.update(r) >= 3_000), "second run incomplete:\n{}", second.log_text());
    normalized.poll_for(Duration::from_secs(3));
    let ids = normalized_ids(&normalized.records);
    assert_eq!(ids.len(), 3_000);
    let reread: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id.clone()).collect();
    assert!(reread.is_empty(), "restart re-read {} acknowledged events, e.g. {:?}", reread.len(), &reread[..reread.len().min(5)]);
}
