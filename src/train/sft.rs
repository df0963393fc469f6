//! The supervised warm start: cross-entropy on the response tokens of the task's worked solutions (style mix from
//! the task), with AdamW, warm-up and cosine decay; cached under `sft.cache_dir` keyed by a hash of the model, task
//! and sft configuration and the seed.

use super::config::{RunConfig, Schedule};
use super::files::{derive_seed, fnv1a, io_err, JsonlLog};
use super::optim::{schedule, AdamW, AdamWParams};
use super::policy::Policy;
use super::progress::{Mode, Progress};
use crate::rollout::{response_token_logprobs, Batch};
use crate::task::Task;
use crate::{input_err, Result};
use candle_core::DType;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;

/// What the warm start did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SftReport {
    /// Optimizer steps run (0 when loaded from the cache or disabled).
    pub steps: u64,
    /// Mean loss of the last 10 steps (nats per response token); 0 when not trained here.
    pub final_loss: f64,
    /// Loaded from the cache.
    pub cached: bool,
    /// The cache file used or written.
    pub cache_path: Option<PathBuf>,
    /// Wall time.
    pub seconds: f64,
}

/// One logged SFT step.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SftStep {
    /// Step, from 1.
    pub step: u64,
    /// Cross-entropy per response token.
    pub loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate.
    pub lr: f64,
}

/// The cache key of a warm start: FNV-1a of the model, task and sft settings that shape its weights, and the seed.
pub fn cache_key(cfg: &RunConfig) -> u64 {
    let s = &cfg.sft;
    let mut model = serde_json::json!(cfg.model);
    if !cfg.model.lora.enabled() {
        // Runs without LoRA keep the keys they had before `model.lora` existed.
        if let Some(m) = model.as_object_mut() {
            m.remove("lora");
        }
    }
    let key = serde_json::json!({
        "v": 1,
        "model": model,
        "task": cfg.task,
        "sft": [s.steps, s.batch_size, s.lr, s.warmup_steps, s.weight_decay, s.grad_clip],
        "seed": cfg.seed,
    });
    fnv1a(key.to_string().as_bytes())
}

/// Where the warm start of `cfg` is cached (`None` when caching is off).
pub fn cache_path(cfg: &RunConfig) -> Option<PathBuf> {
    (cfg.sft.cache && !cfg.sft.cache_dir.is_empty()).then(|| {
        PathBuf::from(&cfg.sft.cache_dir).join(format!("sft-{:016x}.safetensors", cache_key(cfg)))
    })
}

