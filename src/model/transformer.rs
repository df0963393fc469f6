//! The decoder-only transformer (Llama family) with a differentiable training path and a cached generation path.
//!
//! Both paths compute the same function as HF transformers' `LlamaForCausalLM` / `Qwen2ForCausalLM`:
//! RMSNorm → attention (GQA, RoPE with HF's `rotate_half` convention) → residual → RMSNorm → SwiGLU MLP → residual,
//! a final RMSNorm and the LM head (tied to the embedding when `tie_word_embeddings`).
//!
//! - [`Transformer::forward`] (training) uses differentiable candle ops only, composed by hand.
//! - [`Transformer::forward_cached`] (generation) may use candle's fused no-backward kernels and a [`KvCache`];
//!   it never records an autograd graph.
//!
//! Positions are per row: the running count of real tokens minus one (clamped at 0), so left and right padding give
//! the same numbers for the real tokens as the unpadded sequence (HF with `position_ids` derived from the mask).

use super::config::RopeFreqs;
use super::layer;
use super::lora::{self, Adapter, LoraConfig};
use super::Config;
use crate::ops;
use crate::ops::attn::AttnShape;
use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use std::collections::HashMap;

/// Additive mask value for disallowed attention: finite so fully masked (pad) rows give no NaN.
const MASK_NEG: f64 = -1e9;

/// Row count up to which the generation path uses the transposed product in [`Linear::forward_gen`].
const SMALL_ROWS: usize = 64;

/// A linear map `y = x Wᵀ + b` with HF layout (`weight` is `(out, in)`), plus `s·(x Aᵀ)Bᵀ` with a LoRA adapter.
#[derive(Clone)]
struct Linear {
    w: Tensor,
    b: Option<Tensor>,
    lora: Option<Adapter>,
}

impl Linear {
    fn new(
        vb: &VarBuilder,
        name: &str,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
        std: f64,
    ) -> crate::Result<Self> {
        let vb = vb.pp(name);
        let w = vb.get_with_hints(
            (out_dim, in_dim),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        )?;
        let b = if bias {
            Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self { w, b, lora: None })
    }

    fn detached(&self) -> Self {
        Self {
            w: self.w.detach(),
            b: self.b.as_ref().map(|b| b.detach()),
            lora: self.lora.as_ref().map(Adapter::detached),
        }
    }

    /// `y` plus the adapter's `s·(x Aᵀ)Bᵀ` (2-D `x`, `y`), or `y` without an adapter.
    fn add_lora(&self, x2: &Tensor, y: Tensor) -> candle_core::Result<Tensor> {
        match &self.lora {
            Some(a) => y + a.delta(x2)?,
            None => Ok(y),
        }
    }

    /// No-grad application for generation: for few rows (decode steps) computes `(W xᵀ)ᵀ`, which candle's gemm
    /// runs about twice as fast as `x Wᵀ` when `x` has only a handful of rows (measured in `examples/model_mb.rs`).
    fn forward_gen(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let n: usize = dims[..dims.len() - 1].iter().product();
        if n > SMALL_ROWS || !x.device().is_cpu() {
            return self.forward(x);
        }
        let x2 = x.reshape((n, in_dim))?;
        if let Some(y) = ops::gemv::small_rows_xwt(&x2, &self.w)? {
            let y = match &self.b {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            };
            let y = self.add_lora(&x2, y)?;
            let mut out_dims = dims;
            let last = out_dims.len() - 1;
            out_dims[last] = self.w.dim(0)?;
            return y.reshape(out_dims);
        }
        let xt = x2.t()?.contiguous()?;
        let mut y = self.w.matmul(&xt)?.t()?.contiguous()?;
        if let Some(b) = &self.b {
            y = y.broadcast_add(b)?;
        }
        let y = self.add_lora(&x2, y)?;
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.w.dim(0)?;
        y.reshape(out_dims)
    }

    /// Applies to the last dimension of `x` (any rank ≥ 2).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.rank() == 2 {
            let y = x.matmul(&self.w.t()?)?;
            let y = match &self.b {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            };
            return self.add_lora(x, y);
        }
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let n: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((n, in_dim))?;
        let mut y = x2.matmul(&self.w.t()?)?;
        if let Some(b) = &self.b {
            y = y.broadcast_add(b)?;
        }
        let y = self.add_lora(&x2, y)?;
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.w.dim(0)?;
        y.reshape(out_dims)
    }
}

