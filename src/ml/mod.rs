//! Machine-learned scoring: what rules do not catch. Per-event features with readable names
//! ([`features`]), models fitted with linfa and stored in our own checked file format
//! ([`model`]), training and evaluation ([`train`]) over labelled data ([`data`]), and the
//! fusion of the parts into one 0–100 risk.
//!
//! The core is pure and synchronous, like the detection core: the ml-score stage and the
//! `threatpipe train` / `threatpipe score` commands are shells around it.

pub mod baseline;
pub mod data;
pub mod features;
pub mod handle;
pub mod model;
pub mod qdrant;
pub mod similarity;
pub mod train;

/// Fuses part risks (each 0–100) into one: the chance that at least one part is right,
/// treating them as independent ("noisy or"). One strong part is enough; weak parts add up
/// without passing 100.
pub fn fuse(parts: impl IntoIterator<Item = f64>) -> f64 {
    let miss: f64 = parts.into_iter().map(|r| 1.0 - (r / 100.0).clamp(0.0, 1.0)).product();
    ((1.0 - miss) * 100.0 * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn fusion_is_monotonic_and_bounded() {
        assert_eq!(super::fuse([]), 0.0);
        assert_eq!(super::fuse([90.0]), 90.0);
        assert_eq!(super::fuse([50.0, 50.0]), 75.0);
        assert_eq!(super::fuse([100.0, 3.0]), 100.0);
    }
}
