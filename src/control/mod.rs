//! Group reward shaping, per-prompt history and method-specific advantages (stages 4, 5 and 7 of DESIGN.md).
//!
//! CONTRACT (used by `train` and `luspo advantage`): a [`Method`] built from [`ControlConfig`] sees the whole
//! step's batch ([`Group`]s of [`Response`]s with length, correctness, truncation and verifier reward) and the
//! per-prompt [`History`]; it returns the shaped reward of every response ([`Method::shape`]), updates the
//! history after the rewards of the step ([`Method::update`]) and may bring its own advantage estimator.
//!
//! A new method is one file under `src/control/` plus one arm in [`ControlConfig::build`]: its parameters are
//! one typed struct (`[control.<name>]` in the run TOML, `"params"` in `luspo advantage`), documented in
//! docs/config.md with the paper's symbols.

pub mod canon;
pub mod ceeh;
pub mod dler;
pub mod dot;
pub mod grpo_lambda;
pub mod hapo;
pub mod json;
pub mod l_grpo;
pub mod pear;
pub mod ttrl;

use crate::advantage::Estimator;
use crate::{input_err, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One response of a group, as the shaping stage sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// Response length L in tokens.
    pub length: usize,
    /// The verifier's verdict (after the truncation rule of `[reward]`).
    pub correct: bool,
    /// Cut at `max_new_tokens` without an end of sequence (default false).
    #[serde(default)]
    pub truncated: bool,
    /// The verifier reward (`[reward]` terms summed); `luspo advantage` defaults it to 1/0 from `correct`.
    #[serde(default)]
    pub reward: Option<f64>,
    /// Per-token entropies under the sampling policy (filled only for methods whose
    /// [`Method::needs_entropies`] is true).
    #[serde(default)]
    pub entropies: Option<Vec<f32>>,
    /// The extracted answer (filled only for methods whose [`Method::needs_answers`] is true).
    #[serde(default)]
    pub answer: Option<String>,
    /// Index of the `</think>` token in the response, if it has one (PEAR's phase split).
    #[serde(default)]
    pub think_end: Option<usize>,
}

impl Response {
    /// Mean per-token entropy (0 without entropies).
    pub fn mean_entropy(&self) -> f64 {
        match self.entropies.as_deref() {
            Some(e) if !e.is_empty() => e.iter().map(|&x| x as f64).sum::<f64>() / e.len() as f64,
            _ => 0.0,
        }
    }

    /// The verifier reward, or 1/0 accuracy when none was given.
    pub fn base_reward(&self) -> f64 {
        self.reward.unwrap_or(if self.correct { 1.0 } else { 0.0 })
    }
}

/// The responses to one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The prompt's id (the history key).
    pub prompt_id: String,
    /// Its G responses.
    pub responses: Vec<Response>,
}

impl Group {
    /// Fraction of correct responses ρ (0 for an empty group).
    pub fn accuracy(&self) -> f64 {
        if self.responses.is_empty() {
            return 0.0;
        }
        self.responses.iter().filter(|r| r.correct).count() as f64 / self.responses.len() as f64
    }
}

/// Per-prompt history: prompt id → (the paper's symbol → value), e.g. HAPO's `h`. Saved in checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct History(pub BTreeMap<String, BTreeMap<String, f64>>);

impl History {
    /// The value of `key` for prompt `id`, if any.
    pub fn get(&self, id: &str, key: &str) -> Option<f64> {
        self.0.get(id).and_then(|m| m.get(key)).copied()
    }

    /// Sets `key` of prompt `id`.
    pub fn set(&mut self, id: &str, key: &str, v: f64) {
        self.0
            .entry(id.to_string())
            .or_default()
            .insert(key.to_string(), v);
    }
}

/// Where in training the step is (for schedules).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepInfo {
    /// The RL step being computed, from 1.
    pub step: u64,
    /// The rollout's `max_new_tokens`.
    pub max_new_tokens: usize,
    /// T: the run's RL steps (`train.steps`), for schedules over the run; 0 = unknown (no decay).
    pub total_steps: u64,
}

/// The advantages a method trains with, group by group: one per response, optionally per-token weights
/// (multiplying each token's loss term; `None` = weight 1 everywhere) and per-response entropy coefficients.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Advantages {
    /// Per-response advantages, `[group][response]`.
    pub seq: Vec<Vec<f64>>,
    /// Per-token weights, `[group][response][token]`, when the method sets them.
    pub token_weights: Option<Vec<Vec<Vec<f32>>>>,
    /// Per-response entropy coefficients λ_i, `[group][response]`: the loss gets −λ_i·H over the response's
    /// tokens (aggregated like the objective's own entropy term), when the method sets them.
    pub entropy_coefs: Option<Vec<Vec<f64>>>,
}