/// Parameters of one decoder layer.
#[derive(Clone)]
struct Layer {
    input_layernorm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_attention_layernorm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    /// The parameters as the fused decoder layer takes them; `None` for bias combinations no HF config produces
    /// (only some of q/k/v, or only some of gate/up/down).
    fn fused_params(&self) -> Option<layer::LayerParams<'_>> {
        let bqkv = match (&self.q.b, &self.k.b, &self.v.b) {
            (Some(q), Some(k), Some(v)) => Some([q, k, v]),
            (None, None, None) => None,
            _ => return None,
        };
        let bmlp = match (&self.gate.b, &self.up.b, &self.down.b) {
            (Some(g), Some(u), Some(d)) => Some([g, u, d]),
            (None, None, None) => None,
            _ => return None,
        };
        Some(layer::LayerParams {
            ln1: &self.input_layernorm,
            wq: &self.q.w,
            wk: &self.k.w,
            wv: &self.v.w,
            bqkv,
            wo: &self.o.w,
            bo: self.o.b.as_ref(),
            ln2: &self.post_attention_layernorm,
            wg: &self.gate.w,
            wu: &self.up.w,
            wd: &self.down.w,
            bmlp,
            lora: self.projections().map(|l| l.lora.as_ref()),
        })
    }

    /// The seven projections in [`lora::TARGETS`] order.
    fn projections(&self) -> [&Linear; 7] {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
    }

    /// Mutable [`projections`](Self::projections).
    fn projections_mut(&mut self) -> [&mut Linear; 7] {
        [
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.o,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]
    }

    fn detached(&self) -> Self {
        Self {
            input_layernorm: self.input_layernorm.detach(),
            q: self.q.detached(),
            k: self.k.detached(),
            v: self.v.detached(),
            o: self.o.detached(),
            post_attention_layernorm: self.post_attention_layernorm.detach(),
            gate: self.gate.detached(),
            up: self.up.detached(),
            down: self.down.detached(),
        }
    }
}

/// All parameters.
#[derive(Clone)]
struct Weights {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// The LM head `(V, d)`; the embedding itself when tied.
    lm_head: Tensor,
}

impl Weights {
    fn detached(&self) -> Self {
        Self {
            embed: self.embed.detach(),
            layers: self.layers.iter().map(Layer::detached).collect(),
            norm: self.norm.detach(),
            lm_head: self.lm_head.detach(),
        }
    }

    fn lm_head_apply(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        matmul_last(h, &self.lm_head)
    }
}

/// `x (…, in) · Wᵀ` for `W (out, in)`, any rank of `x`.
fn matmul_last(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    Linear {
        w: w.clone(),
        b: None,
        lora: None,
    }
    .forward(x)
}

/// A Llama/Qwen2 decoder with HF parameter names.
pub struct Transformer {
    /// The configuration it was built from.
    pub config: Config,
    w: Weights,
    rope: RopeFreqs,
    dtype: DType,
    device: Device,
    reference_ops: bool,
    /// Host decoding steps read f16 copies of the weight matrices (see `DecodeState`).
    decode_f16: bool,
    /// The adapters' shape when LoRA is on (the base weights are then frozen tensors, not `Var`s).
    lora: Option<LoraConfig>,
}

/// Per-layer key/value cache for batched generation: preallocated `(B, kv_heads, capacity, head_dim)` buffers.
///
/// Slot `s` of every row holds the key/value of the `s`-th token fed to [`Transformer::forward_cached`] for that row
/// (pads included); which slots are attendable is given by the `key_mask` of each call.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    capacity: usize,
    batch: usize,
}

impl KvCache {
    /// An empty cache for `batch` rows and at most `capacity` tokens per row.
    pub fn new(model: &Transformer, batch: usize, capacity: usize) -> crate::Result<Self> {
        let c = &model.config;
        let shape = (batch, c.num_kv_heads(), capacity, c.head_dim());
        let mut k = Vec::with_capacity(c.num_hidden_layers);
        let mut v = Vec::with_capacity(c.num_hidden_layers);
        for _ in 0..c.num_hidden_layers {
            k.push(Tensor::zeros(shape, model.dtype, &model.device)?);
            v.push(Tensor::zeros(shape, model.dtype, &model.device)?);
        }
        Ok(Self {
            k,
            v,
            len: 0,
            capacity,
            batch,
        })
    }

    /// Number of token slots filled so far (per row).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of token slots per row.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of rows.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The per-layer key and value buffers.
    pub(super) fn tensors(&self) -> (&[Tensor], &[Tensor]) {
        (&self.k, &self.v)
    }
}

/// Per-row positions from a `(B,T)` host mask: running count of real tokens minus one, clamped at 0.
pub fn positions_from_mask(mask: &[Vec<f32>]) -> Vec<Vec<u32>> {
    mask.iter()
        .map(|row| {
            let mut count = 0u32;
            row.iter()
                .map(|&m| {
                    if m != 0.0 {
                        count += 1;
                    }
                    count.saturating_sub(1)
                })
                .collect()
        })
        .collect()
}

