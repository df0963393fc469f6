//! What a run writes, one record per line (the contract between `train` and `report`).
//!
//! Run directory layout:
//! - `config.toml`: the full resolved configuration.
//! - `metrics.jsonl`: one `StepMetrics` per RL step, exactly once per step (also after `--resume`).
//! - `eval.jsonl`: one `EvalRecord` per held-out evaluation (step 0 = after the warm start, before RL).
//! - `rollouts.jsonl`: one `RolloutRecord` per sampled response per step (for length analysis).
//! - `tb/events.out.tfevents.*`: the numbers of `metrics.jsonl` and `eval.jsonl` as TensorBoard scalars.
//! - `summary.json`: `Summary`.
//! - `checkpoints/step-NNNNNN/` (latest kept), `final/` (an HF directory of the final policy).

use serde::{Deserialize, Serialize};

/// One RL step. Field names follow the list; extra diagnostics are optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    /// RL step, starting at 1.
    pub step: u64,
    /// Mean total reward over the step's responses.
    pub reward_mean: f64,
    /// Std of the total reward.
    pub reward_std: f64,
    /// Fraction of correct responses (accuracy term = 1).
    pub accuracy: f64,
    /// Mean of the format reward term.
    pub reward_format: f64,
    /// Mean of the overlong penalty term.
    pub reward_overlong: f64,
    /// Mean response length in tokens.
    pub response_length_mean: f64,
    /// 10th percentile of response length.
    pub response_length_p10: f64,
    /// 90th percentile of response length.
    pub response_length_p90: f64,
    /// Longest response.
    pub response_length_max: f64,
    /// Mean length of correct responses (NaN-free: 0 when none).
    pub response_length_correct: f64,
    /// Mean length of incorrect responses (0 when none).
    pub response_length_incorrect: f64,
    /// Fraction of responses cut by the length limit.
    pub truncated_frac: f64,
    /// Fraction of groups whose rewards were all equal.
    pub frac_reward_zero_std: f64,
    /// Mean per-token entropy of the policy on the sampled responses.
    pub entropy: f64,
    /// Fraction of clipped units on the low side, averaged over optimizer steps.
    pub clip_frac_low: f64,
    /// Fraction clipped on the high side.
    pub clip_frac_high: f64,
    /// Mean importance ratio over the optimizer steps.
    pub ratio_mean: f64,
    /// Approximate KL(old‖new), averaged over optimizer steps.
    pub approx_kl: f64,
    /// KL to the reference model, when used.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kl: Option<f64>,
    /// Fraction of response tokens with a non-zero policy-gradient weight (SPINE, UloRL, given weights), when used.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pg_token_frac: Option<f64>,
    /// Mean policy loss over optimizer steps.
    pub loss: f64,
    /// Gradient norm before clipping, averaged over optimizer steps.
    pub grad_norm: f64,
    /// Learning rate at this step.
    pub lr: f64,
    /// Optimizer steps skipped because the loss or gradient was not finite.
    pub skipped_updates: u64,
    /// Tokens processed per second (generated + trained) during the step.
    pub tokens_per_s: f64,
    /// Wall time of the step.
    pub step_seconds: f64,
    /// With an engine: mean |log π_trainer − log π_engine| over the sampled tokens.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub engine_logprob_diff: Option<f64>,
    /// With an engine: KL(engine‖trainer) per token on the engine's samples (k3 estimator).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub engine_kl: Option<f64>,
    /// With `rollout.tis_cap`: mean importance weight of the trained sequences (tokens, for the token modes).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tis_weight_mean: Option<f64>,
    /// With an engine: wall seconds spent pushing the weights to it before this step's rollouts.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub weight_sync_seconds: Option<f64>,
    /// Gradient mass Σ|w_t| on A>0 responses, w_t = −∂loss/∂logp_t, mean per optimizer step
    /// (`train::mechanism`, docs/length_theory.md).
    #[serde(default)]
    pub grad_mass_pos: f64,
    /// Gradient mass on A<0 responses, mean per optimizer step.
    #[serde(default)]
    pub grad_mass_neg: f64,
    /// Share of the gradient mass on the shortest quartile of the step's response lengths.
    #[serde(default)]
    pub grad_share_len_q1: f64,
    /// Share on the second quartile.
    #[serde(default)]
    pub grad_share_len_q2: f64,
    /// Share on the third quartile.
    #[serde(default)]
    pub grad_share_len_q3: f64,
    /// Share on the longest quartile.
    #[serde(default)]
    pub grad_share_len_q4: f64,
    /// Mean length of clipped A<0 responses (0 when none).
    #[serde(default)]
    pub clip_len_low_clipped: f64,
    /// Mean length of kept A<0 responses.
    #[serde(default)]
    pub clip_len_low_kept: f64,
    /// Mean length of clipped A>0 responses.
    #[serde(default)]
    pub clip_len_high_clipped: f64,
    /// Mean length of kept A>0 responses.
    #[serde(default)]
    pub clip_len_high_kept: f64,
    /// Covariance of length and advantage over the responses that carry gradient.
    #[serde(default)]
    pub len_adv_cov: f64,
    /// Length push (tokens, first order): Σ c_i (L_i − L̄) / Σ |c_i| without clip, c_i = mean token weight; > 0 favours longer responses.
    #[serde(default)]
    pub len_push: f64,
    /// The part of `len_push` from the advantage's covariance with length (the reward).
    #[serde(default)]
    pub len_push_reward: f64,
    /// The part from the objective's length-dependent per-response scale.
    #[serde(default)]
    pub len_push_weighting: f64,
    /// The part from clipping.
    #[serde(default)]
    pub len_push_clip: f64,
}

/// One held-out evaluation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EvalRecord {
    /// RL step after which it ran (0 = before RL).
    pub step: u64,
    /// Fraction correct (greedy or as configured).
    pub accuracy: f64,
    /// Mean response length in tokens.
    pub response_length_mean: f64,
    /// Mean length of correct responses.
    pub response_length_correct: f64,
    /// Mean length of incorrect responses.
    pub response_length_incorrect: f64,
    /// Fraction truncated.
    pub truncated_frac: f64,
    /// Number of problems evaluated.
    pub n: u64,
}

/// One sampled response of one RL step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RolloutRecord {
    /// RL step.
    pub step: u64,
    /// Problem id (responses with the same id form a group).
    pub prompt_id: String,
    /// Response length in tokens.
    pub length: u32,
    /// Total reward.
    pub reward: f64,
    /// Whether the answer was correct.
    pub correct: bool,
    /// The response's advantage.
    pub advantage: f64,
    /// Whether it was cut by the length limit.
    pub truncated: bool,
}

/// The end-of-run summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Objective preset name.
    pub objective: String,
    /// Run seed.
    pub seed: u64,
    /// Held-out accuracy before RL (after the warm start).
    pub eval_accuracy_before: f64,
    /// Held-out accuracy after RL.
    pub eval_accuracy_after: f64,
    /// Held-out mean response length before RL.
    pub eval_response_length_before: f64,
    /// Held-out mean response length after RL.
    pub eval_response_length_after: f64,
    /// RL steps completed.
    pub steps: u64,
    /// Wall time of the whole run (warm start included).
    pub wall_seconds: f64,
}
