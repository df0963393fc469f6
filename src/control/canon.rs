//! CANON (Conditional Advantage Estimation; methods.md §12, biuboomc/CANON): the group is split at G//2 by a
//! metric m (length, or mean token entropy), and each response is baselined against the other half (inter-group
//! term, weight μ) and its own half (intra-group term, weight 1 − μ), divided by a constant C (no std):
//! A_i = [μ·(α·R_i − mean_other(R) + β) + (1 − μ)·(R_i − mean_own(R))]/C for the length variant; the entropy
//! variant puts α on the baseline: μ·(R_i − α·mean_other(R) + β). Ties in m are broken by R, so the advantages do
//! not depend on the order of the responses.
//!
//! μ schedules (`mu_schedule`, the official code's `core_algos.py` estimators, which use α = 1, β = 0):
//! - `accuracy` (`dr_entropy_token_budget_annel`): μ = the batch's mean reward, so the inter-half term grows as
//!   accuracy does. The README names this estimator for both "First-Inter-Later-Intra" and
//!   "First-Intra-Later-Inter" (a commented-out line flips it); which one the committed line is meant to be is
//!   UNVERIFIED.
//! - `cosine_restart` ("Cosin-First-Intra-Later-Inter"): μ = 1 − c(t), c = cosine with restarts from 0.6 to 0;
//! - `cosine_restart_r` ("Cosin-First-Inter-Later-Intra"): μ = c(t), c from 1 to 0.4.
//!
//! c(t) (code `cosine_annealing_with_restart`, t = the RL step from 1): linear warm-up max·(t + 1)/W for t < W,
//! then 3 cycles of length ⌊(T − W)/3⌋ of min + (max − min)·(1 + cos(π·t'/cycle))/2. The code hard-codes
//! T = 150 and W = 30; here T = `train.steps` (150 when unknown) and W = ⌊T/5⌋ (UNVERIFIED scaling).

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

/// How μ moves over training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MuSchedule {
    /// μ = `mu` throughout.
    #[default]
    Constant,
    /// μ = the batch's mean reward.
    Accuracy,
    /// μ = 1 − c(t), c a cosine with restarts from 0.6 to 0.
    CosineRestart,
    /// μ = c(t), c a cosine with restarts from 1 to 0.4.
    CosineRestartR,
}

/// The official code's `cosine_annealing_with_restart(step, total, max, min, warmup, cycles = 3)`.
pub fn cosine_with_restart(step: u64, total: u64, max: f64, min: f64, warmup: u64) -> f64 {
    if step < warmup {
        return max * (step + 1) as f64 / warmup as f64;
    }
    let (e, total) = (step - warmup, total.saturating_sub(warmup));
    let cycle = (total / 3).max(1);
    let t = (e % cycle) as f64;
    min + 0.5 * (max - min) * (1.0 + (std::f64::consts::PI * t / cycle as f64).cos())
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
    /// μ schedule: `constant` (μ = `mu`), `accuracy`, `cosine_restart`, `cosine_restart_r`. Default `constant`.
    pub mu_schedule: MuSchedule,
}

impl Default for CanonParams {
    fn default() -> Self {
        CanonParams {
            metric: CanonMetric::Length,
            alpha: 1.0,
            beta: 0.0,
            mu: 1.0,
            c: 0.0,
            mu_schedule: MuSchedule::Constant,
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

    /// μ at `at` for a batch whose (kept) rewards are `rewards`.
    pub fn mu_at(&self, rewards: &[Vec<f64>], at: StepInfo) -> f64 {
        let total = if at.total_steps == 0 {
            150
        } else {
            at.total_steps
        };
        let warmup = total / 5;
        match self.mu_schedule {
            MuSchedule::Constant => self.mu,
            MuSchedule::Accuracy => {
                let all: Vec<f64> = rewards.iter().flatten().copied().collect();
                if all.is_empty() {
                    return self.mu;
                }
                (all.iter().sum::<f64>() / all.len() as f64).clamp(0.0, 1.0)
            }
            MuSchedule::CosineRestart => {
                1.0 - cosine_with_restart(at.step, total, 0.6, 0.0, warmup)
            }
            MuSchedule::CosineRestartR => cosine_with_restart(at.step, total, 1.0, 0.4, warmup),
        }
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
        let with_mu = CanonParams {
            mu: self.mu_at(rewards, at),
            ..self.clone()
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
                with_mu.group_advantages(r, &m, c)
            })
            .collect();
        Advantages {
            seq,
            token_weights: None,
            entropy_coefs: None,
        }
    }
}
