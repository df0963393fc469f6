//! Run configuration: TOML sections, `--set section.key=value` overrides, validation with one-line errors.
//!
//! Layering: the embedded `configs/default.toml`, then the user's `--config` file (if any), then each `--set`
//! in order. Every key missing from all layers takes the serde default written next to its field (and listed in
//! `docs/config.md`). Unknown keys and bad values are `Error::Input` naming the key and where it came from.

use crate::advantage::Estimator;
use crate::control::ControlConfig;
use crate::objective::{ObjectiveConfig, Preset};
use crate::reward::RewardConfig;
use crate::task::TaskConfig;
use crate::train::length_schedule::{siri_cap, LengthSchedule, SiriShape};
use crate::{input_err, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The embedded default configuration (`configs/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../configs/default.toml");

/// The whole configuration of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Run seed; every stage's RNG is derived from it.
    pub seed: u64,
    /// The policy model.
    pub model: ModelConfig,
    /// The task.
    pub task: TaskConfig,
    /// The reward (verifier terms; resolve against the rollout length with [`RunConfig::reward_resolved`]).
    pub reward: RewardConfig,
    /// The group reward-shaping / history / advantage method (`[control]`).
    pub control: ControlConfig,
    /// The policy objective.
    pub objective: ObjectiveConfig,
    /// The advantage estimator.
    pub advantage: AdvantageConfig,
    /// Sampling during RL.
    pub rollout: RolloutConfig,
    /// The RL loop.
    pub train: TrainConfig,
    /// The RL optimizer and its schedule.
    pub optim: OptimConfig,
    /// The supervised warm start.
    pub sft: SftConfig,
    /// Held-out evaluation.
    pub eval: EvalConfig,
    /// Checkpoints and the final export.
    pub checkpoint: CheckpointConfig,
}

/// The policy model: a real checkpoint (`path`) or a tiny Llama built in code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// HF directory or `.gguf` file; empty = the tiny model below, randomly initialised.
    pub path: String,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Tiny model: decoder layers.
    pub layers: usize,
    /// Tiny model: width d.
    pub hidden: usize,
    /// Tiny model: attention heads.
    pub heads: usize,
    /// Tiny model: key/value heads (0 = `heads`).
    pub kv_heads: usize,
    /// Tiny model: SwiGLU inner width (0 = 4·hidden).
    pub intermediate: usize,
    /// Tiny model: context length.
    pub max_position: usize,
    /// Tiny model: RoPE base.
    pub rope_theta: f64,
    /// Tiny model: share the embedding and LM head.
    pub tie_embeddings: bool,
    /// Tiny model: std of the normal initialisation of weight matrices.
    pub init_std: f64,
    /// Render chat-message prompts with the model's chat template when it has one.
    pub chat_template: bool,
    /// `[model.lora]`: rank-r adapters on the projections instead of full fine-tuning (`r = 0` = off).
    pub lora: crate::model::lora::LoraConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            device: "cpu".into(),
            layers: 2,
            hidden: 64,
            heads: 4,
            kv_heads: 0,
            intermediate: 0,
            max_position: 256,
            rope_theta: 10_000.0,
            tie_embeddings: false,
            init_std: 0.02,
            chat_template: true,
            lora: Default::default(),
        }
    }
}

/// Which advantage estimator to use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdvantageConfig {
    /// `grpo`, `dr_grpo`, `rloo` or `batch`; absent = `dr_grpo` for the `dr_grpo` objective, else `grpo`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimator: Option<Estimator>,
}

impl AdvantageConfig {
    /// The estimator to use with objective preset `objective` (the resolved preset, so that every spelling
    /// `Preset::from_name` accepts, e.g. `dr-grpo` or `DR_GRPO`, gets the same estimator).
    pub fn resolve(&self, objective: Preset) -> Estimator {
        self.estimator.unwrap_or(if objective == Preset::DrGrpo {
            Estimator::DrGrpo
        } else {
            Estimator::Grpo
        })
    }
}

/// Sampling of the RL batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// P: prompts per RL step.
    pub prompts_per_step: usize,
    /// G: responses per prompt (a group).
    pub group_size: usize,
    /// Sampling temperature (the log-probs used for training are always at temperature 1).
    pub temperature: f64,
    /// Nucleus mass (1 = off).
    pub top_p: f64,
    /// Top-k (0 = off).
    pub top_k: usize,
    /// Longest response in tokens; longer ones are cut (`truncated`).
    pub max_new_tokens: usize,
    /// Extra stop strings.
    pub stop: Vec<String>,
    /// Sequences per `generate` call (0 = all P·G at once).
    pub generation_batch_size: usize,
    /// Decode with f16 copies of the weight matrices (CPU with AVX-512; half the bytes per step); the prefill,
    /// the old log-probs and training stay f32.
    pub decode_f16: bool,
    /// DAPO dynamic sampling: drop groups whose rewards are all equal and refill from the next prompts.
    pub dynamic_sampling: bool,
    /// Most sampling rounds per step when `dynamic_sampling` is on (then train on what was kept).
    pub max_sampling_rounds: usize,
    /// Give truncated responses zero loss weight (DAPO overlong filtering).
    pub mask_truncated: bool,
    /// Schedule of the new-token cap over RL steps: `none` (constant `max_new_tokens`) or `siri`.
    pub length_schedule: LengthSchedule,
    /// SIRI: `cosine` or `stair`.
    pub siri_shape: SiriShape,
    /// SIRI: L_min, the smallest cap (0 = half of `max_new_tokens`, the paper's 8k of 16k).
    pub siri_l_min: usize,
    /// SIRI: T, the period in RL steps.
    pub siri_period: u64,
    /// Where rollouts come from: `local` (in-process) or an HTTP engine (`sglang`, `vllm`, `openai`).
    pub engine: crate::engine::EngineKind,
    /// The engine's base URL (`http://host:port`), required with an HTTP engine.
    pub engine_url: String,
    /// The `model` field of OpenAI-style requests.
    pub engine_model: String,
    /// Requests in flight at once.
    pub engine_concurrency: usize,
    /// Timeout of one request (and of waiting for the engine to come back after a sync), seconds.
    pub engine_timeout_s: f64,
    /// Retries of a request that failed in transport or with HTTP 5xx.
    pub engine_retries: usize,
    /// Push the weights to the engine every this many optimizer steps (0 = never; the engine keeps its own).
    pub sync_every: u64,
    /// Directory the synced weights are written to (empty = `<run>/engine_weights`).
    pub sync_dir: String,
    /// Shell command that makes the engine serve the weights at `$LUSPO_WEIGHTS` (e.g. a restart); empty =
    /// SGLang's `/update_weights_from_disk` (other engines need a command when `sync_every` > 0).
    pub sync_command: String,
    /// Format of the synced weights: `hf` (a safetensors directory) or `gguf` (empty = gguf for `openai`,
    /// hf otherwise).
    pub sync_format: String,
    /// Truncated importance sampling: scale each sequence's advantage by min(π_trainer/π_engine, tis_cap)
    /// over its tokens (0 = off).
    pub tis_cap: f64,
    /// Per sequence or per token, truncated or masked above `tis_cap` (TRL's `vllm_importance_sampling_mode`).
    pub tis_mode: crate::engine::TisMode,
}

impl RolloutConfig {
    /// The new-token cap of RL step `step` (1-based, as in the step metrics).
    pub fn max_new_tokens_at(&self, step: u64) -> usize {
        match self.length_schedule {
            LengthSchedule::None => self.max_new_tokens,
            LengthSchedule::Siri => {
                let l_min = match self.siri_l_min {
                    0 => self.max_new_tokens / 2,
                    n => n,
                };
                siri_cap(
                    self.siri_shape,
                    step.saturating_sub(1),
                    self.max_new_tokens,
                    l_min.max(1),
                    self.siri_period,
                )
            }
        }
    }
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            prompts_per_step: 16,
            group_size: 8,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 64,
            stop: vec![],
            generation_batch_size: 0,
            decode_f16: false,
            dynamic_sampling: false,
            max_sampling_rounds: 3,
            mask_truncated: false,
            length_schedule: LengthSchedule::None,
            siri_shape: SiriShape::Cosine,
            siri_l_min: 0,
            siri_period: 640,
            engine: crate::engine::EngineKind::Local,
            engine_url: String::new(),
            engine_model: "luspo".into(),
            engine_concurrency: 4,
            engine_timeout_s: 300.0,
            engine_retries: 2,
            sync_every: 1,
            sync_dir: String::new(),
            sync_command: String::new(),
            sync_format: String::new(),
            tis_cap: 0.0,
            tis_mode: crate::engine::TisMode::default(),
        }
    }
}

