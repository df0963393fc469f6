//! The policy being trained: a loaded checkpoint (`model.path`) or the tiny char-level Llama built in code,
//! plus prompt encoding, response decoding, sampling and the frozen reference copy.

use super::config::{ModelConfig, RunConfig};
use crate::model::chat::{ChatTemplate, Message as ChatMessage};
use crate::model::io::{self, LoadedModel, SourceKind};
use crate::model::lora::LoraConfig;
use crate::model::tokenizer::Tok;
use crate::model::{Config, Transformer};
use crate::rollout::{self, Completion, SamplingParams};
use crate::task::{Prompt, Task};
use crate::{input_err, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Special tokens of the tiny model's char-level tokenizer (ids 0 and 1).
pub const TINY_SPECIALS: [&str; 2] = ["<pad>", "<eos>"];

/// The trainable policy (weights as `Var`s) with its tokenizer and chat template.
pub struct Policy {
    /// The model, its `VarMap`, tokenizer and chat template.
    pub m: LoadedModel,
    /// Whether prompts given as chat messages are rendered with the chat template.
    pub use_chat_template: bool,
    /// The HTTP inference engine that generates instead of the in-process model, if any.
    pub engine: Option<std::sync::Arc<crate::engine::Engine>>,
}

/// Parses `model.device`.
pub fn device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| input_err!("model.device = cuda: {e}")),
        s => {
            let n = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    input_err!("model.device: expected cpu, cuda or cuda:N, got {s:?}")
                })?;
            Device::new_cuda(n).map_err(|e| input_err!("model.device = {s}: {e}"))
        }
    }
}

/// The HF config of the tiny model for a vocabulary of `vocab` tokens.
pub fn tiny_config(m: &ModelConfig, vocab: usize) -> Result<Config> {
    let inter = if m.intermediate == 0 {
        4 * m.hidden
    } else {
        m.intermediate
    };
    let kv = if m.kv_heads == 0 { m.heads } else { m.kv_heads };
    let value = serde_json::json!({
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": m.hidden,
        "intermediate_size": inter,
        "num_hidden_layers": m.layers,
        "num_attention_heads": m.heads,
        "num_key_value_heads": kv,
        "max_position_embeddings": m.max_position,
        "rms_norm_eps": 1e-6,
        "rope_theta": m.rope_theta,
        "tie_word_embeddings": m.tie_embeddings,
        "hidden_act": "silu",
        "initializer_range": m.init_std,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": serde_json::Value::Null,
        "eos_token_id": 1,
        "pad_token_id": 0,
    });
    Ok(serde_json::from_value(value)?)
}

impl Policy {
    /// Builds the policy `cfg.model` names: loads `model.path`, or creates the tiny model from the task's
    /// alphabet with weights drawn from `init_seed`.
    pub fn build(cfg: &RunConfig, task: &dyn Task, init_seed: u64) -> Result<Self> {
        let dev = device(&cfg.model.device)?;
        let m = if cfg.model.path.is_empty() {
            let alphabet = task.alphabet().ok_or_else(|| {
                input_err!(
                    "task.name = {}: a text task needs a real model (set model.path to an HF directory or .gguf)",
                    task.name()
                )
            })?;
            Self::tiny(&cfg.model, &alphabet, init_seed, &dev)?
        } else {
            io::load(Path::new(&cfg.model.path), &dev)?
        };
        let mut m = if cfg.model.lora.enabled() {
            Self::with_lora(m, &cfg.model.lora, init_seed)?
        } else {
            m
        };
        m.model.set_decode_f16(cfg.rollout.decode_f16);
        Ok(Self {
            m,
            use_chat_template: cfg.model.chat_template,
            engine: crate::engine::Engine::from_config(&cfg.rollout)?.map(std::sync::Arc::new),
        })
    }

    /// A randomly initialised tiny Llama over a char-level tokenizer of `alphabet`.
    pub fn tiny(mc: &ModelConfig, alphabet: &str, seed: u64, dev: &Device) -> Result<LoadedModel> {
        let tok = Tok::char_level(alphabet, &TINY_SPECIALS)?;
        let config = tiny_config(mc, tok.vocab_size())?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let model = Transformer::new(&config, vb)?;
        model.init_weights(&varmap, seed)?;
        Ok(LoadedModel {
            config,
            model,
            varmap,
            tokenizer: tok,
            chat_template: None,
            source: SourceKind::HfDir,
            path: PathBuf::from("<tiny>"),
            tokenizer_config: None,
            generation_config: None,
        })
    }

    /// Freezes `m`'s weights and makes fresh LoRA adapters its only trainable parameters (`m.varmap` then holds
    /// just them, so the optimizer and checkpoints see nothing else); the base weights' storage is kept, not copied.
    pub fn with_lora(mut m: LoadedModel, lora: &LoraConfig, seed: u64) -> Result<LoadedModel> {
        let varmap = VarMap::new();
        m.model.attach_lora(
            lora,
            &varmap,
            crate::train::files::derive_seed(seed, "lora"),
        )?;
        m.varmap = varmap;
        Ok(m)
    }

