//! What a run writes, one record per line, and how it is written (atomically, exactly once per step).
//!
//! Run directory layout (the contract between `train` and `report`):
//! - `config.toml`: the full resolved configuration.
//! - `metrics.jsonl`: one `StepMetrics` object per RL step.
//! - `eval.jsonl`: one `EvalRecord` per held-out evaluation (step 0 = after the warm start, before RL).
//! - `rollouts.jsonl`: one `RolloutRecord` per sampled response per step (for length analysis).
//! - `summary.json`: `Summary`.
//! - `checkpoints/step-NNNNNN/`, `final/` (an HF directory).