/// `estimator` over the shaped rewards of `groups` (each group one prompt), as `[group][response]`.
pub fn estimator_advantages(rewards: &[Vec<f64>], estimator: Estimator) -> Vec<Vec<f64>> {
    let flat: Vec<f64> = rewards.iter().flatten().copied().collect();
    let gids: Vec<usize> = rewards
        .iter()
        .enumerate()
        .flat_map(|(g, r)| std::iter::repeat_n(g, r.len()))
        .collect();
    let adv = crate::advantage::compute(estimator, &flat, &gids);
    let mut it = adv.into_iter();
    rewards
        .iter()
        .map(|r| it.by_ref().take(r.len()).collect())
        .collect()
}

/// A reward-shaping / history / advantage method (see the module docs).
pub trait Method {
    /// Whether [`Response::entropies`] must be filled before [`Method::shape`] (costs a forward pass).
    fn needs_entropies(&self) -> bool {
        false
    }
    /// Whether [`Response::answer`] must be filled before [`Method::shape`].
    fn needs_answers(&self) -> bool {
        false
    }
    /// Stage 3 (rollout post-processing): the length to cut each response to (`None` = keep), before shaping;
    /// the trainer re-verifies the cut text. Default: no cuts.
    fn cut(&self, groups: &[Group]) -> Vec<Vec<Option<usize>>> {
        groups
            .iter()
            .map(|g| vec![None; g.responses.len()])
            .collect()
    }
    /// The shaped reward of every response, group by group (stage 4); `history` is the state before this step.
    fn shape(&self, groups: &[Group], history: &History, at: StepInfo) -> Vec<Vec<f64>>;
    /// Updates the per-prompt history with the step's groups (stage 5), after the rewards. Default: nothing.
    fn update(&self, _groups: &[Group], _history: &mut History) {}
    /// The advantage estimator the method trains with, if it fixes one.
    fn estimator(&self) -> Option<Estimator> {
        None
    }
    /// The advantages of the kept `groups` (stage 7) from their shaped `rewards`, with the history the shaping
    /// saw (the step's update comes after). Default: `estimator` (the method's own, or the configured one).
    fn advantages(
        &self,
        _groups: &[Group],
        rewards: &[Vec<f64>],
        _history: &History,
        estimator: Estimator,
        _at: StepInfo,
    ) -> Advantages {
        Advantages {
            seq: estimator_advantages(rewards, estimator),
            token_weights: None,
            entropy_coefs: None,
        }
    }
}

/// The verifier reward unchanged (`method = "none"`).
pub struct Plain;

/// The verifier reward of every response, group by group.
pub fn base_rewards(groups: &[Group]) -> Vec<Vec<f64>> {
    groups
        .iter()
        .map(|g| g.responses.iter().map(Response::base_reward).collect())
        .collect()
}

impl Method for Plain {
    fn shape(&self, groups: &[Group], _: &History, _: StepInfo) -> Vec<Vec<f64>> {
        base_rewards(groups)
    }
}

/// The method names accepted by `control.method`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodName {
    /// The verifier reward, the configured estimator.
    #[default]
    None,
    /// DLER truncation penalty with batch-whitened advantages.
    Dler,
    /// Difficulty-aware DLER (per-group truncation length).
    DaDler,
    /// HAPO history-aware length reward.
    Hapo,
    /// ConciseR stage 2 (L-GRPO): length term only for all-correct groups, after a stage-1 schedule.
    LGrpo,
    /// GRPO-λ: length-penalised reward for the top-λ most accurate groups of the batch.
    GrpoLambda,
    /// DOT: outlier truncation in all-correct groups, re-verified.
    Dot,
    /// CEEH: difficulty EMA, easy-prompt length penalty, hard-prompt entropy advantage.
    Ceeh,
    /// PEAR: phase-entropy-aware reward.
    Pear,
    /// CANON: conditional advantages over the halves split by length or entropy.
    Canon,
    /// TTRL: label-free majority-vote reward.
    Ttrl,
}

impl MethodName {
    /// Every method, in documentation order.
    pub const ALL: [MethodName; 11] = [
        MethodName::None,
        MethodName::Dler,
        MethodName::DaDler,
        MethodName::Hapo,
        MethodName::LGrpo,
        MethodName::GrpoLambda,
        MethodName::Dot,
        MethodName::Ceeh,
        MethodName::Pear,
        MethodName::Canon,
        MethodName::Ttrl,
    ];