/// The RL loop.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// RL steps (one rollout batch each).
    pub steps: u64,
    /// Passes over each rollout batch.
    pub ppo_epochs: usize,
    /// Sequences per optimizer step (0 = the whole rollout batch: one optimizer step per epoch).
    pub mini_batch_size: usize,
    /// Sequences per forward/backward inside a mini-batch (0 = the whole mini-batch); gradients accumulate.
    pub micro_batch_size: usize,
    /// Shuffle the rollout batch before splitting it into mini-batches (seeded).
    pub shuffle: bool,
    /// Write `rollouts.jsonl`.
    pub log_rollouts: bool,
    /// Testing hook: stop this process after this many RL steps, as if killed (0 = off).
    pub stop_after_steps: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 30,
            ppo_epochs: 1,
            mini_batch_size: 0,
            micro_batch_size: 0,
            shuffle: true,
            log_rollouts: true,
            stop_after_steps: 0,
        }
    }
}

/// When the warm-up counter advances.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WarmupUnit {
    /// One unit per optimizer step (mini-batch).
    Optimizer,
    /// One unit per RL step (rollout batch), as in the LUSPO paper's "20 rollout steps".
    Rollout,
}

/// The shape of the learning rate after warm-up.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Constant at `lr`.
    Constant,
    /// Cosine decay from `lr` to `lr · min_lr_ratio` at the last unit.
    Cosine,
}

