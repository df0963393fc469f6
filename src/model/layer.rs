//! A whole decoder layer as one autograd node on the CPU training path (the fast path of `Transformer::forward`).
//!
//! candle's backward allocates a zeroed gradient and adds into it for every input of every graph node, which for a
//! small model costs as much as the matmuls. Here the layer's parameters are packed into one flat vector (a `cat`
//! of the `Var`s, cheap at parameter size), the forward runs no-grad kernels on detached tensors, and a
//! `CustomOp2 (x, params)` attaches the result; its `bwd` computes `dx` and the packed parameter gradient directly.
//! The packing also fuses the q/k/v projections into one matmul and gate/up into another.
//!
//! Math (HF Llama/Qwen2, q/k/v biases optional):
//! `h1 = rms(x)·ln1; [q|k|v] = h1 W_qkvᵀ + b; x2 = x + attn(q,k,v) W_oᵀ; h2 = rms(x2)·ln2;`
//! `[g|u] = h2 W_guᵀ; y = x2 + (silu(g)·u) W_downᵀ`.
//! Checked against the per-op path and the composed reference, and by f64 finite differences (`tests/model_grad.rs`).

use super::attention::{self, AttnDims};
use crate::ops;
use crate::ops::attn::{AttnBwdOp, AttnFwdOp, AttnShape};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

/// The parameters of one layer, in packing order.
pub(crate) struct LayerParams<'a> {
    /// `input_layernorm.weight (d)`.
    pub ln1: &'a Tensor,
    /// q projection weight `(nh·hd, d)`.
    pub wq: &'a Tensor,
    /// k projection weight `(nkv·hd, d)`.
    pub wk: &'a Tensor,
    /// v projection weight `(nkv·hd, d)`.
    pub wv: &'a Tensor,
    /// q, k, v biases (Qwen2), all or none.
    pub bqkv: Option<[&'a Tensor; 3]>,
    /// `o_proj.weight (d, nh·hd)`.
    pub wo: &'a Tensor,
    /// `post_attention_layernorm.weight (d)`.
    pub ln2: &'a Tensor,
    /// gate projection weight `(F, d)`.
    pub wg: &'a Tensor,
    /// up projection weight `(F, d)`.
    pub wu: &'a Tensor,
    /// `down_proj.weight (d, F)`.
    pub wd: &'a Tensor,
}

/// Sizes and where each parameter sits in the packed vector.
#[derive(Clone, Copy, Debug)]
struct Packing {
    d: usize,
    /// Rows of the fused q/k/v weight: `(nh + 2·nkv)·hd`.
    qkv: usize,
    /// `nh·hd`.
    attn: usize,
    ffn: usize,
    bias: bool,
}

impl Packing {
    /// Offsets of ln1, W_qkv, b_qkv, W_o, ln2, W_gu, W_down and the total length.
    fn offsets(&self) -> [usize; 8] {
        let mut o = [0usize; 8];
        let sizes = [
            self.d,
            self.qkv * self.d,
            if self.bias { self.qkv } else { 0 },
            self.d * self.attn,
            self.d,
            2 * self.ffn * self.d,
            self.d * self.ffn,
        ];
        for i in 0..7 {
            o[i + 1] = o[i] + sizes[i];
        }
        o
    }
}

/// Views of the packed parameter vector.
struct Views {
    ln1: Tensor,
    wqkv: Tensor,
    bqkv: Option<Tensor>,
    wo: Tensor,
    ln2: Tensor,
    wgu: Tensor,
    wd: Tensor,
}

impl Views {
    fn of(flat: &Tensor, p: Packing) -> candle_core::Result<Self> {
        let o = p.offsets();
        let part = |i: usize| flat.narrow(0, o[i], o[i + 1] - o[i]);
        Ok(Self {
            ln1: part(0)?,
            wqkv: part(1)?.reshape((p.qkv, p.d))?,
            bqkv: if p.bias { Some(part(2)?) } else { None },
            wo: part(3)?.reshape((p.d, p.attn))?,
            ln2: part(4)?,
            wgu: part(5)?.reshape((2 * p.ffn, p.d))?,
            wd: part(6)?.reshape((p.d, p.ffn))?,
        })
    }
}

/// The attached node: the forward output and the activations the backward needs.
struct LayerOp {
    packing: Packing,
    eps: f64,
    attn_shape: AttnShape,
    scale: f64,
    /// RoPE tables `(B, T, hd)`, rows `[cos | sin]`.
    rope: Tensor,
    /// `(N, d)` output.
    y: Tensor,
    x: Tensor,
    h1: Tensor,
    /// The attention kernel's saved buffer (see `ops::attn`).
    attn: Tensor,
    /// Attention output before `o_proj`, `(N, nh·hd)`.
    o: Tensor,
    x2: Tensor,
    h2: Tensor,
    /// `[gate | up]` pre-activations `(N, 2F)`.
    gu: Tensor,
    /// `silu(gate)·up (N, F)`.
    m: Tensor,
    params: Views,
}

