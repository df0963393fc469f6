//! Loading an HF directory or a GGUF file into a trainable model, and saving an HF directory.
//!
//! Weights always end up as `Var`s of a `VarMap` under HF names (`model.layers.0.self_attn.q_proj.weight`):
//! the `Transformer` creates them through `VarBuilder::from_varmap`, then every one is set from the file.
//! A missing tensor, a tensor of the wrong shape, or an unexpected tensor is an `Error::Input` naming the
//! tensor and the file. GGUF tensors are dequantised, renamed to HF names, and q/k rows are put back from
//! llama.cpp's interleaved-RoPE order into HF's half-split order (the inverse of llama.cpp's `permute`).

use super::{chat::ChatTemplate, tokenizer::Tok, Config, Transformer};
use crate::{input_err, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Where a model was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// An HF directory (config.json + safetensors + tokenizer.json).
    HfDir,
    /// A single `.gguf` file (dequantised).
    Gguf,
}

/// A model ready to train or sample: weights (as `Var`s in `varmap`), tokenizer and chat template.
pub struct LoadedModel {
    /// Parsed configuration.
    pub config: Config,
    /// The network.
    pub model: Transformer,
    /// The trainable parameters, by HF name.
    pub varmap: VarMap,
    /// The tokenizer.
    pub tokenizer: Tok,
    /// The chat template, when the checkpoint has one.
    pub chat_template: Option<ChatTemplate>,
    /// What kind of file it came from.
    pub source: SourceKind,
    /// The file or directory it came from.
    pub path: PathBuf,
    /// The original `tokenizer_config.json` (HF directories), kept for a faithful save.
    pub tokenizer_config: Option<serde_json::Map<String, Value>>,
    /// The original `generation_config.json` (HF directories), kept for a faithful save.
    pub generation_config: Option<serde_json::Map<String, Value>>,
}

impl LoadedModel {
    /// Prompt ids for `text`: under the chat template (one user message, generation prompt, no extra special
    /// tokens, as HF's `apply_chat_template(tokenize=True)`) when `chat`, else the tokenizer's plain encoding
    /// with its special tokens (as HF's `tokenizer(text)`).
    pub fn prompt_ids(&self, text: &str, chat: bool) -> Result<Vec<u32>> {
        if chat {
            let t = self.chat_template.as_ref().ok_or_else(|| {
                input_err!("{}: the model has no chat template", self.path.display())
            })?;
            let rendered = t.render(&[super::chat::Message::new("user", text)], true)?;
            self.tokenizer.encode(&rendered, false)
        } else {
            self.tokenizer.encode(text, true)
        }
    }
}

/// Everything read from a checkpoint except the weights.
pub struct Checkpoint {
    /// Parsed configuration.
    pub config: Config,
    /// The tokenizer with its special ids.
    pub tokenizer: Tok,
    /// The chat template, if any.
    pub chat_template: Option<ChatTemplate>,
    /// What kind of file it is.
    pub source: SourceKind,
    /// The path given.
    pub path: PathBuf,
    /// Original tokenizer_config.json.
    pub tokenizer_config: Option<serde_json::Map<String, Value>>,
    /// Original generation_config.json.
    pub generation_config: Option<serde_json::Map<String, Value>>,
}

/// Architectures the transformer implements.
pub const SUPPORTED_MODEL_TYPES: [&str; 2] = ["llama", "qwen2"];

/// The device the CLI runs models on: the first CUDA GPU when built with the `cuda` feature and one is present,
/// else the CPU.
pub fn default_device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        Ok(Device::cuda_if_available(0)?)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(Device::Cpu)
    }
}

/// Parses a device name: `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when built with the `cuda` feature and present).
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => default_device(),
        _ => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| {
                        input_err!("--device {name}: expected cpu, cuda, cuda:N or auto")
                    })?,
                None => {
                    return Err(input_err!(
                        "--device {name}: expected cpu, cuda, cuda:N or auto"
                    ))
                }
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(input_err!(
                    "--device {name}: this build has no CUDA (rebuild with `--features cuda` on a machine with nvcc)"
                ));
            }
            Ok(Device::new_cuda(ordinal)?)
        }
    }
}

