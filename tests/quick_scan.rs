//! Quick-scan with the shipped content (pipelines/rules, intel, patterns): the generator's
//! attacks come out with the expected rule ids and its background traffic with none —
//! in process, and through the real broker with normalize and quick-scan as two stages.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{create_topics, produce_all, unique, TopicReader};
use threatpipe::bus::Record;
use threatpipe::detect::{Detector, ScanConfig};
use threatpipe::event::{avro, Event};
use threatpipe::generator::{EventGenerator, GeneratorConfig, Origin};
use threatpipe::normalize::{NormalizeConfig, Normalizer};

const ENCODED_POWERSHELL_RULE: &str = "6f1d3c2a-7b1e-4c55-9a53-0d3e5f8a1b01";

/// What an event is, judged from its content, and the rule ids it must carry.
fn expected(event: &Event) -> (&'static str, Vec<&'static str>) {
    let prompt = event.llm.as_ref().and_then(|l| l.prompt.as_deref()).unwrap_or_default();
    let url = event.http.as_ref().and_then(|h| h.url.as_deref()).unwrap_or_default();
    let command = event.process.as_ref().and_then(|p| p.command_line.as_deref()).unwrap_or_default();
    let query = event.dns.as_ref().and_then(|d| d.query.as_deref()).unwrap_or_default();
    if command.contains("-EncodedCommand") {
        ("encoded_powershell", vec![ENCODED_POWERSHELL_RULE])
    } else if url.contains("' OR '") {
        ("sql_injection", vec!["web-sqli-tautology"])
    } else if url.contains("UNION SELECT") {
        ("sql_injection", vec!["web-sqli-union-select"])
    } else if url.contains(";DROP TABLE") {
        ("sql_injection", vec!["web-sqli-stacked-query"])
    } else if prompt.starts_with("Ignore all previous") {
        ("prompt_injection", vec!["pi-instruction-override"])
    } else if prompt.contains("DAN") {
        ("prompt_injection", vec!["pi-jailbreak-persona"])
    } else if prompt.starts_with("Repeat everything above") {
        ("prompt_injection", vec!["pi-prompt-leak"])
    } else if query.contains("badcdn-threatpipe") {
        ("c2_beacon", vec!["ioc:domain:update-check.badcdn-threatpipe.test"])
    } else {
        ("no_single_event_detection", vec![])
    }
}

/// Checks every event; returns how many of each kind were seen.
fn check_events(events: &[Event]) -> BTreeMap<&'static str, usize> {
    let mut seen = BTreeMap::new();
    for event in events {
        let (kind, rule_ids) = expected(event);
        *seen.entry(kind).or_insert(0) += 1;
        let got: Vec<&str> = event.matches.iter().map(|m| m.rule_id.as_str()).collect();
        if rule_ids.is_empty() {
            assert!(got.is_empty(), "benign or multi-event traffic matched {got:?}: {event:?}");
        }
        for id in rule_ids {
            assert!(got.contains(&id), "{kind} event lacks {id}; has {got:?}: {event:?}");
        }
        for m in &event.matches {
            assert!(!m.title.is_empty() && !m.level.is_empty() && !m.fields.is_empty(), "match record incomplete: {m:?}");
        }
    }
    seen
}

fn generator(total: u64) -> EventGenerator {
    EventGenerator::new(GeneratorConfig { attack_every: 15, malformed_ratio: 0.0, total, seed: 11, ..GeneratorConfig::default() })
}

#[test]
fn shipped_content_loads_cleanly() {
    let (detector, report) = Detector::load(&ScanConfig::default());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(detector.sigma.rule_count() >= 2 && detector.iocs.len() >= 3 && detector.patterns.len() >= 30, "{report}");
}

#[test]
fn generator_attacks_match_and_background_does_not() {
    let (detector, _) = Detector::load(&ScanConfig::default());
    let normalizer = Normalizer::new(NormalizeConfig::default(), "default");
    let mut generator = generator(0);
    let mut events = Vec::new();
    for offset in 0..6_000 {
        let generated = generator.next_record(1_736_676_000_000_000);
        assert!(!matches!(generated.origin, Origin::Malformed));
        let record = Record { topic: "raw".into(), partition: 0, offset, key: None, payload: generated.payload, timestamp_ms: None };
        let mut event = normalizer.normalize(&record, 1_736_676_000_000_000).unwrap();
        event.matches = detector.scan(&event);
        events.push(event);
    }
    let seen = check_events(&events);
    eprintln!("{seen:?}");
    for kind in ["encoded_powershell", "sql_injection", "prompt_injection", "c2_beacon"] {
        assert!(seen.get(kind).copied().unwrap_or(0) > 0, "no {kind} events generated: {seen:?}");
    }
}

#[test]
fn normalize_and_quick_scan_on_the_broker() {
    // The normalize test environment (raw, normalized, dlq), plus the scanned topic and both stages.
    let mut setup = support::NormalizeEnv::new("scan", 2);
    let scanned = unique("scan.scanned");
    create_topics(&[&scanned], 2);
    setup.env.insert("THREATPIPE_TOPICS__SCANNED".into(), scanned.clone());
    setup.env.insert("THREATPIPE_PIPELINE__STAGES".into(), "normalize,quick-scan".into());
    let mut generator = generator(0);
    let records: Vec<(String, Vec<u8>)> =
        (0..3_000).map(|i| (format!("g{i}"), generator.next_record(1_736_676_000_000_000).payload)).collect();
    produce_all(&setup.raw, &records);

    let mut process = setup.start("scan");
    let mut reader = TopicReader::new(&scanned);
    let complete = reader.read_until(Duration::from_secs(180), |r| r.len() >= records.len());
    assert!(complete, "{} of {} events reached {scanned}; log:\n{}", reader.records.len(), records.len(), process.log_text());
    let events: Vec<Event> = reader.records.iter().map(|r| avro::decode_event(&r.payload).unwrap()).collect();
    // Every event exactly once (generated ids are unique; syslog ids derive from the offset).
    let mut got: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    got.sort();
    got.dedup();
    let want = records.len();
    assert_eq!(got.len(), want, "every event exactly once");
    let seen = check_events(&events);
    eprintln!("{seen:?}");
    for kind in ["encoded_powershell", "sql_injection", "prompt_injection", "c2_beacon"] {
        assert!(seen.get(kind).copied().unwrap_or(0) > 0, "no {kind} events came through: {seen:?}");
    }
    assert_eq!(process.sigterm(Duration::from_secs(30)), Some(0));
}