impl Transformer {
    /// Creates the parameters (HF names) through `vb`.
    ///
    /// With a `VarMap`-backed builder the parameters are created as `Var`s initialised like HF
    /// (`normal(0, initializer_range)` for linear and embedding weights, zero biases, unit norms); candle's CPU random
    /// init is not seedable, so reproducible runs call [`init_weights`](Self::init_weights) afterwards.
    pub fn new(config: &Config, vb: VarBuilder) -> crate::Result<Self> {
        let c = config;
        if c.hidden_act != "silu" {
            return Err(crate::input_err!(
                "config.json: hidden_act `{}` is not supported (only `silu`)",
                c.hidden_act
            ));
        }
        if c.num_attention_heads == 0
            || c.num_hidden_layers == 0
            || c.vocab_size == 0
            || c.hidden_size == 0
        {
            return Err(crate::input_err!(
                "config.json: vocab_size, hidden_size, num_hidden_layers and num_attention_heads must be positive"
            ));
        }
        let (nh, nkv, hd, d) = (
            c.num_attention_heads,
            c.num_kv_heads(),
            c.head_dim(),
            c.hidden_size,
        );
        if nkv == 0 || nh % nkv != 0 {
            return Err(crate::input_err!(
                "config.json: num_attention_heads {nh} is not a multiple of num_key_value_heads {nkv}"
            ));
        }
        let std = c.initializer_range();
        let f32_like_torch = vb.dtype() != DType::F64;
        let rope = c.rope_freqs(f32_like_torch)?;
        let qkv_bias = c.qkv_bias();
        let o_bias = c.attention_bias.unwrap_or(false);
        let mlp_bias = c.mlp_bias.unwrap_or(false);
        let ones = Init::Const(1.0);
        let vm = vb.pp("model");
        let embed = vm.get_with_hints(
            (c.vocab_size, d),
            "embed_tokens.weight",
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        )?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let vl = vm.pp(format!("layers.{i}"));
            let va = vl.pp("self_attn");
            let vmlp = vl.pp("mlp");
            layers.push(Layer {
                input_layernorm: vl.get_with_hints(d, "input_layernorm.weight", ones)?,
                q: Linear::new(&va, "q_proj", nh * hd, d, qkv_bias, std)?,
                k: Linear::new(&va, "k_proj", nkv * hd, d, qkv_bias, std)?,
                v: Linear::new(&va, "v_proj", nkv * hd, d, qkv_bias, std)?,
                o: Linear::new(&va, "o_proj", d, nh * hd, o_bias, std)?,
                post_attention_layernorm: vl.get_with_hints(
                    d,
                    "post_attention_layernorm.weight",
                    ones,
                )?,
                gate: Linear::new(&vmlp, "gate_proj", c.intermediate_size, d, mlp_bias, std)?,
                up: Linear::new(&vmlp, "up_proj", c.intermediate_size, d, mlp_bias, std)?,
                down: Linear::new(&vmlp, "down_proj", d, c.intermediate_size, mlp_bias, std)?,
            });
        }
        let norm = vm.get_with_hints(d, "norm.weight", ones)?;
        let lm_head = if c.tie_word_embeddings {
            embed.clone()
        } else {
            vb.get_with_hints(
                (c.vocab_size, d),
                "lm_head.weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            )?
        };
        Ok(Self {
            config: c.clone(),
            w: Weights {
                embed,
                layers,
                norm,
                lm_head,
            },
            rope,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            reference_ops: false,
            decode_f16: false,
            lora: None,
        })
    }

    /// Uses candle's composed differentiable ops (`ops::composed_*`) instead of the fused `crate::ops` kernels on
    /// the training path: the slow reference, for tests and `luspo bench --composed`.
    pub fn set_reference_ops(&mut self, on: bool) {
        self.reference_ops = on;
    }

    /// Makes generation's host decoding steps read f16 copies of the projection and LM-head weights (half the
    /// bytes of a memory-bound step; f32 products and sums; needs AVX-512, else f32 is used). The copies are made
    /// once per generation call from the current f32 weights, which training keeps using.
    pub fn set_decode_f16(&mut self, on: bool) {
        self.decode_f16 = on;
    }

    /// Whether host decoding steps read f16 weights.
    pub fn decode_f16(&self) -> bool {
        self.decode_f16
    }

    /// Whether the training path uses the composed reference ops.
    pub fn reference_ops(&self) -> bool {
        self.reference_ops
    }

