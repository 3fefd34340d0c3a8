//! The deployment files: Compose and Kubernetes validate (scripts/validate-deploy.sh), and
//! every metric the Grafana dashboard and the Prometheus alert rules query is one the binary
//! exports: declared in `telemetry::names`, emitted somewhere in the source, and, for what
//! an embedded run exercises, present in a real scrape of `/metrics`.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `threatpipe_*` names in `text`, without the `_bucket`/`_sum`/`_count` series suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(p) = text[i..].find("threatpipe_") {
        let start = i + p;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let name = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        names.insert(name.to_string());
        i = end;
    }
    names
}

fn queried() -> BTreeSet<String> {
    let dashboard = std::fs::read_to_string(root().join("deploy/grafana/dashboards/threatpipe.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut exprs = String::new();
    for panel in value["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push_str(target["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    exprs.push_str(&std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap());
    exprs.push_str(&std::fs::read_to_string(root().join("deploy/k8s/threatpipe.yaml")).unwrap());
    // Job and rule names are not metrics.
    metric_names(&exprs).into_iter().filter(|n| n != "threatpipe_" && !n.ends_with('_')).collect()
}

#[test]
fn compose_and_kubernetes_files_validate() {
    let output = Command::new(root().join("scripts/validate-deploy.sh")).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("docker-compose.yml: valid against the Compose spec"), "{stderr}");
    assert!(stderr.contains("deploy/k8s: valid (strict)"), "{stderr}");
}

#[test]
fn dashboards_and_alert_rules_query_only_exported_metrics() {
    let declared: BTreeSet<String> = threatpipe::telemetry::names::ALL.iter().map(|s| s.to_string()).collect();
    let queried = queried();
    assert!(queried.len() >= 20, "{queried:?}");
    let unknown: Vec<&String> = queried.iter().filter(|q| !declared.contains(*q)).collect();
    assert!(unknown.is_empty(), "queried but not exported: {unknown:?}");
    // Every declared name is emitted by some code path (not only declared).
    let names_rs = std::fs::read_to_string(root().join("src/telemetry/names.rs")).unwrap();
    let mut source = String::new();
    for file in support::files_under(&root().join("src"), &|p| p.extension().is_some_and(|e| e == "rs")) {
        if !file.ends_with("telemetry/names.rs") {
            source.push_str(&std::fs::read_to_string(file).unwrap());
        }
    }
    for line in names_rs.lines().filter(|l| l.starts_with("pub const ") && l.contains(": &str")) {
        let constant = line["pub const ".len()..].split(':').next().unwrap();
        assert!(source.contains(&format!("names::{constant}")), "{constant} is declared but never emitted");
    }
}

#[test]
fn an_embedded_run_exports_what_the_dashboard_shows_of_it() {
    let port = support::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_threatpipe"))
        .args(["run", "--rate", "3000", "--quiet", "--http-listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kafka-only (lag, hop age), role-only (sink, connectors) and error counters appear
    // only where they happen; the rest must be in an embedded run's scrape.
    let elsewhere = ["threatpipe_stage_lag", "threatpipe_stage_input_age_seconds", "threatpipe_kafka_", "threatpipe_sink_", "threatpipe_connector_", "threatpipe_state_checkpoint_failures_total", "threatpipe_similarity_errors_total", "threatpipe_feed_skipped_total"];
    let wanted: Vec<String> = queried().into_iter().filter(|q| !elsewhere.iter().any(|e| q.starts_with(e))).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing = wanted.clone();
    while Instant::now() < deadline {
        let scrape = support::http_get(port, "/metrics").map(|(_, body)| body).unwrap_or_default();
        let exported = metric_names(&scrape);
        missing = wanted.iter().filter(|w| !exported.contains(*w)).cloned().collect();
        if missing.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(missing.is_empty(), "not in an embedded run's /metrics: {missing:?}");
}
