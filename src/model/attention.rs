//! Fused causal self-attention for the CPU training path: RoPE, GQA scores, masked softmax and the value mix as one
//! autograd node with a hand-written backward.
//!
//! candle's backward materialises a zero tensor and an addition for every node it visits, so the dozen reshapes,
//! transposes and elementwise ops of a composed attention cost more than the matmuls. Here the forward runs candle's
//! fast no-grad kernels (`rotary_emb::rope`, a masked softmax, batched matmuls) on detached tensors and keeps the
//! intermediates it needs; a `CustomOp3` attaches the result to the graph, and its `bwd` computes the three input
//! gradients directly (softmax backward, the transposed RoPE rotation, GQA sums through the grouped matmuls).
//! Checked against the composed path (`crate::ops::composed_*`) and by f64 finite differences in `tests/model_grad.rs`.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttnDims {
    /// Batch size.
    pub b: usize,
    /// Sequence length.
    pub t: usize,
    /// Query heads.
    pub nh: usize,
    /// Key/value heads.
    pub nkv: usize,
    /// Head width.
    pub hd: usize,
}

/// What the attention backward needs from its forward.
pub(crate) struct AttnSaved {
    dims: AttnDims,
    scale: f64,
    /// Rotated and scaled queries, grouped `(B, nkv, rep·T, hd)`.
    q: Tensor,
    /// Rotated keys `(B, nkv, T, hd)`.
    k: Tensor,
    /// Values `(B, nkv, T, hd)`.
    v: Tensor,
    /// Attention probabilities, grouped `(B, nkv, rep·T, T)`.
    p: Tensor,
    /// RoPE tables `(B, T, hd/2)`.
    cos: Tensor,
    sin: Tensor,
}

/// The attached node: the forward result and what the backward needs.
struct AttentionOp {
    /// `(N, nh·hd)` output, contiguous.
    out: Tensor,
    saved: AttnSaved,
}

/// `(N, heads·hd)` → `(B, heads, T, hd)` contiguous.
fn to_heads(x: &Tensor, d: AttnDims, heads: usize) -> candle_core::Result<Tensor> {
    x.reshape((d.b, d.t, heads, d.hd))?
        .transpose(1, 2)?
        .contiguous()
}

/// `(B, heads, T, hd)` → `(N, heads·hd)` contiguous.
fn from_heads(x: &Tensor, d: AttnDims, heads: usize) -> candle_core::Result<Tensor> {
    x.reshape((d.b, heads, d.t, d.hd))?
        .transpose(1, 2)?
        .reshape((d.b * d.t, heads * d.hd))
}

