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

pub mod dler;
pub mod grpo_lambda;
pub mod hapo;
pub mod l_grpo;

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
    /// Cut at `max_new_tokens` without an end of sequence.
    pub truncated: bool,
    /// The verifier reward (`[reward]` terms summed); `luspo advantage` defaults it to 1/0 from `correct`.
    #[serde(default)]
    pub reward: Option<f64>,
    /// Per-token entropies under the sampling policy (filled only for methods whose
    /// [`Method::needs_entropies`] is true).
    #[serde(default)]
    pub entropies: Option<Vec<f32>>,
}

impl Response {
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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// The RL step being computed, from 1.
    pub step: u64,
    /// The rollout's `max_new_tokens`.
    pub max_new_tokens: usize,
}

/// The advantages a method trains with, group by group: one per response, and optionally per-token weights
/// (multiplying each token's loss term; `None` = weight 1 everywhere).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Advantages {
    /// Per-response advantages, `[group][response]`.
    pub seq: Vec<Vec<f64>>,
    /// Per-token weights, `[group][response][token]`, when the method sets them.
    pub token_weights: Option<Vec<Vec<Vec<f32>>>>,
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
    /// The shaped reward of every response, group by group (stage 4); `history` is the state before this step.
    fn shape(&self, groups: &[Group], history: &History, at: StepInfo) -> Vec<Vec<f64>>;
    /// Updates the per-prompt history with the step's groups (stage 5), after the rewards. Default: nothing.
    fn update(&self, _groups: &[Group], _history: &mut History) {}
    /// The advantage estimator the method trains with, if it fixes one.
    fn estimator(&self) -> Option<Estimator> {
        None
    }
    /// The advantages of the kept `groups` (stage 7) from their shaped `rewards`, with the history after the
    /// step's update. Default: `estimator` (the method's own, or the configured one) over the rewards.
    fn advantages(
        &self,
        _groups: &[Group],
        rewards: &[Vec<f64>],
        _history: &History,
        estimator: Estimator,
    ) -> Advantages {
        Advantages {
            seq: estimator_advantages(rewards, estimator),
            token_weights: None,
        }
    }
}

/// The verifier reward unchanged (`method = "none"`).
pub struct Plain;

impl Method for Plain {
    fn shape(&self, groups: &[Group], _: &History, _: StepInfo) -> Vec<Vec<f64>> {
        groups
            .iter()
            .map(|g| g.responses.iter().map(Response::base_reward).collect())
            .collect()
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
}

/// `[control]`: which method, and the parameters of each (only the chosen method's are used).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// The method: none, dler, da_dler, hapo, l_grpo, grpo_lambda. Default none.
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
