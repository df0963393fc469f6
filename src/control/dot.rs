//! DOT (Dynamic Outlier Truncation; methods.md §10, official code): in a group whose responses are all correct,
//! a response with L_i − T ≥ m, T = floor(mean_G L + k·std_G L) (sample std), is cut to its first T tokens and
//! re-verified (the trainer decodes and scores the cut text; `luspo advantage`, which has no text, counts a cut
//! response as incorrect, as a cut usually removes the answer). The loss is unchanged.

use super::{check_range, Group, History, Method, StepInfo};
use crate::Result;
use serde::{Deserialize, Serialize};

/// `[control.dot]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DotParams {
    /// m: cut only when the response exceeds T by at least m tokens. Default 32 (official code).
    pub m: usize,
    /// k: T = floor(mean + k·std). Default 3 (official code).
    pub k: f64,
}

impl Default for DotParams {
    fn default() -> Self {
        DotParams { m: 32, k: 3.0 }
    }
}

impl DotParams {
    /// Checks k ≥ 0.
    pub fn validate(&self) -> Result<()> {
        check_range("dot.k", self.k, 0.0, f64::MAX)
    }

    /// The length each response of `g` is cut to (`None` = kept whole).
    pub fn cuts(&self, g: &Group) -> Vec<Option<usize>> {
        let n = g.responses.len();
        if n < 2 || !g.responses.iter().all(|r| r.correct) {
            return vec![None; n];
        }
        let lens: Vec<f64> = g.responses.iter().map(|r| r.length as f64).collect();
        let mean = lens.iter().sum::<f64>() / n as f64;
        let std = (lens.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        let t = (mean + self.k * std).floor().max(0.0) as usize;
        g.responses
            .iter()
            .map(|r| (r.length >= t + self.m).then_some(t))
            .collect()
    }
}

impl Method for DotParams {
    fn cut(&self, groups: &[Group]) -> Vec<Vec<Option<usize>>> {
        groups.iter().map(|g| self.cuts(g)).collect()
    }

    fn shape(&self, groups: &[Group], _: &History, _: StepInfo) -> Vec<Vec<f64>> {
        super::base_rewards(groups)
    }
}
