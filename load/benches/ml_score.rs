//! ml-score throughput on one core, and the cost of known-threat search by index size.
//!
//!   CARGO_TARGET_DIR=~/.cache/threatpipe/target cargo bench --bench ml_score [-- EVENTS]
//!
//! (Runs only under `cargo bench`, which passes `--bench`; as a test target it does nothing.)
//!
//! Events: the built-in generator's traffic (normalized, quick-scanned) as the stage receives
//! it. A model is trained first on other generator traffic (seed 5). Lanes:
//! - `baseline_avro`: Avro decode + encode, what any stage pays;
//! - `stage_no_model`: the stage with baselines, rules and similarity parts;
//! - `stage`: the same plus the model's anomaly and classifier parts;
//! - exact similarity search per query with the shipped exemplars and with 1,000 / 10,000
//!   synthetic ones (where brute force stops being cheap enough and an ANN index or
//!   Qdrant should take over).

use std::sync::Arc;
use std::time::Instant;

use threatpipe::allocator::Mimalloc;
use threatpipe::bus::Record;
use threatpipe::detect::{Detector, ScanConfig};
use threatpipe::event::avro;
use threatpipe::generator::{EventGenerator, GeneratorConfig};
use threatpipe::ml::handle::ModelHandle;
use threatpipe::ml::model::Model;
use threatpipe::ml::similarity::{embed, ExactIndex, Exemplar, TextKind, ThreatIndex};
use threatpipe::ml::{data, train};
use threatpipe::normalize::{NormalizeConfig, Normalizer};
use threatpipe::stage::checkpoint::CheckpointStore;
use threatpipe::stage::ml_score::MlScoreStage;
use threatpipe::stage::Stage;

#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

fn per_second(n: usize, took: std::time::Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(50_000);
    let dir = std::env::temp_dir().join(format!("tp-bench-ml-{}", std::process::id()));
    let model_path = dir.join("model.json");
    let samples = data::generated(20_000, 5, 40);
    let (file, _) = train::train(&samples, &train::TrainOptions { version: "bench".into(), ..train::TrainOptions::default() }).unwrap();
    Model::save(&file, &model_path).unwrap();

    let mut generator = EventGenerator::new(GeneratorConfig { seed: 9, malformed_ratio: 0.0, ..GeneratorConfig::default() });
    let normalizer = Normalizer::new(NormalizeConfig::default(), "default");
    let (detector, _) = Detector::load(&ScanConfig::default());
    let start = 1_763_596_800_000_000i64;
    let records: Vec<Record> = (0..n)
        .filter_map(|i| {
            let now = start + i as i64 * 10_000_000;
            let generated = generator.next_record(now);
            let mut event = normalizer.normalize(&Record::from_line("g", i, generated.payload), now).ok()?;
            event.matches = detector.scan(&event);
            Some(Record { topic: "events.correlated".into(), partition: 0, offset: i as i64, key: None, payload: avro::encode_event(&event).ok()?, timestamp_ms: None })
        })
        .collect();
    let (index, _) = ExactIndex::load(&["pipelines/exemplars".into()]);
    let index: Arc<dyn ThreatIndex> = Arc::new(index);

    println!("ml-score, one core: {} events (generator traffic), model of {} features", records.len(), file.features.len());
    for round in 1..=2 {
        let t = Instant::now();
        for record in &records {
            let event = avro::decode_event(&record.payload).unwrap();
            std::hint::black_box(avro::encode_event(&event).unwrap());
        }
        let baseline = per_second(records.len(), t.elapsed());
        let mut lanes = Vec::new();
        for model in [ModelHandle::none(), ModelHandle::open(model_path.clone()).0] {
            let mut stage = MlScoreStage::new(model, index.clone(), 1_000_000, CheckpointStore::Memory, "out".into(), "dlq".into());
            let mut out = Vec::new();
            let t = Instant::now();
            for record in &records {
                out.clear();
                stage.process(record, start, &mut out).unwrap();
            }
            lanes.push(per_second(records.len(), t.elapsed()));
        }
        println!(
            "  round {round}: baseline_avro {baseline:>9.0} ev/s   stage_no_model {:>9.0} ev/s ({:.2}x)   stage {:>9.0} ev/s ({:.2}x)",
            lanes[0],
            lanes[0] / baseline,
            lanes[1],
            lanes[1] / baseline
        );
    }

    let query = "powershell.exe -nop -w hidden -EncodedCommand SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQA";
    let t = Instant::now();
    for _ in 0..10_000 {
        std::hint::black_box(embed(query));
    }
    println!("  embed one command line: {:.1} µs", t.elapsed().as_secs_f64() * 1e6 / 10_000.0);
    let vector = embed(query);
    for size in [index.len(), 1_000, 10_000] {
        let synthetic: Arc<dyn ThreatIndex> = if size == index.len() {
            index.clone()
        } else {
            Arc::new(ExactIndex::new(
                (0..size).map(|i| Exemplar { id: format!("s{i}"), kind: TextKind::Command, title: String::new(), text: format!("cmd.exe /c tool{i} --flag {} {}", i * 7, i % 13) }).collect(),
            ))
        };
        let t = Instant::now();
        for _ in 0..1_000 {
            std::hint::black_box(synthetic.nearest(TextKind::Command, &vector));
        }
        println!("  exact search over {size:>6} exemplars: {:.1} µs per query", t.elapsed().as_secs_f64() * 1e6 / 1_000.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
