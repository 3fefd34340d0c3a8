//! The shipped correlation chains (pipelines/correlations) on the generator's traffic and on
//! hand-made sequences: each attack scenario fires its chain once, background traffic fires
//! nothing, and `threatpipe rules test` prints the signals with group key and window.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use threatpipe::bus::Record;
use threatpipe::detect::correlation::{CorrelationRules, PartitionState, StateLimits};
use threatpipe::detect::{Detector, ScanConfig};
use threatpipe::event::{Actor, Endpoint, Event, EventClass, Process};
use threatpipe::generator::{EventGenerator, GeneratorConfig, Origin};
use threatpipe::normalize::{NormalizeConfig, Normalizer};

fn shipped() -> CorrelationRules {
    let (rules, problems) = CorrelationRules::load_all(&["pipelines/correlations".into()]);
    assert!(problems.is_empty(), "{problems:?}");
    rules
}

/// Signals per rule *name* (the shipped rules' ids are UUIDs; names read better here).
fn by_name(signals: &[threatpipe::event::Correlation]) -> BTreeMap<String, usize> {
    let names: BTreeMap<&str, &str> = [
        ("014de2fd-77b6-4add-aba7-dc9193d81a4f", "brute_force"),
        ("89dfa039-498e-48bd-83b6-8edb459a6daa", "brute_force_then_success"),
        ("c84cf8a5-a3e8-47ba-9668-bf8edcbd87b7", "password_spray"),
        ("e65785ea-0636-4be3-8548-6850fd4285ac", "impossible_travel"),
        ("e7550360-c333-4b39-9983-f9a089f421ca", "port_scan"),
        ("0e298699-e167-47f2-afab-e0094f0d3838", "host_scan"),
        ("4f445b60-d665-45a8-9173-41f1c7597871", "prompt_injection_escalation"),
        ("e34fd77d-252d-43f7-ac8b-2dfd5f9fcf2c", "prompt_leak_chain"),
        ("7b622bff-25dd-43af-b026-5a43d4dc6ab5", "privilege_escalation_after_suspicious_process"),
    ]
    .into_iter()
    .collect();
    let mut out = BTreeMap::new();
    for s in signals {
        *out.entry(names.get(s.rule_id.as_str()).copied().unwrap_or(s.rule_id.as_str()).to_string()).or_insert(0) += 1;
    }
    out
}

#[test]
fn every_shipped_chain_loads() {
    let rules = shipped();
    assert_eq!(rules.rule_count(), 9);
    assert_eq!(rules.detection_rule_count(), 7);
}

