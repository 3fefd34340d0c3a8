//! Labelled training data from the three places `threatpipe train` takes it: the built-in
//! generator (labels from its attack scenarios), NDJSON files with a label field, and the
//! NSL-KDD connection records (network events whose numeric columns become features).
//!
//! Every source yields events as the ml-score stage sees them (normalized, with quick-scan's
//! matches where the content is available) and their features.

use std::io::BufRead;
use std::path::Path;

use anyhow::Context;

use super::baseline::BaselineState;
use super::features::event_features;
use super::train::{Sample, NORMAL};
use crate::bus::Record;
use crate::detect::{Detector, ScanConfig};
use crate::event::{Event, EventClass};
use crate::generator::{EventGenerator, GeneratorConfig, Origin};
use crate::normalize::{NormalizeConfig, Normalizer};

/// Quick-scan with the shipped content, when it is there (run from the repository).
fn detector() -> Option<Detector> {
    let config = ScanConfig::default();
    config.validate().is_empty().then(|| Detector::load(&config).0)
}

/// `n` events of the built-in generator, one attack burst per ~`attack_every` events.
pub fn generated(n: usize, seed: u64, attack_every: u64) -> Vec<Sample> {
    let mut generator = EventGenerator::new(GeneratorConfig { seed, attack_every, malformed_ratio: 0.0, ..GeneratorConfig::default() });
    let normalizer = Normalizer::new(NormalizeConfig::default(), "default");
    let detector = detector();
    // Spread over a week of event time, so time of day varies as in real traffic.
    let start = 1_763_596_800_000_000i64;
    let step = 7 * 86_400_000_000i64 / n.max(1) as i64;
    let mut baselines = BaselineState::default();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let now = start + i as i64 * step;
        let generated = generator.next_record(now);
        let label = match generated.origin {
            Origin::Background => NORMAL.to_string(),
            Origin::Attack(kind) => kind.to_string(),
            Origin::Malformed => continue,
        };
        let record = Record::from_line("generator", i, generated.payload);
        let Ok(mut event) = normalizer.normalize(&record, now) else { continue };
        if let Some(detector) = &detector {
            event.matches = detector.scan(&event);
        }
        samples.push(Sample { features: features_with_baseline(&event, &mut baselines), label });
    }
    samples
}

/// Event features plus its baseline deviations, learning as it goes (events in order), as
/// the ml-score stage computes them.
fn features_with_baseline(event: &Event, baselines: &mut BaselineState) -> crate::ml::features::Features {
    let mut features = event_features(event);
    features.extend(baselines.observe(&event.partition_key, event).features());
    features
}

/// Raw NDJSON events (any format normalize accepts); the label is the JSON field
/// `label_field` (absent: normal). Returns the samples and the lines that were skipped.
pub fn ndjson(path: &Path, label_field: &str) -> anyhow::Result<(Vec<Sample>, usize)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let normalizer = Normalizer::new(NormalizeConfig::default(), "default");
    let detector = detector();
    let now = chrono::Utc::now().timestamp_micros();
    let (mut samples, mut skipped) = (Vec::new(), 0);
    let mut baselines = BaselineState::default();
    for (n, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line = line.context("reading events")?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let label = serde_json::from_slice::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get(label_field).and_then(|l| l.as_str()).map(str::to_string))
            .unwrap_or_else(|| NORMAL.to_string());
        match normalizer.normalize(&Record::from_line("file", n, line), now) {
            Ok(mut event) => {
                if let Some(detector) = &detector {
                    event.matches = detector.scan(&event);
                }
                samples.push(Sample { features: features_with_baseline(&event, &mut baselines), label });
            }
            Err(_) => skipped += 1,
        }
    }
    Ok((samples, skipped))
}

