//! Hot reload and `threatpipe rules validate|test`: a valid change to a rule, feed or pack
//! takes effect without a restart; a broken one is rejected and the old set stays; the
//! CLI lists what does not load and why.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use threatpipe::detect::reload::ReloadOutcome;
use threatpipe::detect::{Detector, DetectorHandle, ScanConfig};
use threatpipe::event::{Event, Llm, Process};

const RULE: &str = "title: Whoami
id: 11111111-2222-3333-4444-555555555555
logsource:
  category: process_creation
  product: linux
detection:
  sel:
    CommandLine|contains: whoami
  condition: sel
level: low
";

fn content(dir: &Path) -> ScanConfig {
    for sub in ["rules", "intel", "patterns"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("rules/whoami.yml"), RULE).unwrap();
    std::fs::write(dir.join("intel/feed.txt"), "203.0.113.9\n").unwrap();
    std::fs::write(
        dir.join("patterns/p.toml"),
        "name = \"p\"\n[[pattern]]\nid = \"p-canary\"\ntitle = \"canary\"\nregex = 'canary-\\d+'\nany = [\"canary-\"]\n",
    )
    .unwrap();
    ScanConfig {
        sigma: vec![dir.join("rules")],
        intel: vec![dir.join("intel")],
        patterns: vec![dir.join("patterns")],
        reload_interval: Duration::from_millis(100),
        ioc_level: "high".into(),
        forward_raw: false,
    }
}

fn event(command: &str, prompt: &str) -> Event {
    Event {
        process: Some(Process { path: Some("/usr/bin/sh".into()), command_line: Some(command.into()), ..Default::default() }),
        llm: Some(Llm { prompt: Some(prompt.into()), ..Default::default() }),
        class: threatpipe::event::EventClass::ProcessActivity,
        ..Default::default()
    }
}

fn ids(handle: &DetectorHandle, e: &Event) -> Vec<String> {
    let mut ids: Vec<String> = handle.current().scan(e).into_iter().map(|m| m.rule_id).collect();
    ids.sort();
    ids
}

#[test]
fn valid_changes_apply_and_broken_ones_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = content(dir.path());
    let (detector, baseline) = Detector::load(&config);
    assert!(baseline.problems.is_empty(), "{:?}", baseline.problems);
    let handle = DetectorHandle::new(detector);
    let e = event("sh -c id", "canary-42");
    assert_eq!(ids(&handle, &e), vec!["p-canary"]);

    // A valid rule change: now the rule looks for `id`.
    std::fs::write(dir.path().join("rules/whoami.yml"), RULE.replace("whoami\n  condition", "' id'\n  condition")).unwrap();
    let ReloadOutcome::Applied(report) = handle.reload(&config, &baseline) else { panic!("valid change rejected") };
    assert_eq!(ids(&handle, &e), vec!["11111111-2222-3333-4444-555555555555", "p-canary"]);

    // A broken rule: rejected, the previous rules stay.
    std::fs::write(dir.path().join("rules/whoami.yml"), "title: broken\ndetection: [not, a, map\n").unwrap();
    let ReloadOutcome::Rejected { new_failures, .. } = handle.reload(&config, &report) else { panic!("broken rule applied") };
    assert!(new_failures[0].contains("whoami.yml"), "{new_failures:?}");
    assert_eq!(ids(&handle, &e), vec!["11111111-2222-3333-4444-555555555555", "p-canary"]);

    // A broken pack: rejected too.
    std::fs::write(dir.path().join("patterns/p.toml"), "name = \"p\"\n[[pattern]]\nid = \"x\"\ntitle = \"x\"\nregex = '('\n").unwrap();
    assert!(matches!(handle.reload(&config, &report), ReloadOutcome::Rejected { .. }));
    assert_eq!(ids(&handle, &e), vec!["11111111-2222-3333-4444-555555555555", "p-canary"]);
}

#[test]
fn the_watcher_picks_up_a_new_feed_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = content(dir.path());
    let (detector, baseline) = Detector::load(&config);
    let handle = DetectorHandle::new(detector);
    let stop = tokio_util::sync::CancellationToken::new();
    let _watcher = handle.watch(config.clone(), baseline, stop.clone());
    let e = Event { dst: Some(threatpipe::event::Endpoint { ip: Some("198.51.100.200".into()), ..Default::default() }), ..Default::default() };
    assert!(handle.current().scan(&e).is_empty());
    std::fs::write(dir.path().join("intel/more.csv"), "type,value,description\ncidr,198.51.100.0/24,test range\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while handle.generation() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let hits = handle.current().scan(&e);
    stop.cancel();
    assert_eq!(hits.len(), 1, "new feed not in force after {:?}", deadline.elapsed());
    assert!(hits[0].title.contains("test range"));
}

#[test]
fn rules_validate_lists_what_does_not_load_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    content(dir.path());
    std::fs::write(dir.path().join("rules/bad.yml"), "title: no detection\nlogsource:\n  product: x\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_threatpipe")).args(["rules", "validate"]).arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("bad.yml") && !stdout.contains("whoami.yml"), "{stdout}");
    assert!(stderr.contains("1 sigma rules"), "{stderr}");

    std::fs::remove_file(dir.path().join("rules/bad.yml")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_threatpipe")).args(["rules", "validate"]).arg(dir.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn rules_test_prints_matches_for_ndjson_events() {
    let dir = tempfile::tempdir().unwrap();
    content(dir.path());
    let events = dir.path().join("events.ndjson");
    std::fs::write(
        &events,
        concat!(
            r#"{"type":"process","process":{"command_line":"/usr/bin/sh -c whoami"},"host":"h1"}"#, "\n",
            r#"{"type":"network","src_ip":"10.0.0.1","dst_ip":"203.0.113.9"}"#, "\n",
            r#"{"type":"process","process":{"path":"/usr/bin/ls","command_line":"ls"}}"#, "\n",
            "not json\n",
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_threatpipe"))
        .args(["rules", "test"])
        .arg(dir.path())
        .arg("--events")
        .arg(&events)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("line 1: 11111111-2222-3333-4444-555555555555 [low] Whoami (sigma)") && lines[0].contains("whoami"), "{stdout}");
    assert!(lines[1].starts_with("line 2: ioc:ip:203.0.113.9 [high]") && lines[1].contains("dst.ip"), "{stdout}");
    assert!(stderr.contains("4 events, 2 with matches, 1 not events"), "{stderr}");
}
