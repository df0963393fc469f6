//! The decoder-only transformer (Llama family) with a differentiable training path and a cached generation path.

use super::Config;
use candle_core::Tensor;
use candle_nn::VarBuilder;

/// A Llama/Qwen2 decoder with HF parameter names.
pub struct Transformer {
    /// The configuration it was built from.
    pub config: Config,
}

/// Per-layer key/value cache for batched generation.
pub struct KvCache {}

impl Transformer {
    /// Creates the parameters (HF names) through `vb`.
    pub fn new(_config: &Config, _vb: VarBuilder) -> crate::Result<Self> {
        unimplemented!("Transformer::new")
    }

    /// Training forward: `ids` `(B,T)` u32, `attention_mask` `(B,T)` (1 = token, 0 = pad; left or right padding).
    /// Positions are the running count of real tokens. Returns logits `(B,T,V)`; differentiable ops only.
    pub fn forward(&self, _ids: &Tensor, _attention_mask: &Tensor) -> crate::Result<Tensor> {
        unimplemented!("Transformer::forward")
    }
}
