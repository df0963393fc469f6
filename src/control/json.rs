//! `luspo advantage`: one control method on given numbers (JSON in, JSON out), as the trainer runs it: shape the
//! rewards against the given history, update the history, compute the advantages over all the given groups.
//!
//! Input: `{"method": "hapo", "params": {"w": 1.0}, "estimator": "grpo", "step": 1, "max_new_tokens": 64,
//! "total_steps": 0,
//! "groups": [{"prompt_id": "q1", "history": {"h": 20}, "responses": [{"length": 10, "correct": true,
//! "truncated": false}, ..]}]}`; `params`, `estimator` (default `grpo`: the configured estimator, used unless the
//! method has its own), `step` (default 1), `max_new_tokens` (default the run default), `total_steps` (T of
//! schedules over the run, default 0 = none), `history`, `truncated`,
//! a response's `reward` (default 1/0 from `correct`) and `entropies` are optional.
//! Output: `{"groups": [{"prompt_id", "lengths" (after DOT's cuts), "rewards", "advantages", "history"}],
//! "resolved": {"method", "params",
//! "estimator", "step", "max_new_tokens", "total_steps"}}`, plus per group `token_weights` and `entropy_coefs` when
//! the method sets them.

use super::{ControlConfig, Group, History, Response, StepInfo};
use crate::advantage::Estimator;
use crate::{input_err, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    method: String,
    #[serde(default)]
    params: Value,
    #[serde(default)]
    estimator: Estimator,
    #[serde(default)]
    step: Option<u64>,
    #[serde(default)]
    max_new_tokens: Option<usize>,
    #[serde(default)]
    total_steps: u64,
    groups: Vec<GroupIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupIn {
    prompt_id: String,
    #[serde(default)]
    history: BTreeMap<String, f64>,
    responses: Vec<Response>,
}

/// Evaluates the JSON document `text` (see the module docs); errors are one line naming the key.
pub fn evaluate_json(text: &str) -> Result<Value> {
    let input: Input = serde_json::from_str(text).map_err(|e| input_err!("stdin: {e}"))?;
    let cfg = ControlConfig::from_json(&input.method, input.params)?;
    let method = cfg.build();
    let at = StepInfo {
        step: input.step.unwrap_or(1),
        max_new_tokens: input
            .max_new_tokens
            .unwrap_or(crate::train::config::RolloutConfig::default().max_new_tokens),
        total_steps: input.total_steps,
    };
    if at.max_new_tokens == 0 {
        return Err(input_err!("max_new_tokens: must be > 0"));
    }
    let mut history = History::default();
    let mut groups: Vec<Group> = vec![];
    for (gi, g) in input.groups.into_iter().enumerate() {
        if groups.iter().any(|h: &Group| h.prompt_id == g.prompt_id) {
            return Err(input_err!(
                "groups[{gi}].prompt_id: `{}` appears twice",
                g.prompt_id
            ));
        }
        if g.responses.is_empty() {
            return Err(input_err!("groups[{gi}].responses: empty"));
        }
        for (k, v) in &g.history {
            if !v.is_finite() {
                return Err(input_err!("groups[{gi}].history.{k}: not a finite number"));
            }
            history.set(&g.prompt_id, k, *v);
        }
        for (ri, r) in g.responses.iter().enumerate() {
            if r.reward.is_some_and(|x| !x.is_finite()) {
                return Err(input_err!(
                    "groups[{gi}].responses[{ri}].reward: not a finite number"
                ));
            }
            let n_ent = r.entropies.as_ref().map(Vec::len);
            if method.needs_entropies() && n_ent != Some(r.length) {
                return Err(input_err!(
                    "groups[{gi}].responses[{ri}].entropies: method `{}` needs one entropy per token ({} tokens, got {})",
                    input.method,
                    r.length,
                    n_ent.map_or("none".to_string(), |n| n.to_string())
                ));
            }
        }
        groups.push(Group {
            prompt_id: g.prompt_id,
            responses: g.responses,
        });
    }
    // Stage 3: cut responses (no text here, so a cut response counts as incorrect).
    let cuts = method.cut(&groups);
    for (g, cuts) in groups.iter_mut().zip(cuts) {
        for (r, c) in g.responses.iter_mut().zip(cuts) {
            if let Some(t) = c {
                r.length = t;
                r.correct = false;
                r.reward = None;
                r.entropies = r.entropies.take().map(|mut e| {
                    e.truncate(t);
                    e
                });
            }
        }
    }
    let rewards = method.shape(&groups, &history, at);
    let estimator = method.estimator().unwrap_or(input.estimator);
    let adv = method.advantages(&groups, &rewards, &history, estimator, at);
    method.update(&groups, &mut history);
    let out: Vec<Value> = groups
        .iter()
        .enumerate()
        .map(|(k, g)| {
            let mut o = json!({
                "prompt_id": g.prompt_id,
                "lengths": g.responses.iter().map(|r| r.length).collect::<Vec<_>>(),
                "rewards": rewards[k],
                "advantages": adv.seq[k],
                "history": history.0.get(&g.prompt_id).cloned().unwrap_or_default(),
            });
            if let Some(w) = &adv.token_weights {
                o["token_weights"] = json!(w[k]);
            }
            if let Some(c) = &adv.entropy_coefs {
                o["entropy_coefs"] = json!(c[k]);
            }
            o
        })
        .collect();
    Ok(json!({
        "groups": out,
        "resolved": {
            "method": cfg.method,
            "params": cfg.params_json(),
            "estimator": estimator,
            "step": at.step,
            "max_new_tokens": at.max_new_tokens,
            "total_steps": at.total_steps,
        },
    }))
}
