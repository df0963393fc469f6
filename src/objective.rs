//! Policy objectives as a decomposition: importance level × aggregation × clipping, plus KL and entropy terms.
//!
//! CONTRACT (owned by the objective work; other modules call only what is declared here):
//! - `ObjectiveConfig` (serde, `deny_unknown_fields`, every field defaulted from the preset named by `name`).
//! - `policy_loss(&ObjectiveConfig, &PolicyInputs) -> Result<ObjectiveOutput>` works on f32 and f64 tensors,
//!   differentiable through `logp` with candle autograd (the training path and `luspo loss` share it).
//!
//! Every preset is one choice on each axis (see `docs/objectives.md` for formulas and the TRL/verl mapping):
//!
//! | preset | importance | aggregation | eps_low, eps_high |
//! |---|---|---|---|
//! | grpo | token | seq-mean-token-mean | 0.2, 0.2 |
//! | dapo | token | token-mean | 0.2, 0.28 |
//! | dr_grpo | token | seq-mean-token-sum-norm (÷ B·H) | 0.2, 0.2 |
//! | gspo | sequence | seq-mean-token-mean | 3e-4, 4e-4 |
//! | gspo_token | sequence_token | seq-mean-token-mean | 3e-4, 4e-4 |
//! | luspo | sequence | seq-mean-token-sum | 2e-3, 2.5e-3 |
//! | cispo | token, CISPO surrogate | token-mean | 1.0, 4.0 (weight in [0, 5]) |
//!
//! Padding (mask 0) never enters a value: every per-token quantity is selected with `where_cond` on the mask,
//! so padding positions receive exactly zero gradient whatever numbers they hold.

use candle_core::{DType, Tensor};

use crate::{input_err, Result};

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

/// Diagnostics of one objective evaluation (means over this call's response tokens unless stated).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ObjectiveStats {
    /// Fraction of clipped units (tokens, or sequences for sequence-level ratios) on the low side (A<0, ratio<1-eps_low).
    pub clip_frac_low: f64,
    /// Fraction clipped on the high side (A>0, ratio>1+eps_high).
    pub clip_frac_high: f64,
    /// Mean importance ratio (over tokens for token level, over sequences for sequence levels).
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

/// Where the importance ratio lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Importance {
    /// Per-token ratio exp(clamp(logp − old, ±20)) (PPO/GRPO/DAPO; verl `vanilla`).
    Token,
    /// GSPO sequence ratio s_i = exp(mean_t(logp − old)), gradient through the mean (TRL `sequence`).
    Sequence,
    /// GSPO-token form: log s_it = logp − sg(logp) + sg(log s_i), clamped at max 10 (verl `gspo`).
    #[serde(alias = "sequence-token")]
    SequenceToken,
}

/// How the per-token loss matrix becomes a scalar (verl `loss_agg_mode` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Aggregation {
    /// Σ m·ℓ / N_tok.
    #[serde(rename = "token-mean", alias = "token_mean")]
    TokenMean,
    /// (1/B) Σ_i Σ_t m·ℓ / |y_i|.
    #[serde(rename = "seq-mean-token-mean", alias = "seq_mean_token_mean")]
    SeqMeanTokenMean,
    /// (1/B) Σ_i Σ_t m·ℓ.
    #[serde(rename = "seq-mean-token-sum", alias = "seq_mean_token_sum")]
    SeqMeanTokenSum,
    /// (1/(B·H)) Σ_i Σ_t m·ℓ with H = `norm_len` (verl V2 / TRL `dr_grpo`).
    #[serde(rename = "seq-mean-token-sum-norm", alias = "seq_mean_token_sum_norm")]
    SeqMeanTokenSumNorm,
}

/// KL-to-reference estimator (verl `kl_loss_type`), x = logp − ref.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum KlEstimator {
    /// k1: x.
    #[serde(rename = "k1", alias = "kl")]
    K1,
    /// k2: x²/2.
    #[serde(rename = "k2", alias = "mse")]
    K2,
    /// k3: exp(−x) + x − 1 with verl's clamps (inner ±20, output ±10).
    #[serde(rename = "k3", alias = "low_var_kl")]
    K3,
    /// |x|.
    #[serde(rename = "abs")]
    Abs,
    /// Straight-through: value of k1, gradient of k2.
    #[serde(rename = "k1+", alias = "kl+")]
    K1Plus,
    /// Straight-through: value of k3, gradient of k2.
    #[serde(rename = "k3+", alias = "low_var_kl+")]
    K3Plus,
}

