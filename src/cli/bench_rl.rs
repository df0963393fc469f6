//! `luspo bench --rl`: the RL step of the trainer on fixed prompts, timed by phase.
//!
//! One step is what `train::rl` does for `prompts × group` responses with `ppo_epochs = 1` and one mini-batch:
//! sample every response in one generation batch (temperature 1), reward each response (the fraction of its tokens
//! with an even id: deterministic and free, so the step times the model, not a verifier), GRPO advantages, then one
//! optimizer step over all responses, its gradient accumulated over the micro-batches (LUSPO objective by default),
//! the old log-probs taken from that same on-policy forward (as the trainer does), AdamW with clipping.
//! `--recompute-old-logprobs` scores them in a separate no-grad forward first, as the trainer did before.
//! `scripts/compare_trl.py` runs the same workload with TRL's `GRPOTrainer`.

use crate::model::Transformer;
use crate::objective::{policy_loss_resolved, ObjectiveConfig, PolicyInputs};
use crate::rollout::{generate, response_token_logprobs, Batch, Completion, SamplingParams};
use crate::train::optim::{AdamW, AdamWParams, Grads};
use anyhow::Context;
use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use std::time::Instant;

/// The workload of one RL step.
pub struct RlWorkload {
    /// Prompt token ids (each is sampled `group` times).
    pub prompts: Vec<Vec<u32>>,
    /// Responses per prompt.
    pub group: usize,
    /// New tokens per response.
    pub new_tokens: usize,
    /// Sequences per forward/backward (the optimizer step covers all responses).
    pub micro_batch: usize,
    /// Token ids that end a response.
    pub eos: Vec<u32>,
    /// Objective preset name.
    pub objective: String,
    /// Timed steps (after one warm-up step).
    pub steps: usize,
    /// Score the old log-probs in a separate no-grad forward, as the trainer did before it took them from the
    /// on-policy training forward (for a side-by-side measurement of that saving).
    pub recompute_old: bool,
}

/// Seconds of one RL step by phase.
#[derive(Debug, Clone, Copy, Default)]
struct Phases {
    generate: f64,
    old_logp: f64,
    train: f64,
    optim: f64,
    tokens: usize,
}

impl Phases {
    fn total(&self) -> f64 {
        self.generate + self.old_logp + self.train + self.optim
    }
}

/// The bench's reward: the fraction of a response's tokens with an even id (0 for an empty response).
pub fn even_fraction(ids: &[u32]) -> f64 {
    if ids.is_empty() {
        return 0.0;
    }
    ids.iter().filter(|&&t| t % 2 == 0).count() as f64 / ids.len() as f64
}

/// Reads prompts from a JSON file holding a list of token-id lists.
pub fn read_prompts(path: &std::path::Path) -> anyhow::Result<Vec<Vec<u32>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let p: Vec<Vec<u32>> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON list of token-id lists", path.display()))?;
    if p.is_empty() || p.iter().any(Vec::is_empty) {
        anyhow::bail!("{}: needs at least one prompt, none empty", path.display());
    }
    Ok(p)
}

/// Runs `steps + 1` RL steps (the first is a warm-up) and prints each phase's median.
pub fn run(model: &Transformer, varmap: &VarMap, w: &RlWorkload) -> anyhow::Result<()> {
    let obj = ObjectiveConfig::preset(&w.objective).resolved()?;
    let optim = crate::train::config::OptimConfig::default();
    let mut opt = AdamW::new(varmap, AdamWParams::from(&optim))?;
    let params = SamplingParams {
        temperature: 1.0,
        max_new_tokens: w.new_tokens,
        eos_token_ids: w.eos.clone(),
        ..Default::default()
    };
    let prompts: Vec<Vec<u32>> = w
        .prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), w.group))
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut all = vec![];
    for step in 0..=w.steps {
        let ph = step_once(
            model, &mut opt, &obj, &prompts, w, &params, &mut rng, &optim,
        )?;
        println!(
            "rl step {step}{}: {:.3} s (generate {:.3}, old log-probs {:.3}, train fwd+bwd {:.3}, AdamW {:.3}), {} completion tokens",
            if step == 0 { " (warm-up)" } else { "" },
            ph.total(),
            ph.generate,
            ph.old_logp,
            ph.train,
            ph.optim,
            ph.tokens
        );
        if step > 0 {
            all.push(ph);
        }
    }
    let med = |f: fn(&Phases) -> f64| {
        let mut v: Vec<f64> = all.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "rl step median of {}: {:.3} s/step (generate {:.3}, old log-probs {:.3}, train {:.3}, AdamW {:.3}), {:.0} completion tokens/step, peak RSS {} MB",
        all.len(),
        med(Phases::total),
        med(|p| p.generate),
        med(|p| p.old_logp),
        med(|p| p.train),
        med(|p| p.optim),
        med(|p| p.tokens as f64),
        peak_rss_mb().map_or("?".into(), |m| m.to_string())
    );
    Ok(())
}