/// AdamW with decoupled weight decay, gradient-norm clipping and a linear warm-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Decoupled weight decay (PyTorch AdamW: p ← p − lr·wd·p).
    pub weight_decay: f64,
    /// Clip the global gradient L2 norm to this (0 = off).
    pub grad_clip: f64,
    /// Linear warm-up length in `warmup_unit`s (0 = none): lr·(k+1)/warmup_steps for k < warmup_steps.
    pub warmup_steps: u64,
    /// `optimizer` or `rollout`.
    pub warmup_unit: WarmupUnit,
    /// `constant` or `cosine`.
    pub schedule: Schedule,
    /// Cosine floor as a fraction of `lr`.
    pub min_lr_ratio: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
            warmup_steps: 0,
            warmup_unit: WarmupUnit::Rollout,
            schedule: Schedule::Constant,
            min_lr_ratio: 0.0,
        }
    }
}

/// The supervised warm start on the task's worked solutions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// Optimizer steps (0 = no warm start).
    pub steps: u64,
    /// Problems per step (one worked solution each).
    pub batch_size: usize,
    /// Peak learning rate (cosine decay to 10 % after a linear warm-up).
    pub lr: f64,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Gradient-norm clip (0 = off).
    pub grad_clip: f64,
    /// Reuse / store the warm-started weights in `cache_dir`, keyed by a hash of model + task + sft config + seed.
    pub cache: bool,
    /// Where cached warm starts live.
    pub cache_dir: String,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            steps: 0,
            batch_size: 32,
            lr: 3e-3,
            warmup_steps: 20,
            weight_decay: 0.0,
            grad_clip: 1.0,
            cache: true,
            cache_dir: "runs/.cache".into(),
        }
    }
}

/// Held-out evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every this many RL steps (0 = only before and after RL); always at step 0 and the last step.
    pub every: u64,
    /// Seed of the held-out problem set (independent of the run seed, so runs compare on the same problems).
    pub seed: u64,
    /// Sampling temperature (0 = greedy).
    pub temperature: f64,
    /// Longest response (0 = `rollout.max_new_tokens`).
    pub max_new_tokens: usize,
    /// Sequences per `generate` call.
    pub batch_size: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every: 10,
            seed: 0,
            temperature: 0.0,
            max_new_tokens: 0,
            batch_size: 100,
        }
    }
}

