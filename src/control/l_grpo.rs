//! ConciseR stage 2, L-GRPO (methods.md §9, arXiv 2505.21178): the length term only when all G responses of the
//! prompt are correct, R_i = r_i + α·(1 − L_i/L_max); otherwise the verifier reward. Stage 1 (GRPO++: the
//! verifier reward alone) runs for the first `stage1_steps` steps. The formula and α are UNVERIFIED (abstract only).

use super::{check_range, Group, History, Method, Response, StepInfo};
use crate::Result;
use serde::{Deserialize, Serialize};

/// `[control.l_grpo]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LGrpoParams {
    /// α: weight of the remaining-budget term. Default 0.5 (UNVERIFIED; the paper's value is not public).
    pub alpha: f64,
    /// L_max in tokens; 0 = the rollout's `max_new_tokens`. Default 0.
    pub l_max: usize,
    /// RL steps of stage 1 (verifier reward only) before L-GRPO starts. Default 0 (stage 2 from the start).
    pub stage1_steps: u64,
}

impl Default for LGrpoParams {
    fn default() -> Self {
        LGrpoParams {
            alpha: 0.5,
            l_max: 0,
            stage1_steps: 0,
        }
    }
}

impl LGrpoParams {
    /// Checks α ≥ 0.
    pub fn validate(&self) -> Result<()> {
        check_range("l_grpo.alpha", self.alpha, 0.0, f64::MAX)
    }
}

impl Method for LGrpoParams {
    fn shape(&self, groups: &[Group], _: &History, at: StepInfo) -> Vec<Vec<f64>> {
        let l_max = if self.l_max == 0 {
            at.max_new_tokens
        } else {
            self.l_max
        } as f64;
        groups
            .iter()
            .map(|g| {
                let on = at.step > self.stage1_steps && g.responses.iter().all(|r| r.correct);
                g.responses
                    .iter()
                    .map(|r: &Response| {
                        let bonus = if on {
                            self.alpha * (1.0 - r.length as f64 / l_max).max(0.0)
                        } else {
                            0.0
                        };
                        r.base_reward() + bonus
                    })
                    .collect()
            })
            .collect()
    }
}
