//! Advantage estimators over groups of responses to the same prompt.
//!
//! CONTRACT: `compute(estimator, rewards, group_ids) -> Vec<f64>`; zero-variance groups give exactly 0.

/// Which estimator turns rewards into advantages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// (r − mean)/(std + 1e-6), Bessel-corrected std, as verl.
    #[default]
    Grpo,
    /// r − mean (Dr.GRPO).
    DrGrpo,
    /// Leave-one-out baseline.
    Rloo,
    /// Whitened over the whole batch (DLER).
    Batch,
}

/// Advantages of `rewards`, grouped by `group_ids` (same id = same prompt).
pub fn compute(_estimator: Estimator, _rewards: &[f64], _group_ids: &[usize]) -> Vec<f64> {
    unimplemented!("advantage::compute")
}
