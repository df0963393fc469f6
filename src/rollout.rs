//! Batched sampling with a KV cache, and scoring (per-token log-probs and entropies) with the training forward.
//!
//! CONTRACT (used by `train` and the CLI):
//! - `generate(&Transformer, prompts, &SamplingParams, &mut rng) -> Vec<Completion>`
//! - `score(&Transformer, sequences, prompt_lens, batch_size) -> Vec<ScoredSequence>` (no grad)
//! - `token_logprobs(&Transformer, &Batch) -> (logp, entropy)` tensors WITH gradient for the train step.

use crate::model::Transformer;
use candle_core::Tensor;

/// Sampling settings.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 = greedy.
    pub temperature: f64,
    /// Nucleus sampling mass (1 = off).
    pub top_p: f64,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Maximum number of new tokens.
    pub max_new_tokens: usize,
    /// Token ids that end a completion (included in the completion).
    pub eos_token_ids: Vec<u32>,
    /// Strings that end a completion (the completion is cut after the stop string).
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 64,
            eos_token_ids: vec![],
            stop: vec![],
        }
    }
}

/// One sampled completion.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Generated token ids (a final EOS included when generation stopped on it).
    pub ids: Vec<u32>,
    /// Log-prob of each generated token under the sampling distribution's model (temperature 1, before top-p/k).
    pub logprobs: Vec<f32>,
    /// True when the completion ended on EOS or a stop string, false when cut by `max_new_tokens`.
    pub finished: bool,
}

/// A right-padded training batch: prompt + response per row.
pub struct Batch {
    /// Token ids `(B, T)` u32, right-padded.
    pub ids: Tensor,
    /// 1 where `ids` holds a real token, `(B, T)`.
    pub attention_mask: Tensor,
    /// 1 where position t+1 is a response token whose log-prob is trained, `(B, T-1)`.
    pub response_mask: Tensor,
}

/// Samples one completion per prompt (prompts are token ids, ragged).
pub fn generate(
    _model: &Transformer,
    _prompts: &[Vec<u32>],
    _params: &SamplingParams,
    _rng: &mut rand_chacha::ChaCha8Rng,
) -> crate::Result<Vec<Completion>> {
    unimplemented!("rollout::generate")
}

/// Log-prob of every next token and the entropy of every next-token distribution, `(B, T-1)` each, with gradient.
pub fn token_logprobs(_model: &Transformer, _batch: &Batch) -> crate::Result<(Tensor, Tensor)> {
    unimplemented!("rollout::token_logprobs")
}