/// Warm-starts `policy` as `cfg.sft` says: from the cache when present, else by training (and filling the cache).
pub fn warm_start(
    policy: &mut Policy,
    task: &dyn Task,
    cfg: &RunConfig,
    mode: Mode,
) -> Result<SftReport> {
    if cfg.sft.steps == 0 {
        return Ok(SftReport::default());
    }
    let t0 = std::time::Instant::now();
    let path = cache_path(cfg);
    if let Some(p) = path.as_ref().filter(|p| p.exists()) {
        policy
            .varmap_mut()
            .load(p)
            .map_err(|e| input_err!("{}: {e} (delete it to retrain)", p.display()))?;
        return Ok(SftReport {
            cached: true,
            cache_path: path,
            seconds: t0.elapsed().as_secs_f64(),
            ..Default::default()
        });
    }
    let mut report = train(policy, task, cfg, mode, None)?;
    if let Some(p) = &path {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        crate::atomic::write_with(p, "", |tmp| {
            policy
                .varmap()
                .save(tmp)
                .map_err(|e| input_err!("{}: {e}", p.display()))
        })?;
        report.cache_path = path;
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Trains `cfg.sft.steps` steps of cross-entropy on worked solutions (no cache), logging each step to `log`.
pub fn train(
    policy: &Policy,
    task: &dyn Task,
    cfg: &RunConfig,
    mode: Mode,
    mut log: Option<&mut JsonlLog>,
) -> Result<SftReport> {
    let s = &cfg.sft;
    let t0 = std::time::Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, "sft"));
    let params = AdamWParams {
        beta1: cfg.optim.beta1,
        beta2: cfg.optim.beta2,
        eps: cfg.optim.eps,
        weight_decay: s.weight_decay,
    };
    let mut opt = AdamW::new(policy.varmap(), params)?;
    let eos = policy.eos_id()?;
    let device = policy.model().device().clone();
    let progress = Progress::new(mode, "sft", s.steps, 0);
    let mut recent: Vec<f64> = vec![];
    let max_len = policy.m.config.max_position_embeddings;
    for step in 0..s.steps {
        let mut pairs = Vec::with_capacity(s.batch_size);
        for _ in 0..s.batch_size {
            let p = task.sample_train(&mut rng)?;
            let (_style, text) = task.sample_demo(&p, &mut rng)?;
            let prompt = policy.encode_prompt(&p.prompt)?;
            let mut resp = policy.tok().encode(&text, false)?;
            resp.push(eos);
            if prompt.len() + resp.len() > max_len {
                return Err(input_err!(
                    "a worked solution of task {} needs {} tokens, more than the model's context {max_len} (raise model.max_position)",
                    task.name(),
                    prompt.len() + resp.len()
                ));
            }
            pairs.push((prompt, resp));
        }
        let batch = Batch::from_pairs(&pairs, policy.pad_id(), DType::F32, &device)?;
        let (logp, _) = response_token_logprobs(policy.model(), &batch)?;
        let n_tok = batch.response_mask.sum_all()?;
        let loss = ((logp * &batch.response_mask)?.sum_all()? / n_tok)?.neg()?;
        let loss_v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let lr = schedule(s.lr, s.warmup_steps, Schedule::Cosine, 0.1, step, s.steps);
        let grad_norm = if loss_v.is_finite() {
            let g = loss.backward()?;
            opt.step(&opt.grads_from(&g), lr, s.grad_clip)?.grad_norm
        } else {
            f64::NAN
        };
        recent.push(loss_v);
        if recent.len() > 10 {
            recent.remove(0);
        }
        if let Some(l) = log.as_deref_mut() {
            l.append(&SftStep {
                step: step + 1,
                loss: loss_v,
                grad_norm,
                lr,
            })?;
        }
        if (step + 1) % (s.steps / 20).max(1) == 0 || step + 1 == s.steps || mode != Mode::Lines {
            progress.update(
                step + 1,
                &format!("loss {loss_v:.4} gnorm {grad_norm:.3} lr {lr:.2e}"),
            );
        }
    }
    progress.finish();
    let final_loss = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
    Ok(SftReport {
        steps: s.steps,
        final_loss,
        cached: false,
        cache_path: None,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// `luspo sft`: trains the warm start of `cfg` (no cache) into `out`: `config.toml`, `sft.jsonl` (one line per
/// step), `eval.jsonl` (held-out accuracy after SFT), `final/` (HF directory). Returns the evaluation.
pub fn run(
    cfg: &RunConfig,
    out: &std::path::Path,
    mode: Mode,
) -> Result<crate::metrics::EvalRecord> {
    if cfg.sft.steps == 0 {
        return Err(input_err!(
            "sft.steps: is 0, nothing to train (set --set sft.steps=N)"
        ));
    }
    if out.join("sft.jsonl").exists() {
        return Err(input_err!(
            "{}: already holds an SFT run (choose another --out)",
            out.display()
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    crate::atomic::write(&out.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    let super::bootstrap::Bootstrap {
        task,
        reward,
        policy,
    } = super::bootstrap::Bootstrap::new(cfg)?;
    let mut log = JsonlLog::open_truncated(&out.join("sft.jsonl"), 0)?;
    let rep = train(&policy, task.as_ref(), cfg, mode, Some(&mut log))?;
    log.sync()?;
    let set = super::eval::EvalSet::new(cfg, task.as_ref(), &policy, cfg.task.eval_size)?;
    let e = super::eval::evaluate(cfg, &policy, task.as_ref(), &reward, &set, 0)?;
    let mut elog = JsonlLog::open_truncated(&out.join("eval.jsonl"), 0)?;
    elog.append(&e)?;
    elog.sync()?;
    policy.save_final(out)?;
    if mode != Mode::Quiet {
        eprintln!(
            "sft: {} steps in {:.1}s, final loss {:.4}; held-out accuracy {:.3}, mean length {:.1} (n={}); model in {}",
            rep.steps,
            rep.seconds,
            rep.final_loss,
            e.accuracy,
            e.response_length_mean,
            e.n,
            out.join("final").display()
        );
    }
    Ok(e)
}