/// Checkpoints and the final export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Write a checkpoint every this many RL steps (0 = only at the end and on Ctrl-C).
    pub every: u64,
    /// Checkpoints kept (the newest).
    pub keep: usize,
    /// Export the final policy as an HF directory `final/`.
    pub save_final: bool,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every: 1,
            keep: 1,
            save_final: true,
        }
    }
}

impl RunConfig {
    /// Loads the embedded default, then `file`, then every `--set` override, and validates the result.
    pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Self> {
        let mut table = parse_table(DEFAULT_TOML, "configs/default.toml (embedded)")?;
        check_table(&table, "configs/default.toml (embedded)")?;
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|e| input_err!("{}: {e}", path.display()))?;
            let origin = path.display().to_string();
            let user = parse_table(&text, &origin)?;
            merge(&mut table, user);
            check_table(&table, &origin)?;
        }
        apply_sets(&mut table, sets)?;
        let cfg = from_table(&table, "config")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads a run's resolved `config.toml` (struct defaults under it, not the embedded default), then `--set`s.
    pub fn load_run(path: &Path, sets: &[String]) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| input_err!("{}: {e}", path.display()))?;
        let origin = path.display().to_string();
        let mut table = parse_table(&text, &origin)?;
        check_table(&table, &origin)?;
        apply_sets(&mut table, sets)?;
        let cfg = from_table(&table, "config")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses one TOML document layered over the struct defaults (no embedded default), e.g. a run's `config.toml`.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let table = parse_table(text, origin)?;
        let cfg = from_table(&table, origin)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The resolved configuration as TOML (what a run writes to `config.toml`).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| input_err!("cannot write the configuration as TOML: {e}"))
    }

    /// Checks value ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let r = &self.rollout;
        let t = &self.train;
        let o = &self.optim;
        let checks: &[(bool, &str, &str)] = &[
            (
                r.prompts_per_step >= 1,
                "rollout.prompts_per_step",
                "must be ≥ 1",
            ),
            (r.group_size >= 1, "rollout.group_size", "must be ≥ 1"),
            (
                r.temperature >= 0.0 && r.temperature.is_finite(),
                "rollout.temperature",
                "must be ≥ 0",
            ),
            (
                r.top_p > 0.0 && r.top_p <= 1.0,
                "rollout.top_p",
                "must be in (0, 1]",
            ),
            (
                r.max_new_tokens >= 1,
                "rollout.max_new_tokens",
                "must be ≥ 1",
            ),
            (
                r.siri_l_min <= r.max_new_tokens,
                "rollout.siri_l_min",
                "must be ≤ rollout.max_new_tokens",
            ),
            (r.siri_period >= 1, "rollout.siri_period", "must be ≥ 1"),
            (
                r.max_sampling_rounds >= 1,
                "rollout.max_sampling_rounds",
                "must be ≥ 1",
            ),
            (t.ppo_epochs >= 1, "train.ppo_epochs", "must be ≥ 1"),
            (o.lr > 0.0 && o.lr.is_finite(), "optim.lr", "must be > 0"),
            (
                (0.0..1.0).contains(&o.beta1),
                "optim.beta1",
                "must be in [0, 1)",
            ),
            (
                (0.0..1.0).contains(&o.beta2),
                "optim.beta2",
                "must be in [0, 1)",
            ),
            (o.eps > 0.0, "optim.eps", "must be > 0"),
            (o.weight_decay >= 0.0, "optim.weight_decay", "must be ≥ 0"),
            (
                o.grad_clip >= 0.0,
                "optim.grad_clip",
                "must be ≥ 0 (0 = off)",
            ),
            (
                (0.0..=1.0).contains(&o.min_lr_ratio),
                "optim.min_lr_ratio",
                "must be in [0, 1]",
            ),
            (self.sft.batch_size >= 1, "sft.batch_size", "must be ≥ 1"),
            (self.sft.lr > 0.0, "sft.lr", "must be > 0"),
            (
                self.sft.grad_clip >= 0.0,
                "sft.grad_clip",
                "must be ≥ 0 (0 = off)",
            ),
            (
                self.eval.temperature >= 0.0,
                "eval.temperature",
                "must be ≥ 0",
            ),
            (self.eval.batch_size >= 1, "eval.batch_size", "must be ≥ 1"),
            (self.checkpoint.keep >= 1, "checkpoint.keep", "must be ≥ 1"),
            (self.model.layers >= 1, "model.layers", "must be ≥ 1"),
            (
                self.model.heads >= 1 && self.model.hidden.is_multiple_of(self.model.heads),
                "model.heads",
                "must divide model.hidden",
            ),
            (
                self.model.kv_heads == 0 || self.model.heads.is_multiple_of(self.model.kv_heads),
                "model.kv_heads",
                "must divide model.heads",
            ),
        ];
        for (ok, key, why) in checks {
            if !ok {
                return Err(input_err!("{key}: {why}"));
            }
        }
        let obj = self.objective.resolved()?;
        self.reward_resolved()?;
        self.control.validate()?;
        if let Some(what) = obj.whole_batch_only() {
            if t.micro_batch_size != 0 && t.micro_batch_size < self.mini_batch_size() {
                return Err(input_err!(
                    "train.micro_batch_size: {what} needs each mini-batch in one call (set micro_batch_size = 0)"
                ));
            }
        }
        let batch = r.prompts_per_step * r.group_size;
        if t.mini_batch_size > batch {
            return Err(input_err!(
                "train.mini_batch_size: {} is larger than the rollout batch ({} prompts × {} = {batch})",
                t.mini_batch_size,
                r.prompts_per_step,
                r.group_size
            ));
        }
        if !matches!(self.model.device.as_str(), "cpu" | "cuda")
            && !self.model.device.starts_with("cuda:")
        {
            return Err(input_err!(
                "model.device: expected cpu, cuda or cuda:N, got {:?}",
                self.model.device
            ));
        }
        crate::engine::sync::validate(r)?;
        Ok(())
    }

    /// The `[reward]` section with `overlong_max_len = 0` filled from the rollout length, validated.
    pub fn reward_resolved(&self) -> Result<RewardConfig> {
        self.reward.resolved(self.rollout.max_new_tokens)
    }

    /// The estimator the run trains with: the control method's own if it has one, else `[advantage]` resolved
    /// against the objective preset.
    pub fn estimator(&self) -> Result<Estimator> {
        let preset = self.objective.resolved()?.preset;
        Ok(self
            .control
            .own_estimator()
            .unwrap_or(self.advantage.resolve(preset)))
    }

    /// Rollout batch size P·G.
    pub fn batch_size(&self) -> usize {
        self.rollout.prompts_per_step * self.rollout.group_size
    }

    /// Sequences per optimizer step.
    pub fn mini_batch_size(&self) -> usize {
        if self.train.mini_batch_size == 0 {
            self.batch_size()
        } else {
            self.train.mini_batch_size
        }
    }

    /// Nominal optimizer steps per RL step (`ppo_epochs` × mini-batches).
    pub fn optimizer_steps_per_rl_step(&self) -> u64 {
        let b = self.batch_size();
        let mb = self.mini_batch_size();
        (self.train.ppo_epochs * b.div_ceil(mb)) as u64
    }
}

