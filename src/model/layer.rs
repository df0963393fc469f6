//! A whole decoder layer as one autograd node on the CPU training path (the fast path of `Transformer::forward`).
//!
//! candle's backward allocates a zeroed gradient and adds into it for every input of every graph node, which for a
//! small model costs as much as the matmuls. Here the layer's parameters are packed into one flat vector (a `cat`
//! of the `Var`s, cheap at parameter size), the forward runs no-grad kernels on detached tensors, and a
//! `CustomOp2 (x, params)` attaches the result; its `bwd` computes `dx` and the packed parameter gradient directly.
//! The packing also fuses the q/k/v projections into one matmul and gate/up into another.
//!
//! Math (HF Llama/Qwen2; the biases are optional: q/k/v (Qwen2, `attention_bias`), o (`attention_bias`), MLP
//! (`mlp_bias`)):
//! `h1 = rms(x)·ln1; [q|k|v] = h1 W_qkvᵀ + b_qkv; x2 = x + attn(q,k,v) W_oᵀ + b_o; h2 = rms(x2)·ln2;`
//! `[g|u] = h2 W_guᵀ + b_gu; y = x2 + (silu(g)·u) W_downᵀ + b_down`.
//! Checked against the composed reference and by f64 finite differences (`tests/model_grad.rs`).
//!
//! With LoRA the base weights are frozen: the node's second input is then the packed adapters
//! (`A_q, B_q, A_k, B_k, …` for the targeted projections in `lora::TARGETS` order), each targeted projection adds
//! `s·(x Aᵀ)Bᵀ`, and the backward computes `dx` and the adapter gradients only, never the (frozen) weight gradients:
//! with `u = x Aᵀ`, `dB = s·dyᵀu`, `du = s·dy B`, `dA = duᵀx`, `dx += du A`.

use super::lora::Adapter;
use crate::ops;
use crate::ops::attn::{AttnBwdOp, AttnFwdOp, AttnShape};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

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
    /// `o_proj.bias (d)`.
    pub bo: Option<&'a Tensor>,
    /// `post_attention_layernorm.weight (d)`.
    pub ln2: &'a Tensor,
    /// gate projection weight `(F, d)`.
    pub wg: &'a Tensor,
    /// up projection weight `(F, d)`.
    pub wu: &'a Tensor,
    /// `down_proj.weight (d, F)`.
    pub wd: &'a Tensor,
    /// gate, up and down biases, all or none.
    pub bmlp: Option<[&'a Tensor; 3]>,
    /// LoRA adapters of q, k, v, o, gate, up, down (`lora::TARGETS` order); any present freezes the base.
    pub lora: [Option<&'a Adapter>; 7],
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
    qkv_bias: bool,
    o_bias: bool,
    mlp_bias: bool,
}

/// The packed segments, in order.
#[derive(Clone, Copy)]
enum Seg {
    Ln1,
    Wqkv,
    Bqkv,
    Wo,
    Bo,
    Ln2,
    Wgu,
    Bgu,
    Wd,
    Bd,
}

impl Packing {
    /// Entries of each segment (0 for absent biases), in packing order.
    fn sizes(&self) -> [usize; 10] {
        let on = |b: bool, n: usize| if b { n } else { 0 };
        [
            self.d,
            self.qkv * self.d,
            on(self.qkv_bias, self.qkv),
            self.d * self.attn,
            on(self.o_bias, self.d),
            self.d,
            2 * self.ffn * self.d,
            on(self.mlp_bias, 2 * self.ffn),
            self.d * self.ffn,
            on(self.mlp_bias, self.d),
        ]
    }

    /// `(offset, length)` of a segment.
    fn range(&self, seg: Seg) -> (usize, usize) {
        let sizes = self.sizes();
        let i = seg as usize;
        (sizes[..i].iter().sum(), sizes[i])
    }

    /// Length of the packed vector.
    fn total(&self) -> usize {
        self.sizes().iter().sum()
    }
}

/// Views of the packed parameter vector.
struct Views {
    ln1: Tensor,
    wqkv: Tensor,
    bqkv: Option<Tensor>,
    wo: Tensor,
    bo: Option<Tensor>,
    ln2: Tensor,
    wgu: Tensor,
    bgu: Option<Tensor>,
    wd: Tensor,
    bd: Option<Tensor>,
}

impl Views {
    fn of(flat: &Tensor, p: Packing) -> candle_core::Result<Self> {
        let part = |seg: Seg| {
            let (o, n) = p.range(seg);
            flat.narrow(0, o, n)
        };
        let opt = |on: bool, seg: Seg| if on { part(seg).map(Some) } else { Ok(None) };
        Ok(Self {
            ln1: part(Seg::Ln1)?,
            wqkv: part(Seg::Wqkv)?.reshape((p.qkv, p.d))?,
            bqkv: opt(p.qkv_bias, Seg::Bqkv)?,
            wo: part(Seg::Wo)?.reshape((p.d, p.attn))?,
            bo: opt(p.o_bias, Seg::Bo)?,
            ln2: part(Seg::Ln2)?,
            wgu: part(Seg::Wgu)?.reshape((2 * p.ffn, p.d))?,
            bgu: opt(p.mlp_bias, Seg::Bgu)?,
            wd: part(Seg::Wd)?.reshape((p.d, p.ffn))?,
            bd: opt(p.mlp_bias, Seg::Bd)?,
        })
    }
}

/// A contiguous tensor's data as an owned CPU storage (the forward result a custom op hands to candle).
fn to_cpu_storage(t: &Tensor) -> candle_core::Result<CpuStorage> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => CpuStorage::F32(flat.to_vec1::<f32>()?),
        DType::F64 => CpuStorage::F64(flat.to_vec1::<f64>()?),
        dt => candle_core::bail!("luspo-decoder-layer: unsupported dtype {dt:?}"),
    })
}

