//! The RL loop. Per step: draw P prompts → G samples each (current policy) → rewards → (dynamic sampling: drop
//! groups with equal rewards, refill, at most `max_sampling_rounds` rounds) → advantages → old (and reference)
//! log-probs from the training forward without gradient → `ppo_epochs` passes over shuffled mini-batches with the
//! objective → AdamW (clip, warm-up). Writes one `StepMetrics` line per step, rollouts, evaluations, checkpoints.

use super::checkpoint::{self, TrainState};
use super::config::{RunConfig, WarmupUnit};
use super::eval::{evaluate, EvalSet};
use super::files::{derive_seed, io_err, read_jsonl, write_json, JsonlLog};
use super::mechanism::{self, Mechanism};
use super::optim::{lr_at, AdamW, AdamWParams, Grads};
use super::policy::Policy;
use super::progress::{summary_table, Mode, Progress};
use super::sft;
use crate::advantage;
use crate::control::{self, Group, Response, StepInfo};
use crate::engine::sync::WeightSync;
use crate::metrics::{EvalRecord, RolloutRecord, StepMetrics, Summary};
use crate::model::Transformer;
use crate::objective::{self, ObjectiveStats, PolicyInputs, ResolvedObjective};
use crate::reward::{self, RewardBreakdown, RewardConfig, Verifier};
use crate::rollout::{response_token_logprobs, Batch, SamplingParams};
use crate::task::Task;
use crate::{input_err, Result};
use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// How `train` is run.
#[derive(Clone)]
pub struct TrainOptions {
    /// The run directory.
    pub out: PathBuf,
    /// Continue from the latest checkpoint of `out`.
    pub resume: bool,
    /// Progress display.
    pub mode: Mode,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub interrupt: Option<Arc<AtomicBool>>,
}

/// How a call to `train` ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// All steps done; the summary was written.
    Finished(Summary),
    /// Stopped early (Ctrl-C or `train.stop_after_steps`) after this many steps; resumable.
    Stopped(u64),
}

/// One sampled response of a step.
struct Sample {
    group: usize,
    prompt_id: String,
    prompt: Arc<Vec<u32>>,
    response: Vec<u32>,
    truncated: bool,
    reward: RewardBreakdown,
    /// The reward after the control method's shaping (what advantages and metrics use).
    shaped: f64,
    advantage: f64,
    /// Per-token loss weights set by the control method (`None` = 1).
    token_weights: Option<Vec<f32>>,
    /// The control method's entropy coefficient of this response (CEEH's λ(x, t)), if it sets one.
    entropy_coef: Option<f64>,
    old_lp: Vec<f32>,
    ref_lp: Option<Vec<f32>>,
    train: bool,
    /// The engine's log-probs of `response`, when an engine sampled it.
    engine_lp: Option<Vec<f32>>,
}

/// Everything the loop needs, built once per process.
struct Ctx<'a> {
    cfg: &'a RunConfig,
    obj: ResolvedObjective,
    task: Box<dyn Task>,
    reward: RewardConfig,
    control: Box<dyn control::Method>,
    estimator: advantage::Estimator,
    /// The `</think>` token id, if the tokenizer has one (PEAR's phase split).
    think_end_id: Option<u32>,
    policy: Policy,
    reference: Option<Transformer>,
    opt: AdamW,
    params: SamplingParams,
    device: Device,
    /// Weight sync to the engine, with the optimizer step last synced and the sync seconds not yet logged.
    sync: Option<(WeightSync, u64, f64)>,
}

impl Ctx<'_> {
    /// Held-out evaluation of the current policy after `step` RL steps.
    fn evaluate(&self, set: &EvalSet, step: u64) -> Result<EvalRecord> {
        evaluate(
            self.cfg,
            &self.policy,
            self.task.as_ref(),
            &self.reward,
            set,
            step,
        )
    }
}