fn parse_table(text: &str, origin: &str) -> Result<toml::Table> {
    text.parse::<toml::Table>().map_err(|e| {
        let msg = e.to_string();
        let first = msg
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        input_err!("{origin}: {}", first.replace("TOML parse error ", ""))
    })
}

/// Deep-merges `over` into `base` (tables merge key by key; other values replace).
///
/// A layer that names a different task (`[task] name`) replaces the whole `[task]` section: the lower layer's
/// knobs belong to its own task (e.g. parity's `style_weights` mean nothing to `wordproblem`).
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        if k == "task" && names_another_task(base.get(&k), &v) {
            base.insert(k, v);
            continue;
        }
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Whether `over` (a `[task]` table) names a different task than `base`.
fn names_another_task(base: Option<&toml::Value>, over: &toml::Value) -> bool {
    fn name(v: Option<&toml::Value>) -> Option<&str> {
        v.and_then(|t| t.get("name")).and_then(|n| n.as_str())
    }
    matches!((name(base), name(Some(over))), (Some(b), Some(o)) if b != o)
}

/// Applies `section.key=value` overrides (value parsed as TOML, else taken as a string).
pub fn apply_sets(table: &mut toml::Table, sets: &[String]) -> Result<()> {
    for set in sets {
        let origin = format!("--set {set}");
        let (key, raw) = set
            .split_once('=')
            .ok_or_else(|| input_err!("{origin}: expected section.key=value"))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(|p| p.trim().is_empty()) {
            return Err(input_err!("{origin}: bad key {key:?}"));
        }
        let value = parse_value(raw.trim());
        let mut one = toml::Table::new();
        insert_path(&mut one, key, value);
        merge(table, one);
        check_table(table, &origin)?;
    }
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn insert_path(table: &mut toml::Table, path: &str, value: toml::Value) {
    let mut parts: Vec<&str> = path.split('.').map(str::trim).collect();
    let last = parts.pop().unwrap_or_default();
    let mut cur = table;
    for p in parts {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        // just made sure it is a table
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => unreachable!(),
        };
    }
    cur.insert(last.to_string(), value);
}

