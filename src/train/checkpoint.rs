//! Checkpoints: `checkpoints/step-NNNNNN/{model.safetensors, optimizer.safetensors, state.json}`, written into a
//! temporary directory and renamed into place (a killed run never leaves a half-written checkpoint); the newest
//! `keep` are kept. Weights are checked for NaN/inf before anything is written.

use super::files::{io_err, write_json};
use super::optim::AdamW;
use crate::atomic::sync_dir;
use crate::metrics::EvalRecord;
use crate::{input_err, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything besides weights and optimizer moments needed to continue a run exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// RL steps completed.
    pub step: u64,
    /// Optimizer steps attempted so far (the warm-up counter in `optimizer` units).
    pub optimizer_steps: u64,
    /// Updates skipped because the loss or gradient was not finite, over the whole run.
    pub skipped_updates: u64,
    /// Sampling RNG.
    pub rng_rollout: ChaCha8Rng,
    /// Prompt-drawing RNG (the data cursor).
    pub rng_data: ChaCha8Rng,
    /// Mini-batch shuffling RNG.
    pub rng_shuffle: ChaCha8Rng,
    /// Training prompts drawn so far.
    pub prompts_drawn: u64,
    /// Lines of `metrics.jsonl` belonging to completed steps.
    pub metrics_lines: u64,
    /// Lines of `rollouts.jsonl`.
    pub rollouts_lines: u64,
    /// Lines of `eval.jsonl`.
    pub eval_lines: u64,
    /// Per-prompt history of the control method (HAPO's `h`, ...), updated after each step's rewards.
    #[serde(default)]
    pub history: crate::control::History,
    /// The step-0 evaluation (after the warm start, before RL).
    pub eval_before: Option<EvalRecord>,
    /// The latest evaluation.
    pub eval_last: Option<EvalRecord>,
    /// Wall time spent so far, over all processes of this run.
    pub wall_seconds: f64,
}

/// Path of the checkpoint of `step` under `run_dir`.
pub fn step_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step:06}"))
}

/// True when every weight of `varmap` is finite.
pub fn weights_finite(varmap: &VarMap) -> Result<bool> {
    let vars = varmap.all_vars();
    for v in vars {
        let s = v
            .as_tensor()
            .to_dtype(DType::F64)?
            .abs()?
            .sum_all()?
            .to_scalar::<f64>()?;
        if !s.is_finite() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes a checkpoint atomically, then deletes all but the newest `keep`. Refuses non-finite weights.
pub fn save(
    run_dir: &Path,
    varmap: &VarMap,
    opt: &AdamW,
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf> {
    if !weights_finite(varmap)? {
        return Err(input_err!(
            "refusing to checkpoint step {}: the weights contain NaN or inf",
            state.step
        ));
    }
    let root = run_dir.join("checkpoints");
    std::fs::create_dir_all(&root).map_err(|e| io_err(&root, e))?;
    let final_dir = step_dir(run_dir, state.step);
    let tmp = root.join(format!(
        ".tmp-step-{:06}-{}",
        state.step,
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    let res = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        let model = tmp.join("model.safetensors");
        varmap
            .save(&model)
            .map_err(|e| input_err!("{}: {e}", model.display()))?;
        let optp = tmp.join("optimizer.safetensors");
        opt.save(&optp)
            .map_err(|e| input_err!("{}: {e}", optp.display()))?;
        write_json(&tmp.join("state.json"), state)?;
        for f in ["model.safetensors", "optimizer.safetensors"] {
            let p = tmp.join(f);
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_err(&p, e))?;
        }
        sync_dir(&tmp);
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| io_err(&final_dir, e))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| io_err(&final_dir, e))?;
        sync_dir(&root);
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    prune(run_dir, keep)?;
    Ok(final_dir)
}

/// Completed checkpoints under `run_dir`, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let root = run_dir.join("checkpoints");
    let mut out = vec![];
    let rd = match std::fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(&root, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| io_err(&root, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if entry.path().join("state.json").exists() {
                out.push((n, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Deletes all but the newest `keep` checkpoints and any leftover temporary directories of this process.
pub fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    let all = list(run_dir)?;
    if all.len() > keep {
        for (_, p) in &all[..all.len() - keep] {
            std::fs::remove_dir_all(p).map_err(|e| io_err(p, e))?;
        }
    }
    Ok(())
}

/// Reads the state of the checkpoint in `dir`.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let p = dir.join("state.json");
    let text = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
    serde_json::from_str(&text).map_err(|e| input_err!("{}: {e}", p.display()))
}

/// Restores weights and optimizer moments from the checkpoint in `dir`; returns its state.
pub fn load(dir: &Path, varmap: &mut VarMap, opt: &mut AdamW) -> Result<TrainState> {
    let state = read_state(dir)?;
    let model = dir.join("model.safetensors");
    varmap
        .load(&model)
        .map_err(|e| input_err!("{}: {e}", model.display()))?;
    opt.load(&dir.join("optimizer.safetensors"))?;
    Ok(state)
}

/// The newest completed checkpoint of `run_dir`, if any.
pub fn latest(run_dir: &Path) -> Result<Option<(u64, PathBuf)>> {
    Ok(list(run_dir)?.pop())
}

/// Copies every weight of `varmap` (detached), by name.
pub fn snapshot(varmap: &VarMap) -> Result<std::collections::HashMap<String, Tensor>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| input_err!("variable map lock poisoned"))?;
    let mut out = std::collections::HashMap::new();
    for (k, v) in data.iter() {
        out.insert(k.clone(), v.as_tensor().detach().copy()?);
    }
    Ok(out)
}
