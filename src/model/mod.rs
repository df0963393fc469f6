//! The transformer, its HF config, weight I/O (safetensors, GGUF), tokenizer and chat template.
//!
//! CONTRACT:
//! - `Config`: deserialises HF `config.json` unchanged (Llama, Qwen2, SmolLM2).
//! - `Transformer::new(&Config, VarBuilder)`: creates parameters with HF names (`model.layers.0.self_attn.q_proj.weight`, ...).
//!   Training uses a `VarMap`-backed VarBuilder, so weights are `Var`s; `io` fills them from files.
//! - `Transformer::forward(ids, attention_mask)` is the differentiable training forward (logits `(B,T,V)`).
//! - `Transformer::forward_cached(...)` is the no-grad generation path with a `KvCache`; `DecodeState` continues it
//!   one token per row on host buffers (CPU f32).
//! - `io::load(path, &Device) -> LoadedModel` reads an HF directory or a `.gguf`; `io::save_hf` writes an HF directory.

pub mod chat;
pub mod config;
pub mod decode;
pub mod io;
mod layer;
pub mod lora;
pub mod tokenizer;
pub mod transformer;

pub use config::Config;
pub use decode::DecodeState;
pub use transformer::{KvCache, Transformer};