    /// The method's config name (`control.method`).
    pub fn name(self) -> &'static str {
        match self {
            MethodName::None => "none",
            MethodName::Dler => "dler",
            MethodName::DaDler => "da_dler",
            MethodName::Hapo => "hapo",
            MethodName::LGrpo => "l_grpo",
            MethodName::GrpoLambda => "grpo_lambda",
            MethodName::Dot => "dot",
            MethodName::Ceeh => "ceeh",
            MethodName::Pear => "pear",
            MethodName::Canon => "canon",
            MethodName::Ttrl => "ttrl",
        }
    }

    /// Looks a method up by its config name (case-insensitive, `-` accepted for `_`).
    pub fn from_name(name: &str) -> Option<MethodName> {
        let n = name.trim().to_ascii_lowercase().replace('-', "_");
        MethodName::ALL.into_iter().find(|m| m.name() == n)
    }
}

/// `[control]`: which method, and the parameters of each (only the chosen method's are used).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// The method: none, dler, da_dler, hapo, l_grpo, grpo_lambda, dot, ceeh, pear, canon, ttrl. Default none.
    pub method: MethodName,
    /// DLER parameters.
    pub dler: dler::DlerParams,
    /// DA-DLER parameters.
    pub da_dler: dler::DaDlerParams,
    /// HAPO parameters.
    pub hapo: hapo::HapoParams,
    /// L-GRPO parameters.
    pub l_grpo: l_grpo::LGrpoParams,
    /// GRPO-λ parameters.
    pub grpo_lambda: grpo_lambda::GrpoLambdaParams,
    /// DOT parameters.
    pub dot: dot::DotParams,
    /// CEEH parameters.
    pub ceeh: ceeh::CeehParams,
    /// PEAR parameters.
    pub pear: pear::PearParams,
    /// CANON parameters.
    pub canon: canon::CanonParams,
    /// TTRL (no parameters).
    pub ttrl: ttrl::TtrlParams,
}

impl ControlConfig {
    /// The config of `method` with `params` (a JSON object of that method's parameters), as `luspo advantage`
    /// reads them. Unknown methods and keys are errors naming them.
    pub fn from_json(method: &str, params: serde_json::Value) -> Result<ControlConfig> {
        let mut obj = serde_json::Map::new();
        obj.insert("method".into(), serde_json::Value::String(method.into()));
        let empty = params.as_object().is_none_or(|o| o.is_empty());
        if !empty {
            if method == "none" {
                return Err(input_err!("params: method `none` takes no parameters"));
            }
            obj.insert(method.into(), params);
        }
        let cfg: ControlConfig = serde_json::from_value(serde_json::Value::Object(obj))
            .map_err(|e| input_err!("method/params: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the chosen method's parameters (errors name `control.<method>.<key>`).
    pub fn validate(&self) -> Result<()> {
        match self.method {
            MethodName::None => Ok(()),
            MethodName::Dler => self.dler.validate(),
            MethodName::DaDler => self.da_dler.validate(),
            MethodName::Hapo => self.hapo.validate(),
            MethodName::LGrpo => self.l_grpo.validate(),
            MethodName::GrpoLambda => self.grpo_lambda.validate(),
            MethodName::Dot => self.dot.validate(),
            MethodName::Ceeh => self.ceeh.validate(),
            MethodName::Pear => self.pear.validate(),
            MethodName::Canon => self.canon.validate(),
            MethodName::Ttrl => self.ttrl.validate(),
        }
    }

    /// The method object.
    pub fn build(&self) -> Box<dyn Method> {
        match self.method {
            MethodName::None => Box::new(Plain),
            MethodName::Dler => Box::new(self.dler.clone()),
            MethodName::DaDler => Box::new(self.da_dler.clone()),
            MethodName::Hapo => Box::new(self.hapo.clone()),
            MethodName::LGrpo => Box::new(self.l_grpo.clone()),
            MethodName::GrpoLambda => Box::new(self.grpo_lambda.clone()),
            MethodName::Dot => Box::new(self.dot.clone()),
            MethodName::Ceeh => Box::new(self.ceeh.clone()),
            MethodName::Pear => Box::new(self.pear.clone()),
            MethodName::Canon => Box::new(self.canon.clone()),
            MethodName::Ttrl => Box::new(self.ttrl.clone()),
        }
    }

    /// The chosen method's own estimator, if it fixes one.
    pub fn own_estimator(&self) -> Option<Estimator> {
        self.build().estimator()
    }

    /// The chosen method's parameters as JSON (what `luspo advantage` prints as `resolved`).
    pub fn params_json(&self) -> serde_json::Value {
        let all = serde_json::to_value(self).unwrap_or_default();
        let key = serde_json::to_value(self.method)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        all.get(&key)
            .cloned()
            .unwrap_or(serde_json::Value::Object(Default::default()))
    }
}

/// Checks that `v` is finite and inside `lo..=hi`, naming `control.<key>`.
pub(crate) fn check_range(key: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
    if !(v.is_finite() && (lo..=hi).contains(&v)) {
        return Err(input_err!(
            "control.{key}: must be a number in [{lo}, {hi}], got {v}"
        ));
    }
    Ok(())
}