    /// The LoRA configuration when adapters are attached.
    pub fn lora(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// Freezes every base weight (they stop being `Var`s; storage is shared, nothing is copied) and attaches fresh
    /// adapters to the projections `cfg.targets` names, created as `Var`s in `varmap` under
    /// `model.layers.{i}.self_attn.q_proj.lora_A.weight` / `...lora_B.weight`: `A` kaiming-uniform from `seed`
    /// (as PEFT), `B` zero, so the function is unchanged until the adapters train.
    pub fn attach_lora(
        &mut self,
        cfg: &LoraConfig,
        varmap: &VarMap,
        seed: u64,
    ) -> crate::Result<()> {
        use rand::SeedableRng;
        cfg.validate("model.lora")?;
        if !cfg.enabled() {
            return Err(crate::input_err!("model.lora.r = 0: no adapters to attach"));
        }
        if self.lora.is_some() {
            return Err(crate::input_err!(
                "attach_lora: the model already has adapters"
            ));
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mask = cfg.mask();
        self.w = self.w.detached();
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| crate::input_err!("attach_lora: the VarMap lock is poisoned"))?;
        for (i, l) in self.w.layers.iter_mut().enumerate() {
            for (j, lin) in l.projections_mut().into_iter().enumerate() {
                if !mask[j] {
                    continue;
                }
                let (out, inp) = lin.w.dims2()?;
                let a = lora::init_a(cfg.r, inp, &mut rng, self.dtype, &self.device)?;
                let a = candle_core::Var::from_tensor(&a)?;
                let b = candle_core::Var::zeros((out, cfg.r), self.dtype, &self.device)?;
                let name = lora::module_name(i, lora::TARGETS[j]);
                data.insert(format!("{name}.lora_A.weight"), a.clone());
                data.insert(format!("{name}.lora_B.weight"), b.clone());
                lin.lora = Some(Adapter {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                    scale: cfg.scale(),
                });
            }
        }
        self.lora = Some(cfg.clone());
        Ok(())
    }

    /// A frozen copy (no `Var`s) that shares this model's base weights and takes `tensors`, named like
    /// [`adapter_parameters`](Self::adapter_parameters), as its adapters: the KL reference of a LoRA run (no
    /// second copy of the base), or a PEFT adapter over a base model. Every targeted projection must be present
    /// with the right shape, and nothing else.
    pub fn with_adapters(
        &self,
        cfg: &LoraConfig,
        tensors: &HashMap<String, Tensor>,
    ) -> crate::Result<Transformer> {
        cfg.validate("adapter")?;
        let mut w = self.w.detached();
        let mask = cfg.mask();
        let mut used = 0;
        for (i, l) in w.layers.iter_mut().enumerate() {
            for (j, lin) in l.projections_mut().into_iter().enumerate() {
                lin.lora = None;
                if !mask[j] || !cfg.enabled() {
                    continue;
                }
                let (out, inp) = lin.w.dims2()?;
                let name = lora::module_name(i, lora::TARGETS[j]);
                let get = |ab: &str, shape: [usize; 2]| -> crate::Result<Tensor> {
                    let key = format!("{name}.lora_{ab}.weight");
                    let t = tensors
                        .get(&key)
                        .ok_or_else(|| crate::input_err!("adapter: no tensor `{key}`"))?;
                    if t.dims() != shape {
                        return Err(crate::input_err!(
                            "adapter: `{key}` has shape {:?}, the model needs {shape:?}",
                            t.dims()
                        ));
                    }
                    Ok(t.detach().to_dtype(self.dtype)?.to_device(&self.device)?)
                };
                lin.lora = Some(Adapter {
                    a: get("A", [cfg.r, inp])?,
                    b: get("B", [out, cfg.r])?,
                    scale: cfg.scale(),
                });
                used += 2;
            }
        }
        if used != tensors.len() {
            let mut extra: Vec<&String> = tensors
                .keys()
                .filter(|k| !Self::adapter_key_is_targeted(k, cfg, w.layers.len()))
                .collect();
            extra.sort();
            return Err(crate::input_err!(
                "adapter: tensors the model has no place for: {extra:?}"
            ));
        }
        Ok(Transformer {
            config: self.config.clone(),
            w,
            rope: self.rope.clone(),
            dtype: self.dtype,
            device: self.device.clone(),
            reference_ops: self.reference_ops,
            decode_f16: self.decode_f16,
            lora: cfg.enabled().then(|| cfg.clone()),
        })
    }

    fn adapter_key_is_targeted(key: &str, cfg: &LoraConfig, layers: usize) -> bool {
        (0..layers).any(|i| {
            cfg.targets.iter().any(|t| {
                let m = lora::module_name(i, t);
                key == format!("{m}.lora_A.weight") || key == format!("{m}.lora_B.weight")
            })
        })
    }

    /// The adapter tensors by name (`model.layers.0.self_attn.q_proj.lora_A.weight`, then `lora_B`), layer by
    /// layer in [`lora::TARGETS`] order; empty without LoRA.
    pub fn adapter_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        for (i, l) in self.w.layers.iter().enumerate() {
            for (j, lin) in l.projections().into_iter().enumerate() {
                if let Some(a) = &lin.lora {
                    let name = lora::module_name(i, lora::TARGETS[j]);
                    out.push((format!("{name}.lora_A.weight"), a.a.clone()));
                    out.push((format!("{name}.lora_B.weight"), a.b.clone()));
                }
            }
        }
        out
    }

    /// [`named_parameters`](Self::named_parameters) with every adapter merged into its weight, `W + s·B·A` (the
    /// full HF checkpoint of a LoRA model); the parameters themselves without LoRA.
    pub fn merged_parameters(&self) -> crate::Result<Vec<(String, Tensor)>> {
        let mut dense: HashMap<String, Tensor> = HashMap::new();
        for (i, l) in self.w.layers.iter().enumerate() {
            for (j, lin) in l.projections().into_iter().enumerate() {
                if let Some(a) = &lin.lora {
                    let name = lora::module_name(i, lora::TARGETS[j]);
                    dense.insert(format!("{name}.weight"), (lin.w.detach() + a.dense()?)?);
                }
            }
        }
        Ok(self
            .named_parameters()
            .into_iter()
            .map(|(n, t)| match dense.remove(&n) {
                Some(m) => (n, m),
                None => (n, t),
            })
            .collect())
    }