impl CustomOp2 for LayerOp {
    fn name(&self) -> &'static str {
        "luspo-decoder-layer"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((attention::to_cpu_storage(&self.y)?, self.y.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _flat: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let w = &self.params;
        let p = self.packing;
        let (n, d) = (self.x.dim(0)?, p.d);
        let dy = grad.detach().contiguous()?;
        // y = x2 + m W_dᵀ
        let d_wd = dy.t()?.matmul(&self.m)?;
        let dm = dy.matmul(&w.wd)?;
        let dgu = ops::swiglu_packed_bwd_no_grad(&self.gu, &dm)?;
        let d_wgu = dgu.t()?.matmul(&self.h2)?;
        let dh2 = dgu.matmul(&w.wgu)?;
        let (dx2_norm, d_ln2) = ops::rms_norm_bwd_no_grad(&self.x2, &w.ln2, &dh2, self.eps)?;
        let dx2 = (dy + dx2_norm)?;
        // x2 = x + o W_oᵀ
        let d_wo = dx2.t()?.matmul(&self.o)?;
        let d_o = dx2.matmul(&w.wo)?;
        let dqkv = self.attn.apply_op3_no_bwd(
            &d_o.contiguous()?,
            &self.rope,
            &AttnBwdOp {
                shape: self.attn_shape,
                scale: self.scale,
            },
        )?;
        let d_wqkv = dqkv.t()?.matmul(&self.h1)?;
        let dh1 = dqkv.matmul(&w.wqkv)?;
        let (dx_norm, d_ln1) = ops::rms_norm_bwd_no_grad(&self.x, &w.ln1, &dh1, self.eps)?;
        let dx = (dx2 + dx_norm)?;
        let mut parts = vec![d_ln1, d_wqkv.flatten_all()?];
        if p.bias {
            parts.push(dqkv.sum(0)?);
        }
        parts.extend([
            d_wo.flatten_all()?,
            d_ln2,
            d_wgu.flatten_all()?,
            d_wd.flatten_all()?,
        ]);
        let dflat = Tensor::cat(&parts, 0)?;
        debug_assert_eq!(dx.dims(), [n, d]);
        Ok((Some(dx), Some(dflat)))
    }
}

/// One differentiable decoder layer on the CPU: `x (N, d)` → `(N, d)`; `cos`/`sin (B, T, hd/2)` RoPE tables and
/// `bias (B, 1, T, T)` additive mask as for [`attention::attention`]. Gradients reach `x` and every parameter.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decoder_layer(
    x: &Tensor,
    w: &LayerParams,
    cos: &Tensor,
    sin: &Tensor,
    bias: &Tensor,
    dims: AttnDims,
    scale: f64,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let d = x.dim(1)?;
    let packing = Packing {
        d,
        qkv: (dims.nh + 2 * dims.nkv) * dims.hd,
        attn: dims.nh * dims.hd,
        ffn: w.wg.dim(0)?,
        bias: w.bqkv.is_some(),
    };
    let mut parts = vec![
        w.ln1.clone(),
        w.wq.flatten_all()?,
        w.wk.flatten_all()?,
        w.wv.flatten_all()?,
    ];
    if let Some(b) = &w.bqkv {
        parts.extend(b.iter().map(|t| (*t).clone()));
    }
    parts.extend([
        w.wo.flatten_all()?,
        w.ln2.clone(),
        w.wg.flatten_all()?,
        w.wu.flatten_all()?,
        w.wd.flatten_all()?,
    ]);
    let flat = Tensor::cat(&parts, 0)?;
    if flat.dim(0)? != packing.offsets()[7] {
        candle_core::bail!("decoder layer: parameter sizes do not match the config");
    }
    let v = Views::of(&flat.detach(), packing)?;
    let xd = x.detach().contiguous()?;
    let h1 = ops::rms_norm_no_grad(&xd, &v.ln1, eps)?;
    let mut qkv = h1.matmul(&v.wqkv.t()?)?;
    if let Some(b) = &v.bqkv {
        qkv = qkv.broadcast_add(b)?;
    }
    let attn_shape = AttnShape {
        b: dims.b,
        t: dims.t,
        nh: dims.nh,
        nkv: dims.nkv,
        hd: dims.hd,
    };
    let rope = Tensor::cat(&[cos, sin], 2)?.contiguous()?;
    let mask = bias.reshape((dims.b, dims.t, dims.t))?.contiguous()?;
    let attn = qkv.contiguous()?.apply_op3_no_bwd(
        &rope,
        &mask,
        &AttnFwdOp {
            shape: attn_shape,
            scale,
        },
    )?;
    let o = attn
        .narrow(0, 0, attn_shape.out_len())?
        .reshape((x.dim(0)?, packing.attn))?;
    let x2 = (&xd + o.matmul(&v.wo.t()?)?)?;
    let h2 = ops::rms_norm_no_grad(&x2, &v.ln2, eps)?;
    let gu = h2.matmul(&v.wgu.t()?)?;
    let m = ops::swiglu_packed_no_grad(&gu)?;
    let y = (&x2 + m.matmul(&v.wd.t()?)?)?;
    let op = LayerOp {
        packing,
        eps,
        attn_shape,
        scale,
        rope,
        y,
        x: xd,
        h1,
        attn,
        o,
        x2,
        h2,
        gu,
        m,
        params: v,
    };
    x.apply_op2(&flat, op)
}
