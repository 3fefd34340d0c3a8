//! ML scoring: training on labelled generator traffic and on NSL-KDD's real connection
//! records, model files that round-trip, and corrupt model files that are rejected with the
//! reason.

mod support;

use std::process::Command;

use threatpipe::ml::data;
use threatpipe::ml::model::{Model, ModelError, ModelFile};
use threatpipe::ml::train::{train, TrainOptions, NORMAL};

fn small_generator_model() -> ModelFile {
    let samples = data::generated(4_000, 3, 30);
    let options = TrainOptions { components: 2, ..TrainOptions::default() };
    let (file, report) = train(&samples, &options).unwrap();
    let classifier = report.classifier.as_ref().unwrap();
    assert!(classifier.roc_auc > 0.95, "{report}");
    file
}

#[test]
fn model_files_round_trip_and_corrupt_ones_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    let file = small_generator_model();
    Model::save(&file, &path).unwrap();
    let loaded = Model::load(&path).unwrap();
    assert!(loaded.file == file, "what is written is what is read (to the bit)");
    let features = data::generated(50, 9, 10).into_iter().map(|s| s.features).collect::<Vec<_>>();
    let original = Model::from_file(file.clone()).unwrap();
    for f in &features {
        assert_eq!(original.score(f), loaded.score(f));
    }

    // Truncated.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    assert!(matches!(Model::load(&path), Err(ModelError::Parse { .. })));
    // Another format version.
    let mut other = file.clone();
    other.format = 99;
    Model::save(&other, &path).unwrap();
    let err = Model::load(&path).unwrap_err().to_string();
    assert!(err.contains("format 99"), "{err}");
    // Numerically broken: a precision matrix that is not positive definite.
    let mut broken = file.clone();
    let anomaly = broken.anomaly.as_mut().unwrap();
    anomaly.precisions[0].iter_mut().for_each(|v| *v = -1.0);
    Model::save(&broken, &path).unwrap();
    let err = Model::load(&path).unwrap_err().to_string();
    assert!(err.contains("not positive definite"), "{err}");
    // Features and weights disagree.
    let mut short = file;
    short.classifier.as_mut().unwrap().weights.pop();
    Model::save(&short, &path).unwrap();
    assert!(matches!(Model::load(&path), Err(ModelError::Invalid { .. })));
    // Not there.
    assert!(matches!(Model::load(&dir.path().join("missing.json")), Err(ModelError::Read { .. })));
}

#[test]
fn the_anomaly_model_learns_nsl_kdd_normal_traffic_and_separates_attacks() {
    let path = support::data_dir().join("nsl-kdd/KDDTrain+_20Percent.txt");
    // Every third row keeps the debug-build test short; `threatpipe train --nsl-kdd` uses all.
    let samples: Vec<_> = data::nsl_kdd(&path).unwrap().into_iter().step_by(3).collect();
    assert!(samples.iter().any(|s| s.label == NORMAL) && samples.iter().any(|s| s.label == "dos"));
    let options = TrainOptions { components: 1, classifier: false, ..TrainOptions::default() };
    let (file, report) = train(&samples, &options).unwrap();
    assert!(file.classifier.is_none(), "trained on normal rows only");
    let anomaly = report.anomaly.as_ref().unwrap();
    eprintln!("{report}");
    assert!(anomaly.roc_auc >= 0.95, "ROC AUC {} below the 0.95 target", anomaly.roc_auc);
    assert!(anomaly.false_positive_rate <= 0.03, "{report}");
    assert!(anomaly.per_class["dos"].roc_auc >= 0.95, "{report}");
}

#[test]
fn train_and_score_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.json");
    let output = Command::new(env!("CARGO_BIN_EXE_threatpipe"))
        .args(["train", "--generated", "3000", "--components", "1", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for expected in ["ROC AUC", "recall at 1% FPR", "confusion (held out)", "ssh_brute_force"] {
        assert!(stdout.contains(expected), "{expected} missing from:\n{stdout}");
    }
    let events = dir.path().join("e.ndjson");
    std::fs::write(
        &events,
        concat!(
            r#"{"id":"a","time":"2026-01-12T10:00:00Z","type":"login","user":"alice","src_ip":"10.0.0.4","outcome":"success"}"#,
            "\n",
            r#"{"@timestamp":"2026-01-12T10:00:00Z","event":{"category":["process"],"type":["start"]},"host":{"name":"laptop-17"},"user":{"name":"bob"},"process":{"name":"powershell.exe","command_line":"powershell.exe -nop -w hidden -EncodedCommand SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcAZQBiAEMAbABpAGUAbgB0ACkA","parent":{"name":"winword.exe"}}}"#,
            "\n"
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_threatpipe")).args(["score", "--model"]).arg(&model).arg("--events").arg(&events).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    let risk = |i: usize| lines[i]["risk"].as_f64().unwrap();
    assert!(risk(0) < 20.0 && risk(1) > 80.0, "normal login {} vs dropper {}", risk(0), risk(1));
    assert_eq!(lines[1]["flagged"], true);
    assert!(!lines[1]["parts"]["classifier"]["top_features"].as_array().unwrap().is_empty());
}