/// `x Wᵀ (+ b)`.
fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// A projection's adapter as the node keeps it: detached `A`, `B`, the scale and the saved `u = x Aᵀ`.
struct SavedLora {
    ad: Adapter,
    u: Tensor,
}

/// `(u, s·u Bᵀ)` with `u = x Aᵀ`.
fn lora_fwd(x: &Tensor, a: &Adapter) -> candle_core::Result<(Tensor, Tensor)> {
    let u = x.matmul(&a.a.t()?)?;
    let d = (u.matmul(&a.b.t()?)? * a.scale)?;
    Ok((u, d))
}

/// `(dA, dB, dx)` of `y = s·(x Aᵀ)Bᵀ` given `dy` (contiguous).
fn lora_bwd(
    x: &Tensor,
    l: &SavedLora,
    dy: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let db = (dy.t()?.matmul(&l.u)? * l.ad.scale)?;
    let du = (dy.matmul(&l.ad.b)? * l.ad.scale)?;
    let da = du.t()?.matmul(x)?;
    let dx = du.matmul(&l.ad.a)?;
    Ok((da, db, dx))
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
    /// The adapters (`lora::TARGETS` order); any present = frozen base, second input = packed adapters.
    lora: [Option<SavedLora>; 7],
}

impl LayerOp {
    fn frozen(&self) -> bool {
        self.lora.iter().any(Option::is_some)
    }

