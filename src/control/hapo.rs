//! HAPO (History-Aware Policy Optimization; methods.md §8, official code): a cosine length reward against the
//! shortest correct length h_q seen so far for the prompt.
//!
//! c = cos(π/2 · L/h) if L < 2h, else −1; correct: r_len = max(floor, c); incorrect: r_len = min(0, c);
//! no history: r_len = 0. R = r_verifier + w·r_len. After the step, h_q ← min(h_q, shortest correct L).

use super::{check_range, Group, History, Method, Response, StepInfo};
use crate::Result;
use serde::{Deserialize, Serialize};

/// History key of the shortest correct length.
pub const H: &str = "h";

/// `[control.hapo]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HapoParams {
    /// w: weight of the length reward. Default 1.0 (code default; the paper's value is UNVERIFIED).
    pub w: f64,
    /// Floor of a correct response's length reward. Default −0.7 (official code).
    pub floor: f64,
}

impl Default for HapoParams {
    fn default() -> Self {
        HapoParams {
            w: 1.0,
            floor: -0.7,
        }
    }
}

impl HapoParams {
    /// Checks w ≥ 0 and −1 ≤ floor ≤ 0.
    pub fn validate(&self) -> Result<()> {
        check_range("hapo.w", self.w, 0.0, f64::MAX)?;
        check_range("hapo.floor", self.floor, -1.0, 0.0)
    }
}

/// HAPO's length reward of a response of length `len` against history `h` (`None` = no correct answer yet).
pub fn length_reward(len: usize, correct: bool, h: Option<f64>, floor: f64) -> f64 {
    let Some(h) = h else { return 0.0 };
    let l = len as f64;
    let c = if l < 2.0 * h {
        (std::f64::consts::FRAC_PI_2 * l / h).cos()
    } else {
        -1.0
    };
    if correct {
        c.max(floor)
    } else {
        c.min(0.0)
    }
}

impl Method for HapoParams {
    fn shape(&self, groups: &[Group], history: &History, _: StepInfo) -> Vec<Vec<f64>> {
        groups
            .iter()
            .map(|g| {
                let h = history.get(&g.prompt_id, H);
                g.responses
                    .iter()
                    .map(|r| {
                        r.base_reward() + self.w * length_reward(r.length, r.correct, h, self.floor)
                    })
                    .collect()
            })
            .collect()
    }

    fn update(&self, groups: &[Group], history: &mut History) {
        for g in groups {
            let shortest = g
                .responses
                .iter()
                .filter(|r| r.correct)
                .map(|r: &Response| r.length as f64)
                .fold(f64::INFINITY, f64::min);
            if shortest.is_finite() {
                let h = history
                    .get(&g.prompt_id, H)
                    .map_or(shortest, |h| h.min(shortest));
                history.set(&g.prompt_id, H, h);
            }
        }
    }
}
