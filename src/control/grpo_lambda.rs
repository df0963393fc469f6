//! GRPO-λ (methods.md §6, arXiv 2505.18086): the top-λ fraction of the batch's groups by accuracy ρ (at least one
//! group when λ > 0; ties keep batch order) get R_i = 1 − α·σ((L_i − mean_c L)/std_c L) if correct, else 0, with
//! mean and (population) std over the group's correct responses (z = 0 when std = 0); other groups keep the
//! verifier reward. The penalty form and α are UNVERIFIED (secondary write-up and third-party code).

use super::{check_range, Group, History, Method, StepInfo};
use crate::Result;
use serde::{Deserialize, Serialize};

/// `[control.grpo_lambda]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoLambdaParams {
    /// λ: fraction of the batch's groups that get the length penalty. Default 0.2 (paper example).
    pub lambda: f64,
    /// α: penalty weight. Default 0.6 (UNVERIFIED: third-party code).
    pub alpha: f64,
}

impl Default for GrpoLambdaParams {
    fn default() -> Self {
        GrpoLambdaParams {
            lambda: 0.2,
            alpha: 0.6,
        }
    }
}

impl GrpoLambdaParams {
    /// Checks 0 ≤ λ ≤ 1 and α ≥ 0.
    pub fn validate(&self) -> Result<()> {
        check_range("grpo_lambda.lambda", self.lambda, 0.0, 1.0)?;
        check_range("grpo_lambda.alpha", self.alpha, 0.0, f64::MAX)
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Method for GrpoLambdaParams {
    fn shape(&self, groups: &[Group], _: &History, _: StepInfo) -> Vec<Vec<f64>> {
        let n_top = if self.lambda > 0.0 {
            ((self.lambda * groups.len() as f64).ceil() as usize).min(groups.len())
        } else {
            0
        };
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.sort_by(|&a, &b| groups[b].accuracy().total_cmp(&groups[a].accuracy()));
        let mut top = vec![false; groups.len()];
        for &i in order.iter().take(n_top) {
            top[i] = true;
        }
        groups
            .iter()
            .zip(top)
            .map(|(g, top)| {
                if !top {
                    return g.responses.iter().map(|r| r.base_reward()).collect();
                }
                let lens: Vec<f64> = g
                    .responses
                    .iter()
                    .filter(|r| r.correct)
                    .map(|r| r.length as f64)
                    .collect();
                let n = lens.len().max(1) as f64;
                let mean = lens.iter().sum::<f64>() / n;
                let std = (lens.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n).sqrt();
                g.responses
                    .iter()
                    .map(|r| {
                        if !r.correct {
                            return 0.0;
                        }
                        let z = if std > 0.0 {
                            (r.length as f64 - mean) / std
                        } else {
                            0.0
                        };
                        1.0 - self.alpha * sigmoid(z)
                    })
                    .collect()
            })
            .collect()
    }
}