    /// Adds the adapters' input gradients to `dx_in` (the gradient of their shared input `x_in`) for the targets
    /// `idx`, whose outputs are the column blocks `(offset, width)` of `dy`; stores `(dA, dB)` in `out`.
    fn lora_back(
        &self,
        idx: &[(usize, usize, usize)],
        x_in: &Tensor,
        dy: &Tensor,
        mut dx_in: Tensor,
        out: &mut [Option<(Tensor, Tensor)>; 7],
    ) -> candle_core::Result<Tensor> {
        for &(j, off, width) in idx {
            if let Some(l) = &self.lora[j] {
                let g = if off == 0 && width == dy.dim(1)? {
                    dy.clone()
                } else {
                    dy.narrow(1, off, width)?.contiguous()?
                };
                let (da, db, dx) = lora_bwd(x_in, l, &g)?;
                dx_in = (dx_in + dx)?;
                out[j] = Some((da, db));
            }
        }
        Ok(dx_in)
    }
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
        Ok((to_cpu_storage(&self.y)?, self.y.shape().clone()))
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
        let frozen = self.frozen();
        let kvw = (p.qkv - p.attn) / 2;
        let mut lg: [Option<(Tensor, Tensor)>; 7] = Default::default();
        let dy = grad.detach().contiguous()?;
        // y = x2 + m W_dᵀ
        let dm = dy.matmul(&w.wd)?;
        let dm = self.lora_back(&[(6, 0, p.d)], &self.m, &dy, dm, &mut lg)?;
        let dgu = ops::swiglu_packed_bwd_no_grad(&self.gu, &dm)?;
        let dh2 = dgu.matmul(&w.wgu)?;
        let dh2 = self.lora_back(
            &[(4, 0, p.ffn), (5, p.ffn, p.ffn)],
            &self.h2,
            &dgu,
            dh2,
            &mut lg,
        )?;
        let (dx2_norm, d_ln2) = ops::rms_norm_bwd_no_grad(&self.x2, &w.ln2, &dh2, self.eps)?;
        let dx2 = (&dy + dx2_norm)?;
        // x2 = x + o W_oᵀ
        let d_o = dx2.matmul(&w.wo)?;
        let d_o = self.lora_back(&[(3, 0, p.d)], &self.o, &dx2, d_o, &mut lg)?;
        let dqkv = self.attn.apply_op3_no_bwd(
            &d_o.contiguous()?,
            &self.rope,
            &AttnBwdOp {
                shape: self.attn_shape,
                scale: self.scale,
            },
        )?;
        let dh1 = dqkv.matmul(&w.wqkv)?;
        let dh1 = self.lora_back(
            &[(0, 0, p.attn), (1, p.attn, kvw), (2, p.attn + kvw, kvw)],
            &self.h1,
            &dqkv,
            dh1,
            &mut lg,
        )?;
        let (dx_norm, d_ln1) = ops::rms_norm_bwd_no_grad(&self.x, &w.ln1, &dh1, self.eps)?;
        let dx = (&dx2 + dx_norm)?;
        if frozen {
            // Only the adapters train: no weight gradient is computed.
            let mut parts = vec![];
            for (da, db) in lg.into_iter().flatten() {
                parts.extend([da.flatten_all()?, db.flatten_all()?]);
            }
            return Ok((Some(dx), Some(Tensor::cat(&parts, 0)?)));
        }
        let d_wd = dy.t()?.matmul(&self.m)?;
        let d_wgu = dgu.t()?.matmul(&self.h2)?;
        let d_wo = dx2.t()?.matmul(&self.o)?;
        let d_wqkv = dqkv.t()?.matmul(&self.h1)?;
        // a bias gradient is the column sum of its output's gradient
        let mut parts = vec![d_ln1, d_wqkv.flatten_all()?];
        if p.qkv_bias {
            parts.push(dqkv.sum(0)?);
        }
        parts.push(d_wo.flatten_all()?);
        if p.o_bias {
            parts.push(dx2.sum(0)?);
        }
        parts.extend([d_ln2, d_wgu.flatten_all()?]);
        if p.mlp_bias {
            parts.push(dgu.sum(0)?);
        }
        parts.push(d_wd.flatten_all()?);
        if p.mlp_bias {
            parts.push(dy.sum(0)?);
        }
        let dflat = Tensor::cat(&parts, 0)?;
        Ok((Some(dx), Some(dflat)))
    }
}

/// Adds the adapters `idx` (`(target, width)`, in column order) to `y`, whose column blocks they produce from the
/// shared input `x`; saves them with their `u` into `saved`.
fn add_lora_blocks(
    y: Tensor,
    x: &Tensor,
    idx: &[(usize, usize)],
    ads: &[Option<Adapter>; 7],
    saved: &mut [Option<SavedLora>; 7],
) -> candle_core::Result<Tensor> {
    if idx.iter().all(|&(j, _)| ads[j].is_none()) {
        return Ok(y);
    }
    let n = x.dim(0)?;
    let mut parts = Vec::with_capacity(idx.len());
    for &(j, width) in idx {
        match &ads[j] {
            Some(a) => {
                let (u, d) = lora_fwd(x, a)?;
                saved[j] = Some(SavedLora { ad: a.clone(), u });
                parts.push(d);
            }
            None => parts.push(Tensor::zeros((n, width), y.dtype(), y.device())?),
        }
    }
    let delta = if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(&parts, 1)?
    };
    y + delta
}

