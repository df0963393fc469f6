//! The RL loop: rollout → reward → advantage → old log-probs → `ppo_epochs` over mini-batches → AdamW.
//! Also the SFT warm start, the optimizer and schedule, checkpoints and resume (`luspo train`, `luspo sft`).
//!
//! - `config`: the run configuration (TOML + `--set` overrides), documented key by key in `docs/config.md`.
//! - `rl`: the RL loop and the run directory it writes (format: `crate::metrics`).
//! - `sft`: the supervised warm start and its cache.
//! - `eval`: held-out evaluation.
//! - `length_schedule`: SIRI schedules of the new-token cap.
//! - `mechanism`: per-step gradient mass, clipped lengths and length push (the length-bias mechanism).
//! - `policy`: the trained model (tiny built-in or loaded), prompt encoding, sampling.
//! - `optim`: AdamW with saveable moments, gradient-norm clipping, warm-up schedule.
//! - `checkpoint`: atomic checkpoints and resume state.
//! - `bootstrap`: task, reward and initial policy, built the same way by every command.
//! - `files`: run-directory files (JSONL logs cut back on resume, seeds).
//! - `progress`: progress bar / lines and the summary table.

pub mod bootstrap;
pub mod checkpoint;
pub mod config;
pub mod eval;
pub mod files;
pub mod length_schedule;
pub mod mechanism;
pub mod optim;
pub mod policy;
pub mod progress;
pub mod rl;
pub mod sft;

pub use config::RunConfig;
pub use rl::{train, Outcome, TrainOptions};