    /// The dtype of the parameters.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device of the parameters.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Vocabulary size (rows of the LM head).
    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// RoPE cos and sin tables for per-token positions, `(n, head_dim/2)` each as host f64 (cos·factor, sin·factor).
    /// In f32/bf16/f16 models the angles are computed in f32, as HF does.
    fn rope_host(&self, positions: &[u32]) -> (Vec<f64>, Vec<f64>) {
        let half = self.rope.inv_freq.len();
        let af = self.rope.attention_factor;
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        let as_f32 = self.dtype != DType::F64;
        for &p in positions {
            for &f in &self.rope.inv_freq {
                if as_f32 {
                    let a = p as f32 * f as f32;
                    cos.push((a.cos() * af as f32) as f64);
                    sin.push((a.sin() * af as f32) as f64);
                } else {
                    let a = p as f64 * f;
                    cos.push(a.cos() * af);
                    sin.push(a.sin() * af);
                }
            }
        }
        (cos, sin)
    }

    /// A host f64 buffer as a tensor of the model dtype.
    fn host_tensor<S: Into<candle_core::Shape>>(
        &self,
        data: Vec<f64>,
        shape: S,
    ) -> candle_core::Result<Tensor> {
        match self.dtype {
            DType::F64 => Tensor::from_vec(data, shape, &self.device),
            DType::F32 => Tensor::from_vec(
                data.into_iter().map(|x| x as f32).collect::<Vec<_>>(),
                shape,
                &self.device,
            ),
            dt => Tensor::from_vec(
                data.into_iter().map(|x| x as f32).collect::<Vec<_>>(),
                shape,
                &self.device,
            )?
            .to_dtype(dt),
        }
    }

