//! Held-out evaluation: a fixed problem set, greedy decoding by default, verifier accuracy and response lengths.

use super::config::RunConfig;
use super::files::derive_seed;
use super::policy::Policy;
use crate::metrics::EvalRecord;
use crate::reward::{self, RewardConfig};
use crate::rollout::SamplingParams;
use crate::task::{Problem, Split, Task};
use crate::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The encoded held-out set.
pub struct EvalSet {
    /// The problems.
    pub problems: Vec<Problem>,
    /// Their prompt ids.
    pub prompts: Vec<Vec<u32>>,
}

impl EvalSet {
    /// Draws `task.eval_size` held-out problems with `eval.seed` and encodes them.
    pub fn new(cfg: &RunConfig, task: &dyn Task, policy: &Policy, n: usize) -> Result<Self> {
        let problems = task.problems(Split::Eval, n, cfg.eval.seed)?;
        let prompts = problems
            .iter()
            .map(|p| policy.encode_prompt(&p.prompt))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { problems, prompts })
    }
}

/// Sampling settings of the evaluation.
pub fn eval_params(cfg: &RunConfig, eos: Vec<u32>) -> SamplingParams {
    SamplingParams {
        temperature: cfg.eval.temperature,
        top_p: if cfg.eval.temperature > 0.0 {
            cfg.rollout.top_p
        } else {
            1.0
        },
        top_k: if cfg.eval.temperature > 0.0 {
            cfg.rollout.top_k
        } else {
            0
        },
        max_new_tokens: if cfg.eval.max_new_tokens == 0 {
            cfg.rollout.max_new_tokens
        } else {
            cfg.eval.max_new_tokens
        },
        eos_token_ids: eos,
        stop: cfg.rollout.stop.clone(),
    }
}

/// Evaluates the current policy on `set` after RL step `step`.
pub fn evaluate(
    cfg: &RunConfig,
    policy: &Policy,
    task: &dyn Task,
    reward_cfg: &RewardConfig,
    set: &EvalSet,
    step: u64,
) -> Result<EvalRecord> {
    let params = eval_params(cfg, policy.eos_ids());
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, &format!("eval-{step}")));
    let outs = policy.generate(
        policy.model(),
        &set.prompts,
        &params,
        cfg.eval.batch_size,
        &mut rng,
    )?;
    let verifier = task.verifier();
    let mut correct = 0usize;
    let (mut len_sum, mut len_c, mut len_i, mut n_c, mut trunc) =
        (0f64, 0f64, 0f64, 0usize, 0usize);
    for (p, c) in set.problems.iter().zip(&outs) {
        let text = policy.decode(&c.ids)?;
        let truncated = !c.finished;
        let r = reward::score(
            reward_cfg,
            &verifier,
            &text,
            &p.answer,
            c.ids.len(),
            truncated,
        );
        let len = c.ids.len() as f64;
        len_sum += len;
        if truncated {
            trunc += 1;
        }
        if r.accuracy > 0.5 {
            correct += 1;
            n_c += 1;
            len_c += len;
        } else {
            len_i += len;
        }
    }
    let n = set.problems.len().max(1) as f64;
    let n_i = set.problems.len() - n_c;
    Ok(EvalRecord {
        step,
        accuracy: correct as f64 / n,
        response_length_mean: len_sum / n,
        response_length_correct: if n_c > 0 { len_c / n_c as f64 } else { 0.0 },
        response_length_incorrect: if n_i > 0 { len_i / n_i as f64 } else { 0.0 },
        truncated_frac: trunc as f64 / n,
        n: set.problems.len() as u64,
    })
}
