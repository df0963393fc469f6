//! Policy objectives as a decomposition: importance level × aggregation × clipping, plus KL and entropy terms.
//!
//! CONTRACT (owned by the objective work; other modules call only what is declared here):
//! - `ObjectiveConfig` (serde, `deny_unknown_fields`, every field defaulted from the preset named by `name`).
//! - `policy_loss(&ObjectiveConfig, &PolicyInputs) -> Result<ObjectiveOutput>` works on f32 and f64 tensors,
//!   differentiable through `logp` with candle autograd (the training path and `luspo loss` share it).

use candle_core::Tensor;

/// Per-token inputs of one (mini-)batch, all `(B, T)` except `advantages` `(B,)`. Padding has `mask = 0`.
pub struct PolicyInputs<'a> {
    /// Current log-probs of the sampled tokens (carries gradient).
    pub logp: &'a Tensor,
    /// Behaviour (old) log-probs, no gradient.
    pub old_logp: &'a Tensor,
    /// Response mask: 1 on response tokens, 0 on padding.
    pub mask: &'a Tensor,
    /// Per-sequence advantages.
    pub advantages: &'a Tensor,
    /// Reference-model log-probs for the KL term, if the KL term is on.
    pub ref_logp: Option<&'a Tensor>,
    /// Per-token entropies (carry gradient), if the entropy bonus is on.
    pub entropy: Option<&'a Tensor>,
    /// Normalisers of the whole mini-batch when this call sees one micro-batch of it:
    /// `(number of sequences, number of response tokens)`. `None` = this call sees the whole mini-batch.
    pub global_counts: Option<(f64, f64)>,
}

/// Diagnostics of one objective evaluation (means over response tokens unless stated).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ObjectiveStats {
    /// Fraction of clipped units (tokens, or sequences for sequence-level ratios) on the low side (A<0, ratio<1-eps_low).
    pub clip_frac_low: f64,
    /// Fraction clipped on the high side (A>0, ratio>1+eps_high).
    pub clip_frac_high: f64,
    /// Mean importance ratio.
    pub ratio_mean: f64,
    /// Approximate KL(old‖new) = mean(old_logp − logp).
    pub approx_kl: f64,
    /// Mean KL-to-reference value, when the KL term is on.
    pub kl: Option<f64>,
    /// Mean entropy, when entropies were given.
    pub entropy: Option<f64>,
    /// The policy-gradient part of the loss alone.
    pub pg_loss: f64,
}

/// The scalar loss (to minimise) and its diagnostics.
pub struct ObjectiveOutput {
    /// Scalar loss tensor, differentiable w.r.t. `logp` (and `entropy`).
    pub loss: Tensor,
    /// Diagnostics.
    pub stats: ObjectiveStats,
}

/// Objective configuration; see the README for every key and its default.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// Preset name: grpo, dapo, dr_grpo, gspo, gspo_token, luspo, cispo.
    pub name: String,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self {
            name: "luspo".into(),
        }
    }
}

/// Evaluates the configured objective on one batch.
pub fn policy_loss(
    _cfg: &ObjectiveConfig,
    _inputs: &PolicyInputs,
) -> crate::Result<ObjectiveOutput> {
    unimplemented!("objective::policy_loss")
}