    /// Reads a `(B,T)` mask of any dtype to the host, checking its shape.
    fn mask_host(mask: &Tensor, b: usize, t: usize, what: &str) -> crate::Result<Vec<Vec<f32>>> {
        let dims = mask.dims();
        if dims != [b, t] {
            return Err(crate::input_err!(
                "{what}: shape {dims:?} does not match the ids' ({b}, {t})"
            ));
        }
        Ok(mask.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }

    /// Checks `(B,T)` u32 ids against the vocabulary.
    fn check_ids(&self, ids: &Tensor) -> crate::Result<(usize, usize)> {
        let (b, t) = ids.dims2().map_err(|_| {
            crate::input_err!(
                "ids: expected a (batch, time) tensor, got shape {:?}",
                ids.dims()
            )
        })?;
        if ids.dtype() != DType::U32 {
            return Err(crate::input_err!(
                "ids: expected dtype u32, got {:?}",
                ids.dtype()
            ));
        }
        if b * t > 0 {
            let max = ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
            if max as usize >= self.config.vocab_size {
                return Err(crate::input_err!(
                    "ids: token id {max} is out of range for vocab_size {}",
                    self.config.vocab_size
                ));
            }
        }
        Ok((b, t))
    }

    /// Training forward: `ids` `(B,T)` u32, `attention_mask` `(B,T)` (1 = token, 0 = pad; left or right padding).
    /// Positions are the running count of real tokens. Returns logits `(B,T,V)`; differentiable ops only.
    pub fn forward(&self, ids: &Tensor, attention_mask: &Tensor) -> crate::Result<Tensor> {
        let h = self.hidden_diff(&self.w, ids, attention_mask)?;
        Ok(self.w.lm_head_apply(&h)?)
    }

    /// Like [`forward`](Self::forward) but records no autograd graph (for scoring and evaluation).
    pub fn forward_no_grad(&self, ids: &Tensor, attention_mask: &Tensor) -> crate::Result<Tensor> {
        let w = self.w.detached();
        let h = self.hidden_diff(&w, ids, attention_mask)?;
        Ok(w.lm_head_apply(&h)?)
    }

    /// Final hidden states `(B,T,d)` (after the final norm) through the differentiable path.
    pub fn hidden_states(&self, ids: &Tensor, attention_mask: &Tensor) -> crate::Result<Tensor> {
        self.hidden_diff(&self.w, ids, attention_mask)
    }

    /// Final hidden states without an autograd graph.
    pub fn hidden_states_no_grad(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
    ) -> crate::Result<Tensor> {
        self.hidden_diff(&self.w.detached(), ids, attention_mask)
    }

    /// Logits `(…, V)` from final hidden states `(…, d)` (differentiable).
    pub fn lm_head(&self, hidden: &Tensor) -> crate::Result<Tensor> {
        Ok(self.w.lm_head_apply(hidden)?)
    }

    /// Log-prob of `targets (N)` and entropy of the next-token distribution at final hidden rows `(N, d)`, with
    /// gradient: the LM head fused with the log-softmax (`ops::lm_head_logprob_entropy`, no `(N, V)` logits), or
    /// the full logits and the composed ops under [`Self::reference_ops`].
    pub fn head_logprob_entropy(
        &self,
        hidden: &Tensor,
        targets: &Tensor,
    ) -> crate::Result<(Tensor, Tensor)> {
        if self.reference_ops {
            let logits = self.lm_head(hidden)?;
            return crate::ops::composed_token_logprob_entropy(&logits, targets);
        }
        crate::ops::lm_head_logprob_entropy(hidden, &self.w.lm_head, targets)
    }

    /// [`Self::head_logprob_entropy`] without an autograd graph.
    pub fn head_logprob_entropy_no_grad(
        &self,
        hidden: &Tensor,
        targets: &Tensor,
    ) -> crate::Result<(Tensor, Tensor)> {
        crate::ops::lm_head_logprob_entropy(&hidden.detach(), &self.w.lm_head.detach(), targets)
    }

    fn hidden_diff(
        &self,
        w: &Weights,
        ids: &Tensor,
        attention_mask: &Tensor,
    ) -> crate::Result<Tensor> {
        let c = &self.config;
        let (b, t) = self.check_ids(ids)?;
        let mask = Self::mask_host(attention_mask, b, t, "attention_mask")?;
        let pos = positions_from_mask(&mask);
        let flat: Vec<u32> = pos.into_iter().flatten().collect();
        let (cos_h, sin_h) = self.rope_host(&flat);
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_kv_heads(), c.head_dim());
        let half = hd / 2;
        let scale = 1.0 / (hd as f64).sqrt();
        let r = self.reference_ops;
        // Causal + key-padding additive mask (B,1,T,T).
        let mut bias = vec![0f64; b * t * t];
        for (bi, row) in mask.iter().enumerate() {
            for i in 0..t {
                let base = (bi * t + i) * t;
                for j in 0..t {
                    if j > i || row[j] == 0.0 {
                        bias[base + j] = MASK_NEG;
                    }
                }
            }
        }
        let bias = self.host_tensor(bias, (b, 1, t, t))?;
        let eps = c.rms_norm_eps;
        let norm = |x: &Tensor, wt: &Tensor| {
            if r {
                ops::composed_rms_norm(x, wt, eps)
            } else {
                ops::rms_norm(x, wt, eps)
            }
        };
        // Activations stay 2-D (B·T, d): no reshape nodes around the linear layers.
        let mut x = w.embed.index_select(&ids.flatten_all()?, 0)?;
        if !r && self.device.is_cpu() {
            // One fused node per layer; the tables it reads are built once: RoPE rows `[cos | sin]` of half width
            // `(B,T,hd)` and the mask as `(B,T,T)`.
            let mut packed = Vec::with_capacity(2 * cos_h.len());
            for (ch, sh) in cos_h.chunks(half).zip(sin_h.chunks(half)) {
                packed.extend_from_slice(ch);
                packed.extend_from_slice(sh);
            }
            let rope = self.host_tensor(packed, (b, t, hd))?;
            let mask = bias.reshape((b, t, t))?;
            let dims = AttnShape { b, t, nh, nkv, hd };
            for (i, l) in w.layers.iter().enumerate() {
                let p = l.fused_params().ok_or_else(|| {
                    crate::input_err!(
                        "layer {i}: q/k/v biases and gate/up/down biases must each be all present or all absent"
                    )
                })?;
                x = layer::decoder_layer(&x, &p, &rope, &mask, dims, scale, eps)?;
            }
            return Ok(norm(&x, &w.norm)?.reshape((b, t, c.hidden_size))?);
        }
        // Full-width tables (B,T,hd) = cat(c, c), the layout of `ops::rope`.
        let full = |src: &[f64]| -> Vec<f64> {
            let mut out = Vec::with_capacity(src.len() * 2);
            for chunk in src.chunks(half) {
                out.extend_from_slice(chunk);
                out.extend_from_slice(chunk);
            }
            out
        };
        let cos = self.host_tensor(full(&cos_h), (b, t, hd))?;
        let sin = self.host_tensor(full(&sin_h), (b, t, hd))?;
        let rope = |x: &Tensor| {
            if r {
                ops::composed_rope(x, &cos, &sin)
            } else {
                ops::rope(x, &cos, &sin)
            }
        };
        let rep = nh / nkv;
        for l in &w.layers {
            let h = norm(&x, &l.input_layernorm)?;
            let (q, k, v) = (l.q.forward(&h)?, l.k.forward(&h)?, l.v.forward(&h)?);
            let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?;
            let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
            let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let q = rope(&q)?; // contiguous (B,H,T,hd)
            let k = rope(&k)?;
            let scores = q.reshape((b, nkv, rep * t, hd))?.matmul(&k.t()?)?;
            let scores = scores.reshape((b, nh, t, t))?;
            let p = if r {
                ops::composed_scaled_masked_softmax(&scores, scale, &bias)?
            } else {
                ops::scaled_masked_softmax(&scores, scale, &bias)?
            };
            let o = p.reshape((b, nkv, rep * t, t))?.matmul(&v)?;
            let o = o
                .reshape((b, nh, t, hd))?
                .transpose(1, 2)?
                .reshape((b * t, nh * hd))?;
            x = (x + l.o.forward(&o)?)?;
            let h = norm(&x, &l.post_attention_layernorm)?;
            let (g, u) = (l.gate.forward(&h)?, l.up.forward(&h)?);
            let m = if r {
                ops::composed_silu_mul(&g, &u)?
            } else {
                ops::silu_mul(&g, &u)?
            };
            x = (x + l.down.forward(&m)?)?;
        }
        Ok(norm(&x, &w.norm)?.reshape((b, t, c.hidden_size))?)
    }

