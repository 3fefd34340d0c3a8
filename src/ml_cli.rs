//! `threatpipe train` and `threatpipe score`: fitting models offline and checking them on
//! events before a stage loads them.

use std::io::{BufRead, Write};

use anyhow::Context;

use crate::bus::Record;
use crate::cli::{ScoreArgs, TrainArgs};
use crate::detect::{Detector, ScanConfig};
use crate::ml::features::event_features;
use crate::ml::model::Model;
use crate::ml::train::{train as fit, TrainOptions};
use crate::ml::{data, fuse};
use crate::normalize::{NormalizeConfig, Normalizer};

pub async fn train(cli: &crate::cli::Cli, args: &TrainArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (samples, source) = if let Some(n) = args.generated {
        eprintln!("generating {n} events (seed {}, one attack burst per ~{} events)…", args.seed, args.attack_every);
        (data::generated(n, args.seed, args.attack_every), "generator".to_string())
    } else if let Some(path) = &args.events {
        let (samples, skipped) = data::ndjson(path, &args.label_field)?;
        if skipped > 0 {
            eprintln!("{skipped} lines are not events and were skipped");
        }
        (samples, path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "events".into()))
    } else if let Some(path) = &args.nsl_kdd {
        (data::nsl_kdd(path)?, "nsl-kdd".to_string())
    } else if let Some(days) = args.clickhouse {
        let config = crate::cli::load_config_without_scan(cli)?.clickhouse;
        eprintln!("reading up to {} events of the last {days} days from {} ({})…", args.limit, config.url, config.database);
        (data::clickhouse(&config, days, args.tenant.as_deref(), args.limit).await?, format!("clickhouse-{}", config.database))
    } else {
        anyhow::bail!("give --generated N, --events FILE, --nsl-kdd FILE or --clickhouse DAYS");
    };
    let mut by_label: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for s in &samples {
        *by_label.entry(s.label.as_str()).or_insert(0) += 1;
    }
    eprintln!("{} rows: {}", samples.len(), by_label.iter().map(|(l, n)| format!("{l} {n}")).collect::<Vec<_>>().join(", "));
    let options = TrainOptions {
        holdout: args.holdout,
        components: args.components,
        seed: args.seed,
        anomaly: !args.no_anomaly,
        classifier: !args.no_classifier,
        version: format!("{source}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ")),
    };
    eprintln!("fitting…");
    let (file, report) = fit(&samples, &options).map_err(|e| anyhow::anyhow!(e))?;
    Model::save(&file, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        write!(out, "{report}")?;
    }
    eprintln!("model {} written to {} in {:.1} s", file.version, args.out.display(), started.elapsed().as_secs_f64());
    Ok(())
}

pub fn score(args: &ScoreArgs) -> anyhow::Result<()> {
    let model = Model::load(&args.model)?;
    let normalizer = Normalizer::new(NormalizeConfig::default(), "default");
    let config = ScanConfig::default();
    let detector = config.validate().is_empty().then(|| Detector::load(&config).0);
    let reader: Box<dyn BufRead> = if args.events.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(&args.events).with_context(|| format!("opening {}", args.events.display()))?))
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let now = chrono::Utc::now().timestamp_micros();
    for (n, line) in reader.split(b'\n').enumerate() {
        let line = line.context("reading events")?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut event = match normalizer.normalize(&Record::from_line("file", n, line), now) {
            Ok(event) => event,
            Err(e) => {
                eprintln!("line {}: not an event ({}): {e}", n + 1, e.reason_code());
                continue;
            }
        };
        if let Some(detector) = &detector {
            event.matches = detector.scan(&event);
        }
        let scored = model.score(&event_features(&event));
        let risk = fuse(scored.anomaly.iter().chain(&scored.classifier).map(|p| p.risk));
        let value = serde_json::json!({
            "line": n + 1,
            "event_id": event.id,
            "risk": risk,
            "flagged": model.flags(&scored),
            "model_version": model.version(),
            "parts": scored,
        });
        writeln!(out, "{value}")?;
    }
    Ok(())
}