fn prepare_dir(out: &Path, resume: bool) -> Result<()> {
    if !resume && out.join("metrics.jsonl").exists() {
        return Err(input_err!(
            "{}: already holds a run (use --resume to continue it, or another --out)",
            out.display()
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    // Probe writability now, for a clear error before any work.
    let probe = out.join(".write-probe");
    std::fs::write(&probe, b"").map_err(|e| io_err(out, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Runs (or resumes) RL training into `opts.out`.
pub fn train(cfg: &RunConfig, opts: &TrainOptions) -> Result<Outcome> {
    let t_start = Instant::now();
    let out = &opts.out;
    let obj = cfg.objective.resolved()?;
    let super::bootstrap::Bootstrap {
        task,
        reward,
        mut policy,
    } = super::bootstrap::Bootstrap::new(cfg)?;
    let latest = if opts.resume {
        let l = checkpoint::latest(out)?;
        if l.is_none() {
            return Err(input_err!(
                "{}: no checkpoint to resume from",
                out.display()
            ));
        }
        l
    } else {
        None
    };
    prepare_dir(out, opts.resume)?;
    crate::atomic::write(&out.join("config.toml"), cfg.to_toml()?.as_bytes())?;

    let device = policy.model().device().clone();
    let adam = AdamWParams::from(&cfg.optim);

    let mut state;
    let reference_path = out.join("reference.safetensors");
    let mut pre_log = None;
    if let Some((_, dir)) = &latest {
        let mut opt = AdamW::new(policy.varmap(), adam)?;
        state = checkpoint::load(dir, policy.varmap_mut(), &mut opt)?;
        pre_log = Some(opt);
    } else {
        let rep = sft::warm_start(&mut policy, task.as_ref(), cfg, opts.mode)?;
        if cfg.sft.steps > 0 && opts.mode != Mode::Quiet {
            if rep.cached {
                eprintln!(
                    "warm start: loaded {}",
                    rep.cache_path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                );
            } else {
                eprintln!(
                    "warm start: {} steps, loss {:.4}, {:.1}s",
                    rep.steps, rep.final_loss, rep.seconds
                );
            }
        }
        state = TrainState {
            step: 0,
            optimizer_steps: 0,
            skipped_updates: 0,
            rng_rollout: ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, "rollout")),
            rng_data: ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, "data")),
            rng_shuffle: ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, "shuffle")),
            prompts_drawn: 0,
            metrics_lines: 0,
            rollouts_lines: 0,
            eval_lines: 0,
            history: Default::default(),
            eval_before: None,
            eval_last: None,
            wall_seconds: 0.0,
        };
        if obj.kl_beta > 0.0 {
            crate::atomic::write_with(&reference_path, "", |tmp| {
                policy
                    .varmap()
                    .save(tmp)
                    .map_err(|e| input_err!("{}: {e}", reference_path.display()))
            })?;
        }
    }
    let reference = if obj.kl_beta > 0.0 {
        let tensors = candle_core::safetensors::load(&reference_path, &device)
            .map_err(|e| input_err!("{}: {e}", reference_path.display()))?;
        Some(policy.reference_from(tensors)?)
    } else {
        None
    };
    let opt = match pre_log {
        Some(o) => o,
        None => AdamW::new(policy.varmap(), adam)?,
    };
    let params = SamplingParams {
        temperature: cfg.rollout.temperature,
        top_p: cfg.rollout.top_p,
        top_k: cfg.rollout.top_k,
        max_new_tokens: cfg.rollout.max_new_tokens,
        eos_token_ids: policy.eos_ids(),
        stop: cfg.rollout.stop.clone(),
    };
    let mut ctx = Ctx {
        cfg,
        obj,
        task,
        reward,
        control: cfg.control.build(),
        estimator: cfg.estimator()?,
        think_end_id: policy.tok().token_to_id("</think>"),
        policy,
        reference,
        opt,
        params,
        device,
        sync: None,
    };
    if let Some(engine) = ctx.policy.engine.clone() {
        // The engine serves whatever it was started with: push the warm-started (or resumed) weights first.
        let mut sync = WeightSync::new(engine, &cfg.rollout, out)?;
        let secs = sync.push(&ctx.policy.m, state.optimizer_steps)?;
        ctx.sync = Some((sync, state.optimizer_steps, secs));
    }

    let mut metrics_log =
        JsonlLog::open_truncated(&out.join("metrics.jsonl"), state.metrics_lines)?;
    let mut rollouts_log =
        JsonlLog::open_truncated(&out.join("rollouts.jsonl"), state.rollouts_lines)?;
    let mut eval_log = JsonlLog::open_truncated(&out.join("eval.jsonl"), state.eval_lines)?;
    let mut tb = crate::tb::TbWriter::create(&out.join("tb"))?;
    if latest.is_some() {
        // Values, not records: a NaN metric was logged as null.
        for (prefix, file) in [("train", "metrics.jsonl"), ("eval", "eval.jsonl")] {
            for v in read_jsonl::<serde_json::Value>(&out.join(file))? {
                tb.scalars(prefix, v["step"].as_u64().unwrap_or(0), &v)?;
            }
        }
        tb.flush()?;
    }
    let eval_set = EvalSet::new(cfg, ctx.task.as_ref(), &ctx.policy, cfg.task.eval_size)?;
    let wall_before = state.wall_seconds;
    let wall = |state_start: Instant| wall_before + state_start.elapsed().as_secs_f64();

    if latest.is_none() {
        let e = ctx.evaluate(&eval_set, 0)?;
        eval_log.append(&e)?;
        tb.scalars("eval", 0, &e)?;
        tb.flush()?;
        eval_log.sync()?;
        if opts.mode != Mode::Quiet {
            eprintln!(
                "eval step 0 (before RL): accuracy {:.3}  mean length {:.1}  (n={})",
                e.accuracy, e.response_length_mean, e.n
            );
        }
        state.eval_before = Some(e.clone());
        state.eval_last = Some(e);
        state.eval_lines = eval_log.lines();
        state.wall_seconds = wall(t_start);
        checkpoint::save(
            out,
            ctx.policy.varmap(),
            &ctx.opt,
            &state,
            cfg.checkpoint.keep,
        )?;
    }

    let progress = Progress::new(opts.mode, "rl", cfg.train.steps, state.step);
    let mut steps_here = 0u64;
    let mut last_saved = state.step;
    while state.step < cfg.train.steps {
        let m = rl_step(&mut ctx, &mut state, &mut rollouts_log)?;
        metrics_log.append(&m)?;
        tb.scalars("train", m.step, &m)?;
        state.step = m.step;
        state.skipped_updates += m.skipped_updates;
        progress.step(&m);
        let every = cfg.eval.every;
        if state.step == cfg.train.steps || (every > 0 && state.step % every == 0) {
            let e = ctx.evaluate(&eval_set, state.step)?;
            eval_log.append(&e)?;
            tb.scalars("eval", e.step, &e)?;
            progress.eval(&e);
            state.eval_last = Some(e);
        }
        tb.flush()?;
        metrics_log.sync()?;
        rollouts_log.sync()?;
        eval_log.sync()?;
        state.metrics_lines = metrics_log.lines();
        state.rollouts_lines = rollouts_log.lines();
        state.eval_lines = eval_log.lines();
        state.wall_seconds = wall(t_start);
        steps_here += 1;
        let interrupted = opts
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst));
        let ck_every = cfg.checkpoint.every;
        let due = (ck_every > 0 && state.step % ck_every == 0)
            || state.step == cfg.train.steps
            || interrupted;
        if cfg.train.stop_after_steps > 0
            && steps_here >= cfg.train.stop_after_steps
            && state.step < cfg.train.steps
        {
            // Testing hook: behave like a kill (a checkpoint only if one was due anyway).
            if due && !interrupted {
                checkpoint::save(
                    out,
                    ctx.policy.varmap(),
                    &ctx.opt,
                    &state,
                    cfg.checkpoint.keep,
                )?;
            }
            progress.finish();
            return Ok(Outcome::Stopped(state.step));
        }
        if due {
            if !checkpoint::weights_finite(ctx.policy.varmap())? {
                return Err(input_err!(
                    "step {}: the weights became NaN/inf; the last good checkpoint (step {last_saved}) is kept",
                    state.step
                ));
            }
            checkpoint::save(
                out,
                ctx.policy.varmap(),
                &ctx.opt,
                &state,
                cfg.checkpoint.keep,
            )?;
            last_saved = state.step;
        }
        if interrupted {
            progress.finish();
            if opts.mode != Mode::Quiet {
                eprintln!("interrupted after step {}: checkpoint written; continue with --resume --out {}", state.step, out.display());
            }
            return Ok(Outcome::Stopped(state.step));
        }
    }
    progress.finish();

    let before = state.eval_before.clone().unwrap_or_default();
    let after = match &state.eval_last {
        Some(e) if e.step == state.step => e.clone(),
        _ => {
            let e = ctx.evaluate(&eval_set, state.step)?;
            eval_log.append(&e)?;
            eval_log.sync()?;
            tb.scalars("eval", e.step, &e)?;
            tb.flush()?;
            e
        }
    };
    let summary = Summary {
        objective: cfg.objective.name.clone(),
        seed: cfg.seed,
        eval_accuracy_before: before.accuracy,
        eval_accuracy_after: after.accuracy,
        eval_response_length_before: before.response_length_mean,
        eval_response_length_after: after.response_length_mean,
        steps: state.step,
        wall_seconds: wall(t_start),
    };
    if cfg.checkpoint.save_final {
        ctx.policy.save_final(out)?;
    }
    write_json(&out.join("summary.json"), &summary)?;
    if opts.mode != Mode::Quiet {
        print!("{}", summary_table(&summary, out));
    }
    Ok(Outcome::Finished(summary))
}

