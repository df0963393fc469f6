//! The HF `config.json` of a Llama-family model (Llama 2/3, SmolLM2, Qwen2/2.5), deserialised as is.

use serde::{Deserialize, Serialize};

/// Model hyper-parameters with HF's key names; unknown keys are kept for a faithful round trip.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Config {
    /// `"llama"` or `"qwen2"`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width d.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention); defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Context length the model was trained for.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base as older checkpoints write it.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE scaling as older checkpoints write it (`{"rope_type": "llama3", ...}`).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// RoPE settings as transformers 5 writes them (`{"rope_theta": .., "rope_type": ..}`).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    /// Whether the LM head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v/o projections (Llama key); Qwen2 always has q/k/v biases.
    #[serde(default)]
    pub attention_bias: Option<bool>,
    /// Bias on MLP projections (Llama key).
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    /// Activation; only `"silu"` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Beginning-of-sequence token id.
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    /// End-of-sequence token id(s): a number or a list.
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// Every other key, kept as read.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}

impl Config {
    /// Number of key/value heads.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// End-of-sequence ids declared by the config.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|v| vec![v as u32]).unwrap_or_default()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            _ => vec![],
        }
    }

    /// Whether q/k/v projections carry a bias.
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2" || self.attention_bias.unwrap_or(false)
    }
}

/// RoPE frequencies of one model: per-pair inverse frequencies and the factor applied to cos/sin.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeFreqs {
    /// `head_dim / 2` inverse frequencies (radians per position), after any scaling.
    pub inv_freq: Vec<f64>,
    /// Multiplier of cos and sin (`attention_factor`; 1 except for yarn).
    pub attention_factor: f64,
}

impl Config {
    /// The RoPE settings object: `rope_parameters` (transformers 5) if present, else `rope_scaling`.
    fn rope_settings(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        fn pick(
            v: &Option<serde_json::Value>,
        ) -> Option<&serde_json::Map<String, serde_json::Value>> {
            v.as_ref().and_then(|v| v.as_object())
        }
        pick(&self.rope_parameters).or_else(|| pick(&self.rope_scaling))
    }

    /// RoPE base: `rope_parameters.rope_theta`, else top-level `rope_theta`, else 10000.
    pub fn rope_base(&self) -> f64 {
        let from_params = self
            .rope_parameters
            .as_ref()
            .and_then(|v| v.get("rope_theta"))
            .and_then(|v| v.as_f64());
        from_params.or(self.rope_theta).unwrap_or(10000.0)
    }

    /// The RoPE type (`default`, `linear`, `dynamic`, `llama3`, `yarn`) from `rope_type` or the older `type` key.
    pub fn rope_type(&self) -> String {
        self.rope_settings()
            .and_then(|m| m.get("rope_type").or_else(|| m.get("type")))
            .and_then(|v| v.as_str())
            .unwrap_or("default")
            .to_string()
    }

    /// Inverse frequencies as HF transformers computes them (`ROPE_INIT_FUNCTIONS`), for sequences no longer than
    /// `max_position_embeddings`. In f32 mode (`f32 = true`) the base frequencies are rounded through f32 as torch does.
    /// Unknown rope types and missing scaling keys are `Error::Input` naming the key.
    pub fn rope_freqs(&self, f32_like_torch: bool) -> crate::Result<RopeFreqs> {
        let dim = self.head_dim();
        if !dim.is_multiple_of(2) {
            return Err(crate::input_err!(
                "config.json: head_dim {dim} must be even for RoPE"
            ));
        }
        let base = self.rope_base();
        let half = dim / 2;
        let round = |x: f64| if f32_like_torch { x as f32 as f64 } else { x };
        // torch: base ** (arange(0, dim, 2).float() / dim), all in float32 when f32.
        let pos_freqs: Vec<f64> = (0..half)
            .map(|i| {
                if f32_like_torch {
                    let e = (2 * i) as f32 / dim as f32;
                    (base as f32).powf(e) as f64
                } else {
                    base.powf((2 * i) as f64 / dim as f64)
                }
            })
            .collect();
        let plain: Vec<f64> = pos_freqs.iter().map(|p| round(1.0 / p)).collect();
        let settings = self.rope_settings();
        let num = |key: &str| -> crate::Result<f64> {
            settings
                .and_then(|m| m.get(key))
                .and_then(|v| v.as_f64())
                .ok_or_else(|| {
                    crate::input_err!(
                        "config.json: rope scaling `{}` needs numeric key `{key}`",
                        self.rope_type()
                    )
                })
        };
        let opt = |key: &str| settings.and_then(|m| m.get(key)).and_then(|v| v.as_f64());
        let ty = self.rope_type();
        match ty.as_str() {
            // `dynamic` (NTK) only changes the frequencies beyond max_position_embeddings, which we do not support.
            "default" | "dynamic" => Ok(RopeFreqs { inv_freq: plain, attention_factor: 1.0 }),
            "linear" => {
                let factor = num("factor")?;
                Ok(RopeFreqs { inv_freq: plain.iter().map(|f| round(f / factor)).collect(), attention_factor: 1.0 })
            }
            "llama3" => {
                let factor = num("factor")?;
                let low = num("low_freq_factor")?;
                let high = num("high_freq_factor")?;
                let old_ctx = num("original_max_position_embeddings")?;
                let low_wl = old_ctx / low;
                let high_wl = old_ctx / high;
                let inv_freq = plain
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen > low_wl { f / factor } else { f };
                        let medium = wavelen >= high_wl && wavelen <= low_wl;
                        if medium {
                            let smooth = (old_ctx / wavelen - low) / (high - low);
                            round((1.0 - smooth) * scaled / factor + smooth * scaled)
                        } else {
                            round(scaled)
                        }
                    })
                    .collect();
                Ok(RopeFreqs { inv_freq, attention_factor: 1.0 })
            }
            "yarn" => {
                let factor = num("factor")?;
                let get_mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
                let attention_factor = match (opt("attention_factor"), opt("mscale"), opt("mscale_all_dim")) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => get_mscale(factor, m) / get_mscale(factor, ma),
                    _ => get_mscale(factor, 1.0),
                };
                let beta_fast = opt("beta_fast").unwrap_or(32.0);
                let beta_slow = opt("beta_slow").unwrap_or(1.0);
                let orig = opt("original_max_position_embeddings").unwrap_or(self.max_position_embeddings as f64);
                let truncate = settings.and_then(|m| m.get("truncate")).and_then(|v| v.as_bool()).unwrap_or(true);
                let d = dim as f64;
                let corr = |rot: f64| (d * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln());
                let (mut lo, mut hi) = (corr(beta_fast), corr(beta_slow));
                if truncate {
                    lo = lo.floor();
                    hi = hi.ceil();
                }
                let lo = lo.max(0.0);
                let mut hi = hi.min(d - 1.0);
                if lo == hi {
                    hi += 0.001;
                }
                let inv_freq = pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| {
                        let ramp = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
                        let extra_factor = 1.0 - ramp;
                        let extrapolation = 1.0 / p;
                        let interpolation = 1.0 / (factor * p);
                        round(interpolation * (1.0 - extra_factor) + extrapolation * extra_factor)
                    })
                    .collect();
                Ok(RopeFreqs { inv_freq, attention_factor })
            }
            other => Err(crate::input_err!(
                "config.json: unsupported rope type `{other}` (supported: default, linear, dynamic, llama3, yarn)"
            )),
        }
    }

    /// Initializer standard deviation: `initializer_range` if the config has it, else 0.02 (HF's default).
    pub fn initializer_range(&self) -> f64 {
        self.extra
            .get("initializer_range")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.02)
    }
}