#[test]
fn generator_attacks_fire_their_chain_once_and_background_fires_nothing() {
    let (detector, _) = Detector::load(&ScanConfig::default());
    let normalizer = Normalizer::new(NormalizeConfig::default(), "default");
    let rules = shipped();
    let mut generator =
        EventGenerator::new(GeneratorConfig { attack_every: 15, malformed_ratio: 0.0, seed: 5, ..GeneratorConfig::default() });
    let start = 1_736_676_000_000_000i64;
    let mut state = PartitionState::default();
    let limits = StateLimits::default();
    let mut signals = Vec::new();
    let mut records_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut prompt_sessions = BTreeSet::new();
    for offset in 0..20_000i64 {
        // One event per millisecond of event time: 20 s of traffic, inside every window.
        let now = start + offset * 1_000;
        let generated = generator.next_record(now);
        let record = Record { topic: "raw".into(), partition: 0, offset, key: None, payload: generated.payload, timestamp_ms: None };
        let mut event = normalizer.normalize(&record, now).unwrap();
        event.matches = detector.scan(&event);
        let fired = rules.observe(&mut state, &event, &limits).signals;
        match generated.origin {
            Origin::Attack(kind) => {
                *records_of.entry(kind).or_insert(0) += 1;
                if kind == "prompt_injection" {
                    let session = event.actor.as_ref().and_then(|a| a.session_id.clone()).or_else(|| event.llm.as_ref().and_then(|l| l.session_id.clone()));
                    prompt_sessions.insert((event.tenant.clone(), session.unwrap()));
                }
            }
            _ => assert!(fired.is_empty(), "background event fired {fired:?}: {event:?}"),
        }
        signals.extend(fired);
    }
    let bursts = |kind: &str, size: usize| {
        let records = records_of.get(kind).copied().unwrap_or(0);
        assert_eq!(records % size, 0, "{kind}: {records} records");
        records / size
    };
    let ssh = bursts("ssh_brute_force", 21);
    let spray = bursts("password_spray", 12);
    let scans = bursts("port_scan", 30);
    assert!(ssh > 5 && spray > 5 && scans > 5 && !prompt_sessions.is_empty(), "{records_of:?}");
    let fired = by_name(&signals);
    eprintln!("{fired:?} from {records_of:?}");
    let expected: BTreeMap<String, usize> = [
        ("brute_force", ssh),
        ("brute_force_then_success", ssh),
        ("password_spray", spray),
        ("port_scan", scans),
        // Bursts landing in an open session's window extend it: once per session.
        ("prompt_injection_escalation", prompt_sessions.len()),
        ("prompt_leak_chain", prompt_sessions.len()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(fired, expected);
}

fn at(seconds: i64) -> Event {
    Event { time_us: 1_736_676_000_000_000 + seconds * 1_000_000, tenant: "acme".into(), ..Event::default() }
}

fn login(seconds: i64, user: &str, country: &str) -> Event {
    let mut e = at(seconds);
    e.id = format!("login-{seconds}");
    e.class = EventClass::Authentication;
    e.outcome = Some("success".into());
    e.actor = Some(Actor { user: Some(user.into()), ..Actor::default() });
    e.src = Some(Endpoint { ip: Some("198.51.100.7".into()), ..Endpoint::default() });
    e.attrs.insert("client.geographicalContext.country".into(), country.into());
    e
}

fn run(events: &[Event]) -> BTreeMap<String, usize> {
    let (detector, _) = Detector::load(&ScanConfig::default());
    let rules = shipped();
    let mut state = PartitionState::default();
    let mut signals = Vec::new();
    for event in events {
        let mut event = event.clone();
        event.matches = detector.scan(&event);
        signals.extend(rules.observe(&mut state, &event, &StateLimits::default()).signals);
    }
    by_name(&signals)
}

#[test]
fn impossible_travel_needs_two_countries_within_the_hour() {
    let two = run(&[login(0, "alice", "DE"), login(600, "alice", "BR")]);
    assert_eq!(two.get("impossible_travel"), Some(&1), "{two:?}");
    let same = run(&[login(0, "alice", "DE"), login(600, "alice", "DE")]);
    assert_eq!(same.get("impossible_travel"), None);
    let apart = run(&[login(0, "alice", "DE"), login(7200, "alice", "BR")]);
    assert_eq!(apart.get("impossible_travel"), None, "two hours apart is travel, not impossible");
    let two_users = run(&[login(0, "alice", "DE"), login(600, "bob", "BR")]);
    assert_eq!(two_users.get("impossible_travel"), None);
}

fn process(seconds: i64, host: &str, parent: &str, image: &str, command: &str) -> Event {
    let mut e = at(seconds);
    e.id = format!("proc-{seconds}");
    e.class = EventClass::ProcessActivity;
    e.host = Some(host.into());
    e.process = Some(Process {
        name: Some(image.into()),
        command_line: Some(command.into()),
        parent_name: Some(parent.into()),
        ..Process::default()
    });
    e
}

#[test]
fn privilege_escalation_after_a_suspicious_process_on_the_same_host() {
    let dropper = |s, host| process(s, host, "winword.exe", "powershell.exe", "powershell.exe -nop -w hidden -EncodedCommand SQBFAFgA");
    let grant = |s, host| process(s, host, "cmd.exe", "net.exe", "net localgroup administrators eve /add");
    let fired = run(&[dropper(0, "laptop-17"), grant(300, "laptop-17")]);
    assert_eq!(fired.get("privilege_escalation_after_suspicious_process"), Some(&1), "{fired:?}");
    let reversed = run(&[grant(0, "laptop-17"), dropper(300, "laptop-17")]);
    assert_eq!(reversed.get("privilege_escalation_after_suspicious_process"), None, "order matters");
    let other_host = run(&[dropper(0, "laptop-17"), grant(300, "laptop-22")]);
    assert_eq!(other_host.get("privilege_escalation_after_suspicious_process"), None);
}

#[test]
fn rules_test_prints_each_signal_with_group_key_and_window() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    // Twelve failed logins for one account from one source, then its success, out of order
    // in the file: `rules test` sorts by event time.
    let mut lines = Vec::new();
    for i in (0..12).rev() {
        lines.push(format!(r#"{{"id":"f{i}","time":"2026-01-12T10:00:{i:02}Z","tenant":"acme","type":"login","user":"carol","src_ip":"203.0.113.9","outcome":"failure"}}"#));
    }
    lines.push(r#"{"id":"ok","time":"2026-01-12T10:00:30Z","tenant":"acme","type":"login","user":"carol","src_ip":"203.0.113.9","outcome":"success"}"#.into());
    std::fs::write(&file, lines.join("\n")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_threatpipe")).args(["rules", "test", "pipelines/correlations", "--events"]).arg(&file).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let signals: Vec<&str> = stdout.lines().filter(|l| l.contains("correlation ")).collect();
    assert_eq!(signals.len(), 2, "{stdout}");
    assert!(signals[0].contains("Brute Force Against One Account"), "{stdout}");
    assert!(signals[0].contains("group: user=carol, src_ip=203.0.113.9"), "{stdout}");
    assert!(signals[0].contains("window: 2026-01-12T10:00:00.000Z .. 2026-01-12T10:00:09.000Z (10 events)"), "{stdout}");
    assert!(signals[1].contains("Brute Force Followed By Successful Login"), "{stdout}");
    assert!(signals[1].contains("2026-01-12T10:00:30.000Z"), "{stdout}");
}
