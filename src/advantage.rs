//! Advantage estimators over groups of responses to the same prompt.
//!
//! CONTRACT: `compute(estimator, rewards, group_ids) -> Vec<f64>`; zero-variance groups give exactly 0.
//!
//! | estimator | A_i | group of one |
//! |---|---|---|
//! | `grpo` | (r_i − mean_g)/(std_g + 1e-6), Bessel std (verl `compute_grpo_outcome_advantage`) | r/(1 + 1e-6) (verl: mean 0, std 1) |
//! | `dr_grpo` | r_i − mean_g (verl `norm_adv_by_std_in_grpo=False`) | r (verl: mean 0) |
//! | `rloo` | r_i − mean_{j≠i} r_j = n/(n−1)·(r_i − mean_g) | 0 |
//! | `batch` | (r_i − mean_g)/sqrt(var_batch + 1e-8) (DLER) | 0 |
//!
//! A group whose rewards are all equal (and has ≥ 2 members) gets exactly 0 under every estimator.
//! `batch`: DLER whitens the group-centred advantages over the whole batch (verl `masked_whiten`, token-weighted).
//! Here whitening is per sequence: the batch mean of group-centred advantages is 0 by construction, so only the
//! scale changes (Bessel variance over all sequences, `+1e-8` inside the square root as `masked_whiten`);
//! skipping the no-op re-centring keeps zero-variance groups at exactly 0.

use std::collections::HashMap;

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

/// verl's epsilon in the GRPO advantage denominator.
pub const GRPO_EPS: f64 = 1e-6;

/// Groups in first-appearance order: indices of the members of each group.
fn groups(group_ids: &[usize]) -> Vec<Vec<usize>> {
    let mut index: HashMap<usize, usize> = HashMap::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, g) in group_ids.iter().enumerate() {
        let k = *index.entry(*g).or_insert_with(|| {
            out.push(Vec::new());
            out.len() - 1
        });
        out[k].push(i);
    }
    out
}

/// Advantages of `rewards`, grouped by `group_ids` (same id = same prompt).
///
/// # Panics
/// If `rewards` and `group_ids` differ in length (a caller bug, not a user input).
pub fn compute(estimator: Estimator, rewards: &[f64], group_ids: &[usize]) -> Vec<f64> {
    assert_eq!(
        rewards.len(),
        group_ids.len(),
        "advantage::compute: one group id per reward"
    );
    let mut adv = vec![0.0; rewards.len()];
    for members in groups(group_ids) {
        let r: Vec<f64> = members.iter().map(|&i| rewards[i]).collect();
        let n = r.len() as f64;
        if r.len() == 1 {
            adv[members[0]] = match estimator {
                Estimator::Grpo => r[0] / (1.0 + GRPO_EPS),
                Estimator::DrGrpo => r[0],
                Estimator::Rloo | Estimator::Batch => 0.0,
            };
            continue;
        }
        if r.iter().all(|&x| x == r[0]) {
            continue; // zero variance: exactly 0
        }
        let mean = r.iter().sum::<f64>() / n;
        let a: Vec<f64> = match estimator {
            Estimator::Grpo => {
                let std = (r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
                r.iter().map(|x| (x - mean) / (std + GRPO_EPS)).collect()
            }
            Estimator::DrGrpo | Estimator::Batch => r.iter().map(|x| x - mean).collect(),
            Estimator::Rloo => r.iter().map(|x| n / (n - 1.0) * (x - mean)).collect(),
        };
        for (&i, v) in members.iter().zip(a) {
            adv[i] = v;
        }
    }
    if estimator == Estimator::Batch && adv.len() > 1 {
        let n = adv.len() as f64;
        let mean = adv.iter().sum::<f64>() / n;
        let var = adv.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let scale = 1.0 / (var + 1e-8).sqrt();
        for a in adv.iter_mut() {
            *a *= scale;
        }
    }
    adv
}
