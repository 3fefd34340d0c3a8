//! ml-score on the real broker with its baselines in the real Redis: every scored event
//! carries its risk, parts and top features, and a restarted instance still knows what was
//! normal before the restart.

mod support;

use std::time::Duration;

use support::{create_topics, produce_all, require_broker, stage_env, unique, wait_assigned, StageProcess, TopicReader};
use threatpipe::event::{avro, Actor, Endpoint, Event, EventClass, Process, Score};
use threatpipe::ml::model::Model;
use threatpipe::ml::{data, train};

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;
const T0: i64 = 1_763_596_800_000_000;

fn login(n: i64, time_us: i64, src: &str) -> Event {
    Event {
        id: format!("login-{n}"),
        class: EventClass::Authentication,
        time_us,
        tenant: "acme".into(),
        partition_key: "acme|alice".into(),
        outcome: Some("success".into()),
        actor: Some(Actor { user: Some("alice".into()), ..Actor::default() }),
        src: Some(Endpoint { ip: Some(src.into()), ..Endpoint::default() }),
        dst: Some(Endpoint { ip: Some(format!("10.9.0.{}", 1 + n % 5)), ..Endpoint::default() }),
        ..Event::default()
    }
}

fn encoded(events: &[Event]) -> Vec<(String, Vec<u8>)> {
    events.iter().map(|e| (e.partition_key.clone(), avro::encode_event(e).unwrap())).collect()
}

fn scores(reader: &TopicReader) -> Vec<(String, Score)> {
    reader
        .records
        .iter()
        .map(|r| avro::decode_event(&r.payload).unwrap())
        .map(|e| (e.id.clone(), e.score.unwrap_or_else(|| panic!("{} left without a score", e.id))))
        .collect()
}

#[test]
fn scored_events_carry_parts_and_features_and_a_restart_keeps_the_baselines() {
    require_broker();
    let correlated = unique("ml.correlated");
    let scored = unique("ml.scored");
    let dlq = unique("ml.dlq");
    create_topics(&[&correlated, &scored, &dlq], 2);
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.json");
    let samples = data::generated(2_000, 5, 30);
    let options = train::TrainOptions { components: 1, version: "kafka-test".into(), ..train::TrainOptions::default() };
    Model::save(&train::train(&samples, &options).unwrap().0, &model).unwrap();

    let mut env = stage_env("ml-kafka", "ml-score");
    for (key, value) in [
        ("TOPICS__CORRELATED", correlated.clone()),
        ("TOPICS__SCORED", scored.clone()),
        ("TOPICS__DLQ", dlq.clone()),
        ("ML__MODEL", model.display().to_string()),
        ("ML__CHECKPOINT", std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())),
        ("ML__CHECKPOINT_PREFIX", unique("tp-test:ml-kafka")),
    ] {
        env.insert(format!("THREATPIPE_{key}"), value);
    }
    let mut first = StageProcess::start("ml-a", &[], &env);
    wait_assigned(&[&first]);

    // Ten office days of alice, and a dropper on another host.
    let mut history: Vec<Event> = (0..200).map(|n| login(n, T0 + (n / 20) * DAY + 8 * HOUR + (n % 20) * 27 * 60_000_000, &format!("10.1.2.{}", 10 + n % 7))).collect();
    let mut dropper = Event { id: "dropper".into(), class: EventClass::ProcessActivity, time_us: T0 + 9 * DAY + 11 * HOUR, tenant: "acme".into(), partition_key: "acme|bob".into(), ..Event::default() };
    dropper.process = Some(Process {
        name: Some("powershell.exe".into()),
        command_line: Some("powershell.exe -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcAZQBiAEMAbABpAGUAbgB0ACkA".into()),
        ..Process::default()
    });
    history.push(dropper);
    produce_all(&correlated, &encoded(&history));
    let mut reader = TopicReader::new(&scored);
    assert!(reader.read_until(Duration::from_secs(60), |r| r.len() >= history.len()), "only {} scored; log:\n{}", reader.records.len(), first.log_text());
    for (id, score) in scores(&reader) {
        assert_eq!(score.model_version, "kafka-test", "{id}");
        for part in ["rules", "baseline", "similarity", "anomaly", "classifier"] {
            assert!(score.parts.contains_key(part), "{id}: {part} missing in {score:?}");
        }
        assert!((0.0..=100.0).contains(&score.risk), "{id}: {score:?}");
    }
    let (_, dropper_score) = scores(&reader).into_iter().find(|(id, _)| id == "dropper").unwrap();
    assert!(dropper_score.risk >= 80.0 && !dropper_score.top_features.is_empty(), "{dropper_score:?}");

    // Restart: the baselines come back from Redis.
    assert_eq!(first.sigterm(Duration::from_secs(30)), Some(0), "{}", first.log_text());
    let second = StageProcess::start("ml-b", &[], &env);
    wait_assigned(&[&second]);
    let odd = login(999, T0 + 11 * DAY + 3 * HOUR, "198.51.100.7");
    produce_all(&correlated, &encoded(&[odd]));
    assert!(reader.read_until(Duration::from_secs(60), |r| r.len() > history.len()), "log:\n{}", second.log_text());
    let (_, odd_score) = scores(&reader).into_iter().find(|(id, _)| id == "login-999").unwrap();
    assert!(odd_score.parts["baseline"] >= 80.0, "the restarted instance knows alice's normal: {odd_score:?}\n{}", second.log_text());
    assert!(odd_score.top_features.iter().any(|f| f == "baseline.new_place"), "{odd_score:?}");
}