/// Loads an HF directory or a `.gguf` file into f32 `Var`s on `device`.
pub fn load(path: &Path, device: &Device) -> Result<LoadedModel> {
    load_with_dtype(path, device, DType::F32)
}

/// Like [`load`] with the parameter dtype chosen (f32 for training, f64 for gradient tests).
pub fn load_with_dtype(path: &Path, device: &Device, dtype: DType) -> Result<LoadedModel> {
    let ck = read_checkpoint(path)?;
    // The file's tensors become the Vars first, so Transformer::new finds them and skips its random init.
    let expected = parameter_shapes(&ck.config, dtype, device)?;
    let tensors = read_weights(path, &ck.config, &expected, device, dtype)?;
    let varmap = VarMap::new();
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| input_err!("internal: VarMap lock poisoned"))?;
        for (name, t) in tensors {
            data.insert(name, candle_core::Var::from_tensor(&t)?);
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, dtype, device);
    let model = Transformer::new(&ck.config, vb)?;
    if varmap.all_vars().len() != expected.len() {
        return Err(input_err!(
            "internal: the transformer created parameters the loader did not fill"
        ));
    }
    Ok(LoadedModel {
        config: ck.config,
        model,
        varmap,
        tokenizer: ck.tokenizer,
        chat_template: ck.chat_template,
        source: ck.source,
        path: ck.path,
        tokenizer_config: ck.tokenizer_config,
        generation_config: ck.generation_config,
    })
}

/// Whether `path` names a GGUF file (by extension, or by its magic bytes).
fn is_gguf(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    if !path.is_file() {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// Reads the configuration, tokenizer and chat template of an HF directory or a `.gguf` file.
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    if !path.exists() {
        return Err(input_err!("{}: no such file or directory", path.display()));
    }
    if is_gguf(path) {
        read_gguf_checkpoint(path)
    } else if path.is_dir() {
        read_hf_checkpoint(path)
    } else {
        Err(input_err!(
            "{}: expected an HF model directory or a .gguf file",
            path.display()
        ))
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| input_err!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| input_err!("{}: invalid JSON: {e}", path.display()))
}

fn read_json_opt(path: &Path) -> Result<Option<serde_json::Map<String, Value>>> {
    if !path.exists() {
        return Ok(None);
    }
    match read_json(path)? {
        Value::Object(m) => Ok(Some(m)),
        _ => Err(input_err!("{}: expected a JSON object", path.display())),
    }
}

/// Checks that the transformer supports `config`; `file` names where it came from.
pub fn check_config(config: &Config, file: &Path) -> Result<()> {
    if !SUPPORTED_MODEL_TYPES.contains(&config.model_type.as_str()) {
        return Err(input_err!(
            "{}: unsupported model_type `{}` (supported: {})",
            file.display(),
            config.model_type,
            SUPPORTED_MODEL_TYPES.join(", ")
        ));
    }
    if config.hidden_act != "silu" {
        return Err(input_err!(
            "{}: unsupported hidden_act `{}` (only silu)",
            file.display(),
            config.hidden_act
        ));
    }
    if config.num_attention_heads == 0
        || config.num_kv_heads() == 0
        || !config
            .num_attention_heads
            .is_multiple_of(config.num_kv_heads())
    {
        return Err(input_err!(
            "{}: num_attention_heads {} is not a multiple of num_key_value_heads {}",
            file.display(),
            config.num_attention_heads,
            config.num_kv_heads()
        ));
    }
    Ok(())
}

/// Reads `config.json` of an HF directory.
pub fn read_hf_config(dir: &Path) -> Result<Config> {
    let file = dir.join("config.json");
    if !file.exists() {
        return Err(input_err!(
            "{}: no config.json (not an HF model directory?)",
            dir.display()
        ));
    }
    let config: Config = serde_json::from_value(read_json(&file)?)
        .map_err(|e| input_err!("{}: {e}", file.display()))?;
    check_config(&config, &file)?;
    Ok(config)
}

/// The token string of a `tokenizer_config.json` entry (`"<s>"` or `{"content": "<s>", ...}`).
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

/// Token ids of a config entry (a number or a list of numbers).
fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

/// The chat template of a `tokenizer_config.json` (`chat_template` as a string, or a list of named templates).
fn template_from_tokenizer_config(
    tc: &serde_json::Map<String, Value>,
    file: &Path,
) -> Result<Option<String>> {
    match tc.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let named = |want: Option<&str>| {
                list.iter().find_map(|t| {
                    let name = t.get("name").and_then(|n| n.as_str());
                    let tpl = t.get("template").and_then(|n| n.as_str())?;
                    (want.is_none() || name == want).then(|| tpl.to_string())
                })
            };
            named(Some("default"))
                .or_else(|| named(None))
                .map(Some)
                .ok_or_else(|| {
                    input_err!(
                        "{}: chat_template list has no usable template",
                        file.display()
                    )
                })
        }
        Some(_) => Err(input_err!(
            "{}: chat_template must be a string or a list",
            file.display()
        )),
    }
}

