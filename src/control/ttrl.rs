//! TTRL (test-time RL; methods.md §13, the reward SPINE trains with): label-free, R_i = 1 if response i's extracted
//! answer is the group's majority answer, else 0. Responses without an answer never match; a tie between answers
//! goes to the lexicographically smallest (deterministic; the papers do not say). The gold answer is not used
//! (the logged accuracy still is the verifier's).

use super::{Group, History, Method, StepInfo};
use crate::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[control.ttrl]` (no parameters).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtrlParams {}

impl TtrlParams {
    /// Nothing to check.
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// The majority answer of a group (`None` if no response has an answer).
pub fn majority(g: &Group) -> Option<&str> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in g.responses.iter().filter_map(|r| r.answer.as_deref()) {
        *counts.entry(a.trim()).or_default() += 1;
    }
    let best = counts.values().copied().max()?;
    counts.into_iter().find(|&(_, c)| c == best).map(|(a, _)| a)
}

impl Method for TtrlParams {
    fn needs_answers(&self) -> bool {
        true
    }

    fn shape(&self, groups: &[Group], _: &History, _: StepInfo) -> Vec<Vec<f64>> {
        groups
            .iter()
            .map(|g| {
                let m = majority(g);
                g.responses
                    .iter()
                    .map(|r| {
                        let hit = m.is_some() && r.answer.as_deref().map(str::trim) == m;
                        if hit {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect()
    }
}
