//! LoRA: rank-r adapters on the attention and MLP projections, PEFT-compatible.
//!
//! A targeted projection `y = x Wᵀ` becomes `y = x Wᵀ + s·(x Aᵀ) Bᵀ` with `A (r, in)`, `B (out, r)` and
//! `s = alpha / r`, as PEFT's `LoraLayer` (no rsLoRA, no DoRA). `A` starts kaiming-uniform like PEFT
//! (`kaiming_uniform_(a=√5)`, i.e. uniform in ±1/√in) and `B` at zero, so a fresh adapter leaves the model unchanged.
//! The base weights are frozen: only `A` and `B` are `Var`s.
//!
//! On disk a PEFT adapter directory: `adapter_config.json` and `adapter_model.safetensors` with keys
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` `[r, in]` / `...lora_B.weight` `[out, r]`.

use crate::{input_err, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The projections LoRA can target, by their PEFT (HF module) names, in packing order.
pub const TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The key prefix PEFT gives every adapter tensor of a causal LM.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// `model.lora`: the adapters' shape (`r = 0` = off, full fine-tuning).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank; 0 = no LoRA (every weight trains).
    pub r: usize,
    /// Scaling numerator: the update is `(alpha / r)·B·A`.
    pub alpha: f64,
    /// PEFT's `lora_dropout` on the adapter input; only 0 is implemented.
    pub dropout: f64,
    /// Projections that get an adapter (PEFT names, any subset of [`TARGETS`]).
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 0,
            alpha: 16.0,
            dropout: 0.0,
            targets: TARGETS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl LoraConfig {
    /// Whether adapters are on.
    pub fn enabled(&self) -> bool {
        self.r > 0
    }

    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Which of [`TARGETS`] are targeted, in packing order.
    pub fn mask(&self) -> [bool; 7] {
        let mut m = [false; 7];
        for (i, t) in TARGETS.iter().enumerate() {
            m[i] = self.targets.iter().any(|x| x == t);
        }
        m
    }

    /// Checks the keys (when enabled); `what` names them in the error (`model.lora`, a file path).
    pub fn validate(&self, what: &str) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(input_err!(
                "{what}.alpha = {}: must be positive",
                self.alpha
            ));
        }
        if self.dropout != 0.0 {
            return Err(input_err!(
                "{what}.dropout = {}: LoRA dropout is not implemented (only 0)",
                self.dropout
            ));
        }
        if self.targets.is_empty() {
            return Err(input_err!(
                "{what}.targets: empty (name at least one of {TARGETS:?})"
            ));
        }
        for (i, t) in self.targets.iter().enumerate() {
            if !TARGETS.contains(&t.as_str()) {
                return Err(input_err!(
                    "{what}.targets: unknown projection `{t}` (expected some of {TARGETS:?})"
                ));
            }
            if self.targets[..i].contains(t) {
                return Err(input_err!("{what}.targets: `{t}` is listed twice"));
            }
        }
        Ok(())
    }
}

/// One projection's adapter: `A (r, in)`, `B (out, r)` and the scale `alpha / r`.
#[derive(Clone)]
pub(crate) struct Adapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

impl Adapter {
    /// The same adapter without autograd history.
    pub fn detached(&self) -> Self {
        Self {
            a: self.a.detach(),
            b: self.b.detach(),
            scale: self.scale,
        }
    }

    /// `s·(x Aᵀ) Bᵀ` for a 2-D `x (n, in)`.
    pub fn delta(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.a.t()?)?.matmul(&self.b.t()?)? * self.scale
    }

    /// The dense update `s·B·A (out, in)`.
    pub fn dense(&self) -> candle_core::Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }
}

/// Name of a layer's projection module (`model.layers.3.mlp.up_proj`).
pub fn module_name(layer: usize, target: &str) -> String {
    let block = if matches!(target, "gate_proj" | "up_proj" | "down_proj") {
        "mlp"
    } else {
        "self_attn"
    };
    format!("model.layers.{layer}.{block}.{target}")
}

/// PEFT's initial `A (r, in)`: kaiming-uniform with `a = √5`, i.e. uniform in `±1/√in`, from `rng`.
pub fn init_a(
    r: usize,
    fan_in: usize,
    rng: &mut rand_chacha::ChaCha8Rng,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    use rand::Rng;
    let bound = 1.0 / (fan_in as f64).sqrt();
    let v: Vec<f64> = (0..r * fan_in)
        .map(|_| (2.0 * rng.random::<f64>() - 1.0) * bound)
        .collect();
    Ok(Tensor::from_vec(v, (r, fan_in), device)?.to_dtype(dtype)?)
}

/// Writes a PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`) atomically: into
/// `dir.tmp-*`, then renamed. `tensors` are named like the varmap (`model.layers.0.self_attn.q_proj.lora_A.weight`).
pub fn save_peft(
    dir: &Path,
    cfg: &LoraConfig,
    tensors: &[(String, Tensor)],
    base_model: &str,
) -> Result<()> {
    let write = |tmp: &Path| -> Result<()> {
        std::fs::create_dir_all(tmp).map_err(|e| input_err!("{}: {e}", tmp.display()))?;
        let targets: Vec<&str> = TARGETS
            .iter()
            .copied()
            .filter(|t| cfg.targets.iter().any(|x| x == t))
            .collect();
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": cfg.r,
            // PEFT types lora_alpha as an int; write whole values as one.
            "lora_alpha": if cfg.alpha.fract() == 0.0 && cfg.alpha.abs() < 1e15 {
                json!(cfg.alpha as i64)
            } else {
                json!(cfg.alpha)
            },
            "lora_dropout": cfg.dropout,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        });
        let mut s = serde_json::to_string_pretty(&config)?;
        s.push('\n');
        let p = tmp.join("adapter_config.json");
        std::fs::write(&p, s).map_err(|e| input_err!("{}: cannot write: {e}", p.display()))?;
        let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
        for (name, t) in tensors {
            out.insert(
                format!("{PEFT_PREFIX}{name}"),
                t.to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .contiguous()?,
            );
        }
        let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let p = tmp.join("adapter_model.safetensors");
        safetensors::tensor::serialize_to_file(out.iter(), Some(meta), &p)
            .map_err(|e| input_err!("{}: cannot write safetensors: {e}", p.display()))?;
        Ok(())
    };
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| input_err!("{}: {e}", tmp.display()))?;
    }
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| input_err!("{}: cannot replace: {e}", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| input_err!("{}: cannot write: {e}", dir.display()))?;
    crate::atomic::sync_dir(dir);
    Ok(())
}