fn read_hf_checkpoint(dir: &Path) -> Result<Checkpoint> {
    let config = read_hf_config(dir)?;
    let tok_file = dir.join("tokenizer.json");
    if !tok_file.exists() {
        return Err(input_err!("{}: no tokenizer.json", dir.display()));
    }
    let mut tok = Tok::from_file(&tok_file)?;
    let tc_file = dir.join("tokenizer_config.json");
    let tc = read_json_opt(&tc_file)?;
    let gc = read_json_opt(&dir.join("generation_config.json"))?;
    let tc_tok = |key: &str| tc.as_ref().and_then(|m| token_str(m.get(key)));
    let id_of = |s: Option<String>| s.and_then(|s| tok.token_to_id(&s));

    let mut eos: Vec<u32> = Vec::new();
    let mut push = |ids: Vec<u32>| {
        for i in ids {
            if !eos.contains(&i) {
                eos.push(i)
            }
        }
    };
    push(ids_of(gc.as_ref().and_then(|g| g.get("eos_token_id"))));
    push(config.eos_token_ids());
    push(id_of(tc_tok("eos_token")).into_iter().collect());
    let bos = id_of(tc_tok("bos_token"))
        .or_else(|| {
            ids_of(gc.as_ref().and_then(|g| g.get("bos_token_id")))
                .first()
                .copied()
        })
        .or_else(|| ids_of(config.bos_token_id.as_ref()).first().copied());
    let pad = id_of(tc_tok("pad_token"))
        .or_else(|| {
            ids_of(gc.as_ref().and_then(|g| g.get("pad_token_id")))
                .first()
                .copied()
        })
        .or_else(|| ids_of(config.extra.get("pad_token_id")).first().copied());
    tok = Tok::new(tok.inner, eos, bos, pad);

    let jinja = dir.join("chat_template.jinja");
    let source = if jinja.exists() {
        Some(std::fs::read_to_string(&jinja).map_err(|e| input_err!("{}: {e}", jinja.display()))?)
    } else if let Some(m) = &tc {
        template_from_tokenizer_config(m, &tc_file)?
    } else {
        None
    };
    let bos_s = tc_tok("bos_token")
        .or_else(|| tok.bos_token())
        .unwrap_or_default();
    let eos_s = tc_tok("eos_token")
        .or_else(|| tok.eos_token())
        .unwrap_or_default();
    let chat_template = match source {
        Some(s) => Some(
            ChatTemplate::new(&s, &bos_s, &eos_s)
                .map_err(|e| input_err!("{}: {e}", dir.display()))?,
        ),
        None => None,
    };
    Ok(Checkpoint {
        config,
        tokenizer: tok,
        chat_template,
        source: SourceKind::HfDir,
        path: dir.to_path_buf(),
        tokenizer_config: tc,
        generation_config: gc,
    })
}

/// The safetensors files of an HF directory (one file, or the shards named by the index).
pub fn hf_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| input_err!("{}: no `weight_map` object", index.display()))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = files.iter().find(|f| !f.exists()) {
            return Err(input_err!(
                "{}: shard {} is missing",
                index.display(),
                missing.display()
            ));
        }
        return Ok(files);
    }
    if dir.join("pytorch_model.bin").exists() {
        return Err(input_err!(
            "{}: only safetensors weights are supported (found pytorch_model.bin)",
            dir.display()
        ));
    }
    Err(input_err!(
        "{}: no model.safetensors or model.safetensors.index.json",
        dir.display()
    ))
}