/// Events from the warehouse (`events`, deduplicated with FINAL) of the last `days` days,
/// optionally one tenant, at most `limit`, in event-time order. Labels: `flagged` for events
/// that rules or correlations flagged, `normal` for the rest (history is mostly normal; the
/// anomaly model learns it, and the evaluation shows how much of what rules flagged it finds
/// on its own).
pub async fn clickhouse(config: &crate::db::ClickHouseConfig, days: u32, tenant: Option<&str>, limit: u64) -> anyhow::Result<Vec<Sample>> {
    anyhow::ensure!(crate::db::valid_identifier(&config.database), "clickhouse.database `{}` is not a valid name", config.database);
    let since = u32::try_from(chrono::Utc::now().timestamp()).unwrap_or(0).saturating_sub(days.saturating_mul(86_400));
    let sql = format!(
        "SELECT {} FROM {}.events FINAL WHERE time >= ? AND (? = '' OR tenant = ?) ORDER BY time_us LIMIT ?",
        crate::db::rows::EVENT_COLUMNS,
        config.database
    );
    let tenant = tenant.unwrap_or_default();
    let rows: Vec<crate::db::rows::EventRow> = config
        .client()
        .query(&sql)
        .bind(since)
        .bind(tenant)
        .bind(tenant)
        .bind(limit)
        .fetch_all()
        .await
        .with_context(|| format!("reading events from ClickHouse at {}", config.url))?;
    let mut baselines = BaselineState::default();
    Ok(rows
        .iter()
        .map(|row| {
            let event = row.to_event();
            let label = if event.matches.is_empty() && event.correlations.is_empty() { NORMAL } else { "flagged" };
            Sample { features: features_with_baseline(&event, &mut baselines), label: label.to_string() }
        })
        .collect())
}

/// NSL-KDD's 41 feature columns, in file order.
pub const NSL_KDD_COLUMNS: [&str; 41] = [
    "duration", "protocol_type", "service", "flag", "src_bytes", "dst_bytes", "land", "wrong_fragment", "urgent", "hot",
    "num_failed_logins", "logged_in", "num_compromised", "root_shell", "su_attempted", "num_root", "num_file_creations",
    "num_shells", "num_access_files", "num_outbound_cmds", "is_host_login", "is_guest_login", "count", "srv_count",
    "serror_rate", "srv_serror_rate", "rerror_rate", "srv_rerror_rate", "same_srv_rate", "diff_srv_rate",
    "srv_diff_host_rate", "dst_host_count", "dst_host_srv_count", "dst_host_same_srv_rate", "dst_host_diff_srv_rate",
    "dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate", "dst_host_srv_serror_rate",
    "dst_host_rerror_rate", "dst_host_srv_rerror_rate",
];

/// The attack family of an NSL-KDD label (the four families of the KDD'99 taxonomy).
pub fn nsl_kdd_family(label: &str) -> &'static str {
    match label {
        "normal" => NORMAL,
        "back" | "land" | "neptune" | "pod" | "smurf" | "teardrop" | "apache2" | "udpstorm" | "processtable" | "mailbomb" => "dos",
        "satan" | "ipsweep" | "nmap" | "portsweep" | "mscan" | "saint" => "probe",
        "buffer_overflow" | "loadmodule" | "rootkit" | "perl" | "sqlattack" | "xterm" | "ps" => "u2r",
        _ => "r2l",
    }
}

/// One NSL-KDD row as a network event: numeric columns in `features`, the categorical ones
/// (protocol, service, flag) both as attributes and as one-hot features. Returns the event
/// and its label.
pub fn nsl_kdd_event(line: &str, n: usize) -> anyhow::Result<(Event, String)> {
    let cols: Vec<&str> = line.trim().split(',').collect();
    anyhow::ensure!(cols.len() >= 42, "line {}: {} columns, expected 42 or 43", n + 1, cols.len());
    let mut event = Event { id: format!("nsl-kdd-{}", n + 1), class: EventClass::NetworkActivity, tenant: "nsl-kdd".into(), ..Event::default() };
    for (name, value) in NSL_KDD_COLUMNS.iter().zip(&cols) {
        match *name {
            "protocol_type" | "service" | "flag" => {
                event.attrs.insert((*name).to_string(), (*value).to_string());
                event.features.insert(format!("{name}={value}"), 1.0);
            }
            _ => {
                let number: f64 = value.parse().with_context(|| format!("line {}: {name} = {value:?} is not a number", n + 1))?;
                event.features.insert((*name).to_string(), number);
            }
        }
    }
    Ok((event, cols[41].to_string()))
}

/// NSL-KDD rows; labels are attack families (`dos`, `probe`, `r2l`, `u2r`) or `normal`.
pub fn nsl_kdd(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            let (event, label) = nsl_kdd_event(line, n)?;
            Ok(Sample { features: event_features(&event), label: nsl_kdd_family(&label).to_string() })
        })
        .collect()
}