/// The process's peak resident set (VmHWM) in MB, where /proc has it.
fn peak_rss_mb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// `(batch, old log-probs, mask, advantages)` of `(prompt, completion, advantage)` rows, as `train::rl` builds them.
fn tensors(
    rows: &[(&Vec<u32>, &Completion, f64)],
    old: Option<&[Vec<f32>]>,
    device: &candle_core::Device,
) -> anyhow::Result<(Batch, Tensor, Tensor, Tensor)> {
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = rows
        .iter()
        .map(|(p, c, _)| ((*p).clone(), c.ids.clone()))
        .collect();
    let batch = Batch::from_pairs(&pairs, 0, DType::F32, device)?;
    let (b, t1) = batch.response_mask.dims2()?;
    let mut o = vec![0f32; b * t1];
    for (i, (p, c, _)) in rows.iter().enumerate() {
        if let Some(old) = old {
            let start = p.len() - 1;
            o[i * t1 + start..i * t1 + start + c.ids.len()].copy_from_slice(&old[i]);
        }
    }
    let adv: Vec<f32> = rows.iter().map(|r| r.2 as f32).collect();
    let mask = batch.response_mask.clone();
    Ok((
        batch,
        Tensor::from_vec(o, (b, t1), device)?,
        mask,
        Tensor::from_vec(adv, b, device)?,
    ))
}

#[allow(clippy::too_many_arguments)]
fn step_once(
    model: &Transformer,
    opt: &mut AdamW,
    obj: &crate::objective::ResolvedObjective,
    prompts: &[Vec<u32>],
    w: &RlWorkload,
    params: &SamplingParams,
    rng: &mut rand_chacha::ChaCha8Rng,
    optim: &crate::train::config::OptimConfig,
) -> anyhow::Result<Phases> {
    let device = model.device().clone();
    let t0 = Instant::now();
    let outs = generate(model, prompts, params, rng)?;
    let t1 = Instant::now();
    let rewards: Vec<f64> = outs.iter().map(|c| even_fraction(&c.ids)).collect();
    let gids: Vec<usize> = (0..outs.len()).map(|i| i / w.group).collect();
    let adv = crate::advantage::compute(crate::advantage::Estimator::Grpo, &rewards, &gids);
    let rows: Vec<(&Vec<u32>, &Completion, f64)> = prompts
        .iter()
        .zip(&outs)
        .zip(&adv)
        .filter(|((_, c), _)| !c.ids.is_empty())
        .map(|((p, c), &a)| (p, c, a))
        .collect();
    let micro = w.micro_batch.max(1);
    let mut old: Vec<Vec<f32>> = vec![];
    for chunk in rows.chunks(micro).filter(|_| w.recompute_old) {
        let (batch, ..) = tensors(chunk, None, &device)?;
        let lp: Vec<Vec<f32>> = response_token_logprobs(model, &batch)?
            .0
            .detach()
            .to_vec2()?;
        for (i, (p, c, _)) in chunk.iter().enumerate() {
            let start = p.len() - 1;
            old.push(lp[i][start..start + c.ids.len()].to_vec());
        }
    }
    let t2 = Instant::now();
    let n_tok: usize = rows.iter().map(|r| r.1.ids.len()).sum();
    let split = micro < rows.len();
    let mut grads: Option<Grads> = None;
    for (k, chunk) in rows.chunks(micro).enumerate() {
        let recomputed = w
            .recompute_old
            .then(|| &old[k * micro..k * micro + chunk.len()]);
        let (batch, old_t, mask, adv_t) = tensors(chunk, recomputed, &device)?;
        let (logp, _) = response_token_logprobs(model, &batch)?;
        // On-policy, as in `train::rl`: the old log-probs are this forward's, detached.
        let old_t = if w.recompute_old {
            old_t
        } else {
            logp.detach()
        };
        let inputs = PolicyInputs {
            logp: &logp,
            old_logp: &old_t,
            mask: &mask,
            advantages: &adv_t,
            ref_logp: None,
            entropy: None,
            groups: None,
            token_weights: None,
            entropy_coefs: None,
            global_counts: split.then_some((rows.len() as f64, n_tok as f64)),
        };
        let o = policy_loss_resolved(obj, &inputs)?;
        let gs = opt.grads_from(&o.loss.backward()?);
        match grads.as_mut() {
            Some(acc) => acc.add(gs)?,
            None => grads = Some(gs),
        }
    }
    let t3 = Instant::now();
    if let Some(g) = grads {
        opt.step(&g, optim.lr, optim.grad_clip)?;
    }
    let t4 = Instant::now();
    Ok(Phases {
        generate: (t1 - t0).as_secs_f64(),
        old_logp: (t2 - t1).as_secs_f64(),
        train: (t3 - t2).as_secs_f64(),
        optim: (t4 - t3).as_secs_f64(),
        tokens: outs.iter().map(|c| c.ids.len()).sum(),
    })
}