/// The surrogate applied to ratio and advantage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Surrogate {
    /// PPO pessimistic clip: max(−A·r, −A·clip(r, 1−eps_low, 1+eps_high)), optional dual clip.
    Clip,
    /// CISPO: −sg(clip(r, 1−eps_low, 1+eps_high))·A·logp (REINFORCE with a clipped, detached IS weight).
    Cispo,
}

/// The named presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// GRPO paper eq. 1.
    Grpo,
    /// DAPO (clip-higher, token-mean).
    Dapo,
    /// Dr.GRPO (constant length normaliser).
    DrGrpo,
    /// GSPO, sequence-level ratio.
    Gspo,
    /// GSPO-token form.
    GspoToken,
    /// LUSPO: GSPO scaled by length.
    Luspo,
    /// CISPO (MiniMax-M1).
    Cispo,
}

impl Preset {
    /// Every preset, in documentation order.
    pub const ALL: [Preset; 7] = [
        Preset::Grpo,
        Preset::Dapo,
        Preset::DrGrpo,
        Preset::Gspo,
        Preset::GspoToken,
        Preset::Luspo,
        Preset::Cispo,
    ];

    /// The preset's config name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Grpo => "grpo",
            Preset::Dapo => "dapo",
            Preset::DrGrpo => "dr_grpo",
            Preset::Gspo => "gspo",
            Preset::GspoToken => "gspo_token",
            Preset::Luspo => "luspo",
            Preset::Cispo => "cispo",
        }
    }

    /// Looks a preset up by name (case-insensitive, `-` accepted for `_`).
    pub fn from_name(name: &str) -> Option<Preset> {
        let n = name.trim().to_ascii_lowercase().replace('-', "_");
        Preset::ALL.into_iter().find(|p| p.name() == n)
    }

    /// The preset's paper defaults (dual clip off, KL and entropy off).
    pub fn defaults(self) -> ResolvedObjective {
        let (surrogate, importance, aggregation, eps_low, eps_high) = match self {
            Preset::Grpo => (
                Surrogate::Clip,
                Importance::Token,
                Aggregation::SeqMeanTokenMean,
                0.2,
                0.2,
            ),
            Preset::Dapo => (
                Surrogate::Clip,
                Importance::Token,
                Aggregation::TokenMean,
                0.2,
                0.28,
            ),
            Preset::DrGrpo => (
                Surrogate::Clip,
                Importance::Token,
                Aggregation::SeqMeanTokenSumNorm,
                0.2,
                0.2,
            ),
            Preset::Gspo => (
                Surrogate::Clip,
                Importance::Sequence,
                Aggregation::SeqMeanTokenMean,
                3e-4,
                4e-4,
            ),
            Preset::GspoToken => (
                Surrogate::Clip,
                Importance::SequenceToken,
                Aggregation::SeqMeanTokenMean,
                3e-4,
                4e-4,
            ),
            Preset::Luspo => (
                Surrogate::Clip,
                Importance::Sequence,
                Aggregation::SeqMeanTokenSum,
                2e-3,
                2.5e-3,
            ),
            Preset::Cispo => (
                Surrogate::Cispo,
                Importance::Token,
                Aggregation::TokenMean,
                1.0,
                4.0,
            ),
        };
        ResolvedObjective {
            preset: self,
            surrogate,
            importance,
            aggregation,
            eps_low,
            eps_high,
            dual_clip: None,
            norm_len: None,
            kl_beta: 0.0,
            kl_estimator: KlEstimator::K3,
            entropy_coef: 0.0,
        }
    }
}