/// Reads a PEFT LoRA adapter directory: its config and its tensors renamed like the varmap (prefix dropped), in
/// `dtype` on `device`. Rejects what this implementation does not compute (rsLoRA, DoRA, per-layer ranks, ...).
pub fn read_peft(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(LoraConfig, HashMap<String, Tensor>)> {
    let p = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| input_err!("{}: {e}", p.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| input_err!("{}: {e}", p.display()))?;
    let what = p.display().to_string();
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    if get("peft_type").and_then(Value::as_str) != Some("LORA") {
        return Err(input_err!("{what}: peft_type is not \"LORA\""));
    }
    for (k, off) in [
        ("use_rslora", json!(false)),
        ("use_dora", json!(false)),
        ("fan_in_fan_out", json!(false)),
        ("bias", json!("none")),
    ] {
        if let Some(x) = get(k) {
            if *x != off {
                return Err(input_err!(
                    "{what}: `{k}` = {x} is not supported (only {off})"
                ));
            }
        }
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if get(k)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(input_err!(
                "{what}: `{k}` (per-module ranks) is not supported"
            ));
        }
    }
    for k in ["modules_to_save", "layers_to_transform"] {
        if get(k).is_some() {
            return Err(input_err!("{what}: `{k}` is not supported"));
        }
    }
    let r = get("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| input_err!("{what}: no integer `r`"))? as usize;
    let alpha = get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| input_err!("{what}: no number `lora_alpha`"))?;
    let targets: Vec<String> = match get("target_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| input_err!("{what}: target_modules must be strings"))?,
        Some(Value::String(s)) => {
            return Err(input_err!(
                "{what}: target_modules as a regex ({s:?}) is not supported; list the modules"
            ))
        }
        _ => return Err(input_err!("{what}: no target_modules")),
    };
    let cfg = LoraConfig {
        r,
        alpha,
        // Dropout is off at inference, which is all a loaded adapter is used for.
        dropout: 0.0,
        targets,
    };
    cfg.validate(&what)?;
    let st = dir.join("adapter_model.safetensors");
    let raw = candle_core::safetensors::load(&st, device)
        .map_err(|e| input_err!("{}: {e}", st.display()))?;
    let mut out = HashMap::new();
    for (k, t) in raw {
        let name = k.strip_prefix(PEFT_PREFIX).ok_or_else(|| {
            input_err!(
                "{}: tensor `{k}` does not start with {PEFT_PREFIX}",
                st.display()
            )
        })?;
        // PEFT names the adapter inside the key only when it is not the default one.
        let name = name.replace(".lora_A.default.weight", ".lora_A.weight");
        let name = name.replace(".lora_B.default.weight", ".lora_B.weight");
        out.insert(name, t.to_dtype(dtype)?);
    }
    Ok((cfg, out))
}
