//! Weight sync: the trainer writes its weights (atomically) where the engine reads them and makes the engine
//! load them: SGLang's `/update_weights_from_disk`, or a command (`rollout.sync_command`, e.g. a restart of
//! vLLM or llama.cpp's `llama-server` on the new files) followed by waiting for `/health`.

use super::{Engine, EngineKind};
use crate::export::{export_gguf, GgufDType};
use crate::model::io::{self, LoadedModel};
use crate::train::config::RolloutConfig;
use crate::{input_err, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// How synced weights are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncFormat {
    /// An HF directory (safetensors, config, tokenizer).
    Hf,
    /// One f32 GGUF file (llama.cpp).
    Gguf,
}

/// `rollout.sync_format`, resolved (empty = gguf for `openai`, hf otherwise).
pub fn format(r: &RolloutConfig) -> Result<SyncFormat> {
    match r.sync_format.as_str() {
        "" if r.engine == EngineKind::Openai => Ok(SyncFormat::Gguf),
        "" | "hf" => Ok(SyncFormat::Hf),
        "gguf" => Ok(SyncFormat::Gguf),
        s => Err(input_err!(
            "rollout.sync_format: expected hf or gguf, got {s:?}"
        )),
    }
}

/// Checks the engine keys of `[rollout]`; a bad one is an error naming the key.
pub fn validate(r: &RolloutConfig) -> Result<()> {
    if !(r.tis_cap >= 0.0 && r.tis_cap.is_finite()) {
        return Err(input_err!("rollout.tis_cap: must be ≥ 0 (0 = off)"));
    }
    if r.engine == EngineKind::Local {
        if r.tis_cap > 0.0 {
            return Err(input_err!(
                "rollout.tis_cap: needs an engine (rollout.engine = sglang, vllm or openai)"
            ));
        }
        return Ok(());
    }
    if r.engine_url.is_empty() {
        return Err(input_err!(
            "rollout.engine_url: required with rollout.engine = {:?}",
            r.engine
        ));
    }
    if r.engine_concurrency == 0 {
        return Err(input_err!("rollout.engine_concurrency: must be ≥ 1"));
    }
    if !(r.engine_timeout_s > 0.0 && r.engine_timeout_s.is_finite()) {
        return Err(input_err!("rollout.engine_timeout_s: must be > 0"));
    }
    let f = format(r)?;
    if r.sync_every > 0 && r.sync_command.is_empty() {
        if r.engine != EngineKind::Sglang {
            return Err(input_err!(
                "rollout.sync_command: rollout.engine = {:?} has no load-from-disk endpoint; give a command that \
                 makes the engine serve $LUSPO_WEIGHTS (e.g. a restart), or set rollout.sync_every = 0",
                r.engine
            ));
        }
        if f == SyncFormat::Gguf {
            return Err(input_err!(
                "rollout.sync_format: SGLang's /update_weights_from_disk reads an HF directory, not gguf"
            ));
        }
    }
    Ok(())
}

/// Pushes the trainer's weights to an engine.
pub struct WeightSync {
    engine: Arc<Engine>,
    dir: PathBuf,
    format: SyncFormat,
    command: String,
    timeout_s: f64,
    previous: Option<PathBuf>,
}

impl WeightSync {
    /// A sync into `rollout.sync_dir` (default `<run_dir>/engine_weights`).
    pub fn new(engine: Arc<Engine>, r: &RolloutConfig, run_dir: &Path) -> Result<Self> {
        let dir = if r.sync_dir.is_empty() {
            run_dir.join("engine_weights")
        } else {
            PathBuf::from(&r.sync_dir)
        };
        let dir = std::path::absolute(&dir).map_err(|e| input_err!("{}: {e}", dir.display()))?;
        Ok(Self {
            engine,
            dir,
            format: format(r)?,
            command: r.sync_command.clone(),
            timeout_s: r.engine_timeout_s,
            previous: None,
        })
    }

    /// Writes the weights of `m` as of optimizer step `opt_step` and makes the engine serve them; returns the
    /// wall seconds of the whole sync (write, load, engine back up).
    pub fn push(&mut self, m: &LoadedModel, opt_step: u64) -> Result<f64> {
        let t0 = Instant::now();
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| input_err!("{}: cannot create: {e}", self.dir.display()))?;
        let path = match self.format {
            SyncFormat::Hf => {
                let p = self.dir.join(format!("step-{opt_step:06}"));
                io::save_hf(&p, m)?;
                p
            }
            SyncFormat::Gguf => {
                let p = self.dir.join(format!("step-{opt_step:06}.gguf"));
                export_gguf(m, &p, GgufDType::F32)?;
                p
            }
        };
        if !self.command.is_empty() {
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(&self.command)
                .env("LUSPO_WEIGHTS", &path)
                .env("LUSPO_ENGINE_URL", self.engine.url())
                .status()
                .map_err(|e| input_err!("rollout.sync_command: cannot run: {e}"))?;
            if !status.success() {
                return Err(input_err!(
                    "rollout.sync_command failed ({status}): {}",
                    self.command
                ));
            }
            self.engine.wait_healthy(self.timeout_s)?;
        } else {
            let body = super::protocol::sglang_update_body(&path.to_string_lossy());
            let answer = self.engine.post("/update_weights_from_disk", &body)?;
            super::protocol::parse_sglang_update(&answer)
                .map_err(|e| input_err!("{}/update_weights_from_disk: {e}", self.engine.url()))?;
        }
        if let Some(old) = self.previous.replace(path.clone()).filter(|o| *o != path) {
            let _ = if old.is_dir() {
                std::fs::remove_dir_all(&old)
            } else {
                std::fs::remove_file(&old)
            };
        }
        Ok(t0.elapsed().as_secs_f64())
    }
}