    /// The KL reference from the trainable parameters saved at the start of RL (`tensors`, by varmap name): a
    /// fresh frozen model for full fine-tuning, the policy's own frozen base with these adapters under LoRA.
    pub fn reference_from(&self, tensors: HashMap<String, Tensor>) -> Result<Transformer> {
        match self.m.model.lora() {
            Some(l) => self.m.model.with_adapters(l, &tensors),
            None => {
                let vb = VarBuilder::from_tensors(tensors, DType::F32, self.m.model.device());
                Transformer::new(&self.m.config, vb)
            }
        }
    }

    /// The network.
    pub fn model(&self) -> &Transformer {
        &self.m.model
    }

    /// The trainable parameters.
    pub fn varmap(&self) -> &VarMap {
        &self.m.varmap
    }

    /// Mutable access to the parameters (for loading a checkpoint).
    pub fn varmap_mut(&mut self) -> &mut VarMap {
        &mut self.m.varmap
    }

    /// The tokenizer.
    pub fn tok(&self) -> &Tok {
        &self.m.tokenizer
    }

    /// End-of-sequence ids (tokenizer and config together).
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut ids = self.m.tokenizer.eos_ids.clone();
        for id in self.m.config.eos_token_ids() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// The id appended after a worked solution in SFT.
    pub fn eos_id(&self) -> Result<u32> {
        self.eos_ids()
            .first()
            .copied()
            .ok_or_else(|| input_err!("{}: the model has no EOS token", self.m.path.display()))
    }

    /// Padding id.
    pub fn pad_id(&self) -> u32 {
        self.m.tokenizer.pad_id
    }

    /// Token ids of a prompt: chat messages through the chat template (when present and enabled), text as is.
    pub fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let template = self
            .m
            .chat_template
            .as_ref()
            .filter(|_| self.use_chat_template);
        let ids = match (prompt, template) {
            (Prompt::Messages(msgs), Some(t)) => {
                let msgs: Vec<ChatMessage> = msgs
                    .iter()
                    .map(|m| ChatMessage::new(&m.role, &m.content))
                    .collect();
                self.m.tokenizer.encode(&t.render(&msgs, true)?, false)?
            }
            (Prompt::Text(text), Some(t)) if !self.is_tiny() => self
                .m
                .tokenizer
                .encode(&t.render(&[ChatMessage::new("user", text)], true)?, false)?,
            (p, _) => {
                let add_special = !self.is_tiny();
                self.m.tokenizer.encode(&p.flat(), add_special)?
            }
        };
        if ids.is_empty() {
            return Err(input_err!("a prompt encodes to no tokens"));
        }
        Ok(ids)
    }

    /// Whether this is the built-in tiny model.
    pub fn is_tiny(&self) -> bool {
        self.m.path == Path::new("<tiny>")
    }

    /// The text of a response (special tokens dropped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.m.tokenizer.decode(ids, true)
    }

    /// Samples one completion per prompt, `chunk` prompts per `generate` call (0 = all at once); with an
    /// engine, the engine samples (from the weights last synced to it) and `model` and `chunk` are unused.
    pub fn generate(
        &self,
        model: &Transformer,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        chunk: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<Completion>> {
        if let Some(e) = &self.engine {
            return e.complete(prompts, params, rng);
        }
        let chunk = if chunk == 0 {
            prompts.len().max(1)
        } else {
            chunk
        };
        let mut out = Vec::with_capacity(prompts.len());
        for part in prompts.chunks(chunk) {
            if params.stop.is_empty() {
                out.extend(rollout::generate(model, part, params, rng)?);
            } else {
                let decode = |ids: &[u32]| self.m.tokenizer.decode(ids, true).unwrap_or_default();
                let checker = rollout::stop_string_checker(decode, &params.stop);
                out.extend(rollout::generate_with_stop(
                    model,
                    part,
                    params,
                    rng,
                    Some(&checker),
                )?);
            }
        }
        Ok(out)
    }

    /// A frozen copy of the current weights (no `Var`s): the reference model of the KL term.
    pub fn frozen_copy(&self) -> Result<Transformer> {
        let tensors = super::checkpoint::snapshot(&self.m.varmap)?;
        if let Some(l) = self.m.model.lora() {
            return self.m.model.with_adapters(l, &tensors);
        }
        let vb = VarBuilder::from_tensors(tensors, self.m.model.dtype(), self.m.model.device());
        Transformer::new(&self.m.config, vb)
    }

    /// Exports the policy as an HF directory (LoRA adapters merged into the weights).
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        io::save_hf(dir, &self.m)
    }

    /// The end-of-run export into `out`: `final/` (an HF directory, adapters merged) and, under LoRA, `adapter/`
    /// (the PEFT adapter directory).
    pub fn save_final(&self, out: &Path) -> Result<()> {
        self.save_hf(&out.join("final"))?;
        if self.m.model.lora().is_some() {
            self.save_adapter(&out.join("adapter"))?;
        }
        Ok(())
    }

    /// Writes the LoRA adapters as a PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`);
    /// an error without LoRA.
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        let l = self
            .m
            .model
            .lora()
            .ok_or_else(|| input_err!("save_adapter: the policy has no LoRA adapters"))?;
        let base = self.m.path.display().to_string();
        crate::model::lora::save_peft(dir, l, &self.m.model.adapter_parameters(), &base)
    }

    /// The chat template, if any.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.m.chat_template.as_ref()
    }
}