/// Fills every `Var` of `varmap` from the weights at `path` (HF directory or GGUF), converted to `dtype`.
pub fn fill_varmap(
    varmap: &VarMap,
    path: &Path,
    config: &Config,
    device: &Device,
    dtype: DType,
) -> Result<()> {
    let vars: HashMap<String, candle_core::Var> = varmap
        .data()
        .lock()
        .map_err(|_| input_err!("internal: VarMap lock poisoned"))?
        .clone();
    let expected: BTreeMap<String, Vec<usize>> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    for (name, t) in read_weights(path, config, &expected, device, dtype)? {
        if let Some(var) = vars.get(&name) {
            var.set(&t.to_dtype(var.dtype())?)?;
        }
    }
    Ok(())
}

/// The HF names and shapes of the parameters `Transformer::new` creates for `config` (no random init).
pub fn parameter_shapes(
    config: &Config,
    dtype: DType,
    device: &Device,
) -> Result<BTreeMap<String, Vec<usize>>> {
    /// A VarBuilder backend that hands out zeros and records what was asked for.
    struct Recorder(std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<usize>>>>);
    impl candle_nn::var_builder::SimpleBackend for Recorder {
        fn get(
            &self,
            s: candle_core::Shape,
            name: &str,
            _h: candle_nn::Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            if let Ok(mut m) = self.0.lock() {
                m.insert(name.to_string(), s.dims().to_vec());
            }
            Tensor::zeros(s, dtype, dev)
        }
        fn get_unchecked(
            &self,
            name: &str,
            _dtype: DType,
            _dev: &Device,
        ) -> candle_core::Result<Tensor> {
            candle_core::bail!("parameter `{name}` requested without a shape")
        }
        fn contains_tensor(&self, _name: &str) -> bool {
            false
        }
    }
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let vb = VarBuilder::from_backend(Box::new(Recorder(seen.clone())), dtype, device.clone());
    drop(Transformer::new(config, vb)?);
    let out = seen
        .lock()
        .map_err(|_| input_err!("internal: recorder lock poisoned"))?
        .clone();
    Ok(out)
}

