//! The ml-score stage and its parts: baselines learn an entity's normal and flag clear
//! deviations (not normal days), a corrupt model file never replaces a good one, scores name
//! their parts and features, replays get the same score, and baselines survive a change of
//! owner through the real Redis.

mod support;

use std::sync::Arc;
use std::time::Duration;

use threatpipe::bus::{OutMessage, Record};
use threatpipe::event::{avro, Actor, Endpoint, Event, EventClass, Process, Score};
use threatpipe::ml::baseline::{Baseline, BaselineState};
use threatpipe::ml::handle::ModelHandle;
use threatpipe::ml::model::Model;
use threatpipe::ml::similarity::ExactIndex;
use threatpipe::ml::{data, train};
use threatpipe::stage::checkpoint::CheckpointStore;
use threatpipe::stage::ml_score::MlScoreStage;
use threatpipe::stage::Stage;

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;
const T0: i64 = 1_763_596_800_000_000; // a midnight UTC

fn login(user: &str, time_us: i64, src: &str, dst: &str) -> Event {
    Event {
        id: format!("{user}-{time_us}"),
        class: EventClass::Authentication,
        time_us,
        tenant: "acme".into(),
        partition_key: format!("acme|{user}"),
        outcome: Some("success".into()),
        actor: Some(Actor { user: Some(user.into()), ..Actor::default() }),
        src: Some(Endpoint { ip: Some(src.into()), ..Endpoint::default() }),
        dst: Some(Endpoint { ip: Some(dst.into()), ..Endpoint::default() }),
        ..Event::default()
    }
}

/// A working day of alice: 20 logins between 08:00 and 17:00 from the office network to
/// one of five servers.
fn office_day(day: i64) -> Vec<Event> {
    (0..20).map(|i| login("alice", T0 + day * DAY + 8 * HOUR + i * 27 * 60_000_000, &format!("10.1.2.{}", 10 + i % 7), &format!("10.9.0.{}", 1 + i % 5))).collect()
}

fn max_risk(state: &mut BaselineState, events: &[Event]) -> f64 {
    events.iter().map(|e| Baseline::risk(&state.observe(&e.partition_key, e))).fold(0.0, f64::max)
}

#[test]
fn a_baseline_learns_normal_behaviour_and_flags_a_clear_deviation_not_a_normal_day() {
    let mut state = BaselineState::default();
    for day in 0..30 {
        max_risk(&mut state, &office_day(day));
    }
    let normal = max_risk(&mut state, &office_day(30));
    assert!(normal < 20.0, "a normal day scores {normal}");
    // 03:00 from a network alice never used.
    let odd = login("alice", T0 + 31 * DAY + 3 * HOUR, "198.51.100.7", "10.9.0.1");
    let deviations = state.observe("acme|alice", &odd);
    assert_eq!(deviations.unusual_hour, 1.0);
    assert_eq!(deviations.new_place, 1.0);
    assert!(Baseline::risk(&deviations) >= 80.0, "{deviations:?}");

    // A service account that reaches three hosts a day suddenly reaches fifty.
    let mut svc = BaselineState::default();
    for day in 0..30 {
        let events: Vec<Event> = (0..30).map(|i| login("svc-backup", T0 + day * DAY + 2 * HOUR + i * 60_000_000, "10.1.5.5", &format!("10.9.1.{}", 1 + i % 3))).collect();
        max_risk(&mut svc, &events);
    }
    let sweep: Vec<Event> = (0..50).map(|i| login("svc-backup", T0 + 30 * DAY + 2 * HOUR + i * 60_000_000, "10.1.5.5", &format!("10.9.2.{}", i + 1))).collect();
    let risks: Vec<f64> = sweep.iter().map(|e| Baseline::risk(&svc.observe("acme|svc-backup", e))).collect();
    assert!(risks[0] < 50.0, "the first new host alone is not alarming: {}", risks[0]);
    assert!(risks[49] >= 80.0, "fifty hosts in a day: {}", risks[49]);
    // Other entities are not affected.
    assert!(svc.baseline("acme|alice").is_none());
}

fn model_file(version: &str) -> threatpipe::ml::model::ModelFile {
    let samples = data::generated(2_000, 5, 30);
    let options = train::TrainOptions { components: 1, version: version.into(), ..train::TrainOptions::default() };
    train::train(&samples, &options).unwrap().0
}

#[test]
fn a_corrupt_model_file_is_rejected_and_the_old_model_stays_live() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    Model::save(&model_file("v1"), &path).unwrap();
    let (handle, error) = ModelHandle::open(path.clone());
    assert!(error.is_none());
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = handle.watch(Duration::from_millis(50), stop.clone()).unwrap();
    assert_eq!(handle.current().unwrap().version(), "v1");

    std::fs::write(&path, "{\"format\": 1, \"version\": \"broken\"").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(handle.current().unwrap().version(), "v1", "a corrupt file never replaces a good model");
    assert!(handle.reload().is_err());

    Model::save(&model_file("v2"), &path).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while handle.current().unwrap().version() != "v2" && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(handle.current().unwrap().version(), "v2", "a valid new file takes effect without a restart");
    stop.cancel();
    watcher.join().unwrap();
}

