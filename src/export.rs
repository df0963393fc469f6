//! GGUF export (`luspo export`, and the weight sync of an `openai` engine such as llama.cpp): a loaded llama model
//! to a llama-architecture GGUF that llama.cpp loads.
//!
//! q/k projections are re-interleaved into llama.cpp's RoPE order ([`io::permute_qk`], the inverse of what
//! loading does). Tokenizer metadata is copied from the source GGUF when the model came from one, else built from
//! `tokenizer.json` (a byte-level BPE becomes llama.cpp's `gpt2` vocabulary: tokens, types, merges, special ids).
//! 1-D tensors (norms, biases) are always f32, as llama.cpp expects.

use crate::model::io::{self, LoadedModel, SourceKind};
use crate::{input_err, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The element type of the exported 2-D weights.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum GgufDType {
    /// 32-bit floats (exact).
    F32,
    /// 16-bit floats.
    F16,
    /// llama.cpp's 8-bit blocks of 32 (`Q8_0`).
    #[value(name = "q8_0")]
    Q8_0,
}

impl GgufDType {
    fn ggml(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_ALL_F32` = 0, `MOSTLY_F16` = 1, `MOSTLY_Q8_0` = 7).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
        }
    }
}

/// The GGUF (llama.cpp) name of an HF llama tensor, or `None` when llama.cpp has no such tensor.
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    let gg = match part {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gg}.{kind}"))
}

/// Writes `m` to `out` as a GGUF file (atomically: a temporary sibling, then a rename).
pub fn export_gguf(m: &LoadedModel, out: &Path, dtype: GgufDType) -> Result<()> {
    let c = &m.config;
    if c.model_type != "llama" {
        return Err(input_err!(
            "{}: GGUF export supports model_type llama, not `{}`",
            m.path.display(),
            c.model_type
        ));
    }
    if c.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(input_err!(
            "{}: GGUF export of RoPE scaling is not supported",
            m.path.display()
        ));
    }
    let mut md: BTreeMap<String, Value> = BTreeMap::new();
    let name = out
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    md.insert("general.architecture".into(), Value::String("llama".into()));
    md.insert("general.name".into(), Value::String(name));
    md.insert("general.file_type".into(), Value::U32(dtype.file_type()));
    let u = |x: usize| Value::U32(x as u32);
    let arch = [
        ("context_length", u(c.max_position_embeddings)),
        ("embedding_length", u(c.hidden_size)),
        ("block_count", u(c.num_hidden_layers)),
        ("feed_forward_length", u(c.intermediate_size)),
        ("attention.head_count", u(c.num_attention_heads)),
        ("attention.head_count_kv", u(c.num_kv_heads())),
        ("attention.key_length", u(c.head_dim())),
        ("attention.value_length", u(c.head_dim())),
        ("rope.dimension_count", u(c.head_dim())),
        ("vocab_size", u(c.vocab_size)),
        (
            "attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_norm_eps as f32),
        ),
        ("rope.freq_base", Value::F32(c.rope_base() as f32)),
    ];
    for (k, v) in arch {
        md.insert(format!("llama.{k}"), v);
    }
    let tokenizer_md = match m.source {
        SourceKind::Gguf => source_tokenizer_metadata(&m.path)?,
        _ => tokenizer_metadata(m)?,
    };
    md.extend(tokenizer_md);
    if let Some(t) = &m.chat_template {
        md.insert(
            "tokenizer.chat_template".into(),
            Value::String(t.source.clone()),
        );
    }

    let tensors = gguf_tensors(m, dtype)?;
    let tmp = out.with_extension(format!("gguf.tmp-{}", std::process::id()));
    let write = || -> Result<()> {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&tmp)
                .map_err(|e| input_err!("{}: cannot write: {e}", tmp.display()))?,
        );
        let mdr: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tr: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut f, &mdr, &tr)
            .map_err(|e| input_err!("{}: cannot write GGUF: {e}", tmp.display()))?;
        std::io::Write::flush(&mut f)
            .map_err(|e| input_err!("{}: cannot write: {e}", tmp.display()))?;
        std::fs::rename(&tmp, out).map_err(|e| input_err!("{}: cannot write: {e}", out.display()))
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Every tensor of `m` under its GGUF name, q/k re-interleaved, 2-D weights in `dtype`.
fn gguf_tensors(m: &LoadedModel, dtype: GgufDType) -> Result<Vec<(String, QTensor)>> {
    let c = &m.config;
    // The model's own parameters (shared storage; LoRA adapters merged), not the varmap, which under LoRA holds
    // only the adapters.
    let vars: HashMap<String, Tensor> = m.model.merged_parameters()?.into_iter().collect();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for hf in names {
        if c.tie_word_embeddings && hf == "lm_head.weight" {
            continue;
        }
        let gg = hf_to_gguf_name(hf)
            .ok_or_else(|| input_err!("GGUF export: no llama.cpp name for tensor `{hf}`"))?;
        let mut t: Tensor = vars[hf].to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        if hf.contains("self_attn.q_proj") {
            t = io::permute_qk(&t, c.num_attention_heads)?;
        } else if hf.contains("self_attn.k_proj") {
            t = io::permute_qk(&t, c.num_kv_heads())?;
        }
        let t = t.contiguous()?;
        let ty = if t.rank() < 2 {
            GgmlDType::F32
        } else {
            dtype.ggml()
        };
        let q = QTensor::quantize(&t, ty)
            .map_err(|e| input_err!("GGUF export: tensor `{hf}` as {ty:?}: {e}"))?;
        out.push((gg, q));
    }
    Ok(out)
}

/// The `tokenizer.*` metadata of the GGUF file `path`.
fn source_tokenizer_metadata(path: &Path) -> Result<BTreeMap<String, Value>> {
    let mut f = std::fs::File::open(path).map_err(|e| input_err!("{}: {e}", path.display()))?;
    let ct = gguf_file::Content::read(&mut f)
        .map_err(|e| input_err!("{}: not a readable GGUF file: {e}", path.display()))?;
    Ok(ct
        .metadata
        .into_iter()
        .filter(|(k, _)| k.starts_with("tokenizer.") && k != "tokenizer.chat_template")
        .collect())
}

/// llama.cpp `gpt2` tokenizer metadata built from the model's `tokenizer.json` (a BPE).
fn tokenizer_metadata(m: &LoadedModel) -> Result<BTreeMap<String, Value>> {
    let bad = |why: &str| {
        input_err!(
            "{}: GGUF export: the tokenizer cannot be written for llama.cpp: {why}",
            m.path.display()
        )
    };
    let j: serde_json::Value = serde_json::from_str(&m.tokenizer.to_json()?)?;
    let model = &j["model"];
    if model["type"] != "BPE" {
        return Err(bad("only BPE tokenizers are supported"));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("no model.vocab"))?;
    let n = m.config.vocab_size;
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![1i32; n];
    let mut put = |id: u64, s: &str| -> Result<()> {
        let slot = tokens
            .get_mut(id as usize)
            .ok_or_else(|| bad(&format!("token id {id} ≥ vocab_size {n}")))?;
        *slot = Some(s.to_string());
        Ok(())
    };
    for (s, id) in vocab {
        put(id.as_u64().ok_or_else(|| bad("a non-integer id"))?, s)?;
    }
    for a in j["added_tokens"].as_array().into_iter().flatten() {
        let id = a["id"].as_u64().ok_or_else(|| bad("added token id"))?;
        put(id, a["content"].as_str().unwrap_or_default())?;
        // llama.cpp's token types: 3 = control (special), 4 = user-defined.
        types[id as usize] = if a["special"].as_bool() == Some(true) {
            3
        } else {
            4
        };
    }
    let tokens: Vec<Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            Value::String(t.unwrap_or_else(|| {
                types[i] = 5; // unused
                format!("[PAD{i}]")
            }))
        })
        .collect();
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|mg| match mg {
            serde_json::Value::Array(p) => Value::String(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p.get(1).and_then(|x| x.as_str()).unwrap_or_default()
            )),
            s => Value::String(s.as_str().unwrap_or_default().to_string()),
        })
        .collect();
    let pre = if j["pre_tokenizer"].to_string().contains("\"Digits\"") {
        "smollm"
    } else {
        "default"
    };
    let mut md = BTreeMap::new();
    md.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    md.insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
    md.insert("tokenizer.ggml.tokens".into(), Value::Array(tokens));
    md.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(types.into_iter().map(Value::I32).collect()),
    );
    md.insert("tokenizer.ggml.merges".into(), Value::Array(merges));
    let tok = &m.tokenizer;
    if let Some(&e) = tok.eos_ids.first() {
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(e));
    }
    if let Some(b) = tok.bos_id {
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(b));
    }
    md.insert(
        "tokenizer.ggml.padding_token_id".into(),
        Value::U32(tok.pad_id),
    );
    md.insert(
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(tok.bos_id.is_some()),
    );
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_with_the_loader() {
        for hf in [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
            "model.layers.3.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.bias",
            "model.layers.11.mlp.down_proj.weight",
            "model.layers.2.post_attention_layernorm.weight",
        ] {
            let gg = hf_to_gguf_name(hf).unwrap();
            assert_eq!(io::gguf_to_hf_name(&gg).unwrap(), hf, "{gg}");
        }
        assert!(hf_to_gguf_name("model.rotary_emb.inv_freq").is_none());
    }
}
