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
//! | dispo | token, CISPO with four bounds | token-mean | 1.0, 4.0 (A>0); 0.2, 0.28 (A<0) |
//! | drpo | DRPO (no ratio) | per prompt | KL trust region β, δ |
//! | delta_l | token | delta_l (ΔL, α = 1) | 0.2, 0.28 |
//! | spine, llds, ulorl | token | seq-mean-token-mean | 0.2, 0.2, plus their token mask / regulariser |
//!
//! Every knob is declared once (`knobs!` below); the per-method math lives in `methods`.
//!
//! Padding (mask 0) never enters a value: every per-token quantity is selected with `where_cond` on the mask,
//! so padding positions receive exactly zero gradient whatever numbers they hold.

use candle_core::{DType, Tensor};

use crate::{input_err, Result};

pub mod methods;

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
    /// Group (prompt) of every sequence, needed by DRPO.
    pub groups: Option<&'a [usize]>,
    /// Extra per-token loss weights `(B, T)` (masks are 0/1 weights), multiplying the policy-gradient term.
    pub token_weights: Option<&'a Tensor>,
    /// Extra per-sequence entropy coefficients `(B,)` (CEEH's λ(x, t)): the loss gets −aggregate(λ_i·H_it), like
    /// `entropy_coef` but per sequence; needs `entropy`.
    pub entropy_coefs: Option<&'a Tensor>,
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
    /// The method regularisers (SPINE band, LLDS, DRPO trust region), when one is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reg_loss: Option<f64>,
    /// Fraction of response tokens whose policy-gradient weight is not zero, when a token mask is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_token_frac: Option<f64>,
}

/// The scalar loss (to minimise) and its diagnostics.
pub struct ObjectiveOutput {
    /// Scalar loss tensor, differentiable w.r.t. `logp` (and `entropy`).
    pub loss: Tensor,
    /// Diagnostics.
    pub stats: ObjectiveStats,
    /// The per-token policy-gradient weights `(B, T)` the masks and `token_weights` gave, when any is on.
    pub token_weights: Option<Tensor>,
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
    /// ΔL normalisation: (1/(B·T_max)) Σ_i (L_i^−α / mean_j L_j^−α) Σ_t m·ℓ (arXiv 2509.07558).
    #[serde(rename = "delta_l", alias = "delta-l")]
    DeltaL,
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
    /// DISPO: CISPO with bounds (eps_low, eps_high) for A > 0 and (eps_low_neg, eps_high_neg) for A < 0.
    Dispo,
    /// DRPO: −(Σ_P w_i s_i − τ log Σ_N exp(s_j/τ)) per prompt, s = mean token log-prob, plus a KL trust region.
    Drpo,
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
    /// DISPO: CISPO with separate clip bounds for positive and negative responses.
    Dispo,
    /// DRPO: decoupled length-weighted positives, log-sum-exp negatives, KL trust region.
    Drpo,
    /// ΔL normalisation on the DAPO recipe.
    DeltaL,
    /// GRPO with SPINE's forking-token mask and entropy band.
    Spine,
    /// GRPO with the LLDS likelihood-preserving regulariser.
    Llds,
    /// GRPO with UloRL's masking of mastered positive tokens.
    Ulorl,
}

