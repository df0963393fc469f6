//! Pieces shared by the integration tests that train the tiny model.

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