/// Validates a (partial) table: deserialises it and, on failure, names the offending key.
fn check_table(table: &toml::Table, origin: &str) -> Result<()> {
    from_table(table, origin).map(|_| ())
}

fn try_from_table(table: &toml::Table) -> std::result::Result<RunConfig, String> {
    let cfg: RunConfig = toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    Ok(cfg)
}

fn leaves(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if !t.is_empty() => leaves(t, &path, out),
            _ => out.push(path),
        }
    }
}

/// Removes the value at `path`, and any table left empty by the removal.
fn remove_path(table: &mut toml::Table, path: &str) {
    let parts: Vec<&str> = path.split('.').collect();
    remove_parts(table, &parts);
}

fn remove_parts(table: &mut toml::Table, parts: &[&str]) {
    match parts {
        [] => {}
        [last] => {
            table.remove(*last);
        }
        [first, rest @ ..] => {
            let empty = match table.get_mut(*first) {
                Some(toml::Value::Table(t)) => {
                    remove_parts(t, rest);
                    t.is_empty()
                }
                _ => false,
            };
            if empty {
                table.remove(*first);
            }
        }
    }
}

fn from_table(table: &toml::Table, origin: &str) -> Result<RunConfig> {
    let err = match try_from_table(table) {
        Ok(cfg) => return Ok(cfg),
        Err(e) => e,
    };
    // Find the culprit: the leaf whose removal makes the rest valid.
    let mut paths = vec![];
    leaves(table, "", &mut paths);
    for path in &paths {
        let mut without = table.clone();
        remove_path(&mut without, path);
        if try_from_table(&without).is_ok() {
            return Err(describe(origin, path, &err));
        }
    }
    Err(input_err!("{origin}: {}", one_line(&err)))
}

fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn describe(origin: &str, path: &str, err: &str) -> Error {
    let parts: Vec<&str> = path.split('.').collect();
    if err.contains("unknown field") {
        for i in 0..parts.len() {
            if err.contains(&format!("unknown field `{}`", parts[i])) {
                return input_err!("{origin}: unknown key {}", parts[..=i].join("."));
            }
        }
    }
    {
        input_err!("{origin}: bad value for {path}: {}", one_line(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_parsing_falls_back_to_string() {
        assert_eq!(parse_value("1"), toml::Value::Integer(1));
        assert_eq!(parse_value("1e-3"), toml::Value::Float(1e-3));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert_eq!(parse_value("gspo"), toml::Value::String("gspo".into()));
        assert_eq!(parse_value("\"x y\""), toml::Value::String("x y".into()));
    }
}