/// Reads a run directory's evaluations (for tools and tests).
pub fn read_evals(out: &Path) -> Result<Vec<EvalRecord>> {
    read_jsonl(&out.join("eval.jsonl"))
}

fn lengths_stats(v: &mut [f64]) -> (f64, f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0, 0.0);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let q = |p: f64| {
        let x = p * (v.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
    };
    (mean, q(0.1), q(0.9), v[v.len() - 1])
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

/// Scores one response: the verifier's breakdown and the shaping stage's view of it.
fn score_response(
    ctx: &Ctx,
    verifier: &Verifier,
    ids: &[u32],
    answer: &str,
    truncated: bool,
    rng_reward: &mut ChaCha8Rng,
) -> Result<(RewardBreakdown, Response)> {
    let text = ctx.policy.decode(ids)?;
    let r = reward::score_noisy(
        &ctx.reward,
        verifier,
        &text,
        answer,
        ids.len(),
        truncated,
        rng_reward,
    );
    let extracted = if ctx.control.needs_answers() {
        verifier.check(&text, answer).extracted
    } else {
        None
    };
    let resp = Response {
        length: ids.len(),
        correct: r.accuracy > 0.5,
        truncated,
        reward: Some(r.total),
        entropies: None,
        answer: extracted,
        think_end: ctx
            .think_end_id
            .and_then(|t| ids.iter().position(|&x| x == t)),
    };
    Ok((r, resp))
}

/// The per-token tensors of a set of samples.
struct MiniBatch {
    batch: Batch,
    old: Tensor,
    mask: Tensor,
    adv: Tensor,
    ref_lp: Option<Tensor>,
    /// `(B, T)` per-token loss weights when some sample has them (1 elsewhere).
    token_weights: Option<Tensor>,
    /// `(B,)` per-sequence entropy coefficients when some sample has one (0 elsewhere).
    entropy_coefs: Option<Tensor>,
}

/// Builds the per-token tensors of a set of samples.
fn tensors_of(samples: &[&Sample], pad: u32, device: &Device) -> Result<MiniBatch> {
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = samples
        .iter()
        .map(|s| (s.prompt.as_ref().clone(), s.response.clone()))
        .collect();
    let batch = Batch::from_pairs(&pairs, pad, DType::F32, device)?;
    let (b, t1) = batch.response_mask.dims2()?;
    let mut old = vec![0f32; b * t1];
    let mut rf = vec![0f32; b * t1];
    let mut keep = vec![0f32; b * t1];
    let has_ref = samples.iter().all(|s| s.ref_lp.is_some()) && !samples.is_empty();
    let has_tw = samples.iter().any(|s| s.token_weights.is_some());
    let mut tw = vec![1f32; if has_tw { b * t1 } else { 0 }];
    for (i, s) in samples.iter().enumerate() {
        let start = s.prompt.len() - 1;
        for j in 0..s.response.len() {
            old[i * t1 + start + j] = s.old_lp.get(j).copied().unwrap_or(0.0);
            if let Some(r) = &s.ref_lp {
                rf[i * t1 + start + j] = r.get(j).copied().unwrap_or(0.0);
            }
            if s.train {
                keep[i * t1 + start + j] = 1.0;
            }
            if let Some(w) = s.token_weights.as_ref().and_then(|w| w.get(j)) {
                tw[i * t1 + start + j] = *w;
            }
        }
    }
    let old = Tensor::from_vec(old, (b, t1), device)?;
    let mask = Tensor::from_vec(keep, (b, t1), device)?;
    let adv = Tensor::from_vec(
        samples
            .iter()
            .map(|s| s.advantage as f32)
            .collect::<Vec<_>>(),
        b,
        device,
    )?;
    let rf = if has_ref {
        Some(Tensor::from_vec(rf, (b, t1), device)?)
    } else {
        None
    };
    let token_weights = if has_tw {
        Some(Tensor::from_vec(tw, (b, t1), device)?)
    } else {
        None
    };
    let entropy_coefs = if samples.iter().any(|s| s.entropy_coef.is_some()) {
        let c: Vec<f32> = samples
            .iter()
            .map(|s| s.entropy_coef.unwrap_or(0.0) as f32)
            .collect();
        Some(Tensor::from_vec(c, b, device)?)
    } else {
        None
    };
    Ok(MiniBatch {
        batch,
        old,
        mask,
        adv,
        ref_lp: rf,
        token_weights,
        entropy_coefs,
    })
}

/// Per-response, per-token values.
type PerToken = Vec<Vec<f32>>;

/// Per-token log-probs and entropies of each of `samples`' responses under `model`, no gradient.
fn response_logprobs(
    model: &Transformer,
    samples: &[&Sample],
    pad: u32,
    device: &Device,
) -> Result<(PerToken, PerToken)> {
    let batch = tensors_of(samples, pad, device)?.batch;
    let (logp, ent) = response_token_logprobs(model, &batch)?;
    Ok((
        response_values(&logp, samples)?,
        response_values(&ent, samples)?,
    ))
}

/// The response positions of a `(B, T-1)` per-token tensor of `samples`' batch, one vector per sample.
fn response_values(t: &Tensor, samples: &[&Sample]) -> Result<PerToken> {
    let rows: Vec<Vec<f32>> = t.detach().to_vec2()?;
    Ok(samples
        .iter()
        .zip(rows)
        .map(|(s, row)| {
            let start = s.prompt.len() - 1;
            row[start..start + s.response.len()].to_vec()
        })
        .collect())
}

fn rl_step(ctx: &mut Ctx, state: &mut TrainState, rollouts: &mut JsonlLog) -> Result<StepMetrics> {
    let t0 = Instant::now();
    let cfg = ctx.cfg;
    let step = state.step + 1;
    let (p_count, g) = (cfg.rollout.prompts_per_step, cfg.rollout.group_size);
    let verifier = ctx.task.verifier();
    let mut samples: Vec<Sample> = vec![];
    let mut kept_groups: Vec<usize> = vec![];
    let mut n_groups = 0usize;
    let mut zero_std_groups = 0usize;
    let mut generated_tokens = 0usize;
    let mut rounds = 0;
    let sync_every = cfg.rollout.sync_every;
    if let Some((sync, at, pending)) = ctx.sync.as_mut() {
        if sync_every > 0 && state.optimizer_steps >= *at + sync_every {
            *pending += sync.push(&ctx.policy.m, state.optimizer_steps)?;
            *at = state.optimizer_steps;
        }
    }
    let has_engine = ctx.policy.engine.is_some();
    let mut params = ctx.params.clone();
    params.max_new_tokens = cfg.rollout.max_new_tokens_at(step);
    // Coin rewards and label noise: a stream per step, so a resumed run draws the same rewards.
    let mut rng_reward =
        ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, &format!("reward-{step}")));
    let mut step_groups: Vec<Group> = vec![];
    let micro = if cfg.train.micro_batch_size == 0 {
        cfg.mini_batch_size()
    } else {
        cfg.train.micro_batch_size
    };
    let pad = ctx.policy.pad_id();
    let at = StepInfo {
        step,
        max_new_tokens: params.max_new_tokens,
        total_steps: cfg.train.steps,
    };
    while kept_groups.len() < p_count {
        let need = p_count - kept_groups.len();
        let mut problems = Vec::with_capacity(need);
        for _ in 0..need {
            problems.push(ctx.task.sample_train(&mut state.rng_data)?);
            state.prompts_drawn += 1;
        }
        let encoded: Vec<Arc<Vec<u32>>> = problems
            .iter()
            .map(|p| ctx.policy.encode_prompt(&p.prompt).map(Arc::new))
            .collect::<Result<_>>()?;
        let prompts: Vec<Vec<u32>> = encoded
            .iter()
            .flat_map(|e| std::iter::repeat_n(e.as_ref().clone(), g))
            .collect();
        let outs = ctx.policy.generate(
            ctx.policy.model(),
            &prompts,
            &params,
            cfg.rollout.generation_batch_size,
            &mut state.rng_rollout,
        )?;
        let first_sample = samples.len();
        let first_group = n_groups;
        let mut round: Vec<Group> = vec![];
        for (pi, problem) in problems.iter().enumerate() {
            let group = n_groups;
            n_groups += 1;
            let mut responses = vec![];
            for gi in 0..g {
                let c = &outs[pi * g + gi];
                generated_tokens += c.ids.len();
                let truncated = !c.finished;
                let (r, resp) = score_response(
                    ctx,
                    &verifier,
                    &c.ids,
                    &problem.answer,
                    truncated,
                    &mut rng_reward,
                )?;
                responses.push(resp);
                samples.push(Sample {
                    group,
                    prompt_id: problem.id.clone(),
                    prompt: encoded[pi].clone(),
                    response: c.ids.clone(),
                    truncated,
                    reward: r,
                    shaped: r.total,
                    advantage: 0.0,
                    token_weights: None,
                    entropy_coef: None,
                    old_lp: vec![],
                    ref_lp: None,
                    train: !(truncated && cfg.rollout.mask_truncated || c.ids.is_empty()),
                    engine_lp: has_engine.then(|| c.logprobs.clone()),
                });
            }
            round.push(Group {
                prompt_id: problem.id.clone(),
                responses,
            });
        }
        // Stage 3: the method's cuts (DOT), re-verified on the cut text.
        for (gl, cuts) in ctx.control.cut(&round).into_iter().enumerate() {
            for (j, t) in cuts.into_iter().enumerate() {
                let Some(t) = t else { continue };
                let i = first_sample + gl * g + j;
                let s = &mut samples[i];
                s.response.truncate(t);
                let answer = &problems[gl].answer;
                let (r, resp) =
                    score_response(ctx, &verifier, &s.response, answer, false, &mut rng_reward)?;
                let s = &mut samples[i];
                s.reward = r;
                s.shaped = r.total;
                s.train = s.train && !s.response.is_empty();
                round[gl].responses[j] = Response {
                    truncated: s.truncated,
                    ..resp
                };
            }
        }
        if ctx.control.needs_entropies() {
            let idx: Vec<usize> = (first_sample..samples.len())
                .filter(|&i| !samples[i].response.is_empty())
                .collect();
            for chunk in idx.chunks(micro.max(1)) {
                let refs: Vec<&Sample> = chunk.iter().map(|&i| &samples[i]).collect();
                let (_, ents) = response_logprobs(ctx.policy.model(), &refs, pad, &ctx.device)?;
                for (&i, e) in chunk.iter().zip(ents) {
                    let (gl, k) = (samples[i].group - first_group, i - first_sample);
                    round[gl].responses[k % g].entropies = Some(e);
                }
            }
            for r in round.iter_mut().flat_map(|g| g.responses.iter_mut()) {
                r.entropies.get_or_insert_with(Vec::new);
            }
        }
        // Shape the round's rewards against the history of the step's start, then filter on the shaped rewards.
        let shaped = ctx.control.shape(&round, &state.history, at);
        let mut k = first_sample;
        for (gi, rewards) in shaped.iter().enumerate() {
            for &r in rewards {
                samples[k].shaped = r;
                k += 1;
            }
            let all_equal = rewards.iter().all(|&r| r == rewards[0]);
            if all_equal {
                zero_std_groups += 1;
            }
            if !(cfg.rollout.dynamic_sampling && all_equal) {
                kept_groups.push(first_group + gi);
            }
        }
        step_groups.extend(round);
        rounds += 1;
        if !cfg.rollout.dynamic_sampling || rounds >= cfg.rollout.max_sampling_rounds {
            break;
        }
    }
    kept_groups.truncate(p_count);

    // Advantages over the kept groups (samples of group `gi` are `gi·G .. (gi+1)·G`).
    kept_groups.sort_unstable();
    let kept_step_groups: Vec<Group> = kept_groups
        .iter()
        .map(|&gi| step_groups[gi].clone())
        .collect();
    let kept_rewards: Vec<Vec<f64>> = kept_groups
        .iter()
        .map(|&gi| (gi * g..(gi + 1) * g).map(|i| samples[i].shaped).collect())
        .collect();
    let adv = ctx.control.advantages(
        &kept_step_groups,
        &kept_rewards,
        &state.history,
        ctx.estimator,
        at,
    );
    // History after the step's rewards (and advantages): this batch affects the next step only.
    ctx.control.update(&step_groups, &mut state.history);
    for (k, &gi) in kept_groups.iter().enumerate() {
        for j in 0..g {
            let s = &mut samples[gi * g + j];
            s.advantage = adv.seq[k][j];
            s.token_weights = adv.token_weights.as_ref().map(|w| w[k][j].clone());
            s.entropy_coef = adv.entropy_coefs.as_ref().map(|c| c[k][j]);
        }
    }
    let kept: Vec<usize> = kept_groups
        .iter()
        .flat_map(|&gi| gi * g..(gi + 1) * g)
        .collect();

    // Old (and reference) log-probs from the training forward, no gradient.
    let mut trained_tokens = 0usize;
    let mut ent_sum = 0f64;
    let mut ent_n = 0usize;
    let trainable: Vec<usize> = kept
        .iter()
        .copied()
        .filter(|&i| !samples[i].response.is_empty())
        .collect();
    let mb = cfg.mini_batch_size().min(trainable.len()).max(1);
    // On-policy (one epoch, one mini-batch, no engine log-probs to correct against): the only training forward
    // runs at the weights the old log-probs would be scored at, so they are taken from it, detached (as TRL does
    // with num_iterations = 1), saving one forward pass of the batch; the values are the same.
    let on_policy = cfg.train.ppo_epochs == 1
        && mb >= trainable.len()
        && !has_engine
        && trainable.iter().any(|&i| samples[i].train);
    for chunk in trainable.chunks(micro.max(1)) {
        let refs: Vec<&Sample> = chunk.iter().map(|&i| &samples[i]).collect();
        let rlps = match &ctx.reference {
            Some(r) => Some(response_logprobs(r, &refs, pad, &ctx.device)?.0),
            None => None,
        };
        let lps = if on_policy {
            None
        } else {
            let (lps, ents) = response_logprobs(ctx.policy.model(), &refs, pad, &ctx.device)?;
            trained_tokens += refs
                .iter()
                .map(|s| s.prompt.len() + s.response.len())
                .sum::<usize>();
            for e in &ents {
                ent_sum += e.iter().map(|&x| x as f64).sum::<f64>();
                ent_n += e.len();
            }
            Some(lps)
        };
        for (k, &i) in chunk.iter().enumerate() {
            samples[i].ref_lp = rlps.as_ref().map(|r| r[k].clone());
            if let Some(lps) = &lps {
                samples[i].old_lp = lps[k].clone();
            }
        }
    }

    let engine_stats = has_engine.then(|| {
        engine_corrections(
            &mut samples,
            &trainable,
            cfg.rollout.tis_cap,
            cfg.rollout.tis_mode,
        )
    });

    // ppo_epochs over shuffled mini-batches.
    let mut stats: Vec<ObjectiveStats> = vec![];
    let mut losses = vec![];
    let mut norms = vec![];
    let mut skipped = 0u64;
    let mut lr_used = current_lr(cfg, state);
    let train_len = |s: &Sample| {
        if s.train {
            s.response.len() as f64
        } else {
            0.0
        }
    };
    let mut mech = Mechanism::new(
        &trainable
            .iter()
            .map(|&i| train_len(&samples[i]))
            .filter(|&l| l > 0.0)
            .collect::<Vec<_>>(),
    );
    for _epoch in 0..cfg.train.ppo_epochs {
        let mut order = trainable.clone();
        if cfg.train.shuffle {
            order.shuffle(&mut state.rng_shuffle);
        }
        for mbatch in order.chunks(mb) {
            let n_seq = mbatch.iter().filter(|&&i| samples[i].train).count();
            let n_tok: usize = mbatch
                .iter()
                .filter(|&&i| samples[i].train)
                .map(|&i| samples[i].response.len())
                .sum();
            if n_seq == 0 {
                continue;
            }
            let split = micro < mbatch.len();
            let mut grads: Option<Grads> = None;
            let mut finite = true;
            let mut loss_sum = 0f64;
            let mut mstats: Vec<(ObjectiveStats, f64)> = vec![];
            let mut mparts = vec![];
            for part in mbatch.chunks(micro.max(1)) {
                let refs: Vec<&Sample> = part.iter().map(|&i| &samples[i]).collect();
                let part_seqs = refs.iter().filter(|s| s.train).count();
                if part_seqs == 0 {
                    if on_policy {
                        // Nothing to train here, but the step's entropy covers every response.
                        let (_, ents) =
                            response_logprobs(ctx.policy.model(), &refs, pad, &ctx.device)?;
                        ent_sum += ents.iter().flatten().map(|&x| x as f64).sum::<f64>();
                        ent_n += ents.iter().map(Vec::len).sum::<usize>();
                    }
                    continue;
                }
                let mbt = tensors_of(&refs, pad, &ctx.device)?;
                let (logp, ent) = response_token_logprobs(ctx.policy.model(), &mbt.batch)?;
                let on_policy_old = if on_policy {
                    for e in response_values(&ent, &refs)? {
                        ent_sum += e.iter().map(|&x| x as f64).sum::<f64>();
                        ent_n += e.len();
                    }
                    Some(logp.detach())
                } else {
                    None
                };
                let groups: Vec<usize> = refs.iter().map(|s| s.group).collect();
                trained_tokens += refs
                    .iter()
                    .map(|s| s.prompt.len() + s.response.len())
                    .sum::<usize>();
                let inputs = PolicyInputs {
                    logp: &logp,
                    old_logp: on_policy_old.as_ref().unwrap_or(&mbt.old),
                    mask: &mbt.mask,
                    advantages: &mbt.adv,
                    ref_logp: mbt.ref_lp.as_ref(),
                    entropy: (ctx.obj.needs_entropy() || mbt.entropy_coefs.is_some())
                        .then_some(&ent),
                    groups: Some(&groups),
                    token_weights: mbt.token_weights.as_ref(),
                    entropy_coefs: mbt.entropy_coefs.as_ref(),
                    global_counts: if split {
                        Some((n_seq as f64, n_tok as f64))
                    } else {
                        None
                    },
                };
                let o = objective::policy_loss_resolved(&ctx.obj, &inputs)?;
                let weights = |unclipped| mechanism::seq_weights(&ctx.obj, &inputs, unclipped);
                mparts.push((
                    refs.iter().map(|s| train_len(s)).collect::<Vec<_>>(),
                    refs.iter().map(|s| s.advantage).collect::<Vec<_>>(),
                    weights(false)?,
                    weights(true)?,
                ));
                let l = o.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if !l.is_finite() {
                    finite = false;
                    break;
                }
                loss_sum += l;
                mstats.push((o.stats, part_seqs as f64));
                let gs = ctx.opt.grads_from(&o.loss.backward()?);
                match grads.as_mut() {
                    Some(acc) => acc.add(gs)?,
                    None => grads = Some(gs),
                }
            }
            lr_used = current_lr(cfg, state);
            state.optimizer_steps += 1;
            let Some(grads) = grads.filter(|_| finite) else {
                skipped += 1;
                continue;
            };
            let outcome = ctx.opt.step(&grads, lr_used, cfg.optim.grad_clip)?;
            if outcome.skipped {
                skipped += 1;
                continue;
            }
            norms.push(outcome.grad_norm);
            losses.push(loss_sum);
            for (l, a, w, wu) in &mparts {
                mech.add(l, a, w, wu);
            }
            mech.end_optimizer_step();
            let w: f64 = mstats.iter().map(|(_, w)| w).sum();
            let mut s = ObjectiveStats::default();
            let mut kl = 0.0;
            let mut has_kl = false;
            for (st, wi) in &mstats {
                let f = wi / w;
                s.clip_frac_low += f * st.clip_frac_low;
                s.clip_frac_high += f * st.clip_frac_high;
                s.ratio_mean += f * st.ratio_mean;
                s.approx_kl += f * st.approx_kl;
                s.pg_loss += st.pg_loss;
                if let Some(k) = st.kl {
                    kl += f * k;
                    has_kl = true;
                }
                if let Some(p) = st.pg_token_frac {
                    *s.pg_token_frac.get_or_insert(0.0) += f * p;
                }
            }
            s.kl = has_kl.then_some(kl);
            stats.push(s);
        }
    }

    // Metrics over every sampled response of the step.
    let n = samples.len().max(1) as f64;
    let rewards_all: Vec<f64> = samples.iter().map(|s| s.shaped).collect();
    let reward_mean = rewards_all.iter().sum::<f64>() / n;
    let reward_std = (rewards_all
        .iter()
        .map(|r| (r - reward_mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    let mut lens: Vec<f64> = samples.iter().map(|s| s.response.len() as f64).collect();
    let (len_mean, p10, p90, len_max) = lengths_stats(&mut lens);
    let correct = |s: &&Sample| s.reward.accuracy > 0.5;
    let seconds = t0.elapsed().as_secs_f64();
    let ms = mech.finish();
    let mut m = StepMetrics {
        step,
        reward_mean,
        reward_std,
        accuracy: mean(samples.iter().map(|s| s.reward.accuracy)),
        reward_format: mean(samples.iter().map(|s| s.reward.format)),
        reward_overlong: mean(samples.iter().map(|s| s.reward.overlong)),
        response_length_mean: len_mean,
        response_length_p10: p10,
        response_length_p90: p90,
        response_length_max: len_max,
        response_length_correct: mean(
            samples
                .iter()
                .filter(correct)
                .map(|s| s.response.len() as f64),
        ),
        response_length_incorrect: mean(
            samples
                .iter()
                .filter(|s| !correct(s))
                .map(|s| s.response.len() as f64),
        ),
        truncated_frac: mean(samples.iter().map(|s| if s.truncated { 1.0 } else { 0.0 })),
        frac_reward_zero_std: if n_groups > 0 {
            zero_std_groups as f64 / n_groups as f64
        } else {
            0.0
        },
        entropy: if ent_n > 0 {
            ent_sum / ent_n as f64
        } else {
            0.0
        },
        clip_frac_low: mean(stats.iter().map(|s| s.clip_frac_low)),
        clip_frac_high: mean(stats.iter().map(|s| s.clip_frac_high)),
        ratio_mean: mean(stats.iter().map(|s| s.ratio_mean)),
        approx_kl: mean(stats.iter().map(|s| s.approx_kl)),
        kl: (ctx.obj.kl_beta > 0.0).then(|| mean(stats.iter().filter_map(|s| s.kl))),
        pg_token_frac: stats
            .iter()
            .any(|s| s.pg_token_frac.is_some())
            .then(|| mean(stats.iter().filter_map(|s| s.pg_token_frac))),
        loss: mean(losses.iter().copied()),
        grad_norm: mean(norms.iter().copied()),
        lr: lr_used,
        skipped_updates: skipped,
        tokens_per_s: (generated_tokens + trained_tokens) as f64 / seconds.max(1e-9),
        step_seconds: seconds,
        grad_mass_pos: ms.grad_mass_pos,
        grad_mass_neg: ms.grad_mass_neg,
        grad_share_len_q1: ms.grad_share_len_q[0],
        grad_share_len_q2: ms.grad_share_len_q[1],
        grad_share_len_q3: ms.grad_share_len_q[2],
        grad_share_len_q4: ms.grad_share_len_q[3],
        clip_len_low_clipped: ms.clip_len_low[0],
        clip_len_low_kept: ms.clip_len_low[1],
        clip_len_high_clipped: ms.clip_len_high[0],
        clip_len_high_kept: ms.clip_len_high[1],
        len_adv_cov: ms.len_adv_cov,
        len_push: ms.len_push[0],
        len_push_reward: ms.len_push[1],
        len_push_weighting: ms.len_push[2],
        len_push_clip: ms.len_push[3],
        ..StepMetrics::default()
    };
    if let Some((diff, kl, tis)) = engine_stats {
        m.engine_logprob_diff = Some(diff);
        m.engine_kl = Some(kl);
        m.tis_weight_mean = tis;
    }
    if let Some((_, _, pending)) = ctx.sync.as_mut() {
        m.weight_sync_seconds = Some(std::mem::take(pending));
    }
    if cfg.train.log_rollouts {
        for s in &samples {
            rollouts.append(&RolloutRecord {
                step,
                prompt_id: s.prompt_id.clone(),
                length: s.response.len() as u32,
                reward: s.shaped,
                correct: s.reward.accuracy > 0.5,
                advantage: s.advantage,
                truncated: s.truncated,
            })?;
        }
    }
    Ok(m)
}

/// Engine vs trainer on the trainable samples: (mean |Δ log p|, KL), and with `tis_cap` > 0 the importance
/// correction of `tis_mode`: each advantage scaled by its sequence's weight, or each token's loss weight by its
/// token's (returns the mean weight over sequences or tokens).
fn engine_corrections(
    samples: &mut [Sample],
    trainable: &[usize],
    tis_cap: f64,
    tis_mode: crate::engine::TisMode,
) -> (f64, f64, Option<f64>) {
    let (mut eng, mut tr) = (vec![], vec![]);
    for &i in trainable {
        if let Some(e) = &samples[i].engine_lp {
            eng.push(e.clone());
            tr.push(samples[i].old_lp.clone());
        }
    }
    let (diff, kl) = crate::engine::mismatch(&eng, &tr);
    if tis_cap <= 0.0 {
        return (diff, kl, None);
    }
    let (mut sum, mut n) = (0.0, 0usize);
    for &i in trainable {
        let s = &mut samples[i];
        let Some(e) = &s.engine_lp else {
            sum += 1.0;
            n += 1;
            continue;
        };
        let w = tis_mode.weights(e, &s.old_lp, tis_cap);
        sum += w.iter().sum::<f64>();
        n += w.len();
        if tis_mode.per_token() {
            let tw = s
                .token_weights
                .get_or_insert_with(|| vec![1.0; s.response.len()]);
            for (x, wt) in tw.iter_mut().zip(&w) {
                *x *= *wt as f32;
            }
        } else {
            s.advantage *= w[0];
        }
    }
    (diff, kl, Some(sum / n.max(1) as f64))
}

/// The learning rate of the next optimizer step.
fn current_lr(cfg: &RunConfig, state: &TrainState) -> f64 {
    match cfg.optim.warmup_unit {
        WarmupUnit::Optimizer => lr_at(
            &cfg.optim,
            state.optimizer_steps,
            cfg.train.steps * cfg.optimizer_steps_per_rl_step(),
        ),
        WarmupUnit::Rollout => lr_at(&cfg.optim, state.step, cfg.train.steps),
    }
}