/// Objective configuration: a preset `name` plus optional overrides of any axis.
///
/// Keys (TOML `[objective]` table, or top-level keys of `luspo loss` input):
/// - `name`: grpo | dapo | dr_grpo | gspo | gspo_token | luspo | cispo (default luspo)
/// - `importance`: token | sequence | sequence_token (preset default)
/// - `aggregation`: token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
/// - `eps_low`, `eps_high`: clip range [1−eps_low, 1+eps_high] (preset default)
/// - `dual_clip`: c > 1, caps the loss of A<0 tokens at −A·c (default off)
/// - `norm_len`: H of seq-mean-token-sum-norm (default: longest response of the batch)
/// - `kl_beta`: coefficient of the KL-to-reference term (default 0 = off)
/// - `kl_estimator`: k1 | k2 | k3 (= low_var_kl) | abs | k1+ | k3+ (default k3)
/// - `entropy_coef`: coefficient of the entropy bonus, subtracted from the loss (default 0)
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// Preset name: grpo, dapo, dr_grpo, gspo, gspo_token, luspo, cispo.
    pub name: String,
    /// Override of the importance level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<Importance>,
    /// Override of the aggregation mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<Aggregation>,
    /// Override of the low clip epsilon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_low: Option<f64>,
    /// Override of the high clip epsilon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_high: Option<f64>,
    /// Dual clip constant c (> 1) for A<0; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dual_clip: Option<f64>,
    /// H of `seq-mean-token-sum-norm`; the batch's longest response when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_len: Option<f64>,
    /// KL-to-reference coefficient (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_beta: Option<f64>,
    /// KL estimator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_estimator: Option<KlEstimator>,
    /// Entropy bonus coefficient (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy_coef: Option<f64>,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self::preset("luspo")
    }
}

impl ObjectiveConfig {
    /// A config naming `name` with no overrides.
    pub fn preset(name: &str) -> Self {
        Self {
            name: name.into(),
            importance: None,
            aggregation: None,
            eps_low: None,
            eps_high: None,
            dual_clip: None,
            norm_len: None,
            kl_beta: None,
            kl_estimator: None,
            entropy_coef: None,
        }
    }

    /// The concrete objective: preset defaults with the overrides applied, validated (keys named `objective.*`).
    pub fn resolved(&self) -> Result<ResolvedObjective> {
        self.resolve_at("objective.")
    }

    /// As `resolved`, naming keys with `key_prefix` in error messages (e.g. "" for `luspo loss` input).
    pub fn resolve_at(&self, key_prefix: &str) -> Result<ResolvedObjective> {
        let p = key_prefix;
        let preset = Preset::from_name(&self.name).ok_or_else(|| {
            let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
            input_err!(
                "{p}name: unknown objective `{}` (expected one of: {})",
                self.name,
                names.join(", ")
            )
        })?;
        let mut r = preset.defaults();
        if let Some(v) = self.importance {
            r.importance = v;
        }
        if let Some(v) = self.aggregation {
            r.aggregation = v;
        }
        if let Some(v) = self.eps_low {
            r.eps_low = v;
        }
        if let Some(v) = self.eps_high {
            r.eps_high = v;
        }
        r.dual_clip = self.dual_clip;
        r.norm_len = self.norm_len;
        if let Some(v) = self.kl_beta {
            r.kl_beta = v;
        }
        if let Some(v) = self.kl_estimator {
            r.kl_estimator = v;
        }
        if let Some(v) = self.entropy_coef {
            r.entropy_coef = v;
        }
        r.validate(p)?;
        Ok(r)
    }
}

/// A fully resolved objective: one concrete value on every axis.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ResolvedObjective {
    /// The preset the defaults came from.
    pub preset: Preset,
    /// PPO clip or CISPO.
    pub surrogate: Surrogate,
    /// Importance level.
    pub importance: Importance,
    /// Aggregation mode.
    pub aggregation: Aggregation,
    /// Low clip epsilon (ratio floor 1 − eps_low).
    pub eps_low: f64,
    /// High clip epsilon (ratio ceiling 1 + eps_high).
    pub eps_high: f64,
    /// Dual clip constant, if on.
    pub dual_clip: Option<f64>,
    /// H of `seq-mean-token-sum-norm`, if fixed.
    pub norm_len: Option<f64>,
    /// KL coefficient.
    pub kl_beta: f64,
    /// KL estimator.
    pub kl_estimator: KlEstimator,
    /// Entropy bonus coefficient.
    pub entropy_coef: f64,
}