/// Reads the weights at `path` (HF directory or GGUF) under HF names, converted to `dtype` on `device`, and
/// checks them against `expected` (name → shape): a missing, misshapen or unexpected tensor is an
/// `Error::Input` naming the tensor and the file. `rotary_emb.inv_freq` buffers are skipped; a tied model's
/// `lm_head.weight` is skipped if not expected, or taken from the embedding if expected but absent.
pub fn read_weights(
    path: &Path,
    config: &Config,
    expected: &BTreeMap<String, Vec<usize>>,
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let mut apply = |name: &str, t: Tensor, file: &Path| -> Result<()> {
        match expected.get(name) {
            Some(shape) => {
                if shape.as_slice() != t.dims() {
                    return Err(input_err!(
                        "{}: tensor `{name}` has shape {:?}, the config needs {:?}",
                        file.display(),
                        t.dims(),
                        shape
                    ));
                }
                out.insert(name.to_string(), t.to_dtype(dtype)?.to_device(device)?);
                Ok(())
            }
            None if name.ends_with(".rotary_emb.inv_freq") => Ok(()),
            None if name == "lm_head.weight" && config.tie_word_embeddings => Ok(()),
            None => Err(input_err!(
                "{}: unexpected tensor `{name}` (not a parameter of this {} config)",
                file.display(),
                config.model_type
            )),
        }
    };
    let described: String;
    if is_gguf(path) {
        described = path.display().to_string();
        read_gguf_tensors(path, config, &mut apply)?;
    } else {
        let files = hf_weight_files(path)?;
        described = files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for file in &files {
            let tensors = candle_core::safetensors::load(file, &Device::Cpu)
                .map_err(|e| input_err!("{}: cannot read safetensors: {e}", file.display()))?;
            let sorted: BTreeMap<String, Tensor> = tensors.into_iter().collect();
            for (name, t) in sorted {
                apply(&name, t, file)?;
            }
        }
    }
    // A tied model whose transformer still declares an lm_head gets the embedding matrix.
    if config.tie_word_embeddings
        && expected.contains_key("lm_head.weight")
        && !out.contains_key("lm_head.weight")
    {
        if let Some(e) = out.get("model.embed_tokens.weight").cloned() {
            out.insert("lm_head.weight".into(), e.copy()?);
        }
    }
    let missing: Vec<&String> = expected.keys().filter(|k| !out.contains_key(*k)).collect();
    if let Some(first) = missing.first() {
        return Err(input_err!(
            "{described}: missing tensor `{first}`{}",
            if missing.len() > 1 {
                format!(" (and {} more)", missing.len() - 1)
            } else {
                String::new()
            }
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------- GGUF

fn gguf_content(
    path: &Path,
) -> Result<(candle_core::quantized::gguf_file::Content, std::fs::File)> {
    let mut f = std::fs::File::open(path).map_err(|e| input_err!("{}: {e}", path.display()))?;
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f)
        .map_err(|e| input_err!("{}: not a readable GGUF file: {e}", path.display()))?;
    Ok((ct, f))
}

/// The HF `Config` described by a GGUF file's metadata (llama architecture).
pub fn read_gguf_config(path: &Path) -> Result<Config> {
    let (ct, _) = gguf_content(path)?;
    gguf_config(&ct, path)
}

fn gguf_config(ct: &candle_core::quantized::gguf_file::Content, path: &Path) -> Result<Config> {
    let md = &ct.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| input_err!("{}: GGUF has no general.architecture", path.display()))?;
    if arch != "llama" {
        return Err(input_err!(
            "{}: unsupported GGUF architecture `{arch}` (supported: llama)",
            path.display()
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let req_u = |k: &str| -> Result<u64> {
        md.get(&key(k))
            .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
            .ok_or_else(|| input_err!("{}: GGUF metadata lacks `{}`", path.display(), key(k)))
    };
    let opt_u = |k: &str| {
        md.get(&key(k))
            .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
    };
    // f32 metadata is written as its shortest decimal (1e-5, not 9.999999747378752e-6).
    let opt_f = |k: &str| {
        md.get(&key(k)).and_then(|v| {
            v.to_f32()
                .ok()
                .and_then(|x| x.to_string().parse::<f64>().ok())
                .or_else(|| v.to_f64().ok())
        })
    };
    if md.contains_key(&key("rope.scaling.type"))
        || ct.tensor_infos.contains_key("rope_freqs.weight")
    {
        return Err(input_err!(
            "{}: GGUF RoPE scaling (rope_freqs / rope.scaling.*) is not supported",
            path.display()
        ));
    }
    let n_heads = req_u("attention.head_count")?;
    let hidden = req_u("embedding_length")?;
    let vocab = match ct.tensor_infos.get("token_embd.weight") {
        Some(t) => t.shape.dims()[0] as u64,
        None => {
            return Err(input_err!(
                "{}: missing tensor `token_embd.weight`",
                path.display()
            ))
        }
    };
    let head_dim = opt_u("attention.key_length")
        .or_else(|| opt_u("rope.dimension_count"))
        .unwrap_or(hidden / n_heads);
    let get_id = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
    let eps = opt_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5);
    let mut cfg = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": req_u("feed_forward_length")?,
        "num_hidden_layers": req_u("block_count")?,
        "num_attention_heads": n_heads,
        "num_key_value_heads": opt_u("attention.head_count_kv").unwrap_or(n_heads),
        "head_dim": head_dim,
        "max_position_embeddings": opt_u("context_length").unwrap_or(2048),
        "rms_norm_eps": eps,
        "rope_theta": opt_f("rope.freq_base").unwrap_or(10000.0),
        "tie_word_embeddings": !ct.tensor_infos.contains_key("output.weight"),
        "attention_bias": ct.tensor_infos.contains_key("blk.0.attn_q.bias"),
        "mlp_bias": false,
        "hidden_act": "silu",
    });
    if let Some(b) = get_id("tokenizer.ggml.bos_token_id") {
        cfg["bos_token_id"] = json!(b);
    }
    if let Some(e) = get_id("tokenizer.ggml.eos_token_id") {
        cfg["eos_token_id"] = json!(e);
    }
    if let Some(p) = get_id("tokenizer.ggml.padding_token_id") {
        cfg["pad_token_id"] = json!(p);
    }
    let config: Config =
        serde_json::from_value(cfg).map_err(|e| input_err!("{}: {e}", path.display()))?;
    check_config(&config, path)?;
    Ok(config)
}

fn read_gguf_checkpoint(path: &Path) -> Result<Checkpoint> {
    let (ct, _) = gguf_content(path)?;
    let config = gguf_config(&ct, path)?;
    let tokenizer = Tok::from_gguf(&ct, path)?;
    let chat_template = match ct
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
    {
        Some(src) => Some(
            ChatTemplate::new(
                src,
                &tokenizer.bos_token().unwrap_or_default(),
                &tokenizer.eos_token().unwrap_or_default(),
            )
            .map_err(|e| input_err!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    Ok(Checkpoint {
        config,
        tokenizer,
        chat_template,
        source: SourceKind::Gguf,
        path: path.to_path_buf(),
        tokenizer_config: None,
        generation_config: None,
    })
}

/// The HF name of a GGUF tensor (llama layout), or `None` when it has no HF counterpart.
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undoes llama.cpp's q/k permutation: rows of each head go from interleaved pairs back to HF's two halves.
///
/// llama.cpp converts with `w.reshape(n_head, 2, hd/2, ...).swapaxes(1, 2)`; this applies the inverse
/// `w.reshape(n_head, hd/2, 2, ...).swapaxes(1, 2)`. Works for weights `(n_head*hd, in)` and biases `(n_head*hd,)`.
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        return Err(input_err!(
            "q/k tensor with {rows} rows cannot be split into {n_head} heads"
        ));
    }
    let half = rows / n_head / 2;
    let mut shape = vec![n_head, half, 2];
    shape.extend_from_slice(&dims[1..]);
    Ok(w.reshape(shape)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// The inverse of [`unpermute_qk`] (llama.cpp's `permute`), used by tests and GGUF writers.
pub fn permute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        return Err(input_err!(
            "q/k tensor with {rows} rows cannot be split into {n_head} heads"
        ));
    }
    let half = rows / n_head / 2;
    let mut shape = vec![n_head, 2, half];
    shape.extend_from_slice(&dims[1..]);
    Ok(w.reshape(shape)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// Calls `apply(hf_name, f32 tensor, file)` for every tensor of a llama GGUF file.
fn read_gguf_tensors(
    path: &Path,
    config: &Config,
    apply: &mut dyn FnMut(&str, Tensor, &Path) -> Result<()>,
) -> Result<()> {
    let (ct, mut f) = gguf_content(path)?;
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let hf = gguf_to_hf_name(name)
            .ok_or_else(|| input_err!("{}: unexpected GGUF tensor `{name}`", path.display()))?;
        let q = ct
            .tensor(&mut f, name, &Device::Cpu)
            .map_err(|e| input_err!("{}: tensor `{name}`: {e}", path.display()))?;
        let mut t = q.dequantize(&Device::Cpu)?;
        if hf.contains("self_attn.q_proj") {
            t = unpermute_qk(&t, config.num_attention_heads)?;
        } else if hf.contains("self_attn.k_proj") {
            t = unpermute_qk(&t, config.num_kv_heads())?;
        }
        apply(&hf, t, path)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- saving

/// `path` with a `.{tag}-{pid}-{nanos}` suffix, in the same directory.
fn tmp_sibling(path: &Path, tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{tag}-{}-{nanos}", std::process::id()));
    path.with_file_name(name)
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    std::fs::write(path, s).map_err(|e| input_err!("{}: cannot write: {e}", path.display()))
}

/// Saves `m` as an HF directory (f32 safetensors with HF names, config, tokenizer, chat template); a LoRA model's
/// adapters are merged into its weights (`W + (alpha/r)·B·A`).
pub fn save_hf(dir: &Path, m: &LoadedModel) -> Result<()> {
    if m.model.lora().is_some() {
        return save_hf_tensors(
            dir,
            &m.config,
            m.model.merged_parameters()?,
            &m.tokenizer,
            m.chat_template.as_ref(),
            m.tokenizer_config.as_ref(),
            m.generation_config.as_ref(),
        );
    }
    save_hf_parts(
        dir,
        &m.config,
        &m.varmap,
        &m.tokenizer,
        m.chat_template.as_ref(),
        m.tokenizer_config.as_ref(),
        m.generation_config.as_ref(),
    )
}

/// Saves an HF directory from its parts, atomically: everything is written to `dir.tmp-*`, then renamed.
/// `tokenizer_config`/`generation_config` (if given) are kept, with the special tokens and template updated.
pub fn save_hf_parts(
    dir: &Path,
    config: &Config,
    varmap: &VarMap,
    tok: &Tok,
    chat_template: Option<&ChatTemplate>,
    tokenizer_config: Option<&serde_json::Map<String, Value>>,
    generation_config: Option<&serde_json::Map<String, Value>>,
) -> Result<()> {
    let named: Vec<(String, Tensor)> = {
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| input_err!("internal: VarMap lock poisoned"))?;
        vars.iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    };
    save_hf_tensors(
        dir,
        config,
        named,
        tok,
        chat_template,
        tokenizer_config,
        generation_config,
    )
}

/// [`save_hf_parts`] from named tensors instead of a `VarMap`.
pub fn save_hf_tensors(
    dir: &Path,
    config: &Config,
    named: Vec<(String, Tensor)>,
    tok: &Tok,
    chat_template: Option<&ChatTemplate>,
    tokenizer_config: Option<&serde_json::Map<String, Value>>,
    generation_config: Option<&serde_json::Map<String, Value>>,
) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| input_err!("{}: {e}", parent.display()))?;
    }
    let tmp = tmp_sibling(dir, "tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| input_err!("{}: {e}", tmp.display()))?;
    let res = write_hf_files(
        &tmp,
        config,
        named,
        tok,
        chat_template,
        tokenizer_config,
        generation_config,
    );
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        let old = tmp_sibling(dir, "old");
        std::fs::rename(dir, &old)
            .map_err(|e| input_err!("{}: cannot replace: {e}", dir.display()))?;
        std::fs::rename(&tmp, dir)
            .map_err(|e| input_err!("{}: cannot replace: {e}", dir.display()))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, dir)
            .map_err(|e| input_err!("{}: cannot write: {e}", dir.display()))?;
    }
    Ok(())
}

fn write_hf_files(
    dir: &Path,
    config: &Config,
    named: Vec<(String, Tensor)>,
    tok: &Tok,
    chat_template: Option<&ChatTemplate>,
    tokenizer_config: Option<&serde_json::Map<String, Value>>,
    generation_config: Option<&serde_json::Map<String, Value>>,
) -> Result<()> {
    // config.json
    let mut cfg = serde_json::to_value(config)?;
    if let Value::Object(m) = &mut cfg {
        m.insert("torch_dtype".into(), json!("float32"));
        if m.contains_key("dtype") {
            m.insert("dtype".into(), json!("float32"));
        }
        if !m.contains_key("architectures") {
            let arch = if config.model_type == "qwen2" {
                "Qwen2ForCausalLM"
            } else {
                "LlamaForCausalLM"
            };
            m.insert("architectures".into(), json!([arch]));
        }
        // Drop nulls of optional keys we deserialised but the file never had.
        m.retain(|_, v| !v.is_null());
        if !tok.eos_ids.is_empty() && !m.contains_key("eos_token_id") {
            m.insert("eos_token_id".into(), ids_value(&tok.eos_ids));
        }
        if let (Some(b), false) = (tok.bos_id, m.contains_key("bos_token_id")) {
            m.insert("bos_token_id".into(), json!(b));
        }
    }
    write_json(&dir.join("config.json"), &cfg)?;

    // model.safetensors (f32, HF names; a tied model has no lm_head.weight)
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, t) in named {
        if config.tie_word_embeddings && name == "lm_head.weight" {
            continue;
        }
        tensors.insert(
            name,
            t.to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .contiguous()?,
        );
    }
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())]
        .into_iter()
        .collect();
    safetensors::tensor::serialize_to_file(
        tensors.iter(),
        Some(meta),
        &dir.join("model.safetensors"),
    )
    .map_err(|e| input_err!("{}: cannot write safetensors: {e}", dir.display()))?;

    // tokenizer.json
    std::fs::write(dir.join("tokenizer.json"), tok.to_json()?)
        .map_err(|e| input_err!("{}: cannot write tokenizer.json: {e}", dir.display()))?;

    // tokenizer_config.json
    let mut tc = tokenizer_config.cloned().unwrap_or_default();
    tc.entry("tokenizer_class")
        .or_insert(json!("PreTrainedTokenizerFast"));
    tc.entry("clean_up_tokenization_spaces")
        .or_insert(json!(false));
    tc.entry("model_max_length")
        .or_insert(json!(config.max_position_embeddings));
    for (key, val) in [
        ("eos_token", tok.eos_token()),
        ("bos_token", tok.bos_token()),
        ("pad_token", tok.pad_token()),
    ] {
        match val {
            Some(s) => {
                tc.insert(key.into(), json!(s));
            }
            None => {
                tc.insert(key.into(), Value::Null);
            }
        }
    }
    match chat_template {
        Some(t) => {
            tc.insert("chat_template".into(), json!(t.source));
        }
        None => {
            tc.remove("chat_template");
        }
    }
    write_json(&dir.join("tokenizer_config.json"), &Value::Object(tc))?;

    // generation_config.json
    let mut gc = generation_config.cloned().unwrap_or_default();
    if let Some(b) = tok.bos_id {
        gc.insert("bos_token_id".into(), json!(b));
    }
    if !tok.eos_ids.is_empty() {
        gc.insert("eos_token_id".into(), ids_value(&tok.eos_ids));
    }
    gc.insert("pad_token_id".into(), json!(tok.pad_id));
    gc.entry("_from_model_config").or_insert(json!(false));
    write_json(&dir.join("generation_config.json"), &Value::Object(gc))?;
    Ok(())
}