impl Preset {
    /// Every preset, in documentation order.
    pub const ALL: [Preset; 13] = [
        Preset::Grpo,
        Preset::Dapo,
        Preset::DrGrpo,
        Preset::Gspo,
        Preset::GspoToken,
        Preset::Luspo,
        Preset::Cispo,
        Preset::Dispo,
        Preset::Drpo,
        Preset::DeltaL,
        Preset::Spine,
        Preset::Llds,
        Preset::Ulorl,
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
            Preset::Dispo => "dispo",
            Preset::Drpo => "drpo",
            Preset::DeltaL => "delta_l",
            Preset::Spine => "spine",
            Preset::Llds => "llds",
            Preset::Ulorl => "ulorl",
        }
    }

    /// Looks a preset up by name (case-insensitive, `-` accepted for `_`).
    pub fn from_name(name: &str) -> Option<Preset> {
        let n = name.trim().to_ascii_lowercase().replace('-', "_");
        Preset::ALL.into_iter().find(|p| p.name() == n)
    }

    /// The error for an unknown preset name, naming `key` and listing the presets.
    pub fn unknown(key: &str, name: &str) -> crate::Error {
        let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
        input_err!(
            "{key}: unknown objective `{name}` (expected one of: {})",
            names.join(", ")
        )
    }

    /// The surrogate the preset trains with (not a knob: it is what the preset is).
    pub fn surrogate(self) -> Surrogate {
        match self {
            Preset::Cispo => Surrogate::Cispo,
            Preset::Dispo => Surrogate::Dispo,
            Preset::Drpo => Surrogate::Drpo,
            _ => Surrogate::Clip,
        }
    }

    /// The knobs this preset sets away from the base defaults (its paper's values; see docs/objectives.md).
    pub fn knobs(self) -> ObjectiveConfig {
        use Aggregation as Ag;
        use Importance as Im;
        let mut c = ObjectiveConfig::preset(self.name());
        let (importance, aggregation, eps_low, eps_high) = match self {
            Preset::Grpo | Preset::Spine | Preset::Llds | Preset::Ulorl => {
                (Im::Token, Ag::SeqMeanTokenMean, 0.2, 0.2)
            }
            Preset::Dapo => (Im::Token, Ag::TokenMean, 0.2, 0.28),
            Preset::DrGrpo => (Im::Token, Ag::SeqMeanTokenSumNorm, 0.2, 0.2),
            Preset::Gspo => (Im::Sequence, Ag::SeqMeanTokenMean, 3e-4, 4e-4),
            Preset::GspoToken => (Im::SequenceToken, Ag::SeqMeanTokenMean, 3e-4, 4e-4),
            Preset::Luspo => (Im::Sequence, Ag::SeqMeanTokenSum, 2e-3, 2.5e-3),
            Preset::Cispo | Preset::Dispo => (Im::Token, Ag::TokenMean, 1.0, 4.0),
            Preset::Drpo => (Im::Token, Ag::TokenMean, 0.2, 0.2),
            Preset::DeltaL => (Im::Token, Ag::DeltaL, 0.2, 0.28),
        };
        c.importance = Some(importance);
        c.aggregation = Some(aggregation);
        c.eps_low = Some(eps_low);
        c.eps_high = Some(eps_high);
        match self {
            // UNVERIFIED (methods.md §4: no official values): negatives get DAPO's bounds.
            Preset::Dispo => {
                c.eps_low_neg = Some(0.2);
                c.eps_high_neg = Some(0.28);
            }
            Preset::Spine => c.spine_frac = Some(0.2),
            Preset::Llds => c.llds_lambda = Some(0.2),
            Preset::Ulorl => c.ulorl_sigma = Some(0.2),
            _ => {}
        }
        c
    }

    /// The preset's resolved values (base defaults, then the preset's knobs).
    pub fn defaults(self) -> ResolvedObjective {
        let mut r = ResolvedObjective::base(self);
        r.apply(&self.knobs());
        r
    }
}

/// Value checks a knob can name in the declaration below (`Err` is the reason, after the key).
mod check {
    pub fn any<T>(_: &T) -> Result<(), &'static str> {
        Ok(())
    }
    pub fn finite(v: &f64) -> Result<(), &'static str> {
        v.is_finite().then_some(()).ok_or("must be finite")
    }
    pub fn nonneg(v: &f64) -> Result<(), &'static str> {
        (v.is_finite() && *v >= 0.0)
            .then_some(())
            .ok_or("must be a finite number >= 0")
    }
    pub fn positive(v: &f64) -> Result<(), &'static str> {
        (v.is_finite() && *v > 0.0)
            .then_some(())
            .ok_or("must be a finite number > 0")
    }
    pub fn unit(v: &f64) -> Result<(), &'static str> {
        (v.is_finite() && (0.0..=1.0).contains(v))
            .then_some(())
            .ok_or("must be a number in [0, 1]")
    }
    pub fn above_one(v: &f64) -> Result<(), &'static str> {
        (v.is_finite() && *v > 1.0)
            .then_some(())
            .ok_or("must be a finite number > 1")
    }
}

/// The resolved type of a knob: `val T` is always set, `opt T` may be off.
macro_rules! knob_type {
    (val $t:ty) => { $t };
    (opt $t:ty) => { Option<$t> };
}