    /// Cached, no-grad forward for generation.
    ///
    /// - `ids` `(B,t)` u32: the new tokens of every row (pads allowed).
    /// - `positions` `(B,t)` u32: their RoPE positions (per row, usually the running count of real tokens minus one).
    /// - `key_mask` `(B, cache.len() + t)`, any dtype: 1 where a key slot (the cached ones, then the `t` new ones) may
    ///   be attended, 0 for pads. Causality among the new tokens is added here.
    /// - `cache`: receives the new keys/values at slots `cache.len()..cache.len()+t`.
    ///
    /// Returns logits `(B,t,V)`, or `(B,1,V)` for the last new position only when `last_only`.
    /// Agrees with [`forward`](Self::forward) on the real tokens (fused kernels, same math).
    pub fn forward_cached(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_mask: &Tensor,
        cache: &mut KvCache,
        last_only: bool,
    ) -> crate::Result<Tensor> {
        let c = &self.config;
        let (b, t) = self.check_ids(ids)?;
        if cache.batch != b {
            return Err(crate::input_err!(
                "forward_cached: cache was made for {} rows, ids have {b}",
                cache.batch
            ));
        }
        let past = cache.len;
        let total = past + t;
        if total > cache.capacity {
            return Err(crate::input_err!(
                "forward_cached: {total} tokens exceed the cache capacity {}",
                cache.capacity
            ));
        }
        if positions.dims() != [b, t] {
            return Err(crate::input_err!(
                "positions: shape {:?} does not match the ids' ({b}, {t})",
                positions.dims()
            ));
        }
        let pos: Vec<u32> = positions.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        let kmask = Self::mask_host(key_mask, b, total, "key_mask")?;
        let w = self.w.detached();
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_kv_heads(), c.head_dim());
        let half = hd / 2;
        let (cos_h, sin_h) = self.rope_host(&pos);
        let cos = self.host_tensor(cos_h, (b, t, half))?;
        let sin = self.host_tensor(sin_h, (b, t, half))?;
        let mut bias = vec![0f64; b * t * total];
        for (bi, row) in kmask.iter().enumerate() {
            for i in 0..t {
                let base = (bi * t + i) * total;
                for j in 0..total {
                    if j > past + i || row[j] == 0.0 {
                        bias[base + j] = MASK_NEG;
                    }
                }
            }
        }
        let bias = self.host_tensor(bias, (b, 1, t, total))?;
        let rep = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let eps = c.rms_norm_eps;
        let norm = |x: &Tensor, wt: &Tensor| -> candle_core::Result<Tensor> {
            if self.dtype == DType::F64 {
                ops::rms_norm(x, wt, eps).map_err(|e| candle_core::Error::Msg(e.to_string()))
            } else {
                candle_nn::ops::rms_norm(x, wt, eps as f32)
            }
        };
        let mut x = w
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, c.hidden_size))?;
        for (li, l) in w.layers.iter().enumerate() {
            let h = norm(&x, &l.input_layernorm)?;
            let q =
                l.q.forward_gen(&h)?
                    .reshape((b, t, nh, hd))?
                    .transpose(1, 2)?
                    .contiguous()?;
            let k =
                l.k.forward_gen(&h)?
                    .reshape((b, t, nkv, hd))?
                    .transpose(1, 2)?
                    .contiguous()?;
            let v =
                l.v.forward_gen(&h)?
                    .reshape((b, t, nkv, hd))?
                    .transpose(1, 2)?
                    .contiguous()?;
            let q = (candle_nn::rotary_emb::rope(&q, &cos, &sin)? * scale)?;
            let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
            cache.k[li].slice_set(&k, 2, past)?;
            cache.v[li].slice_set(&v, 2, past)?;
            let k_all = cache.k[li].narrow(2, 0, total)?;
            let v_all = cache.v[li].narrow(2, 0, total)?;
            let scores = q.reshape((b, nkv, rep * t, hd))?.matmul(&k_all.t()?)?;
            let scores = scores.reshape((b, nh, t, total))?.broadcast_add(&bias)?;
            let p = candle_nn::ops::softmax_last_dim(&scores)?;
            let o = p.reshape((b, nkv, rep * t, total))?.matmul(&v_all)?;
            let o = o
                .reshape((b, nh, t, hd))?
                .transpose(1, 2)?
                .reshape((b, t, nh * hd))?;
            x = (x + l.o.forward_gen(&o)?)?;
            let h = norm(&x, &l.post_attention_layernorm)?;
            let m = (l.gate.forward_gen(&h)?.silu()? * l.up.forward_gen(&h)?)?;
            x = (x + l.down.forward_gen(&m)?)?;
        }
        cache.len = total;
        let x = if last_only { x.narrow(1, t - 1, 1)? } else { x };
        let x = norm(&x.contiguous()?, &w.norm)?;
        Ok(Linear {
            w: w.lm_head.clone(),
            b: None,
            lora: None,
        }
        .forward_gen(&x)?)
    }

    /// Every tensor the host decoding step reads, in its order: embedding, final norm, LM head, then per layer
    /// input norm, q, k, v, o (each weight, its bias, its LoRA `A` and `B`; `None` when absent), post-attention
    /// norm, gate, up, down.
    pub(super) fn weights_for_decode(&self) -> Vec<Option<Tensor>> {
        let w = &self.w;
        let mut out = vec![
            Some(w.embed.clone()),
            Some(w.norm.clone()),
            Some(w.lm_head.clone()),
        ];
        for l in &w.layers {
            out.push(Some(l.input_layernorm.clone()));
            let lin4 = |lin: &Linear| {
                [
                    Some(lin.w.clone()),
                    lin.b.clone(),
                    lin.lora.as_ref().map(|a| a.a.clone()),
                    lin.lora.as_ref().map(|a| a.b.clone()),
                ]
            };
            for lin in [&l.q, &l.k, &l.v, &l.o] {
                out.extend(lin4(lin));
            }
            out.push(Some(l.post_attention_layernorm.clone()));
            for lin in [&l.gate, &l.up, &l.down] {
                out.extend(lin4(lin));
            }
        }
        out
    }

    /// RoPE inverse frequencies and the cos/sin multiplier.
    pub(super) fn rope_freqs(&self) -> (&[f64], f64) {
        (&self.rope.inv_freq, self.rope.attention_factor)
    }

    /// Re-initialises every parameter in `varmap` deterministically from `seed`, as HF does: normal(0,
    /// `initializer_range`) for linear and embedding weights, zero biases, unit norm weights.
    ///
    /// (candle's CPU random init cannot be seeded, so a reproducible run calls this after [`new`](Self::new).)
    pub fn init_weights(&self, varmap: &candle_nn::VarMap, seed: u64) -> crate::Result<()> {
        use rand::{Rng, SeedableRng};
        let std = self.config.initializer_range();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let data = varmap
            .data()
            .lock()
            .map_err(|_| crate::input_err!("init_weights: the VarMap lock is poisoned"))?;
        for (name, t) in self.named_parameters() {
            let var = data.get(&name).ok_or_else(|| {
                crate::input_err!("init_weights: parameter `{name}` is not in the VarMap")
            })?;
            let n = t.elem_count();
            let values: Vec<f64> = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                // Box–Muller from the seeded stream.
                let mut v = Vec::with_capacity(n + 1);
                while v.len() < n {
                    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
                    let u2: f64 = rng.random::<f64>();
                    let r = (-2.0 * u1.ln()).sqrt();
                    let a = 2.0 * std::f64::consts::PI * u2;
                    v.push(std * r * a.cos());
                    v.push(std * r * a.sin());
                }
                v.truncate(n);
                v
            };
            let new = Tensor::from_vec(values, t.shape(), &self.device)?.to_dtype(self.dtype)?;
            var.set(&new)?;
        }
        Ok(())
    }

    /// Every parameter tensor with its HF name (the LM head is listed only when untied).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.w.embed.clone(),
        )];
        let lin = |out: &mut Vec<(String, Tensor)>, p: &str, l: &Linear| {
            out.push((format!("{p}.weight"), l.w.clone()));
            if let Some(b) = &l.b {
                out.push((format!("{p}.bias"), b.clone()));
            }
        };
        for (i, l) in self.w.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                l.input_layernorm.clone(),
            ));
            lin(&mut out, &format!("{p}.self_attn.q_proj"), &l.q);
            lin(&mut out, &format!("{p}.self_attn.k_proj"), &l.k);
            lin(&mut out, &format!("{p}.self_attn.v_proj"), &l.v);
            lin(&mut out, &format!("{p}.self_attn.o_proj"), &l.o);
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.clone(),
            ));
            lin(&mut out, &format!("{p}.mlp.gate_proj"), &l.gate);
            lin(&mut out, &format!("{p}.mlp.up_proj"), &l.up);
            lin(&mut out, &format!("{p}.mlp.down_proj"), &l.down);
        }
        out.push(("model.norm.weight".to_string(), self.w.norm.clone()));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.w.lm_head.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn model(extra: serde_json::Value) -> Transformer {
        let mut v = serde_json::json!({
            "model_type": "llama", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        let config: Config = serde_json::from_value(v).unwrap();
        let varmap = VarMap::new();
        Transformer::new(
            &config,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap()
    }

    /// Every Llama and Qwen2 bias layout takes the whole-layer node, with the biases the config asks for.
    #[test]
    fn every_bias_layout_takes_the_fused_node() {
        let plain = model(serde_json::json!({}));
        let p = plain.w.layers[0].fused_params().unwrap();
        assert!(p.bqkv.is_none() && p.bo.is_none() && p.bmlp.is_none());
        let qwen = model(serde_json::json!({"model_type": "qwen2"}));
        let p = qwen.w.layers[0].fused_params().unwrap();
        assert!(p.bqkv.is_some() && p.bo.is_none() && p.bmlp.is_none());
        let attn = model(serde_json::json!({"attention_bias": true}));
        let p = attn.w.layers[0].fused_params().unwrap();
        assert!(p.bqkv.is_some() && p.bo.is_some() && p.bmlp.is_none());
        let mlp = model(serde_json::json!({"mlp_bias": true}));
        let p = mlp.w.layers[0].fused_params().unwrap();
        assert!(p.bqkv.is_none() && p.bo.is_none() && p.bmlp.is_some());
    }
}
