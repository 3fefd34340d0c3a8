//! The model in force, hot-reloaded: a watcher thread polls the model file; a new file that
//! loads and validates replaces the model between two events; one that does not is logged
//! and counted, and the old model stays live.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::model::{Model, ModelError};
use crate::detect::reload::fingerprint;
use crate::telemetry::names;

#[derive(Clone)]
pub struct ModelHandle {
    path: Option<PathBuf>,
    current: Arc<RwLock<Option<Arc<Model>>>>,
}

impl ModelHandle {
    /// No model: scores come from rules, baselines and similarity only.
    pub fn none() -> Self {
        Self { path: None, current: Arc::default() }
    }

    /// Loads `path` now; a missing or bad file leaves the handle empty (the error is
    /// returned for the caller to log) and a later valid file is picked up by [`Self::watch`].
    pub fn open(path: PathBuf) -> (Self, Option<ModelError>) {
        let handle = Self { path: Some(path), current: Arc::default() };
        let error = handle.reload().err();
        (handle, error)
    }

    pub fn current(&self) -> Option<Arc<Model>> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Loads the file again; swaps it in only if it is valid. Returns the version in force.
    pub fn reload(&self) -> Result<String, ModelError> {
        let Some(path) = &self.path else { return Ok("none".into()) };
        let model = Model::load(path)?;
        let version = model.version().to_string();
        let model = Some(Arc::new(model));
        match self.current.write() {
            Ok(mut guard) => *guard = model,
            Err(poisoned) => *poisoned.into_inner() = model,
        }
        Ok(version)
    }

    /// Polls the model file every `interval` until `stop`; `None` when there is nothing to
    /// watch or `interval` is zero.
    pub fn watch(&self, interval: Duration, stop: CancellationToken) -> Option<std::thread::JoinHandle<()>> {
        let path = self.path.clone()?;
        if interval.is_zero() {
            return None;
        }
        let handle = self.clone();
        let watched = vec![path];
        let mut seen = fingerprint(&watched);
        let spawned = std::thread::Builder::new().name("model-reload".into()).spawn(move || {
            while !stop.is_cancelled() {
                std::thread::sleep(interval);
                let now = fingerprint(&watched);
                if now == seen {
                    continue;
                }
                seen = now;
                match handle.reload() {
                    Ok(version) => {
                        tracing::info!(%version, "model reloaded");
                        metrics::counter!(names::MODEL_RELOADS, "outcome" => "applied").increment(1);
                    }
                    Err(error) => {
                        tracing::error!(%error, "model change rejected; the previous model stays in force");
                        metrics::counter!(names::MODEL_RELOADS, "outcome" => "rejected").increment(1);
                    }
                }
            }
        });
        match spawned {
            Ok(join) => Some(join),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the model reload thread; hot reload is off");
                None
            }
        }
    }
}