impl ResolvedObjective {
    /// Checks every value, naming the offending key (`key_prefix` + key) in the error.
    pub fn validate(&self, key_prefix: &str) -> Result<()> {
        let p = key_prefix;
        if !(self.eps_low.is_finite() && (0.0..=1.0).contains(&self.eps_low)) {
            return Err(input_err!(
                "{p}eps_low: must be a number in [0, 1], got {}",
                self.eps_low
            ));
        }
        if !(self.eps_high.is_finite() && self.eps_high >= 0.0) {
            return Err(input_err!(
                "{p}eps_high: must be a finite number >= 0, got {}",
                self.eps_high
            ));
        }
        if let Some(c) = self.dual_clip {
            if !(c.is_finite() && c > 1.0) {
                return Err(input_err!(
                    "{p}dual_clip: must be a finite number > 1, got {c}"
                ));
            }
            if self.surrogate == Surrogate::Cispo {
                return Err(input_err!(
                    "{p}dual_clip: not used by cispo (its weight is already clipped)"
                ));
            }
        }
        if let Some(h) = self.norm_len {
            if !(h.is_finite() && h > 0.0) {
                return Err(input_err!(
                    "{p}norm_len: must be a finite number > 0, got {h}"
                ));
            }
        }
        if !(self.kl_beta.is_finite() && self.kl_beta >= 0.0) {
            return Err(input_err!(
                "{p}kl_beta: must be a finite number >= 0, got {}",
                self.kl_beta
            ));
        }
        if !self.entropy_coef.is_finite() {
            return Err(input_err!(
                "{p}entropy_coef: must be finite, got {}",
                self.entropy_coef
            ));
        }
        Ok(())
    }
}

/// Evaluates the configured objective on one batch.
pub fn policy_loss(cfg: &ObjectiveConfig, inputs: &PolicyInputs) -> crate::Result<ObjectiveOutput> {
    let obj = cfg.resolved()?;
    policy_loss_resolved(&obj, inputs)
}

/// `x` clamped to [lo, hi] in value; the gradient passes only where lo ≤ x ≤ hi (torch `clamp` semantics).
fn clamp_st(x: &Tensor, lo: Option<f64>, hi: Option<f64>) -> Result<Tensor> {
    let xd = x.detach();
    let mut clamped = xd.clone();
    let mut inside = xd.ones_like()?.to_dtype(DType::U8)?;
    if let Some(lo) = lo {
        clamped = clamped.maximum(lo)?;
        inside = inside.mul(&xd.ge(lo)?)?;
    }
    if let Some(hi) = hi {
        clamped = clamped.minimum(hi)?;
        inside = inside.mul(&xd.le(hi)?)?;
    }
    Ok(inside.where_cond(x, &clamped)?)
}

/// Everything `aggregate` needs about the batch.
struct Norm<'a> {
    valid: &'a Tensor,
    zeros: &'a Tensor,
    lens: &'a Tensor,
    mode: Aggregation,
    n_seq: f64,
    n_tok: f64,
    h: f64,
}

