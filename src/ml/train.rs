//! Fitting and judging models: a seeded train/held-out split, linfa fits (a Gaussian mixture
//! on the normal training rows, a logistic regression on all of them when there are attack
//! labels), and an evaluation on the held-out rows that `threatpipe train` prints and stores
//! in the model file.

use std::collections::{BTreeMap, BTreeSet};

use linfa::prelude::*;
use linfa_clustering::GaussianMixtureModel;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use serde::Serialize;

use super::features::Features;
use super::model::{AnomalyParams, ClassifierParams, Model, ModelFile, Scaler, MODEL_FORMAT};

/// Standardized features are clipped to ±CLIP (see [`Scaler::clip`]).
const CLIP: f64 = 5.0;
/// Added to the mixture's covariance diagonals (in standardized units): bounds every
/// precision at 1/REG_COVARIANCE, so a feature that never varies in normal traffic counts,
/// but does not dominate, when it does vary. linfa's EM sums likelihoods without the
/// log-sum-exp trick, so this and the clip also keep every training row's likelihood above
/// f64 underflow.
const REG_COVARIANCE: f64 = 0.1;

/// The label of benign rows.
pub const NORMAL: &str = "normal";

/// One labelled example.
#[derive(Debug, Clone)]
pub struct Sample {
    pub features: Features,
    /// `normal`, or the attack class / family.
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Share of rows held out for evaluation.
    pub holdout: f64,
    /// Mixture components of the anomaly model.
    pub components: usize,
    pub seed: u64,
    pub anomaly: bool,
    pub classifier: bool,
    /// Written into the model file (`version`).
    pub version: String,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self { holdout: 0.2, components: 4, seed: 7, anomaly: true, classifier: true, version: "unnamed".into() }
    }
}

/// Confusion counts at one threshold.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Confusion {
    pub true_positives: usize,
    pub false_positives: usize,
    pub true_negatives: usize,
    pub false_negatives: usize,
}