/// Assigns a given override to a resolved knob.
macro_rules! knob_set {
    (val $slot:expr, $v:expr) => {
        $slot = $v
    };
    (opt $slot:expr, $v:expr) => {
        $slot = Some($v)
    };
}

/// Declares every objective knob once: `ObjectiveConfig` (serde, the TOML `[objective]` table and the top-level
/// keys of `luspo loss`), `ResolvedObjective`, the override step of `resolve_at`, the per-key checks of
/// `validate` and the table `knob_docs` that docs/config.md is tested against.
macro_rules! knobs {
    ($( $(#[doc = $doc:literal])+ $name:ident : $kind:ident $ty:ty = $default:expr, $check:ident; )*) => {
        /// Objective configuration: a preset `name` plus optional overrides of any knob (see docs/config.md).
        #[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct ObjectiveConfig {
            /// Preset name (`Preset::ALL`).
            pub name: String,
            $(
                $(#[doc = $doc])+
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $name: Option<$ty>,
            )*
        }

        impl ObjectiveConfig {
            /// Every knob key (the fields besides `name`), in declaration order.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($name)),*];

            /// A config naming `name` with no overrides.
            pub fn preset(name: &str) -> Self {
                Self { name: name.into(), $( $name: None, )* }
            }

            /// Sets knob `key` from a JSON value; `Ok(false)` when `key` is not a knob, `Err` names the bad value.
            pub fn set_json(&mut self, key: &str, v: &serde_json::Value) -> std::result::Result<bool, String> {
                match key {
                    $(
                        stringify!($name) => {
                            self.$name = Some(serde_json::from_value(v.clone()).map_err(|e| e.to_string())?);
                            Ok(true)
                        }
                    )*
                    _ => Ok(false),
                }
            }
        }

        /// A fully resolved objective: one concrete value on every knob.
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        pub struct ResolvedObjective {
            /// The preset the defaults came from.
            pub preset: Preset,
            /// The surrogate (fixed by the preset).
            pub surrogate: Surrogate,
            $( $(#[doc = $doc])+ pub $name: knob_type!($kind $ty), )*
        }

        impl ResolvedObjective {
            /// The base defaults every preset starts from.
            fn base(preset: Preset) -> Self {
                Self { preset, surrogate: preset.surrogate(), $( $name: $default, )* }
            }

            /// Applies every override `c` sets.
            fn apply(&mut self, c: &ObjectiveConfig) {
                $( if let Some(v) = c.$name.clone() { knob_set!($kind self.$name, v); } )*
            }

            /// Per-key value checks; the first failure names `key_prefix` + key.
            fn check_knobs(&self, p: &str) -> Result<()> {
                $(
                    if let Err(why) = knob_check!($kind check::$check, &self.$name) {
                        return Err(input_err!("{p}{}: {why}", stringify!($name)));
                    }
                )*
                Ok(())
            }
        }

        /// Every knob with its base default (TOML value, `None` = off) and its one-line doc.
        pub fn knob_docs() -> Vec<KnobDoc> {
            let base = ResolvedObjective::base(Preset::Grpo);
            let mut out = Vec::new();
            $(
                let set_by: Vec<&'static str> = Preset::ALL
                    .iter()
                    .filter(|p| p.knobs().$name.is_some())
                    .map(|p| p.name())
                    .collect();
                out.push(KnobDoc {
                    name: stringify!($name),
                    default: toml::Value::try_from(&base.$name).ok(),
                    set_by,
                    doc: concat!($($doc),+).trim(),
                });
            )*
            out
        }
    };
}

/// Runs a knob's check on its resolved value (skipped for an `opt` knob that is off).
macro_rules! knob_check {
    (val $f:path, $v:expr) => {
        $f($v).map_err(|w| format!("{w}, got {:?}", $v))
    };
    (opt $f:path, $v:expr) => {
        match $v {
            Some(x) => $f(x).map_err(|w| format!("{w}, got {x:?}")),
            None => Ok(()),
        }
    };
}

/// The `[objective]` table of docs/config.md, generated from the knob declaration (a test keeps the doc equal).
pub fn knob_table() -> String {
    let presets: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
    let mut out = String::from(
        "| key | default | presets with their own value | meaning |\n|---|---|---|---|\n",
    );
    out.push_str(&format!(
        "| `name` | `\"{}\"` | | Preset: {}. |\n",
        ObjectiveConfig::default().name,
        presets
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for k in knob_docs() {
        let default = k.default.map_or("off".to_string(), |v| format!("`{v}`"));
        let set_by = if k.set_by.len() == presets.len() {
            "every preset (docs/objectives.md)".to_string()
        } else {
            k.set_by.join(", ")
        };
        out.push_str(&format!(
            "| `{}` | {default} | {set_by} | {} |\n",
            k.name, k.doc
        ));
    }
    out
}

/// One row of the objective knob table (docs/config.md is tested against these).
#[derive(Debug, Clone)]
pub struct KnobDoc {
    /// Key name.
    pub name: &'static str,
    /// The base default as a TOML value; `None` = off.
    pub default: Option<toml::Value>,
    /// Presets that set their own value.
    pub set_by: Vec<&'static str>,
    /// One-line meaning.
    pub doc: &'static str,
}

knobs! {
    /// Importance level: token, sequence, sequence_token.
    importance: val Importance = Importance::Token, any;
    /// Aggregation: token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm, delta_l.
    aggregation: val Aggregation = Aggregation::SeqMeanTokenMean, any;
    /// Low clip epsilon: ratio floor 1 − eps_low (DISPO: for positive-advantage responses).
    eps_low: val f64 = 0.2, unit;
    /// High clip epsilon: ratio ceiling 1 + eps_high (DISPO: for positive-advantage responses).
    eps_high: val f64 = 0.2, nonneg;
    /// DISPO: low clip epsilon for negative-advantage responses (off = eps_low).
    eps_low_neg: opt f64 = None, unit;
    /// DISPO: high clip epsilon for negative-advantage responses (off = eps_high).
    eps_high_neg: opt f64 = None, nonneg;
    /// Dual clip constant c > 1: caps the loss of A < 0 units at −A·c (off when absent).
    dual_clip: opt f64 = None, above_one;
    /// H of seq-mean-token-sum-norm and T_max of delta_l (absent = the batch's longest response).
    norm_len: opt f64 = None, positive;
    /// KL-to-reference coefficient (0 = off).
    kl_beta: val f64 = 0.0, nonneg;
    /// KL estimator: k1, k2, k3 (= low_var_kl), abs, k1+, k3+.
    kl_estimator: val KlEstimator = KlEstimator::K3, any;
    /// Entropy bonus coefficient, subtracted from the loss (0 = off).
    entropy_coef: val f64 = 0.0, finite;
    /// ΔL normalisation exponent α of the delta_l aggregation (weights ∝ L_i^−α).
    delta_l_alpha: val f64 = 1.0, nonneg;
    /// DRPO λ: temperature of the length weight exp((1 − L/L_max)/λ) on positives.
    drpo_lambda: val f64 = 0.1, positive;
    /// DRPO τ: temperature of the log-sum-exp over negatives.
    drpo_tau: val f64 = 10.0, positive;
    /// DRPO β: strength of the KL trust-region penalty.
    drpo_beta: val f64 = 1000.0, nonneg;
    /// DRPO δ: KL below which the trust-region penalty is off.
    drpo_delta: val f64 = 1e-4, nonneg;
    /// DRPO L_max of the length weight (absent = the batch's longest response).
    drpo_l_max: opt f64 = None, positive;
    /// SPINE: fraction of each response's highest-entropy tokens that carry policy gradient (0 = off).
    spine_frac: val f64 = 0.0, unit;
    /// SPINE: quantile of forking-token entropies giving the band floor H_low.
    spine_q_low: val f64 = 0.1, unit;
    /// SPINE: quantile of forking-token entropies giving the band ceiling H_high.
    spine_q_high: val f64 = 0.5, unit;
    /// SPINE: coefficient of the entropy-band penalty (UNVERIFIED).
    spine_band_coef: val f64 = 0.01, nonneg;
    /// LLDS λ: coefficient of the likelihood-preserving penalty on A ≥ 0 responses (0 = off).
    llds_lambda: val f64 = 0.0, nonneg;
    /// UloRL τ: a positive response's token is "mastered" when its old probability exceeds τ.
    ulorl_tau: val f64 = 0.99, unit;
    /// UloRL σ: mastered tokens are masked in responses whose mean entropy is below σ (0 = off).
    ulorl_sigma: val f64 = 0.0, nonneg;
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self::preset("luspo")
    }
}

impl ObjectiveConfig {
    /// The concrete objective: preset defaults with the overrides applied, validated (keys named `objective.*`).
    pub fn resolved(&self) -> Result<ResolvedObjective> {
        self.resolve_at("objective.")
    }

    /// As `resolved`, naming keys with `key_prefix` in error messages (e.g. "" for `luspo loss` input).
    pub fn resolve_at(&self, key_prefix: &str) -> Result<ResolvedObjective> {
        let preset = Preset::from_name(&self.name)
            .ok_or_else(|| Preset::unknown(&format!("{key_prefix}name"), &self.name))?;
        let mut r = preset.defaults();
        r.apply(self);
        r.validate(key_prefix)?;
        Ok(r)
    }
}

impl ResolvedObjective {
    /// Checks every value, naming the offending key (`key_prefix` + key) in the error.
    pub fn validate(&self, key_prefix: &str) -> Result<()> {
        let p = key_prefix;
        self.check_knobs(p)?;
        if self.dual_clip.is_some() && self.surrogate != Surrogate::Clip {
            return Err(input_err!(
                "{p}dual_clip: only used by the PPO clip surrogate (not {})",
                self.preset.name()
            ));
        }
        if (self.eps_low_neg.is_some() || self.eps_high_neg.is_some())
            && self.surrogate != Surrogate::Dispo
        {
            return Err(input_err!(
                "{p}eps_low_neg / eps_high_neg: only used by dispo (not {})",
                self.preset.name()
            ));
        }
        if self.spine_q_low > self.spine_q_high {
            return Err(input_err!(
                "{p}spine_q_low: must be <= spine_q_high ({}), got {}",
                self.spine_q_high,
                self.spine_q_low
            ));
        }
        Ok(())
    }

    /// Whether the loss needs per-token entropies (bonus, SPINE, UloRL).
    pub fn needs_entropy(&self) -> bool {
        self.entropy_coef != 0.0 || self.spine_frac > 0.0 || self.ulorl_sigma > 0.0
    }

    /// Whether the loss needs every sequence's group (DRPO).
    pub fn needs_groups(&self) -> bool {
        self.surrogate == Surrogate::Drpo
    }

    /// Why this objective cannot split a mini-batch into micro-batches (`None` = it can).
    pub fn whole_batch_only(&self) -> Option<&'static str> {
        match (self.aggregation, self.surrogate) {
            (_, Surrogate::Drpo) => Some("drpo (its per-prompt terms)"),
            (Aggregation::DeltaL, _) => Some("delta_l (its batch mean of L^-α)"),
            _ => None,
        }
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
    /// ΔL: per-sequence factor L_i^−α / mean_j L_j^−α, `(B, 1)`.
    delta_l: Option<Tensor>,
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
            Aggregation::DeltaL => {
                let c = self
                    .delta_l
                    .as_ref()
                    .ok_or_else(|| input_err!("delta_l: per-sequence weights missing"))?;
                (per_seq * c)?
                    .sum_all()?
                    .affine(1.0 / (self.n_seq * self.h), 0.0)?
            }
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
    if let (Some(what), Some(_)) = (obj.whole_batch_only(), inp.global_counts) {
        return Err(input_err!(
            "train.micro_batch_size: {what} needs each mini-batch in one call (set micro_batch_size = 0)"
        ));
    }
    let h = obj
        .norm_len
        .unwrap_or_else(|| lens_v.iter().cloned().fold(0.0, f64::max));
    let delta_l = (obj.aggregation == Aggregation::DeltaL)
        .then(|| methods::delta_l_factors(&lens_v, obj.delta_l_alpha))
        .map(|c| Tensor::from_vec(c, (b, 1), logp.device())?.to_dtype(dt))
        .transpose()?;
    let norm = Norm {
        valid: &valid,
        zeros: &zeros,
        lens: &lens,
        mode: obj.aggregation,
        n_seq,
        n_tok,
        h,
        delta_l,
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
    let lp = valid.where_cond(logp, &zeros)?;
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
            let l = lp.broadcast_mul(&(w * &neg_a)?)?;
            (rd.lt(lo)?, rd.gt(hi)?, l)
        }
        Surrogate::Dispo => {
            let pos = adv_b.gt(0.0)?;
            let bound = |p: f64, n: f64| -> Result<Tensor> {
                let pt = Tensor::full(p, rshape.clone(), logp.device())?.to_dtype(dt)?;
                let nt = Tensor::full(n, rshape.clone(), logp.device())?.to_dtype(dt)?;
                Ok(pos.where_cond(&pt, &nt)?)
            };
            let lo_t = bound(lo, 1.0 - obj.eps_low_neg.unwrap_or(obj.eps_low))?;
            let hi_t = bound(hi, 1.0 + obj.eps_high_neg.unwrap_or(obj.eps_high))?;
            let w = rd.maximum(&lo_t)?.minimum(&hi_t)?;
            let l = lp.broadcast_mul(&(w * &neg_a)?)?;
            (rd.lt(&lo_t)?, rd.gt(&hi_t)?, l)
        }
        Surrogate::Drpo => {
            let none = rd.zeros_like()?.to_dtype(DType::U8)?;
            (none.clone(), none, zeros.clone())
        }
    };

    // Per-token weights: the caller's, SPINE's forking mask, UloRL's mastered-token mask.
    let masks = methods::TokenMasks::build(obj, inp, &valid, &adv, &old)?;
    let weights = methods::combine(inp.token_weights, &masks, &valid, dt)?;
    let pg_mat = match &weights {
        Some(w) => pg_mat.broadcast_as((b, t))?.mul(w)?,
        None => pg_mat,
    };
    let mut reg: Option<Tensor> = None;
    let pg = if obj.surrogate == Surrogate::Drpo {
        let groups = inp
            .groups
            .ok_or_else(|| input_err!("groups: drpo needs the group (prompt) of every sequence"))?;
        let (pg, tr) = methods::drpo(obj, &lp, weights.as_ref(), &lens_v, &adv, groups, &d, n_tok)?;
        reg = Some(tr);
        pg
    } else {
        norm.aggregate(&pg_mat)?
    };
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
        let mut kl = kl_estimate(&x, obj.kl_estimator)?;
        if let Some(f) = &masks.forking {
            // SPINE: the KL to the reference acts on forking tokens only.
            kl = f.where_cond(&kl, &zeros)?;
        }
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
    if inp.entropy_coefs.is_some() && inp.entropy.is_none() {
        return Err(input_err!(
            "entropy: per-sequence entropy coefficients but no entropies were given"
        ));
    }
    if let Some(e) = inp.entropy {
        check_shape("entropy", e, &dims)?;
        let e = e.to_dtype(dt)?;
        ent_stat = Some(scalar(&valid.where_cond(&e, &zeros)?.sum_all()?)? / n_tok_local.max(1.0));
        if obj.entropy_coef != 0.0 {
            loss = (loss - norm.aggregate(&e)?.affine(obj.entropy_coef, 0.0)?)?;
        }
        if let Some(c) = inp.entropy_coefs {
            check_shape("entropy_coefs", c, &[dims[0]])?;
            let ce = e.broadcast_mul(&c.to_dtype(dt)?.unsqueeze(1)?)?;
            loss = (loss - norm.aggregate(&ce)?)?;
        }
        if let Some(band) = methods::spine_band(obj, &masks, &e, &zeros, n_seq)? {
            reg = Some(match reg {
                Some(r) => (r + band)?,
                None => band,
            });
        }
    }
    if obj.llds_lambda > 0.0 {
        let l = methods::llds(obj.llds_lambda, &d, &valid, &zeros, &adv, n_tok)?;
        reg = Some(match reg {
            Some(r) => (r + l)?,
            None => l,
        });
    }
    if let Some(r) = &reg {
        loss = (loss + r)?;
    }
    let pg_token_frac = match &weights {
        Some(w) => {
            Some(scalar(&w.ne(0.0)?.to_dtype(dt)?.mul(&validf)?.sum_all()?)? / n_tok_local.max(1.0))
        }
        None => None,
    };
    let stats = ObjectiveStats {
        clip_frac_low,
        clip_frac_high,
        ratio_mean,
        approx_kl,
        kl: kl_stat,
        entropy: ent_stat,
        pg_loss: scalar(&pg)?,
        reg_loss: reg.as_ref().map(scalar).transpose()?,
        pg_token_frac,
    };
    Ok(ObjectiveOutput {
        loss,
        stats,
        token_weights: weights,
    })
}