/// A contiguous tensor's data as an owned CPU storage.
pub(crate) fn to_cpu_storage(t: &Tensor) -> candle_core::Result<CpuStorage> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => CpuStorage::F32(flat.to_vec1::<f32>()?),
        DType::F64 => CpuStorage::F64(flat.to_vec1::<f64>()?),
        DType::BF16 => CpuStorage::BF16(flat.to_vec1::<half::bf16>()?),
        DType::F16 => CpuStorage::F16(flat.to_vec1::<half::f16>()?),
        dt => candle_core::bail!("luspo-attention: unsupported dtype {dt:?}"),
    })
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "luspo-attention"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
        _s3: &CpuStorage,
        _l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((to_cpu_storage(&self.out)?, self.out.shape().clone()))
    }

    fn bwd(
        &self,
        _q_lin: &Tensor,
        _k_lin: &Tensor,
        _v_lin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = self.saved.backward(grad)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

impl AttnSaved {
    /// Gradients `(dq, dk, dv)` `(N, heads·hd)` of the projections for the output gradient `grad (N, nh·hd)`.
    pub(crate) fn backward(&self, grad: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let d = self.dims;
        let rep = d.nh / d.nkv;
        let grad = grad.detach();
        // dO grouped like q: (B, nkv, rep·T, hd)
        let d_o = to_heads(&grad, d, d.nh)?.reshape((d.b, d.nkv, rep * d.t, d.hd))?;
        // O = P V  ⇒  dV = Pᵀ dO (sums the rep query heads of each kv head), dP = dO Vᵀ
        let d_v = self.p.t()?.matmul(&d_o)?;
        let d_p = d_o.matmul(&self.v.t()?)?;
        // softmax backward in one pass: dS = P ⊙ (dP − Σ_j dP⊙P)
        let d_s = crate::ops::softmax_bwd(&self.p, &d_p)?;
        // S = Q_s Kᵀ with Q_s = scale · rope(q):  dQ_rot = scale · dS K,  dK_rot = dSᵀ Q_s
        let d_q = (d_s.matmul(&self.k)? * self.scale)?.reshape((d.b, d.nh, d.t, d.hd))?;
        let d_k = d_s.t()?.matmul(&self.q)?;
        // RoPE is a rotation: its transpose is the rotation by −angle.
        let neg_sin = self.sin.neg()?;
        let d_q = candle_nn::rotary_emb::rope(&d_q.contiguous()?, &self.cos, &neg_sin)?;
        let d_k = candle_nn::rotary_emb::rope(&d_k.contiguous()?, &self.cos, &neg_sin)?;
        Ok((
            from_heads(&d_q, d, d.nh)?,
            from_heads(&d_k, d, d.nkv)?,
            from_heads(&d_v, d, d.nkv)?,
        ))
    }
}

/// No-grad attention forward on detached projections: the output `(N, nh·hd)` (contiguous) and what
/// [`AttnSaved::backward`] needs. Same arguments as [`attention`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_no_grad(
    q_lin: &Tensor,
    k_lin: &Tensor,
    v_lin: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    bias: &Tensor,
    dims: AttnDims,
    scale: f64,
) -> candle_core::Result<(Tensor, AttnSaved)> {
    let d = dims;
    let rep = d.nh / d.nkv;
    let q4 = to_heads(&q_lin.detach(), d, d.nh)?;
    let k4 = to_heads(&k_lin.detach(), d, d.nkv)?;
    let v = to_heads(&v_lin.detach(), d, d.nkv)?;
    let q = (candle_nn::rotary_emb::rope(&q4, cos, sin)? * scale)?.reshape((
        d.b,
        d.nkv,
        rep * d.t,
        d.hd,
    ))?;
    let k = candle_nn::rotary_emb::rope(&k4, cos, sin)?;
    let s = q.matmul(&k.t()?)?.reshape((d.b, d.nh, d.t, d.t))?;
    let mask = bias.broadcast_as((d.b, d.nh, d.t, d.t))?;
    let p = crate::ops::masked_softmax_no_grad(&s, &mask)?.reshape((d.b, d.nkv, rep * d.t, d.t))?;
    let o = p.matmul(&v)?;
    let out = from_heads(&o, d, d.nh)?.contiguous()?;
    let saved = AttnSaved {
        dims,
        scale,
        q,
        k,
        v,
        p,
        cos: cos.clone(),
        sin: sin.clone(),
    };
    Ok((out, saved))
}

/// Differentiable causal self-attention on the CPU: `q_lin (N, nh·hd)`, `k_lin`/`v_lin (N, nkv·hd)` (projections,
/// before RoPE), `cos`/`sin (B, T, hd/2)` RoPE tables, `bias (B, 1, T, T)` additive mask → `(N, nh·hd)`.
/// Scores are scaled by `scale`; GQA shares each kv head among `nh/nkv` consecutive query heads (HF `repeat_kv`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    q_lin: &Tensor,
    k_lin: &Tensor,
    v_lin: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    bias: &Tensor,
    dims: AttnDims,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (out, saved) = forward_no_grad(q_lin, k_lin, v_lin, cos, sin, bias, dims, scale)?;
    q_lin.apply_op3(k_lin, v_lin, AttentionOp { out, saved })
}