/// One differentiable decoder layer on the CPU: `x (N, d)` → `(N, d)`; `rope (B, T, hd)` RoPE rows `[cos | sin]`
/// and `mask (B, T, T)` additive causal and key-padding mask, as `ops::attn` reads them. Gradients reach `x` and
/// every parameter.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decoder_layer(
    x: &Tensor,
    w: &LayerParams,
    rope: &Tensor,
    mask: &Tensor,
    dims: AttnShape,
    scale: f64,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let d = x.dim(1)?;
    let packing = Packing {
        d,
        qkv: (dims.nh + 2 * dims.nkv) * dims.hd,
        attn: dims.nh * dims.hd,
        ffn: w.wg.dim(0)?,
        qkv_bias: w.bqkv.is_some(),
        o_bias: w.bo.is_some(),
        mlp_bias: w.bmlp.is_some(),
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
    parts.push(w.wo.flatten_all()?);
    if let Some(b) = w.bo {
        parts.push(b.clone());
    }
    parts.extend([w.ln2.clone(), w.wg.flatten_all()?, w.wu.flatten_all()?]);
    if let Some([bg, bu, _]) = w.bmlp {
        parts.extend([bg.clone(), bu.clone()]);
    }
    parts.push(w.wd.flatten_all()?);
    if let Some([_, _, bd]) = w.bmlp {
        parts.push(bd.clone());
    }
    let flat = Tensor::cat(&parts, 0)?;
    if flat.dim(0)? != packing.total() {
        candle_core::bail!("decoder layer: parameter sizes do not match the config");
    }
    let v = Views::of(&flat.detach(), packing)?;
    let ads: [Option<Adapter>; 7] = w.lora.map(|a| a.map(Adapter::detached));
    let mut saved: [Option<SavedLora>; 7] = Default::default();
    let kvw = dims.nkv * dims.hd;
    let ffn = packing.ffn;
    let xd = x.detach().contiguous()?;
    let h1 = ops::rms_norm_no_grad(&xd, &v.ln1, eps)?;
    let qkv = linear(&h1, &v.wqkv, v.bqkv.as_ref())?;
    let qkv = add_lora_blocks(
        qkv,
        &h1,
        &[(0, packing.attn), (1, kvw), (2, kvw)],
        &ads,
        &mut saved,
    )?;
    let attn = qkv
        .contiguous()?
        .apply_op3_no_bwd(rope, mask, &AttnFwdOp { shape: dims, scale })?;
    let o = attn
        .narrow(0, 0, dims.out_len())?
        .reshape((x.dim(0)?, packing.attn))?;
    let yo = linear(&o, &v.wo, v.bo.as_ref())?;
    let x2 = (&xd + add_lora_blocks(yo, &o, &[(3, d)], &ads, &mut saved)?)?;
    let h2 = ops::rms_norm_no_grad(&x2, &v.ln2, eps)?;
    let gu = linear(&h2, &v.wgu, v.bgu.as_ref())?;
    let gu = add_lora_blocks(gu, &h2, &[(4, ffn), (5, ffn)], &ads, &mut saved)?;
    let m = ops::swiglu_packed_no_grad(&gu)?;
    let yd = linear(&m, &v.wd, v.bd.as_ref())?;
    let y = (&x2 + add_lora_blocks(yd, &m, &[(6, d)], &ads, &mut saved)?)?;
    let op = LayerOp {
        packing,
        eps,
        attn_shape: dims,
        scale,
        rope: rope.clone(),
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
        lora: saved,
    };
    if op.frozen() {
        // The frozen base is no input of the node: the packed adapters are, so only they get gradients.
        let mut parts = vec![];
        for a in w.lora.iter().flatten() {
            parts.extend([a.a.flatten_all()?, a.b.flatten_all()?]);
        }
        return x.apply_op2(&Tensor::cat(&parts, 0)?, op);
    }
    x.apply_op2(&flat, op)
}