fn ids_value(ids: &[u32]) -> Value {
    if ids.len() == 1 {
        json!(ids[0])
    } else {
        json!(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hf() {
        assert_eq!(
            gguf_to_hf_name("blk.12.attn_q.weight").unwrap(),
            "model.layers.12.self_attn.q_proj.weight"
        );
        assert_eq!(
            gguf_to_hf_name("blk.0.ffn_down.weight").unwrap(),
            "model.layers.0.mlp.down_proj.weight"
        );
        assert_eq!(
            gguf_to_hf_name("blk.3.ffn_norm.weight").unwrap(),
            "model.layers.3.post_attention_layernorm.weight"
        );
        assert_eq!(gguf_to_hf_name("output.weight").unwrap(), "lm_head.weight");
        assert_eq!(
            gguf_to_hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert!(gguf_to_hf_name("rope_freqs.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llamacpp_permute_by_hand() {
        // One head of width 4, two input columns: HF rows r0 r1 | r2 r3 (two halves);
        // llama.cpp interleaves them as r0 r2 r1 r3.
        let hf = Tensor::new(
            &[[0f32, 1.], [10., 11.], [20., 21.], [30., 31.]],
            &Device::Cpu,
        )
        .unwrap();
        let gg = permute_qk(&hf, 1).unwrap();
        assert_eq!(
            gg.to_vec2::<f32>().unwrap(),
            vec![vec![0., 1.], vec![20., 21.], vec![10., 11.], vec![30., 31.]]
        );
        let back = unpermute_qk(&gg, 1).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
        // Biases (1-D) and several heads.
        let b = Tensor::arange(0f32, 12., &Device::Cpu).unwrap();
        let p = permute_qk(&b, 2).unwrap();
        assert_eq!(
            p.to_vec1::<f32>().unwrap(),
            vec![0., 3., 1., 4., 2., 5., 6., 9., 7., 10., 8., 11.]
        );
        assert_eq!(
            unpermute_qk(&p, 2).unwrap().to_vec1::<f32>().unwrap(),
            b.to_vec1::<f32>().unwrap()
        );
    }
}
