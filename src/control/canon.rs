//! CANON (Conditional Advantage Estimation; methods.md §12, biuboomc/CANON): the group is split at G//2 by a
//! metric m (length, or mean token entropy), and each response is baselined against the other half (inter-group
//! term, weight μ) and its own half (intra-group term, weight 1 − μ), divided by a constant C (no std):
//! A_i = [μ·(α·R_i − mean_other(R) + β) + (1 − μ)·(R_i − mean_own(R))]/C for the length variant; the entropy
//! variant puts α on the baseline: μ·(R_i − α·mean_other(R) + β). Ties in m are broken by R, so the advantages do
//! not depend on the order of the responses.

use super::{check_range, Advantages, Group, History, Method, StepInfo};
use crate::advantage::Estimator;
use crate::Result;
use serde::{Deserialize, Serialize};

/// The metric CANON splits a group by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanonMetric {
    /// Response length.
    #[default]
    Length,
    /// Mean token entropy under the sampling policy.
    Entropy,
}

/// `[control.canon]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanonParams {
    /// The metric m: `length` or `entropy`. Default `length`.
    pub metric: CanonMetric,
    /// α. Default 1 (code).
    pub alpha: f64,
    /// β. Default 0 (code).
    pub beta: f64,
    /// μ (the code's `_lambda`): weight of the inter-group term. Default 1 (code); the paper's per-experiment
    /// values are UNVERIFIED.
    pub mu: f64,
    /// C; 0 = the rollout's `max_new_tokens` (the code uses its max length, 8192). Default 0.
    pub c: f64,
}

impl Default for CanonParams {
    fn default() -> Self {
        CanonParams {
            metric: CanonMetric::Length,
            alpha: 1.0,
            beta: 0.0,
            mu: 1.0,
            c: 0.0,
        }
    }
}

impl CanonParams {
    /// Checks 0 ≤ μ ≤ 1, C ≥ 0 and finite α, β.
    pub fn validate(&self) -> Result<()> {
        check_range("canon.mu", self.mu, 0.0, 1.0)?;
        check_range("canon.c", self.c, 0.0, f64::MAX)?;
        check_range("canon.alpha", self.alpha, f64::MIN, f64::MAX)?;
        check_range("canon.beta", self.beta, f64::MIN, f64::MAX)
    }

    /// CANON advantages of one group with rewards `r` and metric values `m`, divided by `c`.
    pub fn group_advantages(&self, r: &[f64], m: &[f64], c: f64) -> Vec<f64> {
        let n = r.len();
        if n < 2 {
            return vec![0.0; n];
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| m[a].total_cmp(&m[b]).then(r[a].total_cmp(&r[b])));
        let mut high = vec![false; n];
        for &i in &order[n / 2..] {
            high[i] = true;
        }
        let mean_of = |h: bool| {
            let v: Vec<f64> = (0..n).filter(|&i| high[i] == h).map(|i| r[i]).collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let (mean_low, mean_high) = (mean_of(false), mean_of(true));
        (0..n)
            .map(|i| {
                let (other, own) = if high[i] {
                    (mean_low, mean_high)
                } else {
                    (mean_high, mean_low)
                };
                let inter = match self.metric {
                    CanonMetric::Length => self.alpha * r[i] - other + self.beta,
                    CanonMetric::Entropy => r[i] - self.alpha * other + self.beta,
                };
                (self.mu * inter + (1.0 - self.mu) * (r[i] - own)) / c
            })
            .collect()
    }
}

impl Method for CanonParams {
    fn needs_entropies(&self) -> bool {
        self.metric == CanonMetric::Entropy
    }

    fn shape(&self, groups: &[Group], _: &History, _: StepInfo) -> Vec<Vec<f64>> {
        super::base_rewards(groups)
    }

    fn estimator(&self) -> Option<Estimator> {
        // Dr.GRPO-style (no std); only reported, `advantages` below is CANON's own.
        Some(Estimator::DrGrpo)
    }

    fn advantages(
        &self,
        groups: &[Group],
        rewards: &[Vec<f64>],
        _: &History,
        _: Estimator,
        at: StepInfo,
    ) -> Advantages {
        let c = if self.c > 0.0 {
            self.c
        } else {
            at.max_new_tokens as f64
        };
        let seq = groups
            .iter()
            .zip(rewards)
            .map(|(g, r)| {
                let m: Vec<f64> = g
                    .responses
                    .iter()
                    .map(|x| match self.metric {
                        CanonMetric::Length => x.length as f64,
                        CanonMetric::Entropy => x.mean_entropy(),
                    })
                    .collect();
                self.group_advantages(r, &m, c)
            })
            .collect();
        Advantages {
            seq,
            token_weights: None,
        }
    }
}
