//! `threatpipe rules validate|test|bench`: the authoring loop for detection content.
//!
//! Paths are classified by what they hold: `.yml`/`.yaml` are Sigma rules, `.toml` files
//! with `[[pattern]]` tables are pattern packs, `.txt`/`.csv`/`.list` and STIX `.json`
//! bundles are IoC feeds. Anything else under a directory is skipped, so a whole
//! `pipelines/` tree (which also holds pipeline configs) can be given at once.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::{BenchArgs, Cli, RulesCommand};
use crate::detect::correlation::{signal_id, CorrelationRules, PartitionState, StateLimits};
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
        "toml" if std::fs::read_to_string(path).is_ok_and(|t| t.contains("[[pattern]]")) => {
            config.patterns.push(path.to_path_buf());
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

/// `value` lines for `n` synthetic indicators of four kinds (benchmarks).
pub fn synthetic_feed(n: u32) -> String {
    let mut text = String::with_capacity(n as usize * 40);
    for i in 0..n {
        match i % 4 {
            0 => text.push_str(&format!("{}.{}.{}.{}\n", 1 + (i >> 24) % 223, (i >> 16) & 255, (i >> 8) & 255, i & 255)),
            1 => text.push_str(&format!("host{i}.bad-domain{}.example\n", i % 1000)),
            2 => text.push_str(&format!("{:064x};sample {i}\n", (i as u128) * 0x9E37_79B9_7F4A_7C15)),
            _ => text.push_str(&format!("https://evil{i}.example/path/{i}\n")),
        }
    }
    text
}

/// What `rules bench` measured; printed as one JSON line.
#[derive(Debug, serde::Serialize)]
struct BenchReport {
    rules_loaded: usize,
    indicators: usize,
    load_seconds: f64,
    events: usize,
    /// Mean raw record size in bytes.
    mean_event_bytes: usize,
    passes: usize,
    /// Raw line → normalize → full scan (Sigma + IoC + packs), per second on one core.
    ingest_events_per_sec: Option<f64>,
    /// Full scan of already-normalized events, per second on one core.
    scan_events_per_sec: Option<f64>,
    /// Sigma only, every rule on every flat document (no logsource routing), per second.
    sigma_unrouted_events_per_sec: Option<f64>,
    /// Parts of scan, per second on one core, for the lanes asked for: `sigma`,
    /// `ungated`, `iocs`, `patterns`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    parts_events_per_sec: std::collections::BTreeMap<&'static str, f64>,
    /// Matches of every kind in one pass.
    matches_per_pass: usize,
    sigma_hits_routed: usize,
    /// Mean number of routed Sigma rules per event that pass the literal gate and are
    /// evaluated by rsigma.
    sigma_candidates_per_event: f64,
    /// Of those, rules with no literal to gate them (evaluated on every event of their
    /// logsource).
    sigma_ungated_per_event: f64,
    sigma_hits_unrouted: Option<usize>,
}

fn per_second(count: usize, took: std::time::Duration) -> f64 {
    (count as f64 / took.as_secs_f64().max(1e-9)).round()
}

fn bench(cli: &Cli, args: &BenchArgs) -> anyhow::Result<()> {
    let app = crate::cli::load_config_without_scan(cli)?;
    let config = config_for(&args.paths)?;
    let started = std::time::Instant::now();
    let (mut detector, report) = Detector::load(&config);
    if args.synthetic_iocs > 0 {
        let mut builder = crate::detect::ioc::IocSetBuilder::new().level(&config.ioc_level);
        for path in &config.intel {
            builder.load_path(path);
        }
        builder.load_text(Path::new("synthetic"), &synthetic_feed(args.synthetic_iocs), &std::sync::Arc::from("synthetic"));
        detector.iocs = builder.build();
    }
    let load_seconds = started.elapsed().as_secs_f64();
    eprintln!("loaded in {load_seconds:.2} s: {report}; {} indicators in force", detector.iocs.len());

    let normalizer = crate::normalize::Normalizer::new(app.normalize.clone(), app.pipeline.default_tenant.clone());
    let now_us = chrono::Utc::now().timestamp_micros();
    let to_record = |n: usize, payload: &[u8]| crate::bus::Record::from_line("file", n, payload.to_vec());
    let file = std::fs::File::open(&args.events).with_context(|| format!("opening {}", args.events.display()))?;
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.context("reading events")?;
        if !line.iter().all(u8::is_ascii_whitespace) {
            lines.push(line);
        }
    }
    let events: Vec<crate::event::Event> =
        lines.iter().enumerate().filter_map(|(n, l)| normalizer.normalize(&to_record(n, l), now_us).ok()).collect();
    anyhow::ensure!(!events.is_empty(), "no events in {}", args.events.display());
    if events.len() < lines.len() {
        eprintln!("{} of {} lines are not events and are skipped", lines.len() - events.len(), lines.len());
    }
    let docs: Vec<serde_json::Value> = events.iter().map(crate::detect::sigma::document).collect();
    if let Some(path) = &args.documents {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
        for doc in &docs {
            writeln!(out, "{doc}")?;
        }
        out.flush()?;
    }

    let lane = |name: &str| args.lanes.iter().any(|l| l == name);
    const LANES: [&str; 7] = ["ingest", "scan", "unrouted", "sigma", "ungated", "iocs", "patterns"];
    if let Some(unknown) = args.lanes.iter().find(|l| !LANES.contains(&l.as_str())) {
        anyhow::bail!("unknown lane {unknown:?}: use {}", LANES.join(", "));
    }
    // Hit counts per rule, unrouted (rsigma's semantics; when asked for) and routed (ours).
    let count_unrouted = args.hits.is_some() || lane("unrouted");
    let mut per_rule: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    let mut matches_per_pass = 0;
    let (mut candidates, mut ungated) = (0, 0);
    for (event, doc) in events.iter().zip(&docs) {
        if count_unrouted {
            for id in detector.sigma.evaluate_document_unrouted(doc) {
                per_rule.entry(id).or_default().0 += 1;
            }
        }
        let matches = detector.scan(event);
        matches_per_pass += matches.len();
        let (passed, without_gate) = detector.sigma.candidate_count(event);
        candidates += passed;
        ungated += without_gate;
        for m in matches.into_iter().filter(|m| m.kind == "sigma") {
            per_rule.entry(m.rule_id).or_default().1 += 1;
        }
    }
    if let Some(path) = &args.hits {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
        writeln!(out, "rule_id\tunrouted\trouted")?;
        for (id, (unrouted, routed)) in &per_rule {
            writeln!(out, "{id}\t{unrouted}\t{routed}")?;
        }
        out.flush()?;
    }

    let passes = args.repeat.max(1);
    let started = std::time::Instant::now();
    let mut sink = 0usize;
    for _ in 0..passes * usize::from(lane("ingest")) {
        for (n, line) in lines.iter().enumerate() {
            if let Ok(event) = normalizer.normalize(&to_record(n, line), now_us) {
                sink += detector.scan(&event).len();
            }
        }
    }
    let ingest = started.elapsed();
    let started = std::time::Instant::now();
    for _ in 0..passes * usize::from(lane("scan")) {
        for event in &events {
            sink += detector.scan(event).len();
        }
    }
    let scan = started.elapsed();
    let started = std::time::Instant::now();
    for _ in 0..passes * usize::from(lane("unrouted")) {
        for doc in &docs {
            sink += detector.sigma.evaluate_document_unrouted(doc).len();
        }
    }
    let unrouted = started.elapsed();
    let mut parts = std::collections::BTreeMap::new();
    type Part<'a> = (&'static str, &'a dyn Fn(&crate::event::Event) -> usize);
    let part_lanes: [Part<'_>; 4] = [
        ("sigma", &|e| detector.sigma.evaluate(e).len()),
        ("ungated", &|e| detector.sigma.matching_ids_ungated(e).len()),
        ("iocs", &|e| detector.iocs.evaluate(e).len()),
        ("patterns", &|e| detector.patterns.evaluate(e).len()),
    ];
    // Parts alternate pass by pass, so a noisy neighbour slows each of them alike.
    let part_lanes: Vec<_> = part_lanes.into_iter().filter(|(name, _)| lane(name)).collect();
    let mut part_time = vec![std::time::Duration::ZERO; part_lanes.len()];
    for _ in 0..passes {
        for ((_, part), took) in part_lanes.iter().zip(&mut part_time) {
            let started = std::time::Instant::now();
            for event in &events {
                sink += part(event);
            }
            *took += started.elapsed();
        }
    }
    for ((name, _), took) in part_lanes.iter().zip(part_time) {
        parts.insert(*name, per_second(events.len() * passes, took));
    }
    std::hint::black_box(sink);

    let report = BenchReport {
        rules_loaded: detector.sigma.rule_count(),
        indicators: detector.iocs.len(),
        load_seconds: (load_seconds * 1000.0).round() / 1000.0,
        events: events.len(),
        mean_event_bytes: lines.iter().map(Vec::len).sum::<usize>() / lines.len(),
        passes,
        ingest_events_per_sec: lane("ingest").then(|| per_second(lines.len() * passes, ingest)),
        scan_events_per_sec: lane("scan").then(|| per_second(events.len() * passes, scan)),
        sigma_unrouted_events_per_sec: lane("unrouted").then(|| per_second(docs.len() * passes, unrouted)),
        parts_events_per_sec: parts,
        matches_per_pass,
        sigma_hits_routed: per_rule.values().map(|c| c.1).sum(),
        sigma_candidates_per_event: (candidates as f64 / events.len() as f64 * 100.0).round() / 100.0,
        sigma_ungated_per_event: (ungated as f64 / events.len() as f64 * 100.0).round() / 100.0,
        sigma_hits_unrouted: count_unrouted.then(|| per_rule.values().map(|c| c.0).sum()),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Runs the events through the correlation rules in event-time order (ties in file order)
/// and prints each signal with its group key and window. Returns how many fired.
fn print_correlations(rules: &CorrelationRules, mut events: Vec<(usize, crate::event::Event)>, json: bool, out: &mut impl Write) -> anyhow::Result<usize> {
    events.sort_by_key(|(line, e)| (e.time_us, *line));
    let mut state = PartitionState::default();
    // In time order nothing is late; no key or entry limits for a file.
    let limits = StateLimits { allowed_lateness: std::time::Duration::from_secs(u32::MAX as u64), max_entries_per_key: usize::MAX, max_keys: usize::MAX };
    let mut fired = 0;
    for (line, event) in &events {
        for signal in rules.observe(&mut state, event, &limits).signals {
            fired += 1;
            if json {
                let value = serde_json::json!({"line": line, "event_id": event.id, "correlation": signal, "signal_id": signal_id(&signal, &event.tenant)});
                writeln!(out, "{value}")?;
            } else {
                writeln!(
                    out,
                    "line {line}: correlation {} [{}] {} ({}) group: {} window: {} .. {} ({} events)",
                    signal.rule_id,
                    signal.level,
                    signal.title,
                    signal.kind,
                    if signal.group_key.is_empty() { "-" } else { &signal.group_key },
                    time_text(signal.window_start_us),
                    time_text(signal.window_end_us),
                    signal.count
                )?;
            }
        }
    }
    Ok(fired)
}

fn time_text(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap_or_else(|| us.to_string())
}

pub fn run(cli: &Cli, command: &RulesCommand) -> anyhow::Result<()> {
    match command {
        RulesCommand::Bench(args) => bench(cli, args),
        RulesCommand::Validate { paths } => {
            let config = config_for(paths)?;
            let (detector, report) = Detector::load(&config);
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for problem in &report.problems {
                writeln!(out, "{problem}")?;
            }
            // Correlation rules: what the parser accepted but our engine cannot run (unknown
            // references are fine: quick-scan's matches may supply them).
            let (correlations, correlation_problems) = CorrelationRules::load_all(&config.sigma);
            let correlation_problems: Vec<_> = correlation_problems.into_iter().filter(|p| p.reason.starts_with("correlation")).collect();
            for problem in &correlation_problems {
                writeln!(out, "[correlation] {}: {}", problem.path.display(), problem.reason)?;
            }
            if !correlations.is_empty() {
                eprintln!("{} correlation rules loaded", correlations.rule_count());
            }
            let ungated: Vec<&str> = detector.patterns.ungated().collect();
            if !ungated.is_empty() {
                eprintln!("note: patterns without literals run on every text: {}", ungated.join(", "));
            }
            print_report(&report, &config);
            if report.problems.is_empty() && correlation_problems.is_empty() {
                Ok(())
            } else {
                let failed = report.problems.len()
                    + correlation_problems.len()
                    + report.indicators_rejected.saturating_sub(report.problems.iter().filter(|p| p.source == "intel").count());
                eprintln!("{failed} did not load");
                std::process::exit(1);
            }
        }
        RulesCommand::Test { paths, events, json, all } => {
            let app = crate::cli::load_config_without_scan(cli)?;
            let config = config_for(paths)?;
            let (detector, report) = Detector::load(&config);
            for problem in report.problems.iter().take(10) {
                eprintln!("not loaded: {problem}");
            }
            print_report(&report, &config);
            let (correlations, problems) = CorrelationRules::load_all(&config.sigma);
            for problem in problems.iter().filter(|p| p.reason.starts_with("correlation")).take(10) {
                eprintln!("not loaded: {}: {}", problem.path.display(), problem.reason);
            }
            if !correlations.is_empty() {
                eprintln!("{} correlation rules ({} detection rules of their own)", correlations.rule_count(), correlations.detection_rule_count());
            }
            // Events kept for the correlation pass: (line, event with its matches).
            let mut kept: Vec<(usize, crate::event::Event)> = Vec::new();
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
                let record = crate::bus::Record::from_line("file", n, payload);
                let mut event = match normalizer.normalize(&record, chrono::Utc::now().timestamp_micros()) {
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
                if !correlations.is_empty() {
                    event.matches = matches;
                    kept.push((n + 1, event));
                }
            }
            eprintln!("{total} events, {matched} with matches, {rejected} not events");
            if !correlations.is_empty() {
                let fired = print_correlations(&correlations, kept, *json, &mut out)?;
                eprintln!("{fired} correlation signals");
            }
            Ok(())
        }
    }
}