impl Confusion {
    pub fn precision(&self) -> f64 {
        ratio(self.true_positives, self.true_positives + self.false_positives)
    }
    pub fn recall(&self) -> f64 {
        ratio(self.true_positives, self.true_positives + self.false_negatives)
    }
    pub fn false_positive_rate(&self) -> f64 {
        ratio(self.false_positives, self.false_positives + self.true_negatives)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// How one model part did on the held-out rows.
#[derive(Debug, Clone, Serialize)]
pub struct PartReport {
    pub roc_auc: f64,
    /// At the model's own threshold.
    pub confusion: Confusion,
    pub precision: f64,
    pub recall: f64,
    pub false_positive_rate: f64,
    /// Recall when the threshold lets 1% of held-out normal rows through.
    pub recall_at_1pct_fpr: f64,
    /// Per attack class: (held-out rows, recall at the model threshold, recall at 1% FPR, ROC AUC vs normal).
    pub per_class: BTreeMap<String, ClassReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassReport {
    pub rows: usize,
    pub recall: f64,
    pub recall_at_1pct_fpr: f64,
    pub roc_auc: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub train_rows: usize,
    pub holdout_rows: usize,
    pub features: usize,
    pub anomaly: Option<PartReport>,
    pub classifier: Option<PartReport>,
}

/// ROC AUC of `scores` (higher = more attack-like) for positives vs negatives, ties halved.
pub fn roc_auc(positives: &[f64], negatives: &[f64]) -> f64 {
    if positives.is_empty() || negatives.is_empty() {
        return f64::NAN;
    }
    let mut all: Vec<(f64, bool)> = positives.iter().map(|&s| (s, true)).chain(negatives.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mann-Whitney U with average ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += all[i..=j].iter().filter(|(_, p)| *p).count() as f64 * average_rank;
        i = j + 1;
    }
    let (p, n) = (positives.len() as f64, negatives.len() as f64);
    (rank_sum - p * (p + 1.0) / 2.0) / (p * n)
}

/// The score above which at most `rate` of `negatives` lie.
pub fn threshold_at_fpr(negatives: &[f64], rate: f64) -> f64 {
    let mut sorted = negatives.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    if sorted.is_empty() {
        return f64::INFINITY;
    }
    let index = ((1.0 - rate) * sorted.len() as f64).ceil() as usize;
    sorted[index.clamp(1, sorted.len()) - 1]
}

fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

/// Judges one part: `scores` per held-out row (higher = more attack-like), flagged when
/// `flag(score)`.
fn judge(scores: &[f64], labels: &[&str], flag: impl Fn(f64) -> bool) -> PartReport {
    let negatives: Vec<f64> = scores.iter().zip(labels).filter(|(_, l)| **l == NORMAL).map(|(s, _)| *s).collect();
    let positives: Vec<f64> = scores.iter().zip(labels).filter(|(_, l)| **l != NORMAL).map(|(s, _)| *s).collect();
    let at_1pct = threshold_at_fpr(&negatives, 0.01);
    let mut confusion = Confusion::default();
    for (score, label) in scores.iter().zip(labels) {
        match (*label != NORMAL, flag(*score)) {
            (true, true) => confusion.true_positives += 1,
            (true, false) => confusion.false_negatives += 1,
            (false, true) => confusion.false_positives += 1,
            (false, false) => confusion.true_negatives += 1,
        }
    }
    let classes: BTreeSet<&str> = labels.iter().copied().filter(|l| *l != NORMAL).collect();
    let per_class = classes
        .into_iter()
        .map(|class| {
            let mine: Vec<f64> = scores.iter().zip(labels).filter(|(_, l)| **l == class).map(|(s, _)| *s).collect();
            let report = ClassReport {
                rows: mine.len(),
                recall: ratio(mine.iter().filter(|s| flag(**s)).count(), mine.len()),
                recall_at_1pct_fpr: ratio(mine.iter().filter(|s| **s > at_1pct).count(), mine.len()),
                roc_auc: roc_auc(&mine, &negatives),
            };
            (class.to_string(), report)
        })
        .collect();
    PartReport {
        roc_auc: roc_auc(&positives, &negatives),
        precision: confusion.precision(),
        recall: confusion.recall(),
        false_positive_rate: confusion.false_positive_rate(),
        recall_at_1pct_fpr: ratio(positives.iter().filter(|s| **s > at_1pct).count(), positives.len()),
        confusion,
        per_class,
    }
}

/// A deterministic shuffle (splitmix64), so a seed gives the same split on every machine.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Fits the models on a split of `samples`, evaluates them on the rest.
pub fn train(samples: &[Sample], options: &TrainOptions) -> Result<(ModelFile, Report), String> {
    if samples.len() < 20 {
        return Err(format!("{} rows are too few to train on", samples.len()));
    }
    if !(0.0..0.9).contains(&options.holdout) {
        return Err("holdout must be within 0..0.9".into());
    }
    let order = shuffled(samples.len(), options.seed);
    let cut = samples.len() - (samples.len() as f64 * options.holdout).round() as usize;
    let (train_idx, holdout_idx) = order.split_at(cut);
    let train_rows: Vec<&Sample> = train_idx.iter().map(|&i| &samples[i]).collect();
    let holdout_rows: Vec<&Sample> = holdout_idx.iter().map(|&i| &samples[i]).collect();
    let normal_train: Vec<&Sample> = train_rows.iter().copied().filter(|s| s.label == NORMAL).collect();
    if normal_train.len() < 10 {
        return Err(format!("only {} normal rows in the training split", normal_train.len()));
    }

    // Features: every name seen in training; scaled by the normal rows' spread.
    let names: Vec<String> = train_rows.iter().flat_map(|s| s.features.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
    let d = names.len();
    let raw = |rows: &[&Sample]| -> Array2<f64> {
        Array2::from_shape_fn((rows.len(), d), |(r, c)| rows[r].features.get(&names[c]).copied().unwrap_or(0.0))
    };
    let normal_raw = raw(&normal_train);
    let mean: Vec<f64> = (0..d).map(|c| normal_raw.column(c).mean().unwrap_or(0.0)).collect();
    let std: Vec<f64> = (0..d)
        .map(|c| {
            let s = normal_raw.column(c).std(0.0);
            if s > 1e-9 {
                s
            } else {
                1.0
            }
        })
        .collect();
    let scale = |m: Array2<f64>| -> Array2<f64> { Array2::from_shape_fn(m.dim(), |(r, c)| ((m[(r, c)] - mean[c]) / std[c]).clamp(-CLIP, CLIP)) };
    let mut file = ModelFile {
        format: MODEL_FORMAT,
        version: options.version.clone(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        features: names.clone(),
        scaler: Scaler { mean: mean.clone(), std: std.clone(), clip: CLIP },
        anomaly: None,
        classifier: None,
        evaluation: serde_json::Value::Null,
    };

    if options.anomaly {
        let x = scale(normal_raw.clone());
        if let Some(((r, c), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!("anomaly model: feature {} of training row {r} is {v}", names[c]));
        }
        let gmm = GaussianMixtureModel::params(options.components.max(1))
            .n_runs(1)
            .tolerance(1e-3)
            .max_n_iterations(200)
            .reg_covariance(REG_COVARIANCE)
            .fit(&DatasetBase::from(x))
            .map_err(|e| format!("anomaly model: {e}"))?;
        let k = gmm.weights().len();
        let weights_sum: f64 = gmm.weights().sum();
        let params = AnomalyParams {
            weights: gmm.weights().iter().map(|w| w / weights_sum).collect(),
            means: (0..k).map(|i| gmm.means().row(i).to_vec()).collect(),
            precisions: (0..k).map(|i| gmm.precisions().index_axis(ndarray::Axis(0), i).iter().copied().collect()).collect(),
            nll_median: 0.0,
            nll_p99: 0.0,
        };
        file.anomaly = Some(params);
        // Calibrate on the training normal rows.
        let model = Model::from_file(ModelFile { classifier: None, ..file.clone() })?;
        let nlls: Vec<f64> = normal_train.iter().map(|s| model.score(&s.features).anomaly.map_or(0.0, |p| p.raw)).collect();
        if let Some(anomaly) = file.anomaly.as_mut() {
            anomaly.nll_median = quantile(&nlls, 0.5);
            anomaly.nll_p99 = quantile(&nlls, 0.99);
        }
    }

    let has_attacks = train_rows.iter().any(|s| s.label != NORMAL);
    if options.classifier && has_attacks {
        let x = scale(raw(&train_rows));
        let y: Array1<bool> = train_rows.iter().map(|s| s.label != NORMAL).collect();
        let fitted = LogisticRegression::default()
            .alpha(0.1)
            .max_iterations(300)
            .fit(&Dataset::new(x.clone(), y))
            .map_err(|e| format!("classifier: {e}"))?;
        // linfa's positive class is whichever label it met first (its docs say the larger);
        // orient the weights so the probability is that of "attack".
        let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
        let weights: Vec<f64> = fitted.params().iter().map(|w| sign * w).collect();
        let intercept = sign * fitted.intercept();
        let probabilities: Vec<f64> = x
            .rows()
            .into_iter()
            .map(|row| 1.0 / (1.0 + (-(intercept + row.iter().zip(&weights).map(|(a, w)| a * w).sum::<f64>())).exp()))
            .collect();
        let normal_p: Vec<f64> = train_rows.iter().zip(probabilities.iter()).filter(|(s, _)| s.label == NORMAL).map(|(_, p)| *p).collect();
        let threshold = quantile(&normal_p, 0.995).clamp(0.01, 0.99);
        file.classifier = Some(ClassifierParams { weights, intercept, threshold });
    }
    let model = Model::from_file(file.clone())?;

    // Evaluation on the held-out rows.
    let labels: Vec<&str> = holdout_rows.iter().map(|s| s.label.as_str()).collect();
    let scores: Vec<_> = holdout_rows.iter().map(|s| model.score(&s.features)).collect();
    let anomaly = file.anomaly.as_ref().map(|params| {
        let raw: Vec<f64> = scores.iter().map(|s| s.anomaly.as_ref().map_or(0.0, |p| p.raw)).collect();
        judge(&raw, &labels, |nll| nll > params.nll_p99)
    });
    let classifier = file.classifier.as_ref().map(|params| {
        let raw: Vec<f64> = scores.iter().map(|s| s.classifier.as_ref().map_or(0.0, |p| p.raw)).collect();
        judge(&raw, &labels, |p| p >= params.threshold)
    });
    let report = Report { train_rows: train_rows.len(), holdout_rows: holdout_rows.len(), features: d, anomaly, classifier };
    file.evaluation = serde_json::to_value(&report).unwrap_or_default();
    Ok((file, report))
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} training rows, {} held out, {} features", self.train_rows, self.holdout_rows, self.features)?;
        for (name, part) in [("anomaly (Gaussian mixture, normal rows only)", &self.anomaly), ("classifier (logistic regression)", &self.classifier)] {
            let Some(part) = part else { continue };
            let c = &part.confusion;
            writeln!(f, "\n{name}")?;
            writeln!(
                f,
                "  ROC AUC {:.4}   precision {:.4}   recall {:.4}   false-positive rate {:.4}   recall at 1% FPR {:.4}",
                part.roc_auc, part.precision, part.recall, part.false_positive_rate, part.recall_at_1pct_fpr
            )?;
            writeln!(f, "  confusion (held out):      flagged   not flagged")?;
            writeln!(f, "    attack              {:>10} {:>13}", c.true_positives, c.false_negatives)?;
            writeln!(f, "    normal              {:>10} {:>13}", c.false_positives, c.true_negatives)?;
            writeln!(f, "  {:<24} {:>7} {:>8} {:>15} {:>8}", "class", "rows", "recall", "recall@1%FPR", "AUC")?;
            for (class, r) in &part.per_class {
                writeln!(f, "  {class:<24} {:>7} {:>8.4} {:>15.4} {:>8.4}", r.rows, r.recall, r.recall_at_1pct_fpr, r.roc_auc)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_and_thresholds() {
        assert_eq!(roc_auc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(roc_auc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(roc_auc(&[1.0], &[1.0]), 0.5);
        let negatives: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(threshold_at_fpr(&negatives, 0.01), 99.0, "one of 100 lies above");
        assert_eq!(shuffled(10, 3), shuffled(10, 3));
        assert_ne!(shuffled(10, 3), shuffled(10, 4));
    }
}
