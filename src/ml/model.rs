//! The model file: what `threatpipe train` writes and the ml-score stage (and `threatpipe
//! score`) loads. Models are fitted with linfa; their parameters are kept here in our own
//! versioned JSON so a file is readable, diffable and checked on load: a file that is
//! truncated, from another format version, or numerically broken is rejected with the reason
//! (and a running stage keeps its old model).
//!
//! Scoring is pure and synchronous: standardize the named features, then
//! - anomaly: negative log-likelihood under a Gaussian mixture fitted on normal traffic,
//!   calibrated against the training distribution (0 at its 99th percentile, rising towards
//!   100 beyond);
//! - classifier: logistic regression probability of "attack".
//!
//! Each part names the features that drove it: for the mixture, each feature's share of the
//! Mahalanobis distance to the closest component; for the classifier, weight × value.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::features::Features;

/// The model file layout this build reads and writes.
pub const MODEL_FORMAT: u32 = 1;
/// Largest model file accepted (a 200-feature, 8-component mixture is ~3 MB of JSON).
pub const MAX_MODEL_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("model {path} is {size} bytes, more than the {MAX_MODEL_BYTES} accepted")]
    TooLarge { path: String, size: u64 },
    #[error("model {path} is not a model file: {detail}")]
    Parse { path: String, detail: String },
    #[error("model {path}: {detail}")]
    Invalid { path: String, detail: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Standardized values are clipped to ±clip: one extreme field must not swamp every
    /// other, and the mixture's likelihoods stay within floating-point range.
    pub clip: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyParams {
    pub weights: Vec<f64>,
    pub means: Vec<Vec<f64>>,
    /// Precision (inverse covariance) matrices, one per component, row-major.
    pub precisions: Vec<Vec<f64>>,
    /// Negative log-likelihood of the training normal events: median and 99th percentile.
    pub nll_median: f64,
    pub nll_p99: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierParams {
    pub weights: Vec<f64>,
    pub intercept: f64,
    /// Probability at or above which an event counts as an attack.
    pub threshold: f64,
}

/// The file as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub format: u32,
    /// Free-form version (training source and time), shown on every scored event.
    pub version: String,
    pub created: String,
    pub features: Vec<String>,
    pub scaler: Scaler,
    pub anomaly: Option<AnomalyParams>,
    pub classifier: Option<ClassifierParams>,
    /// What training measured on its held-out split.
    #[serde(default)]
    pub evaluation: serde_json::Value,
}

/// One mixture component, ready to score.
#[derive(Debug, Clone)]
struct Component {
    log_weight: f64,
    mean: Vec<f64>,
    precision: Vec<f64>,
    half_log_det: f64,
}

/// A validated model.
#[derive(Debug, Clone)]
pub struct Model {
    pub file: ModelFile,
    components: Vec<Component>,
}

/// One part of a score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Part {
    /// 0–100.
    pub risk: f64,
    /// The raw model output (negative log-likelihood, or probability).
    pub raw: f64,
    /// Features that drove this part, strongest first: (name, contribution).
    pub top_features: Vec<(String, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelScore {
    pub anomaly: Option<Part>,
    pub classifier: Option<Part>,
}

/// Lower-triangular Cholesky factor of a symmetric positive-definite `d`×`d` matrix.
fn cholesky(m: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut sum = m[i * d + j];
            for k in 0..j {
                sum -= l[i * d + k] * l[j * d + k];
            }
            if i == j {
                if sum <= 0.0 || !sum.is_finite() {
                    return None;
                }
                l[i * d + i] = sum.sqrt();
            } else {
                l[i * d + j] = sum / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// Dot product with four independent sums (vectorizable; a single running sum is not).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f64>() + tail
}

fn finite(values: &[f64]) -> bool {
    values.iter().all(|v| v.is_finite())
}

const TOP_FEATURES: usize = 5;

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn top(names: &[String], contributions: &[f64]) -> Vec<(String, f64)> {
    let mut ranked: Vec<(usize, f64)> = contributions.iter().copied().enumerate().filter(|(_, c)| *c > 0.0).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.into_iter().take(TOP_FEATURES).map(|(i, c)| (names[i].clone(), (c * 1000.0).round() / 1000.0)).collect()
}

impl Model {
    /// Reads and validates a model file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let shown = path.display().to_string();
        let size = std::fs::metadata(path).map_err(|source| ModelError::Read { path: shown.clone(), source })?.len();
        if size > MAX_MODEL_BYTES {
            return Err(ModelError::TooLarge { path: shown, size });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Read { path: shown.clone(), source })?;
        let file: ModelFile = serde_json::from_str(&text).map_err(|e| ModelError::Parse { path: shown.clone(), detail: e.to_string() })?;
        Self::from_file(file).map_err(|detail| ModelError::Invalid { path: shown, detail })
    }

    /// Validates a model file's contents.
    pub fn from_file(file: ModelFile) -> Result<Self, String> {
        if file.format != MODEL_FORMAT {
            return Err(format!("format {} (this build reads format {MODEL_FORMAT}); retrain with this version", file.format));
        }
        let d = file.features.len();
        if d == 0 {
            return Err("no features".into());
        }
        let mut names = file.features.clone();
        names.sort();
        names.dedup();
        if names.len() != d {
            return Err("duplicate feature names".into());
        }
        if file.scaler.mean.len() != d || file.scaler.std.len() != d || !finite(&file.scaler.mean) || !finite(&file.scaler.std) {
            return Err(format!("scaler does not match the {d} features or is not finite"));
        }
        if file.scaler.std.iter().any(|s| *s <= 0.0) {
            return Err("scaler has a non-positive standard deviation".into());
        }
        if !(file.scaler.clip.is_finite() && file.scaler.clip > 0.0) {
            return Err("scaler clip must be positive".into());
        }
        if file.anomaly.is_none() && file.classifier.is_none() {
            return Err("neither an anomaly model nor a classifier".into());
        }
        let mut components = Vec::new();
        if let Some(anomaly) = &file.anomaly {
            let k = anomaly.weights.len();
            if k == 0 || anomaly.means.len() != k || anomaly.precisions.len() != k {
                return Err("anomaly model: weights, means and precisions disagree on the number of components".into());
            }
            if !finite(&anomaly.weights) || anomaly.weights.iter().any(|w| *w <= 0.0) || (anomaly.weights.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
                return Err("anomaly model: weights must be positive and sum to 1".into());
            }
            if !(anomaly.nll_median.is_finite() && anomaly.nll_p99.is_finite() && anomaly.nll_p99 >= anomaly.nll_median) {
                return Err("anomaly model: calibration quantiles are not finite and ordered".into());
            }
            for (i, ((w, mean), precision)) in anomaly.weights.iter().zip(&anomaly.means).zip(&anomaly.precisions).enumerate() {
                if mean.len() != d || precision.len() != d * d || !finite(mean) || !finite(precision) {
                    return Err(format!("anomaly model: component {i} does not match the {d} features or is not finite"));
                }
                let chol = cholesky(precision, d).ok_or_else(|| format!("anomaly model: precision {i} is not positive definite"))?;
                let half_log_det = (0..d).map(|j| chol[j * d + j].ln()).sum::<f64>();
                components.push(Component { log_weight: w.ln(), mean: mean.clone(), precision: precision.clone(), half_log_det });
            }
        }
        if let Some(classifier) = &file.classifier {
            if classifier.weights.len() != d || !finite(&classifier.weights) || !classifier.intercept.is_finite() {
                return Err(format!("classifier does not match the {d} features or is not finite"));
            }
            if !(0.0..=1.0).contains(&classifier.threshold) {
                return Err("classifier threshold must be within 0..=1".into());
            }
        }
        Ok(Self { file, components })
    }

    /// Writes the model file (pretty JSON), through a temporary file and a rename so a
    /// watcher never reads half a model.
    pub fn save(file: &ModelFile, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(file).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    pub fn version(&self) -> &str {
        &self.file.version
    }

    /// Standardized feature vector in the model's order (absent features are 0 before scaling).
    pub fn vectorize(&self, features: &Features) -> Vec<f64> {
        let scaler = &self.file.scaler;
        self.file
            .features
            .iter()
            .enumerate()
            .map(|(i, name)| ((features.get(name).copied().unwrap_or(0.0) - scaler.mean[i]) / scaler.std[i]).clamp(-scaler.clip, scaler.clip))
            .collect()
    }

    /// Negative log-likelihood under the mixture, and the index of the closest component.
    fn nll(&self, x: &[f64]) -> (f64, usize, Vec<f64>) {
        let d = x.len();
        let ln_2pi = (2.0 * std::f64::consts::PI).ln();
        let mut best = (f64::NEG_INFINITY, 0usize);
        let mut logs = Vec::with_capacity(self.components.len());
        let mut best_diff = Vec::new();
        let mut diff = vec![0.0; d];
        for (k, c) in self.components.iter().enumerate() {
            for ((out, a), b) in diff.iter_mut().zip(x).zip(&c.mean) {
                *out = a - b;
            }
            let q: f64 = (0..d).map(|i| diff[i] * dot(&c.precision[i * d..(i + 1) * d], &diff)).sum();
            let log = c.log_weight + c.half_log_det - 0.5 * d as f64 * ln_2pi - 0.5 * q;
            if log > best.0 {
                best = (log, k);
                best_diff.clone_from(&diff);
            }
            logs.push(log);
        }
        let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logs.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        (-lse, best.1, best_diff)
    }

    /// Both parts for one event's features.
    pub fn score(&self, features: &Features) -> ModelScore {
        let x = self.vectorize(features);
        let names = &self.file.features;
        let anomaly = self.file.anomaly.as_ref().map(|params| {
            let (nll, k, diff) = self.nll(&x);
            let d = x.len();
            let precision = &self.components[k].precision;
            let contributions: Vec<f64> = (0..d).map(|i| diff[i] * dot(&precision[i * d..(i + 1) * d], &diff)).collect();
            let spread = (params.nll_p99 - params.nll_median).max(1e-9);
            let risk = if nll <= params.nll_p99 { 0.0 } else { 100.0 * (1.0 - (-(nll - params.nll_p99) / spread).exp()) };
            Part { risk: round2(risk), raw: nll, top_features: top(names, &contributions) }
        });
        let classifier = self.file.classifier.as_ref().map(|params| {
            let contributions: Vec<f64> = params.weights.iter().zip(&x).map(|(w, v)| w * v).collect();
            let z = params.intercept + contributions.iter().sum::<f64>();
            let p = 1.0 / (1.0 + (-z).exp());
            Part { risk: round2(100.0 * p), raw: p, top_features: top(names, &contributions) }
        });
        ModelScore { anomaly, classifier }
    }

    /// Whether a score counts as an attack under the model's own thresholds.
    pub fn flags(&self, score: &ModelScore) -> bool {
        let anomalous = match (&score.anomaly, &self.file.anomaly) {
            (Some(part), Some(params)) => part.raw > params.nll_p99,
            _ => false,
        };
        let classified = match (&score.classifier, &self.file.classifier) {
            (Some(part), Some(params)) => part.raw >= params.threshold,
            _ => false,
        };
        anomalous || classified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_of_a_known_matrix() {
        let l = cholesky(&[4.0, 2.0, 2.0, 3.0], 2).unwrap();
        assert_eq!(l, vec![2.0, 0.0, 1.0, 2f64.sqrt()]);
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none(), "indefinite");
    }
}
