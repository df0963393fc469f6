//! PEAR (Phase Entropy Aware Reward; methods.md §15): a correct response's reward is lowered by the mean token
//! entropy of its thinking phase beyond α times that of its answer phase:
//! P = max(0, H̄_think − α·H̄_answer); R = min(1, s − P) if correct, else r_fmt. The phases split at the
//! `</think>` token (excluded); without one the whole response is thinking and H̄_answer = 0.

use super::{check_range, Group, History, Method, Response, StepInfo};
use crate::Result;
use serde::{Deserialize, Serialize};

/// `[control.pear]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PearParams {
    /// α: weight of the answer-phase entropy. Default 1 (paper).
    pub alpha: f64,
    /// s: reward of a correct response before the penalty. Default 1 (paper).
    pub s: f64,
    /// r_fmt: reward of an incorrect response. Default 0 (paper).
    pub r_fmt: f64,
}

impl Default for PearParams {
    fn default() -> Self {
        PearParams {
            alpha: 1.0,
            s: 1.0,
            r_fmt: 0.0,
        }
    }
}

impl PearParams {
    /// Checks that α, s, r_fmt are finite.
    pub fn validate(&self) -> Result<()> {
        check_range("pear.alpha", self.alpha, f64::MIN, f64::MAX)?;
        check_range("pear.s", self.s, f64::MIN, f64::MAX)?;
        check_range("pear.r_fmt", self.r_fmt, f64::MIN, f64::MAX)
    }

    /// PEAR's reward of one response.
    pub fn reward(&self, r: &Response) -> f64 {
        if !r.correct {
            return self.r_fmt;
        }
        let e = r.entropies.as_deref().unwrap_or(&[]);
        let k = r.think_end.unwrap_or(e.len()).min(e.len());
        let mean = |v: &[f32]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
            }
        };
        let think = mean(&e[..k]);
        let answer = mean(e.get(k + 1..).unwrap_or(&[]));
        let p = (think - self.alpha * answer).max(0.0);
        (self.s - p).min(1.0)
    }
}

impl Method for PearParams {
    fn needs_entropies(&self) -> bool {
        true
    }

    fn shape(&self, groups: &[Group], _: &History, _: StepInfo) -> Vec<Vec<f64>> {
        groups
            .iter()
            .map(|g| g.responses.iter().map(|r| self.reward(r)).collect())
            .collect()
    }
}
