//! SIRI length schedules on the rollout's `max_new_tokens` (methods.md §14, "Scaling Iterative Reinforcement
//! Learning with Interleaved compression"): the cap L(t) oscillates between L_max (`rollout.max_new_tokens`) and
//! L_min with period T; responses cut at L(t) are truncated and score 0 (unless `reward.score_truncated`).

use serde::{Deserialize, Serialize};

/// Which length schedule the rollout uses (`rollout.length_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthSchedule {
    /// A constant cap `rollout.max_new_tokens`.
    #[default]
    None,
    /// SIRI: interleaved compression and expansion of the cap.
    Siri,
}

/// The shape of one SIRI period (`rollout.siri_shape`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiriShape {
    /// L(t) = (L_max + L_min)/2 + (L_max − L_min)/2 · cos(2π t / T).
    #[default]
    Cosine,
    /// ϕ = 2π (t mod T)/T: L_max on [0, π/4) ∪ [7π/4, 2π), cosine descent on [π/4, 3π/4), L_min on
    /// [3π/4, 5π/4), cosine ascent on [5π/4, 7π/4) (the paper's stair-cosine; the ramp shape is UNVERIFIED).
    Stair,
}

/// The cap on new tokens at RL step `t` (0-based: the first step is t = 0, where both shapes give L_max).
pub fn siri_cap(shape: SiriShape, t: u64, l_max: usize, l_min: usize, period: u64) -> usize {
    use std::f64::consts::PI;
    let (hi, lo) = (l_max as f64, l_min as f64);
    let (mid, amp) = ((hi + lo) / 2.0, (hi - lo) / 2.0);
    let phi = 2.0 * PI * (t % period.max(1)) as f64 / period.max(1) as f64;
    let l = match shape {
        SiriShape::Cosine => mid + amp * phi.cos(),
        SiriShape::Stair => {
            if !(PI / 4.0..7.0 * PI / 4.0).contains(&phi) {
                hi
            } else if phi < 3.0 * PI / 4.0 {
                mid + amp * (2.0 * (phi - PI / 4.0)).cos()
            } else if phi < 5.0 * PI / 4.0 {
                lo
            } else {
                mid - amp * (2.0 * (phi - 5.0 * PI / 4.0)).cos()
            }
        }
    };
    (l.round() as usize).clamp(l_min.min(l_max), l_max)
}
