//! Hot reload of rules, IoC feeds and pattern packs, without a restart and without a gap.
//!
//! The stage reads the current [`Detector`] through a [`DetectorHandle`] (an `Arc` behind a
//! read lock held only for the clone). A watcher thread polls the configured paths'
//! modification times and sizes; on a change it loads a complete new detector in the
//! background and swaps it in only if no file fails that loaded before (a file that breaks
//! is rejected and logged, and the old set keeps running). Events in flight finish on the
//! detector they started with; none wait and none are dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::{problem_paths, Detector, LoadReport, ScanConfig};

/// The detector currently in force; cheap to clone and share.
#[derive(Clone)]
pub struct DetectorHandle {
    current: Arc<RwLock<Arc<Detector>>>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

/// Outcome of one reload attempt.
#[derive(Debug)]
pub enum ReloadOutcome {
    Applied(LoadReport),
    Rejected { report: LoadReport, new_failures: Vec<String> },
}

impl DetectorHandle {
    pub fn new(detector: Detector) -> Self {
        Self { current: Arc::new(RwLock::new(Arc::new(detector))), generation: Arc::default() }
    }

    pub fn current(&self) -> Arc<Detector> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How many reloads have been applied.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn swap(&self, detector: Detector) {
        let detector = Arc::new(detector);
        match self.current.write() {
            Ok(mut guard) => *guard = detector,
            Err(poisoned) => *poisoned.into_inner() = detector,
        }
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Loads `config` afresh and swaps it in unless a file now fails that `baseline` (the
    /// report of the load in force) loaded cleanly.
    pub fn reload(&self, config: &ScanConfig, baseline: &LoadReport) -> ReloadOutcome {
        let (detector, report) = Detector::load(config);
        let before = problem_paths(baseline);
        let new_failures: Vec<String> =
            report.problems.iter().filter(|p| !before.contains(p.path.as_path())).map(ToString::to_string).collect();
        if new_failures.is_empty() {
            self.swap(detector);
            ReloadOutcome::Applied(report)
        } else {
            ReloadOutcome::Rejected { report, new_failures }
        }
    }

    /// Polls for changes every `config.reload_interval` on a background thread until
    /// `stop`; `baseline` is the report of the detector in force now.
    pub fn watch(&self, config: ScanConfig, baseline: LoadReport, stop: CancellationToken) -> Option<std::thread::JoinHandle<()>> {
        if config.reload_interval.is_zero() {
            return None;
        }
        let handle = self.clone();
        // Taken before the thread starts, so a change made right after `watch` returns is seen.
        let mut seen = fingerprint(&config.watched_paths());
        let spawned = std::thread::Builder::new().name("rules-reload".into()).spawn(move || {
            let mut baseline = baseline;
            while !stop.is_cancelled() {
                std::thread::sleep(config.reload_interval);
                let now = fingerprint(&config.watched_paths());
                if now == seen {
                    continue;
                }
                seen = now;
                match handle.reload(&config, &baseline) {
                    ReloadOutcome::Applied(report) => {
                        tracing::info!(%report, "rules reloaded");
                        metrics::counter!(crate::telemetry::names::RULES_RELOADS, "outcome" => "applied").increment(1);
                        baseline = report;
                    }
                    ReloadOutcome::Rejected { new_failures, .. } => {
                        for failure in &new_failures {
                            tracing::error!(%failure, "rule change rejected; the previous rules stay in force");
                        }
                        metrics::counter!(crate::telemetry::names::RULES_RELOADS, "outcome" => "rejected").increment(1);
                    }
                }
            }
        });
        match spawned {
            Ok(join) => Some(join),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the rules reload thread; hot reload is off");
                None
            }
        }
    }
}

/// Modification time and size of every file under the paths.
pub fn fingerprint(paths: &[PathBuf]) -> BTreeMap<PathBuf, (Option<SystemTime>, u64)> {
    fn walk(path: &Path, out: &mut BTreeMap<PathBuf, (Option<SystemTime>, u64)>) {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                if let Ok(entries) = std::fs::read_dir(path) {
                    for entry in entries.flatten() {
                        walk(&entry.path(), out);
                    }
                }
            }
            Ok(meta) => {
                out.insert(path.to_path_buf(), (meta.modified().ok(), meta.len()));
            }
            Err(_) => {
                out.insert(path.to_path_buf(), (None, 0));
            }
        }
    }
    let mut out = BTreeMap::new();
    for path in paths {
        walk(path, &mut out);
    }
    out
}