fn stage(store: CheckpointStore, model: ModelHandle) -> MlScoreStage {
    let (index, problems) = ExactIndex::load(&["pipelines/exemplars".into()]);
    assert!(problems.is_empty(), "{problems:?}");
    MlScoreStage::new(model, Arc::new(index), 1_000_000, store, "events.scored".into(), "events.dlq".into())
}

fn record(event: &Event, offset: i64) -> Record {
    Record { topic: "events.correlated".into(), partition: 0, offset, key: Some(event.partition_key.clone().into_bytes()), payload: avro::encode_event(event).unwrap(), timestamp_ms: None }
}

fn scored(out: &[OutMessage]) -> Score {
    avro::decode_event(&out.last().unwrap().payload).unwrap().score.expect("every event leaves with a score")
}

fn run(stage: &mut MlScoreStage, record: &Record) -> Score {
    let mut out = Vec::new();
    stage.process(record, 0, &mut out).unwrap();
    scored(&out)
}

#[test]
fn scores_name_their_parts_and_features_and_a_replay_gets_the_same_score() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    Model::save(&model_file("v1"), &path).unwrap();
    let (model, _) = ModelHandle::open(path);
    // A store that keeps state: only there can a replay meet a state that saw the record
    // (with `memory` a reassigned partition starts empty), so only there are scores kept.
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut stage = stage(CheckpointStore::open(&redis, &support::unique("tp-test:ml-replay")).unwrap(), model);

    // A reworded dropper: no rule is told about it here (no matches), yet it resembles a
    // known encoded download cradle.
    let mut dropper = Event {
        id: "d1".into(),
        class: EventClass::ProcessActivity,
        time_us: T0 + 10 * HOUR,
        tenant: "acme".into(),
        partition_key: "acme|bob".into(),
        host: Some("laptop-17".into()),
        ..Event::default()
    };
    dropper.process = Some(Process {
        name: Some("powershell.exe".into()),
        command_line: Some("powershell.exe -NoP -W Hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcAZQBiAEMAbABpAGUAbgB0ACkA".into()),
        ..Process::default()
    });
    let score = run(&mut stage, &record(&dropper, 0));
    assert_eq!(score.model_version, "v1");
    for part in ["rules", "baseline", "similarity", "anomaly", "classifier"] {
        assert!(score.parts.contains_key(part), "{part} missing: {score:?}");
    }
    assert!(score.parts["similarity"] >= 80.0, "{score:?}");
    assert!(score.risk >= 80.0 && score.risk <= 100.0, "{score:?}");
    assert!(score.top_features.iter().any(|f| f == "similar:cmd-ps-encoded-download"), "{score:?}");

    let normal = login("carol", T0 + 10 * HOUR, "10.1.2.3", "10.9.0.1");
    let calm = run(&mut stage, &record(&normal, 1));
    assert!(calm.risk < 30.0, "an ordinary login: {calm:?}");

    // The same record again (a replay after a crash): the same score, not a second lesson.
    assert_eq!(run(&mut stage, &record(&dropper, 0)), score);
    assert_eq!(run(&mut stage, &record(&normal, 1)), calm);
}

#[test]
fn baselines_survive_a_change_of_owner_through_redis() {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = support::unique("tp-test:ml");
    let mut first = stage(CheckpointStore::open(&redis, &prefix).unwrap(), ModelHandle::none());
    first.partition_assigned("events.correlated", 0).unwrap();
    let mut offset = 0;
    for day in 0..10 {
        for event in office_day(day) {
            run(&mut first, &record(&event, offset));
            offset += 1;
        }
    }
    assert_eq!(first.checkpoint(None).unwrap(), Some(vec![("events.correlated".to_string(), 0, offset)]));
    drop(first);

    let mut second = stage(CheckpointStore::open(&redis, &prefix).unwrap(), ModelHandle::none());
    second.partition_assigned("events.correlated", 0).unwrap();
    let odd = login("alice", T0 + 11 * DAY + 3 * HOUR, "198.51.100.7", "10.9.0.1");
    let score = run(&mut second, &record(&odd, offset));
    assert!(score.parts["baseline"] >= 80.0, "the restored baseline knows alice's normal: {score:?}");
    assert!(score.top_features.iter().any(|f| f == "baseline.new_place"), "{score:?}");
}

#[test]
fn an_unreachable_qdrant_is_reported_at_start_not_per_event() {
    // No Qdrant server can run on these machines (DESIGN.md); what can be checked here is
    // that the backend fails fast and clearly when the server is not there, so the
    // application falls back to the embedded index at start.
    let (exemplars, _) = threatpipe::ml::similarity::load_exemplars(&["pipelines/exemplars".into()]);
    let started = std::time::Instant::now();
    let result = threatpipe::ml::qdrant::QdrantIndex::connect("http://127.0.0.1:1", "threatpipe_test", exemplars);
    let error = result.err().expect("nothing listens on port 1");
    assert!(error.contains("127.0.0.1:1"), "the error names the server: {error}");
    assert!(started.elapsed() < Duration::from_secs(10), "fails within the connect timeout");
}