impl Norm<'_> {
    /// Aggregates a `(B, T)` (or broadcastable `(B, 1)`) per-token loss matrix into a scalar.
    fn aggregate(&self, l: &Tensor) -> Result<Tensor> {
        let l = l.broadcast_as(self.valid.shape())?;
        let lm = self.valid.where_cond(&l, self.zeros)?;
        let per_seq = lm.sum_keepdim(1)?;
        Ok(match self.mode {
            Aggregation::TokenMean => per_seq.sum_all()?.affine(1.0 / self.n_tok, 0.0)?,
            Aggregation::SeqMeanTokenMean => per_seq
                .broadcast_div(&self.lens.maximum(1.0)?)?
                .sum_all()?
                .affine(1.0 / self.n_seq, 0.0)?,
            Aggregation::SeqMeanTokenSum => per_seq.sum_all()?.affine(1.0 / self.n_seq, 0.0)?,
            Aggregation::SeqMeanTokenSumNorm => per_seq
                .sum_all()?
                .affine(1.0 / (self.n_seq * self.h), 0.0)?,
        })
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn check_shape(name: &str, t: &Tensor, dims: &[usize]) -> Result<()> {
    if t.dims() != dims {
        return Err(input_err!(
            "{name}: expected shape {:?} like logp, got {:?}",
            dims,
            t.dims()
        ));
    }
    Ok(())
}

/// Per-token KL estimate from `x = logp − ref` (already zero on padding), verl `kl_penalty` semantics.
fn kl_estimate(x: &Tensor, est: KlEstimator) -> Result<Tensor> {
    let k2 = || -> Result<Tensor> { Ok(x.sqr()?.affine(0.5, 0.0)?) };
    let k3 = || -> Result<Tensor> {
        let k = clamp_st(&x.neg()?, Some(-20.0), Some(20.0))?;
        let kld = (k.exp()? - k)?.affine(1.0, -1.0)?;
        clamp_st(&kld, Some(-10.0), Some(10.0))
    };
    Ok(match est {
        KlEstimator::K1 => x.clone(),
        KlEstimator::K2 => k2()?,
        KlEstimator::K3 => k3()?,
        KlEstimator::Abs => x.abs()?,
        KlEstimator::K1Plus => {
            let k2 = k2()?;
            (&k2 + (x - &k2)?.detach())?
        }
        KlEstimator::K3Plus => {
            let k2 = k2()?;
            (&k2 + (k3()? - &k2)?.detach())?
        }
    })
}

/// Evaluates a resolved objective on one batch (see the module docs for the math).
pub fn policy_loss_resolved(
    obj: &ResolvedObjective,
    inp: &PolicyInputs,
) -> Result<ObjectiveOutput> {
    let logp = inp.logp;
    let dt = logp.dtype();
    if !dt.is_float() {
        return Err(input_err!("logp: expected a float tensor, got {dt:?}"));
    }
    let (b, t) = logp
        .dims2()
        .map_err(|_| input_err!("logp: expected shape (B, T), got {:?}", logp.dims()))?;
    let dims = [b, t];
    check_shape("old_logp", inp.old_logp, &dims)?;
    check_shape("mask", inp.mask, &dims)?;
    let adv = match inp.advantages.dims() {
        [n] if *n == b => inp.advantages.reshape((b, 1))?,
        [n, 1] if *n == b => inp.advantages.clone(),
        d => {
            return Err(input_err!(
                "advantages: expected shape [{b}] (one per sequence), got {d:?}"
            ))
        }
    }
    .to_dtype(dt)?
    .detach();
    let old = inp.old_logp.to_dtype(dt)?.detach();
    let valid = inp.mask.ne(0.0)?;
    let zeros = Tensor::zeros((b, t), dt, logp.device())?;
    let lens = valid.to_dtype(dt)?.sum_keepdim(1)?; // (B, 1)
    let lens_v: Vec<f64> = lens.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let n_seq_local = lens_v.iter().filter(|&&l| l > 0.0).count() as f64;
    let n_tok_local: f64 = lens_v.iter().sum();
    let (n_seq, n_tok) = inp.global_counts.unwrap_or((n_seq_local, n_tok_local));
    if !(n_seq > 0.0 && n_tok > 0.0 && n_seq.is_finite() && n_tok.is_finite()) {
        return Err(input_err!(
            "mask: the batch has no response tokens (sequences {n_seq}, tokens {n_tok})"
        ));
    }
    if obj.aggregation == Aggregation::SeqMeanTokenSumNorm
        && obj.norm_len.is_none()
        && inp.global_counts.is_some()
    {
        return Err(input_err!(
            "objective.norm_len: must be set for seq-mean-token-sum-norm when a mini-batch is split into \
             micro-batches (the longest response of one micro-batch is not a constant)"
        ));
    }
    let h = obj
        .norm_len
        .unwrap_or_else(|| lens_v.iter().cloned().fold(0.0, f64::max));
    let norm = Norm {
        valid: &valid,
        zeros: &zeros,
        lens: &lens,
        mode: obj.aggregation,
        n_seq,
        n_tok,
        h,
    };

    // Masked log-ratio: exactly 0 (and gradient-free) on padding.
    let d = valid.where_cond(&(logp - &old)?, &zeros)?;
    let seq_level = obj.importance != Importance::Token;
    let ratio = match obj.importance {
        Importance::Token => clamp_st(&d, Some(-20.0), Some(20.0))?.exp()?,
        Importance::Sequence => d
            .sum_keepdim(1)?
            .broadcast_div(&lens.maximum(1.0)?)?
            .exp()?,
        Importance::SequenceToken => {
            let log_s = d
                .sum_keepdim(1)?
                .broadcast_div(&lens.maximum(1.0)?)?
                .detach();
            let log_st = (&d - d.detach())?.broadcast_add(&log_s)?;
            clamp_st(&log_st, None, Some(10.0))?.exp()?
        }
    };
    // Units over which clip statistics are taken: tokens (B,T) or sequences (B,1).
    let rshape = ratio.shape().clone();
    let adv_b = adv.broadcast_as(&rshape)?.contiguous()?;
    let neg_a = adv_b.neg()?;
    let rd = ratio.detach();
    let (lo, hi) = (1.0 - obj.eps_low, 1.0 + obj.eps_high);
    let (clip_lo, clip_hi, pg_mat) = match obj.surrogate {
        Surrogate::Clip => {
            let a_pos = adv_b.gt(0.0)?;
            let a_neg = adv_b.lt(0.0)?;
            let clip_hi = a_pos.mul(&rd.gt(hi)?)?;
            let clip_lo = a_neg.mul(&rd.lt(lo)?)?;
            let unclipped = (&ratio * &neg_a)?;
            let clipped_val = (rd.clamp(lo, hi)? * &neg_a)?;
            let mut l = (&clip_hi + &clip_lo)?.where_cond(&clipped_val, &unclipped)?;
            if let Some(c) = obj.dual_clip {
                let dual = a_neg.mul(&rd.gt(c)?)?;
                l = dual.where_cond(&neg_a.affine(c, 0.0)?, &l)?;
            }
            (clip_lo, clip_hi, l)
        }
        Surrogate::Cispo => {
            let w = rd.clamp(lo, hi)?;
            let lp = valid.where_cond(logp, &zeros)?;
            let l = lp.broadcast_mul(&(w * &neg_a)?)?;
            (rd.lt(lo)?, rd.gt(hi)?, l)
        }
    };
    let pg = norm.aggregate(&pg_mat)?;
    let mut loss = pg.clone();

    // Diagnostics.
    let validf = valid.to_dtype(dt)?;
    let approx_kl = -scalar(&d.sum_all()?)? / n_tok_local.max(1.0);
    let (clip_frac_low, clip_frac_high, ratio_mean) = if seq_level {
        let seq_valid = lens.gt(0.0)?.to_dtype(dt)?;
        let per_seq = |x: &Tensor| -> Result<f64> {
            let x = x.to_dtype(dt)?.narrow(1, 0, 1)?;
            Ok(scalar(&(x * &seq_valid)?.sum_all()?)? / n_seq_local.max(1.0))
        };
        (per_seq(&clip_lo)?, per_seq(&clip_hi)?, per_seq(&rd)?)
    } else {
        let per_tok = |x: &Tensor| -> Result<f64> {
            Ok(scalar(&(x.to_dtype(dt)? * &validf)?.sum_all()?)? / n_tok_local.max(1.0))
        };
        (per_tok(&clip_lo)?, per_tok(&clip_hi)?, per_tok(&rd)?)
    };

    let mut kl_stat = None;
    if obj.kl_beta > 0.0 && inp.ref_logp.is_none() {
        return Err(input_err!(
            "ref_logp: kl_beta is {} but no reference log-probs were given",
            obj.kl_beta
        ));
    }
    if let Some(r) = inp.ref_logp {
        check_shape("ref_logp", r, &dims)?;
        let x = valid.where_cond(&(logp - r.to_dtype(dt)?.detach())?, &zeros)?;
        let kl = kl_estimate(&x, obj.kl_estimator)?;
        kl_stat = Some(scalar(&valid.where_cond(&kl, &zeros)?.sum_all()?)? / n_tok_local.max(1.0));
        if obj.kl_beta > 0.0 {
            loss = (loss + norm.aggregate(&kl)?.affine(obj.kl_beta, 0.0)?)?;
        }
    }
    let mut ent_stat = None;
    if obj.entropy_coef != 0.0 && inp.entropy.is_none() {
        return Err(input_err!(
            "entropy: entropy_coef is {} but no entropies were given",
            obj.entropy_coef
        ));
    }
    if let Some(e) = inp.entropy {
        check_shape("entropy", e, &dims)?;
        let e = e.to_dtype(dt)?;
        ent_stat = Some(scalar(&valid.where_cond(&e, &zeros)?.sum_all()?)? / n_tok_local.max(1.0));
        if obj.entropy_coef != 0.0 {
            loss = (loss - norm.aggregate(&e)?.affine(obj.entropy_coef, 0.0)?)?;
        }
    }
    let stats = ObjectiveStats {
        clip_frac_low,
        clip_frac_high,
        ratio_mean,
        approx_kl,
        kl: kl_stat,
        entropy: ent_stat,
        pg_loss: scalar(&pg)?,
    };
    Ok(ObjectiveOutput { loss, stats })
}
