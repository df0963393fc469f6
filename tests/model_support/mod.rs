//! Shared helpers for the model/rollout tests: tiny random configs and models.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use luspo::model::{Config, Transformer};
use luspo::rollout::{token_logprobs, Batch};

/// A tiny config: `kind` is "llama" (untied), "llama_tied", "llama_bias" (attention + mlp bias) or "qwen2" (GQA,
/// q/k/v bias, tied).
pub fn tiny_config(kind: &str) -> Config {
    let mut v = serde_json::json!({
        "model_type": "llama",
        "vocab_size": 37,
        "hidden_size": 16,
        "intermediate_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "initializer_range": 0.2
    });
    match kind {
        "llama" => {}
        "llama_tied" => {
            v["tie_word_embeddings"] = true.into();
            v["num_key_value_heads"] = 4.into();
        }
        "llama_bias" => {
            v["attention_bias"] = true.into();
            v["mlp_bias"] = true.into();
            v["num_key_value_heads"] = 1.into();
        }
        "qwen2" => {
            v["model_type"] = "qwen2".into();
            v["tie_word_embeddings"] = true.into();
            v["rope_theta"] = 1000000.0.into();
            v["rms_norm_eps"] = 1e-6.into();
        }
        other => panic!("unknown tiny config {other}"),
    }
    serde_json::from_value(v).expect("static tiny config parses")
}

/// A random model of `config` in `dtype` (seeded), with its VarMap.
pub fn tiny_model(config: &Config, dtype: DType, seed: u64) -> (Transformer, VarMap) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &dev);
    let model = Transformer::new(config, vb).expect("tiny model builds");
    model.init_weights(&varmap, seed).expect("seeded init");
    (model, varmap)
}

/// Deterministic pseudo-random token ids in `0..vocab`.
pub fn ids(n: usize, vocab: usize, salt: u64) -> Vec<u32> {
    let mut x = salt
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// A ragged batch: three (prompt, response) pairs.
pub fn batch(vocab: usize, dtype: DType) -> Batch {
    let pairs = vec![
        (ids(3, vocab, 1), ids(5, vocab, 2)),
        (ids(6, vocab, 3), ids(2, vocab, 4)),
        (ids(1, vocab, 5), ids(7, vocab, 6)),
    ];
    Batch::from_pairs(&pairs, 0, dtype, &Device::Cpu).unwrap()
}

/// A scalar loss using both log-probs and entropies, with per-token weights so no symmetry hides an error.
pub fn loss(model: &luspo::model::Transformer, b: &Batch) -> Tensor {
    loss_with(model, b, token_logprobs)
}

/// Per-token log-probs and entropies of a batch, as `rollout::token_logprobs` gives them.
pub type LogprobFn = fn(&Transformer, &Batch) -> luspo::Result<(Tensor, Tensor)>;

/// [`loss`] on the log-probs and entropies that `f` gives.
pub fn loss_with(model: &Transformer, b: &Batch, f: LogprobFn) -> Tensor {
    let (logp, ent) = f(model, b).unwrap();
    let (bs, t) = logp.dims2().unwrap();
    let w: Vec<f64> = (0..bs * t)
        .map(|i| 0.5 + ((i * 7) % 5) as f64 * 0.3)
        .collect();
    let w = Tensor::from_vec(w, (bs, t), &Device::Cpu)
        .unwrap()
        .to_dtype(logp.dtype())
        .unwrap();
    let m = (&b.response_mask * w).unwrap();
    let a = (logp * &m).unwrap().sum_all().unwrap();
    let e = (ent * &m).unwrap().sum_all().unwrap();
    (a + (e * 0.3).unwrap()).unwrap()
}
