//! SigmaHQ's own regression data against SigmaHQ's own rules, through normalize and the
//! Sigma engine: each sample must fire its rule `match_count` times. This is the floor of
//! detection quality (issue 3); the asserted rate only ever goes up.
//!
//! Data is read from `THREATPIPE_DATA` (default `../shared/data`), never copied in.

mod support;

use std::time::Instant;

use support::{data_dir, files_under};
use threatpipe::bus::Record;
use threatpipe::detect::sigma::SigmaRules;
use threatpipe::event::{Event, Match};
use threatpipe::generator::{EventGenerator, GeneratorConfig};
use threatpipe::normalize::{NormalizeConfig, Normalizer};

/// Samples whose rule fires exactly `match_count` times, measured 2026-11-22.
const MIN_PASSING_SAMPLES: usize = 111;

/// (rule id, match_count) from an info.yml.
fn expectation(info: &str) -> Option<(String, usize)> {
    let mut rule_id = None;
    let mut count = None;
    let mut in_rules = false;
    for line in info.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("rule_metadata:") {
            in_rules = true;
        } else if in_rules && rule_id.is_none() {
            if let Some(id) = trimmed.strip_prefix("- id:") {
                rule_id = Some(id.trim().trim_matches('\'').trim_matches('"').to_string());
            }
        }
        if let Some(n) = trimmed.strip_prefix("match_count:") {
            count = n.trim().parse().ok();
        }
    }
    Some((rule_id?, count?))
}

#[test]
fn sigmahq_regression_samples_fire_their_rules() {
    let data = data_dir();
    let started = Instant::now();
    let (rules, errors) = SigmaRules::load(&data.join("sigma/rules"));
    let load_time = started.elapsed();
    eprintln!("loaded {} rules in {:.2?}; {} did not load", rules.rule_count(), load_time, errors.len());
    for error in errors.iter().take(5) {
        eprintln!("  {error}");
    }
    assert!(rules.rule_count() > 3_000, "the SigmaHQ collection loads");
    assert!(errors.len() * 100 <= rules.rule_count() + errors.len(), "at least 99% of rules load: {} failed", errors.len());

    let normalizer = Normalizer::new(NormalizeConfig::default(), "default");
    let infos = files_under(&data.join("sigma/regression_data"), &|p| p.file_name().is_some_and(|n| n == "info.yml"));
    let (mut passed, mut checked) = (0usize, 0usize);
    let mut failures = Vec::new();
    let mut gate = GateCheck::default();
    for info in &infos {
        let Some((rule_id, expected)) = expectation(&std::fs::read_to_string(info).unwrap()) else { continue };
        let dir = info.parent().unwrap();
        let mut fired = 0;
        let mut events = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            for value in serde_json::Deserializer::from_slice(&bytes).into_iter::<serde_json::Value>() {
                let payload = serde_json::to_vec(&value.unwrap()).unwrap();
                let record = Record { topic: "raw".into(), partition: 0, offset: events, key: None, payload, timestamp_ms: None };
                events += 1;
                let event = normalizer.normalize(&record, 1_800_000_000_000_000).unwrap();
                if gate.check(&rules, &event).contains(&rule_id) {
                    fired += 1;
                }
            }
        }
        checked += 1;
        if fired == expected {
            passed += 1;
        } else {
            failures.push(format!("{rule_id}: fired {fired} of {expected} ({})", dir.display()));
        }
    }
    eprintln!("{passed} of {checked} regression samples fire their rule the expected number of times");
    for failure in failures.iter().take(15) {
        eprintln!("  {failure}");
    }
    assert!(checked >= 100);
    assert!(passed >= MIN_PASSING_SAMPLES, "{passed} < {MIN_PASSING_SAMPLES} samples pass");

    // Generator traffic (every event class, with attacks) through the same collection.
    let mut generator = EventGenerator::new(GeneratorConfig { attack_every: 10, malformed_ratio: 0.0, seed: 17, ..GeneratorConfig::default() });
    for offset in 0..3_000 {
        let generated = generator.next_record(1_736_676_000_000_000);
        let record = Record { topic: "raw".into(), partition: 0, offset, key: None, payload: generated.payload, timestamp_ms: None };
        gate.check(&rules, &normalizer.normalize(&record, 1_736_676_000_000_000).unwrap());
    }
    let (literals, ungated) = rules.gate_stats();
    eprintln!(
        "literal gate ({literals} literals, {ungated} ungated rules): {} events, {} hits with {} matched fields, identical to every routed rule evaluated by rsigma",
        gate.events, gate.hits, gate.fields
    );
    assert!(gate.mismatches.is_empty(), "the literal gate changed results: {:#?}", &gate.mismatches[..gate.mismatches.len().min(5)]);
    assert!(gate.hits > 100, "the comparison saw hits: {}", gate.hits);
    assert!(gate.fields > gate.hits, "the comparison saw matched fields: {}", gate.fields);
}

/// The literal gate must never change what matches: gated evaluation (what quick-scan
/// runs, with its one-pass naming of matched fields) against every routed rule evaluated by
/// rsigma's engines, compared match by match: rule, level, tags and matched fields.
#[derive(Default)]
struct GateCheck {
    events: usize,
    hits: usize,
    fields: usize,
    mismatches: Vec<(String, Vec<Match>, Vec<Match>)>,
}

impl GateCheck {
    /// The ids of the rules that match the event (gated), after comparing them.
    fn check(&mut self, rules: &SigmaRules, event: &Event) -> Vec<String> {
        let order = |mut matches: Vec<Match>| {
            matches.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
            matches
        };
        let gated = order(rules.evaluate(event));
        let reference = order(rules.evaluate_ungated(event));
        self.events += 1;
        self.hits += reference.len();
        self.fields += reference.iter().map(|m| m.fields.len()).sum::<usize>();
        let ids = gated.iter().map(|m| m.rule_id.clone()).collect();
        if gated != reference {
            self.mismatches.push((event.id.clone(), gated, reference));
        }
        ids
    }
}
