//! The RL loop: rollout → reward → advantage → old log-probs → `ppo_epochs` over mini-batches → AdamW.
//! Also the SFT warm start, the optimizer and schedule, checkpoints and resume (`luspo train`, `luspo sft`).
//!
//! - `config`: the run configuration (TOML + `--set` overrides), documented key by key in `docs/config.md`.
//! - `optim`: AdamW with saveable moments, gradient-norm clipping, warm-up schedule.
//! - `checkpoint`: atomic checkpoints and resume state.
//! - `files`: run-directory files (atomic writes, JSONL logs cut back on resume).
//! - `progress`: progress bar / lines and the summary table.

pub mod checkpoint;
pub mod config;
pub mod files;
pub(crate) mod glue;
pub mod optim;
pub mod progress;

pub use config::RunConfig;
