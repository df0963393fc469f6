//! Pieces shared by the integration tests that train the tiny model.
#![allow(dead_code)]

use luspo::metrics::StepMetrics;
use luspo::train::files::read_jsonl;
use luspo::train::progress::Mode;
use luspo::train::TrainOptions;
use std::path::Path;

/// `--set` overrides of the smallest model and task a real run trains in seconds: a 1-layer d=32 Llama on
/// 3–5-bit parity.
pub fn tiny_model_sets() -> Vec<String> {
    [
        "model.layers=1",
        "model.hidden=32",
        "model.heads=2",
        "model.max_position=64",
        "task.name=\"parity\"",
        "task.n_bits_min=3",
        "task.n_bits_max=5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Quiet options of a run into `out` (resumed when `resume`).
pub fn opts(out: &Path, resume: bool) -> TrainOptions {
    TrainOptions {
        out: out.to_path_buf(),
        resume,
        mode: Mode::Quiet,
        interrupt: None,
    }
}

/// A run's metrics.jsonl without the timing fields.
pub fn untimed(dir: &Path) -> Vec<StepMetrics> {
    read_jsonl::<StepMetrics>(&dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|mut m| {
            m.tokens_per_s = 0.0;
            m.step_seconds = 0.0;
            m
        })
        .collect()
}
