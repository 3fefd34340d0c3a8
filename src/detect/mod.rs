//! Detection core: pure, synchronous matching of normalized events against rules.
//!
//! No tokio, no bus: the quick-scan stage wraps this, `threatpipe rules` and benchmarks call
//! it directly. A [`Detector`] is three matchers loaded from files:
//!
//! - [`sigma::SigmaRules`]: SigmaHQ-format detection rules through rsigma (0.23), routed by
//!   logsource, behind our [`literal_gate::LiteralGate`] (only rules whose necessary
//!   literals all occur in the event are evaluated);
//! - [`ioc::IocSet`]: exact indicator sets behind a blocked bloom filter;
//! - [`patterns::PatternPacks`]: regex packs gated by one shared literal automaton.
//!
//! [`DetectorHandle`] holds the current detector for hot reload: a reload builds a complete
//! new detector off the hot path and swaps it in only if it loaded no worse than the old one.

pub mod bloom;
pub mod correlation;
pub mod ioc;
pub mod literal_gate;
pub mod patterns;
pub mod reload;
pub mod sigma;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::event::{Event, Match};

/// A content file (Sigma rule file or document, pattern pack or one of its patterns) that
/// did not load, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct FileError {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

pub use reload::DetectorHandle;

/// `[scan]`: what the quick-scan stage loads, and how often it looks for changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    /// Sigma rule files or directories (searched recursively for `.yml`).
    pub sigma: Vec<PathBuf>,
    /// IoC feed files or directories (`.txt`, `.csv`, STIX `.json`).
    pub intel: Vec<PathBuf>,
    /// Pattern pack files or directories (`.toml`).
    pub patterns: Vec<PathBuf>,
    /// How often files are checked for changes; `0s` turns hot reload off.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Level recorded on IoC matches.
    pub ioc_level: String,
    /// Keep the original text (`raw`, see `normalize.keep_raw`) on the events quick-scan
    /// passes on. Quick-scan is the last stage with rules; no later stage and no ClickHouse
    /// table reads `raw`, and it is about half of an event's bytes, so by default it stops
    /// here (`events.normalized` keeps it; each event keeps its `events.raw` position in
    /// `source`).
    pub forward_raw: bool,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            sigma: vec![PathBuf::from("pipelines/rules")],
            intel: vec![PathBuf::from("pipelines/intel")],
            patterns: vec![PathBuf::from("pipelines/patterns")],
            reload_interval: Duration::from_secs(2),
            ioc_level: "high".into(),
            forward_raw: false,
        }
    }
}

impl ScanConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for (key, paths) in [("scan.sigma", &self.sigma), ("scan.intel", &self.intel), ("scan.patterns", &self.patterns)] {
            for path in paths {
                if !path.exists() {
                    errors.push(format!("{key}: {} does not exist (paths are relative to the working directory)", path.display()));
                }
            }
        }
        errors
    }

    /// Every file the detector is built from, for change detection.
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        self.sigma.iter().chain(&self.intel).chain(&self.patterns).cloned().collect()
    }
}

/// One file (or rule in it) that did not load, from any of the three sources.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadProblem {
    pub source: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}: {}", self.source, self.path.display(), self.reason)
    }
}

/// What a load did: counts, problems and time taken.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub sigma_rules: usize,
    pub indicators: usize,
    pub indicators_rejected: usize,
    pub patterns: usize,
    pub problems: Vec<LoadProblem>,
    pub took: Duration,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sigma rules, {} indicators ({} lines rejected), {} patterns in {:.2?}; {} problems",
            self.sigma_rules,
            self.indicators,
            self.indicators_rejected,
            self.patterns,
            self.took,
            self.problems.len()
        )
    }
}

/// Sigma rules, IoC sets and pattern packs, ready to scan events.
pub struct Detector {
    pub sigma: sigma::SigmaRules,
    pub iocs: ioc::IocSet,
    pub patterns: patterns::PatternPacks,
}

impl Detector {
    pub fn empty() -> Self {
        Self { sigma: sigma::SigmaRules::empty(), iocs: ioc::IocSet::empty(), patterns: patterns::PatternPacks::empty() }
    }

    /// Loads everything the config names. Never fails as a whole: what does not load is in
    /// the report, and the caller decides whether that is acceptable.
    pub fn load(config: &ScanConfig) -> (Self, LoadReport) {
        let started = Instant::now();
        let mut report = LoadReport::default();
        let (sigma, errors) = sigma::SigmaRules::load_all(&config.sigma);
        report.problems.extend(errors.into_iter().map(|e| LoadProblem { source: "sigma", path: e.path, reason: e.reason }));
        let mut builder = ioc::IocSetBuilder::new().level(&config.ioc_level);
        for path in &config.intel {
            builder.load_path(path);
        }
        report.indicators_rejected = builder.report.rejected;
        report.problems.extend(
            builder.report.errors.iter().map(|e| LoadProblem { source: "intel", path: e.path.clone(), reason: format!("line {}: {}", e.line, e.reason) }),
        );
        let iocs = builder.build();
        let mut sources = Vec::new();
        for path in &config.patterns {
            let files: Vec<PathBuf> = if path.is_dir() {
                std::fs::read_dir(path)
                    .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect())
                    .unwrap_or_default()
            } else {
                vec![path.clone()]
            };
            for file in files {
                match std::fs::read_to_string(&file) {
                    Ok(text) => sources.push((file, text)),
                    Err(e) => report.problems.push(LoadProblem { source: "patterns", path: file, reason: e.to_string() }),
                }
            }
        }
        sources.sort();
        let (patterns, errors) = patterns::PatternPacks::from_sources(&sources);
        report.problems.extend(errors.into_iter().map(|e| LoadProblem { source: "patterns", path: e.path, reason: e.reason }));
        report.sigma_rules = sigma.rule_count();
        report.indicators = iocs.len();
        report.patterns = patterns.len();
        report.took = started.elapsed();
        (Self { sigma, iocs, patterns }, report)
    }

    /// Every Sigma rule, indicator and pattern that matches the event.
    pub fn scan(&self, event: &Event) -> Vec<Match> {
        let mut matches = self.sigma.evaluate(event);
        matches.extend(self.iocs.evaluate(event));
        matches.extend(self.patterns.evaluate(event));
        matches
    }
}

/// Paths of files that did not load cleanly, for comparing two loads.
pub fn problem_paths(report: &LoadReport) -> std::collections::BTreeSet<&Path> {
    report.problems.iter().map(|p| p.path.as_path()).collect()
}
