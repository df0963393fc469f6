//! DLER (Doing Length pEnalty Right; methods.md §7, NVlabs/DLER): a truncation penalty, R = 1[correct ∧ L ≤
//! L_trunc], trained with batch-whitened group-centred advantages (estimator `batch`). DA-DLER picks L_trunc per
//! group: the easy length when the group's accuracy ρ > 0.5, else the hard one.

use super::{check_range, Group, History, Method, StepInfo};
use crate::advantage::Estimator;
use crate::Result;
use serde::{Deserialize, Serialize};

/// `[control.dler]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlerParams {
    /// L_trunc in tokens; 0 = the rollout's `max_new_tokens`. Default 0 (the paper: 4000).
    pub l_trunc: usize,
}

impl DlerParams {
    /// Nothing to check (any length is valid).
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// `[control.da_dler]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaDlerParams {
    /// L_trunc of easy groups (ρ > 0.5). Default 2000 (paper).
    pub l_trunc_easy: usize,
    /// L_trunc of hard groups. Default 4000 (paper).
    pub l_trunc_hard: usize,
    /// The accuracy above which a group is easy. Default 0.5; the comparator (> vs ≥) is UNVERIFIED (`>` here).
    pub easy_above: f64,
}

impl Default for DaDlerParams {
    fn default() -> Self {
        DaDlerParams {
            l_trunc_easy: 2000,
            l_trunc_hard: 4000,
            easy_above: 0.5,
        }
    }
}

impl DaDlerParams {
    /// Checks 0 ≤ easy_above ≤ 1.
    pub fn validate(&self) -> Result<()> {
        check_range("da_dler.easy_above", self.easy_above, 0.0, 1.0)
    }
}

/// DLER's reward with truncation length `l_trunc` (0 = `max_new_tokens`).
fn truncation_reward(g: &Group, l_trunc: usize, at: StepInfo) -> Vec<f64> {
    let l = if l_trunc == 0 {
        at.max_new_tokens
    } else {
        l_trunc
    };
    g.responses
        .iter()
        .map(|r| {
            if r.correct && !r.truncated && r.length <= l {
                1.0
            } else {
                0.0
            }
        })
        .collect()
}

impl Method for DlerParams {
    fn shape(&self, groups: &[Group], _: &History, at: StepInfo) -> Vec<Vec<f64>> {
        groups
            .iter()
            .map(|g| truncation_reward(g, self.l_trunc, at))
            .collect()
    }

    fn estimator(&self) -> Option<Estimator> {
        Some(Estimator::Batch)
    }
}

impl Method for DaDlerParams {
    fn shape(&self, groups: &[Group], _: &History, at: StepInfo) -> Vec<Vec<f64>> {
        groups
            .iter()
            .map(|g| {
                let l = if g.accuracy() > self.easy_above {
                    self.l_trunc_easy
                } else {
                    self.l_trunc_hard
                };
                truncation_reward(g, l, at)
            })
            .collect()
    }

    fn estimator(&self) -> Option<Estimator> {
        Some(Estimator::Batch)
    }
}
