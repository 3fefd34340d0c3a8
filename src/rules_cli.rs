//! `threatpipe rules validate|test`: the authoring loop for detection content.
//!
//! Paths are classified by what they hold: `.yml`/`.yaml` are Sigma rules, `.toml` files
//! with `[[pattern]]` tables are pattern packs, `.txt`/`.csv`/`.list` and STIX `.json`
//! bundles are IoC feeds. Anything else under a directory is skipped, so a whole
//! `pipelines/` tree (which also holds pipeline configs) can be given at once.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::{Cli, RulesCommand};
use crate::detect::{Detector, LoadReport, ScanConfig};

fn classify(path: &Path, config: &mut ScanConfig) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        entries.sort();
        for entry in entries {
            classify(&entry, config);
        }
        return;
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    match ext.as_str() {
        "yml" | "yaml" => config.sigma.push(path.to_path_buf()),
        "txt" | "csv" | "list" => config.intel.push(path.to_path_buf()),
        "toml" => {
            if std::fs::read_to_string(path).is_ok_and(|t| t.contains("[[pattern]]")) {
                config.patterns.push(path.to_path_buf());
            }
        }
        "json" => {
            let stix = std::fs::read_to_string(path).is_ok_and(|t| t.contains("\"indicator\"") && t.contains("\"pattern\""));
            if stix {
                config.intel.push(path.to_path_buf());
            }
        }
        _ => {}
    }
}

/// A scan config holding exactly the content found under `paths`.
pub fn config_for(paths: &[PathBuf]) -> anyhow::Result<ScanConfig> {
    let mut config = ScanConfig { sigma: vec![], intel: vec![], patterns: vec![], ..ScanConfig::default() };
    for path in paths {
        anyhow::ensure!(path.exists(), "{} does not exist", path.display());
        classify(path, &mut config);
    }
    Ok(config)
}

fn print_report(report: &LoadReport, config: &ScanConfig) {
    eprintln!(
        "{} sigma files, {} feeds, {} packs → {report}",
        config.sigma.len(),
        config.intel.len(),
        config.patterns.len()
    );
}

pub fn run(cli: &Cli, command: &RulesCommand) -> anyhow::Result<()> {
    match command {
        RulesCommand::Validate { paths } => {
            let config = config_for(paths)?;
            let (detector, report) = Detector::load(&config);
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for problem in &report.problems {
                writeln!(out, "{problem}")?;
            }
            let ungated: Vec<&str> = detector.patterns.ungated().collect();
            if !ungated.is_empty() {
                eprintln!("note: patterns without literals run on every text: {}", ungated.join(", "));
            }
            print_report(&report, &config);
            if report.problems.is_empty() {
                Ok(())
            } else {
                let failed = report.problems.len() + report.indicators_rejected.saturating_sub(
                    report.problems.iter().filter(|p| p.source == "intel").count(),
                );
                eprintln!("{failed} did not load");
                std::process::exit(1);
            }
        }
        RulesCommand::Test { paths, events, json, all } => {
            let app = crate::cli::load_config(cli, None)?;
            let config = config_for(paths)?;
            let (detector, report) = Detector::load(&config);
            for problem in report.problems.iter().take(10) {
                eprintln!("not loaded: {problem}");
            }
            print_report(&report, &config);
            let normalizer = crate::normalize::Normalizer::new(app.normalize.clone(), app.pipeline.default_tenant.clone());
            let reader: Box<dyn BufRead> = if events.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(events).with_context(|| format!("opening {}", events.display()))?,
                ))
            };
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let (mut total, mut matched, mut rejected) = (0usize, 0usize, 0usize);
            for (n, line) in reader.split(b'\n').enumerate() {
                let payload = line.context("reading events")?;
                if payload.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                total += 1;
                let record = crate::bus::Record { topic: "file".into(), partition: 0, offset: n as i64, key: None, payload, timestamp_ms: None };
                let event = match normalizer.normalize(&record, chrono::Utc::now().timestamp_micros()) {
                    Ok(event) => event,
                    Err(e) => {
                        rejected += 1;
                        eprintln!("line {}: not an event ({}): {e}", n + 1, e.reason_code());
                        continue;
                    }
                };
                let matches = detector.scan(&event);
                if !matches.is_empty() {
                    matched += 1;
                }
                if *json {
                    if *all || !matches.is_empty() {
                        let value = serde_json::json!({"line": n + 1, "event_id": event.id, "matches": matches});
                        writeln!(out, "{value}")?;
                    }
                } else {
                    for m in &matches {
                        let mut fields: Vec<String> = m.fields.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                        fields.sort();
                        writeln!(out, "line {}: {} [{}] {} ({}) {}", n + 1, m.rule_id, m.level, m.title, m.kind, fields.join(" "))?;
                    }
                    if *all && matches.is_empty() {
                        writeln!(out, "line {}: no match", n + 1)?;
                    }
                }
            }
            eprintln!("{total} events, {matched} with matches, {rejected} not events");
            Ok(())
        }
    }
}
