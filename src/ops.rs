//! Differentiable fused ops with hand-written backward passes (candle's own fused ops drop gradients).
//!
//! CONTRACT: every op here has a forward and a backward, agrees with the composed candle version, and is
//! checked by finite differences in f64. Used on the training path of `model`.
//!
//! Each op is a candle `CustomOp` with f32 and f64 CPU kernels over contiguous rows (inputs are made
//! contiguous by the API function). Its `bwd` builds the gradients with a second, gradient-free custom
//! kernel, so one backward step is one pass over the data instead of candle's chain of elementwise ops.
//! On other devices (CUDA) every function falls back to the composed, differentiable candle ops, so model
//! code stays device-generic. Second-order gradients are not supported (the backward kernels are leaves).
//! The `composed_*` functions are the reference implementations used by the tests and the benchmark.
//!
//! Ops (all differentiable, f32/f64, any leading dims):
//! - [`softmax_last_dim`]`(x)`; [`masked_softmax`]`(scores, mask)`; [`scaled_masked_softmax`]`(scores, scale,
//!   mask)` = `softmax(scale*scores + mask)` for attention, mask `(B,1,T,T)` broadcast over heads.
//! - [`log_softmax_gather`]`(logits (...,V), targets (...))` → logp `(...)`; [`token_logprob_entropy`] →
//!   `(logp, entropy)`. Neither builds the `(...,V)` log-softmax graph.
//! - [`lm_head_logprob_entropy`]`(h (N,d), W (V,d), targets (N))` → `(logp, entropy)` of `h · Wᵀ`: the LM head
//!   fused with the above, never forming the `(N, V)` logits or their gradient (`lm_head` module).
//! - [`rms_norm`]`(x, w, eps)`; [`rope`]`(x (B,H,T,D), cos, sin)` (HF rotate_half, cos/sin `(B,T,D)` or `(T,D)`);
//!   [`silu_mul`]`(gate, up)` = `silu(gate) * up`.
//! - [`tune_malloc`]: glibc allocator tuning for training loops (fewer page faults per step); [`tune_candle_threads`]:
//!   candle thread settings for 2-core machines.
//! - `attn` (crate-internal): per-head attention kernels, forward and backward, for the fused decoder layer of
//!   `model::layer`; the `*_no_grad` functions here are that layer's other building blocks.
//! - `gemv` (crate-internal): `x Wᵀ` for the few rows of a decoding step (AVX-512), for generation.
//!
//! Kernels split their rows into blocks of about 16k elements and run the blocks on rayon's current pool. The
//! blocks depend only on the shapes, so results are bitwise identical for any thread count.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType, D,
};
use num_traits::{Float, One, Zero};
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

/// Elements of work per parallel block; smaller kernels run on the calling thread.
const PAR_BLOCK_ELEMS: usize = 16 * 1024;

/// Rows per parallel block for rows of `work_per_row` elements.
fn block_rows(work_per_row: usize) -> usize {
    (PAR_BLOCK_ELEMS / work_per_row.max(1)).max(1)
}

/// Runs `f(first_row, block)` over blocks of whole rows of `out` (`row_len` elements per row), in parallel on
/// rayon's current pool when there is more than one block. Blocks depend only on the sizes, never on the thread
/// count, so results are bitwise the same with any number of threads.
fn par_row_blocks<O: Send>(
    out: &mut [O],
    row_len: usize,
    work_per_row: usize,
    f: impl Fn(usize, &mut [O]) + Sync + Send,
) {
    let rows = out.len().checked_div(row_len).unwrap_or(0);
    let per = block_rows(work_per_row);
    if rows <= per {
        f(0, out);
        return;
    }
    out.par_chunks_mut(per * row_len)
        .enumerate()
        .for_each(|(i, blk)| f(i * per, blk));
}

/// A float element type the CPU kernels run on (f32 or f64).
pub(crate) trait Elem:
    Float + WithDType + std::ops::AddAssign + std::ops::MulAssign
{
    /// `exp`, written so that loops over it vectorise (f32: Cephes polynomial, about 1 ulp; f64: libm).
    fn fexp(self) -> Self;
}

impl Elem for f32 {
    #[inline(always)]
    fn fexp(self) -> f32 {
        // Cephes expf: x = n ln2 + r, |r| <= ln2/2, degree-7 polynomial for exp(r), then scale by 2^n.
        const HI: f32 = 88.376_26;
        const LO: f32 = -87.336_55;
        let x = self.clamp(LO, HI); // NaN stays NaN
                                    // round to nearest via the 1.5 * 2^23 trick (vectorises without SSE4.1 `round`)
        let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
        let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
        let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
            * r
            + 1.666_666_5e-1)
            * r
            + 0.5;
        let e = p * r * r + r + 1.0;
        // n is an integer in [-126, 127] here (NaN casts to 0 and stays NaN through `e`)
        let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
        if self < LO {
            0.0
        } else {
            e * scale
        }
    }
}

impl Elem for f64 {
    #[inline(always)]
    fn fexp(self) -> f64 {
        self.exp()
    }
}

/// `sum_i f(a_i, b_i)` with eight independent accumulators so the loop vectorises.
#[inline(always)]
pub(crate) fn sum2<T: Elem>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += f(x[k], y[k]);
        }
    }
    let mut s = T::zero();
    for (&x, &y) in ra.iter().zip(rb) {
        s += f(x, y);
    }
    acc.iter().fold(s, |u, &v| u + v)
}

/// `sum_i a_i`, vectorised.
#[inline(always)]
pub(crate) fn sum1<T: Elem>(a: &[T]) -> T {
    sum2(a, a, |x, _| x)
}

/// The contiguous data of one op input, or an error naming the op.
pub(crate) fn data<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [T]> {
    let all = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => bail!("{op}: input must be contiguous"),
    }
}

/// Runs `$body` with `$t` bound to f32 or f64 according to `$dtype`, erroring on other dtypes.
macro_rules! float_dispatch {
    ($dtype:expr, $op:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F64 => {
                type $t = f64;
                $body
            }
            dt => bail!("{}: unsupported dtype {dt:?} (expected f32 or f64)", $op),
        }
    };
}

// after `float_dispatch`, which it uses
pub(crate) mod attn;
pub(crate) mod gemv;
mod lm_head;
pub use lm_head::{composed_lm_head_logprob_entropy, lm_head_logprob_entropy};

/// A strided read-only matrix: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<T> {
    /// First element.
    pub(crate) ptr: *const T,
    /// Row stride.
    pub(crate) rs: usize,
    /// Column stride.
    pub(crate) cs: usize,
}

impl<T> Mat<T> {
    /// The matrix at `ptr` with row stride `rs` and column stride `cs` (`rs = 1` reads a row-major buffer transposed).
    pub(crate) fn new(ptr: *const T, rs: usize, cs: usize) -> Self {
        Self { ptr, rs, cs }
    }
}

/// `dst (m×n, row stride dst_rs) = [dst +] scale · a (m×k) · b (k×n)`, single-threaded.
///
/// # Safety
/// Every element addressed through `dst`, `a` and `b` must lie in live allocations, and `dst` must not alias them.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn mm<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    a: Mat<T>,
    b: Mat<T>,
    scale: T,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a.ptr,
        a.cs as isize,
        a.rs as isize,
        b.ptr,
        b.cs as isize,
        b.rs as isize,
        T::one(),
        scale,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// A raw pointer that may cross rayon tasks: every task writes a disjoint region.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: only used to hand disjoint output regions to rayon tasks.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole `Send` wrapper rather than the raw field).
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}

/// Last-dimension size, treating a rank-0 tensor as one row of length 1.
fn last_dim(shape: &Shape) -> usize {
    shape.dims().last().copied().unwrap_or(1)
}

/// `-inf`-safe max of a row (NaN entries are skipped; eight lanes so it vectorises).
pub(crate) fn row_max<T: Elem>(x: &[T]) -> T {
    let mut acc = [T::neg_infinity(); 8];
    let c = x.chunks_exact(8);
    let mut m = c
        .remainder()
        .iter()
        .fold(T::neg_infinity(), |a, &b| if b > a { b } else { a });
    for ch in c {
        for k in 0..8 {
            acc[k] = if ch[k] > acc[k] { ch[k] } else { acc[k] };
        }
    }
    for v in acc {
        m = if v > m { v } else { m };
    }
    m
}

// ---------------------------------------------------------------------------------------------------------
// softmax over the last dimension (optionally with an additive, broadcast mask)
// ---------------------------------------------------------------------------------------------------------

/// Writes softmax(x + mask) of one row into `y` (`mask` may be `None`).
fn softmax_row<T: Elem>(x: &[T], mask: Option<&[T]>, y: &mut [T]) {
    match mask {
        Some(m) => {
            for ((o, &a), &b) in y.iter_mut().zip(x).zip(m) {
                *o = a + b;
            }
        }
        None => y.copy_from_slice(x),
    }
    let mx = row_max(y);
    for o in y.iter_mut() {
        *o = (*o - mx).fexp();
    }
    let inv = T::one() / sum1(y);
    for o in y.iter_mut() {
        *o *= inv;
    }
}

/// Fused softmax over the last dimension.
struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "luspo-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let d = last_dim(l.shape());
        float_dispatch!(s.dtype(), self.name(), T => {
            let x = data::<T>(s, l, self.name())?;
            let mut y = vec![T::zero(); x.len()];
            if d > 0 {
                par_row_blocks(&mut y, d, d, |r0, yb| {
                    for (xr, yr) in x[r0 * d..].chunks_exact(d).zip(yb.chunks_exact_mut(d)) {
                        softmax_row(xr, None, yr);
                    }
                });
            }
            Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
        })
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        softmax_bwd(res, grad).map(Some)
    }
}

/// Gradient-free kernel: `dx = y * (g - sum(g*y))` per row.
struct SoftmaxBwdOp;

impl CustomOp2 for SoftmaxBwdOp {
    fn name(&self) -> &'static str {
        "luspo-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let d = last_dim(l1.shape());
        float_dispatch!(s1.dtype(), self.name(), T => {
            let y = data::<T>(s1, l1, self.name())?;
            let g = data::<T>(s2, l2, self.name())?;
            if y.len() != g.len() {
                bail!("{}: shape mismatch", self.name());
            }
            let mut dx = vec![T::zero(); y.len()];
            if d > 0 {
                par_row_blocks(&mut dx, d, d, |r0, db| {
                    let (y, g) = (&y[r0 * d..], &g[r0 * d..]);
                    for ((yr, gr), dr) in y.chunks_exact(d).zip(g.chunks_exact(d)).zip(db.chunks_exact_mut(d)) {
                        let dot = sum2(yr, gr, |p, q| p * q);
                        for ((o, &p), &q) in dr.iter_mut().zip(yr).zip(gr) {
                            *o = p * (q - dot);
                        }
                    }
                });
            }
            Ok((T::to_cpu_storage_owned(dx), l1.shape().clone()))
        })
    }
}

/// Softmax backward from the output `y` and upstream gradient `g` (device-generic, no graph).
fn softmax_bwd(y: &Tensor, g: &Tensor) -> CResult<Tensor> {
    if y.device().is_cpu() {
        y.contiguous()?
            .apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBwdOp)
    } else {
        let dot = (g * y)?.sum_keepdim(D::Minus1)?;
        y * g.broadcast_sub(&dot)?
    }
}

/// Composed (reference) softmax over the last dimension: candle's differentiable `softmax`.
pub fn composed_softmax_last_dim(x: &Tensor) -> crate::Result<Tensor> {
    Ok(candle_nn::ops::softmax(x, D::Minus1)?)
}

/// Differentiable softmax over the last dimension (fused CPU kernel with a one-pass backward).
pub fn softmax_last_dim(x: &Tensor) -> crate::Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op1(SoftmaxOp)?)
    } else {
        composed_softmax_last_dim(x)
    }
}

/// Fused `softmax(scale * scores + mask)` over the last dimension; the mask is broadcast to the scores.
struct MaskedSoftmaxOp {
    scale: f64,
}

impl CustomOp2 for MaskedSoftmaxOp {
    fn name(&self) -> &'static str {
        "luspo-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        // l2 is the mask broadcast to the scores' shape: arbitrary strides on the leading dims, stride 1 last.
        let dims = l1.dims();
        let d = last_dim(l1.shape());
        if l2.dims() != dims {
            bail!("{}: mask layout does not match the scores", self.name());
        }
        if d > 1 && l2.stride().last() != Some(&1) {
            bail!("{}: mask last dimension must be contiguous", self.name());
        }
        let lead = &dims[..dims.len().saturating_sub(1)];
        let mstride = &l2.stride()[..lead.len()];
        float_dispatch!(s1.dtype(), self.name(), T => {
            let x = data::<T>(s1, l1, self.name())?;
            let mall = s2.as_slice::<T>()?;
            let scale = <T as WithDType>::from_f64(self.scale);
            let mut y = vec![T::zero(); x.len()];
            if d > 0 {
                par_row_blocks(&mut y, d, d, |r0, yb| {
                let mut tmp = vec![T::zero(); d];
                // the multi-index of row r0 over the leading dims
                let mut idx = vec![0usize; lead.len()];
                let mut rest = r0;
                for k in (0..lead.len()).rev() {
                    idx[k] = rest % lead[k];
                    rest /= lead[k];
                }
                for (xr, yr) in x[r0 * d..].chunks_exact(d).zip(yb.chunks_exact_mut(d)) {
                    let off = l2.start_offset()
                        + idx.iter().zip(mstride).map(|(i, s)| i * s).sum::<usize>();
                    let xr = if self.scale != 1.0 {
                        for (t, &a) in tmp.iter_mut().zip(xr) {
                            *t = a * scale;
                        }
                        &tmp[..]
                    } else {
                        xr
                    };
                    softmax_row(xr, Some(&mall[off..off + d]), yr);
                    // advance the multi-index over the leading dims
                    for k in (0..idx.len()).rev() {
                        idx[k] += 1;
                        if idx[k] < lead[k] {
                            break;
                        }
                        idx[k] = 0;
                    }
                }
                });
            }
            Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let dx = softmax_bwd(res, grad)?;
        // `mask` here is the broadcast view; candle routes its gradient back through broadcast_as.
        let dm = if mask.track_op() {
            Some(dx.clone())
        } else {
            None
        };
        let dx = if self.scale != 1.0 {
            (dx * self.scale)?
        } else {
            dx
        };
        Ok((Some(dx), dm))
    }
}

/// Composed (reference) `softmax(scores + mask)` with candle ops.
pub fn composed_masked_softmax(scores: &Tensor, mask: &Tensor) -> crate::Result<Tensor> {
    composed_softmax_last_dim(&scores.broadcast_add(mask)?)
}

/// Differentiable `softmax(scores + mask, -1)`, i.e. [`scaled_masked_softmax`] with scale 1; `mask` (e.g. `(B,1,T,T)` additive causal/padding mask with
/// `-inf` or large negative entries) broadcasts to `scores` (e.g. `(B,H,T,T)`). Rows whose entries are all
/// `-inf` give NaN, as in PyTorch; use a finite large negative value for fully masked rows.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> crate::Result<Tensor> {
    scaled_masked_softmax(scores, 1.0, mask)
}

/// Composed (reference) `softmax(scale * scores + mask)` with candle ops.
pub fn composed_scaled_masked_softmax(
    scores: &Tensor,
    scale: f64,
    mask: &Tensor,
) -> crate::Result<Tensor> {
    composed_masked_softmax(&(scores * scale)?, mask)
}

/// Differentiable attention softmax `softmax(scale * scores + mask, -1)` in one kernel (saves the scaled copy
/// of the scores and its backward); `mask` broadcasts to `scores` as in [`masked_softmax`].
pub fn scaled_masked_softmax(scores: &Tensor, scale: f64, mask: &Tensor) -> crate::Result<Tensor> {
    if !scores.device().is_cpu() {
        return composed_scaled_masked_softmax(scores, scale, mask);
    }
    let mask = mask.to_dtype(scores.dtype())?;
    let (sd, md) = (scores.dims(), mask.dims());
    if sd.last() != md.last() && !md.is_empty() && md.last() != Some(&1) {
        return Err(crate::input_err!(
            "scaled_masked_softmax: mask {:?} does not broadcast to scores {:?}",
            md,
            sd
        ));
    }
    let mask = if md.last() == Some(&1) && sd.last() != Some(&1) {
        // a last-dim broadcast needs a real copy so the kernel can read the row contiguously
        mask.broadcast_as(broadcast_last(md, sd))?.contiguous()?
    } else {
        mask.contiguous()?
    };
    let mb = mask.broadcast_as(sd).map_err(|_| {
        crate::input_err!(
            "scaled_masked_softmax: mask {:?} does not broadcast to scores {:?}",
            md,
            sd
        )
    })?;
    Ok(scores
        .contiguous()?
        .apply_op2(&mb, MaskedSoftmaxOp { scale })?)
}

/// `md` with its last dim replaced by the scores' last dim.
fn broadcast_last(md: &[usize], sd: &[usize]) -> Vec<usize> {
    let mut v = md.to_vec();
    if let (Some(l), Some(&s)) = (v.last_mut(), sd.last()) {
        *l = s;
    }
    v
}

// ---------------------------------------------------------------------------------------------------------
// token log-probability (and entropy) from logits, without materialising log_softmax
// ---------------------------------------------------------------------------------------------------------

/// Per-row statistics `(ln s, max, t)` with `s = sum exp(z - max)` and, if asked, `t = sum p (z - max)`
/// (else 0); `buf` (row length) receives `exp(z - max)`.
fn lse_row<T: Elem>(z: &[T], want_t: bool, buf: &mut [T]) -> (T, T, T) {
    let mx = row_max(z);
    for (b, &v) in buf.iter_mut().zip(z) {
        *b = (v - mx).fexp();
    }
    let s = sum1(buf);
    let t = if want_t {
        // e == 0 (a -inf logit) contributes 0, not 0 * -inf
        sum2(buf, z, |e, v| {
            if e > T::zero() {
                e * (v - mx)
            } else {
                T::zero()
            }
        }) / s
    } else {
        T::zero()
    };
    (s.ln(), mx, t)
}

/// Reads targets (u32) as indices and checks them against the vocabulary size.
fn targets_of<'a>(s: &'a CpuStorage, l: &Layout, v: usize, op: &str) -> CResult<&'a [u32]> {
    let t = data::<u32>(s, l, op)?;
    if let Some(bad) = t.iter().find(|&&i| i as usize >= v) {
        bail!("{op}: target id {bad} out of range for vocabulary size {v}");
    }
    Ok(t)
}

/// Fused log-softmax + gather (+ entropy): output `(..., k)` per row: `[logp, lse]` (k = 2) or
/// `[logp, entropy, lse]` (k = 3). The log-sum-exp column is kept for the backward and never exposed.
struct TokenLogprobOp {
    entropy: bool,
}

impl TokenLogprobOp {
    /// Output columns per row.
    fn k(&self) -> usize {
        if self.entropy {
            3
        } else {
            2
        }
    }

    fn out_shape(&self, targets: &Layout) -> Shape {
        let mut d = targets.dims().to_vec();
        d.push(self.k());
        Shape::from(d)
    }
}

impl CustomOp2 for TokenLogprobOp {
    fn name(&self) -> &'static str {
        "luspo-token-logprob"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let v = last_dim(l1.shape());
        let tg = targets_of(s2, l2, v, self.name())?;
        float_dispatch!(s1.dtype(), self.name(), T => {
            let z = data::<T>(s1, l1, self.name())?;
            if v == 0 || z.len() != tg.len() * v {
                bail!("{}: logits/targets shape mismatch", self.name());
            }
            let k = self.k();
            let mut out = vec![T::zero(); tg.len() * k];
            par_row_blocks(&mut out, k, v, |r0, ob| {
                let mut buf = vec![T::zero(); v];
                for ((zr, &t), o) in z[r0 * v..].chunks_exact(v).zip(&tg[r0..]).zip(ob.chunks_exact_mut(k)) {
                    let (ls, mx, tt) = lse_row(zr, self.entropy, &mut buf);
                    o[0] = zr[t as usize] - mx - ls;
                    if self.entropy {
                        o[1] = ls - tt;
                    }
                    o[k - 1] = mx + ls;
                }
            });
            Ok((T::to_cpu_storage_owned(out), self.out_shape(l2)))
        })
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let dz = if logits.device().is_cpu() {
            // one small (..., 2k) tensor: upstream gradients, then the forward's outputs (incl. lse)
            let g = Tensor::cat(&[grad, res], D::Minus1)?.contiguous()?;
            logits.apply_op3_no_bwd(
                targets,
                &g,
                &TokenLogprobBwdOp {
                    entropy: self.entropy,
                },
            )?
        } else {
            // composed fallback (only reached if a CPU-created graph moved device; kept for completeness)
            let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            let p = lsm.exp()?;
            let oh =
                candle_nn::encoding::one_hot(targets.clone(), logits.dim(D::Minus1)?, 1f32, 0f32)?
                    .to_dtype(logits.dtype())?;
            let gl = grad.narrow(D::Minus1, 0, 1)?;
            let gh = if self.entropy {
                Some(grad.narrow(D::Minus1, 1, 1)?)
            } else {
                None
            };
            let mut dz = (oh - &p)?.broadcast_mul(&gl)?;
            if let Some(gh) = gh {
                let h = res.narrow(D::Minus1, 1, 1)?;
                let dh = (p * lsm.broadcast_add(&h)?)?.neg()?.broadcast_mul(&gh)?;
                dz = (dz + dh)?;
            }
            dz
        };
        Ok((Some(dz), None))
    }
}

/// Gradient-free kernel: `dz = g_lp (onehot - p) - g_H p (log p + H)` per row, with `p = exp(z - lse)`;
/// its third input holds `[upstream grads (k), forward outputs (k)]` per row.
struct TokenLogprobBwdOp {
    entropy: bool,
}

impl CustomOp3 for TokenLogprobBwdOp {
    fn name(&self) -> &'static str {
        "luspo-token-logprob-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let v = last_dim(l1.shape());
        let tg = targets_of(s2, l2, v, self.name())?;
        float_dispatch!(s1.dtype(), self.name(), T => {
            let z = data::<T>(s1, l1, self.name())?;
            let g = data::<T>(s3, l3, self.name())?;
            let k = if self.entropy { 3 } else { 2 };
            if v == 0 || z.len() != tg.len() * v || g.len() != tg.len() * 2 * k {
                bail!("{}: shape mismatch", self.name());
            }
            let mut dz = vec![T::zero(); z.len()];
            par_row_blocks(&mut dz, v, v, |r0, db| {
            let (z, tg, g) = (&z[r0 * v..], &tg[r0..], &g[r0 * 2 * k..]);
            for (((zr, &t), gr), dr) in
                z.chunks_exact(v).zip(tg).zip(g.chunks_exact(2 * k)).zip(db.chunks_exact_mut(v))
            {
                let gl = gr[0];
                let lse = gr[2 * k - 1];
                if self.entropy {
                    let gh = gr[1];
                    let h = gr[k + 1];
                    for (o, &zi) in dr.iter_mut().zip(zr) {
                        let lp = zi - lse;
                        let p = lp.fexp();
                        // p == 0 (e.g. a -inf logit): both terms vanish; avoid 0 * -inf
                        *o = if p > T::zero() { -p * (gl + gh * (lp + h)) } else { T::zero() };
                    }
                } else {
                    for (o, &zi) in dr.iter_mut().zip(zr) {
                        *o = -gl * (zi - lse).fexp();
                    }
                }
                dr[t as usize] += gl;
            }
            });
            Ok((T::to_cpu_storage_owned(dz), l1.shape().clone()))
        })
    }
}

/// Checks logits `(..., V)` against targets `(...)` and returns targets as contiguous u32.
fn check_targets(logits: &Tensor, targets: &Tensor, op: &str) -> crate::Result<Tensor> {
    let ld = logits.dims();
    if ld.is_empty() || &ld[..ld.len() - 1] != targets.dims() {
        return Err(crate::input_err!(
            "{op}: logits {:?} must be targets' shape {:?} plus a vocabulary dimension",
            ld,
            targets.dims()
        ));
    }
    let t = if targets.dtype() == DType::U32 {
        targets.clone()
    } else {
        targets.to_dtype(DType::U32)?
    };
    Ok(t.contiguous()?)
}

/// Composed (reference) `log_softmax(logits).gather(targets)` with candle ops.
pub fn composed_log_softmax_gather(logits: &Tensor, targets: &Tensor) -> crate::Result<Tensor> {
    let t = check_targets(logits, targets, "log_softmax_gather")?;
    let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(lsm
        .gather(&t.unsqueeze(D::Minus1)?, D::Minus1)?
        .squeeze(D::Minus1)?)
}

/// Composed (reference) token logprob and entropy `-(p * log p).sum(-1)` with candle ops.
pub fn composed_token_logprob_entropy(
    logits: &Tensor,
    targets: &Tensor,
) -> crate::Result<(Tensor, Tensor)> {
    let t = check_targets(logits, targets, "token_logprob_entropy")?;
    let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let lp = lsm
        .gather(&t.unsqueeze(D::Minus1)?, D::Minus1)?
        .squeeze(D::Minus1)?;
    let h = (lsm.exp()? * &lsm)?.sum(D::Minus1)?.neg()?;
    Ok((lp, h))
}

/// Differentiable `log_softmax(logits, -1)` gathered at `targets`: logits `(..., V)`, targets `(...)`
/// (u32 or i64 ids) → logp `(...)`. Never materialises the `(..., V)` log-softmax.
pub fn log_softmax_gather(logits: &Tensor, targets: &Tensor) -> crate::Result<Tensor> {
    if !logits.device().is_cpu() {
        return composed_log_softmax_gather(logits, targets);
    }
    let t = check_targets(logits, targets, "log_softmax_gather")?;
    let out = logits
        .contiguous()?
        .apply_op2(&t, TokenLogprobOp { entropy: false })?;
    Ok(out.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?)
}

/// Differentiable token logprob and entropy in one pass: logits `(..., V)`, targets `(...)` →
/// `(logp (...), entropy (...))`; the backward handles upstream gradients on both outputs.
pub fn token_logprob_entropy(logits: &Tensor, targets: &Tensor) -> crate::Result<(Tensor, Tensor)> {
    if !logits.device().is_cpu() {
        return composed_token_logprob_entropy(logits, targets);
    }
    let t = check_targets(logits, targets, "token_logprob_entropy")?;
    let out = logits
        .contiguous()?
        .apply_op2(&t, TokenLogprobOp { entropy: true })?;
    let lp = out.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
    let h = out.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
    Ok((lp, h))
}

// ---------------------------------------------------------------------------------------------------------
// RMSNorm
// ---------------------------------------------------------------------------------------------------------

/// Fused RMSNorm `x / sqrt(mean(x^2) + eps) * w` over the last dimension.
struct RmsNormOp {
    eps: f64,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "luspo-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let d = last_dim(l1.shape());
        float_dispatch!(s1.dtype(), self.name(), T => {
            let x = data::<T>(s1, l1, self.name())?;
            let w = data::<T>(s2, l2, self.name())?;
            if w.len() != d {
                bail!("{}: weight has {} entries, expected {d}", self.name(), w.len());
            }
            let eps = <T as WithDType>::from_f64(self.eps);
            let dn = <T as WithDType>::from_f64(d as f64);
            let mut y = vec![T::zero(); x.len()];
            if d > 0 {
                par_row_blocks(&mut y, d, d, |r0, yb| {
                    for (xr, yr) in x[r0 * d..].chunks_exact(d).zip(yb.chunks_exact_mut(d)) {
                        let ms = xr.iter().fold(T::zero(), |a, &b| a + b * b) / dn;
                        let r = T::one() / (ms + eps).sqrt();
                        for ((o, &a), &b) in yr.iter_mut().zip(xr).zip(w) {
                            *o = a * r * b;
                        }
                    }
                });
            }
            Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let d = x.dim(D::Minus1)?;
        let rows = x.elem_count() / d.max(1);
        let both = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormBwdOp { eps: self.eps })?;
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = if w.track_op() {
            Some(both.narrow(0, rows, 1)?.reshape(w.shape())?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// Gradient-free kernel: output `(rows+1, D)` = `[dx rows; dw]`.
struct RmsNormBwdOp {
    eps: f64,
}

impl CustomOp3 for RmsNormBwdOp {
    fn name(&self) -> &'static str {
        "luspo-rms-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let d = last_dim(l1.shape());
        float_dispatch!(s1.dtype(), self.name(), T => {
            let x = data::<T>(s1, l1, self.name())?;
            let w = data::<T>(s2, l2, self.name())?;
            let g = data::<T>(s3, l3, self.name())?;
            if w.len() != d || g.len() != x.len() {
                bail!("{}: shape mismatch", self.name());
            }
            let rows = x.len().checked_div(d).unwrap_or(0);
            let eps = <T as WithDType>::from_f64(self.eps);
            let dn = <T as WithDType>::from_f64(d as f64);
            let mut out = vec![T::zero(); x.len() + d];
            if d > 0 {
                let (dx, dw) = out.split_at_mut(x.len());
                // per-block partial dw, summed in block order (deterministic for any thread count)
                let per = block_rows(d) * d;
                let partials: Vec<Vec<T>> = dx
                    .par_chunks_mut(per)
                    .enumerate()
                    .map(|(bi, db)| {
                        let (x, g) = (&x[bi * per..], &g[bi * per..]);
                        let mut pw = vec![T::zero(); d];
                        for ((xr, gr), dr) in x.chunks_exact(d).zip(g.chunks_exact(d)).zip(db.chunks_exact_mut(d)) {
                            let ms = xr.iter().fold(T::zero(), |a, &b| a + b * b) / dn;
                            let r = T::one() / (ms + eps).sqrt();
                            // c = mean(g * w * n), n = x * r
                            let mut c = T::zero();
                            for ((&a, &b), &q) in xr.iter().zip(w).zip(gr) {
                                c += q * b * a;
                            }
                            let c = c * r / dn;
                            for (((o, &a), &b), (&q, dwj)) in
                                dr.iter_mut().zip(xr).zip(w).zip(gr.iter().zip(pw.iter_mut()))
                            {
                                let n = a * r;
                                *o = r * (q * b - n * c);
                                *dwj += q * n;
                            }
                        }
                        pw
                    })
                    .collect();
                for pw in partials {
                    for (a, b) in dw.iter_mut().zip(pw) {
                        *a += b;
                    }
                }
            }
            Ok((T::to_cpu_storage_owned(out), Shape::from((rows + 1, d))))
        })
    }
}

/// No-grad RMSNorm of contiguous rows (the kernel of [`rms_norm`]), for the fused decoder layer.
pub(crate) fn rms_norm_no_grad(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(w, &RmsNormOp { eps })
}

/// No-grad RMSNorm backward: `(dx, dw)` for upstream `g` (the backward kernel of [`rms_norm`]).
pub(crate) fn rms_norm_bwd_no_grad(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f64,
) -> CResult<(Tensor, Tensor)> {
    let d = x.dim(D::Minus1)?;
    let rows = x.elem_count() / d.max(1);
    let both = x
        .contiguous()?
        .apply_op3_no_bwd(w, &g.contiguous()?, &RmsNormBwdOp { eps })?;
    Ok((
        both.narrow(0, 0, rows)?.reshape(x.shape())?,
        both.narrow(0, rows, 1)?.reshape(w.shape())?,
    ))
}

/// Composed (reference) RMSNorm: candle's differentiable `rms_norm_slow` semantics in f32/f64.
pub fn composed_rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> crate::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)?)
}

/// Differentiable RMSNorm over the last dimension, `x / sqrt(mean(x^2) + eps) * w`; gradients to `x` and `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> crate::Result<Tensor> {
    if !x.device().is_cpu() {
        return composed_rms_norm(x, w, eps);
    }
    let d = x.dim(D::Minus1)?;
    if w.dims() != [d] {
        return Err(crate::input_err!(
            "rms_norm: weight shape {:?} does not match hidden size {d}",
            w.dims()
        ));
    }
    let w = w.to_dtype(x.dtype())?.contiguous()?;
    Ok(x.contiguous()?.apply_op2(&w, RmsNormOp { eps })?)
}

// ---------------------------------------------------------------------------------------------------------
// SwiGLU gate: silu(gate) * up
// ---------------------------------------------------------------------------------------------------------

/// Fused `silu(gate) * up`.
struct SiluMulOp;

impl CustomOp2 for SiluMulOp {
    fn name(&self) -> &'static str {
        "luspo-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        float_dispatch!(s1.dtype(), self.name(), T => {
            let a = data::<T>(s1, l1, self.name())?;
            let b = data::<T>(s2, l2, self.name())?;
            if a.len() != b.len() {
                bail!("{}: shape mismatch", self.name());
            }
            let mut y = vec![T::zero(); a.len()];
            par_row_blocks(&mut y, 1, 1, |i0, yb| {
                for ((o, &x), &u) in yb.iter_mut().zip(&a[i0..]).zip(&b[i0..]) {
                    *o = x / (T::one() + (-x).fexp()) * u;
                }
            });
            Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SiluMulBwdOp)?;
        let dg = both.narrow(0, 0, n)?.reshape(gate.shape())?;
        let du = both.narrow(0, n, n)?.reshape(up.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

/// Gradient-free kernel: output `(2n)` = `[d gate; d up]`.
struct SiluMulBwdOp;

impl CustomOp3 for SiluMulBwdOp {
    fn name(&self) -> &'static str {
        "luspo-silu-mul-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        float_dispatch!(s1.dtype(), self.name(), T => {
            let a = data::<T>(s1, l1, self.name())?;
            let b = data::<T>(s2, l2, self.name())?;
            let g = data::<T>(s3, l3, self.name())?;
            let n = a.len();
            if b.len() != n || g.len() != n {
                bail!("{}: shape mismatch", self.name());
            }
            let mut out = vec![T::zero(); 2 * n];
            let (dg, du) = out.split_at_mut(n);
            let per = PAR_BLOCK_ELEMS;
            dg.par_chunks_mut(per).zip(du.par_chunks_mut(per)).enumerate().for_each(|(bi, (dgb, dub))| {
                let o = bi * per;
                for i in 0..dgb.len() {
                    let x = a[o + i];
                    let s = T::one() / (T::one() + (-x).fexp());
                    let silu = x * s;
                    dgb[i] = g[o + i] * b[o + i] * s * (T::one() + x * (T::one() - s));
                    dub[i] = g[o + i] * silu;
                }
            });
            Ok((T::to_cpu_storage_owned(out), Shape::from(2 * n)))
        })
    }
}

/// No-grad SwiGLU of packed rows: `gu (N, 2F)` = `[gate | up]` per row → `silu(gate) * up (N, F)`.
struct PackedSwigluOp;

/// `silu(x)` and its sigmoid.
#[inline(always)]
fn silu_sig<T: Elem>(x: T) -> (T, T) {
    let s = T::one() / (T::one() + (-x).fexp());
    (x * s, s)
}

impl CustomOp1 for PackedSwigluOp {
    fn name(&self) -> &'static str {
        "luspo-swiglu-packed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (n, f2) = l.shape().dims2()?;
        let f = f2 / 2;
        float_dispatch!(s.dtype(), self.name(), T => {
            let gu = data::<T>(s, l, self.name())?;
            let mut m = vec![T::zero(); n * f];
            if f > 0 {
                par_row_blocks(&mut m, f, f2, |r0, mb| {
                    for (gr, mr) in gu[r0 * f2..].chunks_exact(f2).zip(mb.chunks_exact_mut(f)) {
                        let (g, u) = gr.split_at(f);
                        for ((o, &x), &y) in mr.iter_mut().zip(g).zip(u) {
                            *o = silu_sig(x).0 * y;
                        }
                    }
                });
            }
            Ok((T::to_cpu_storage_owned(m), Shape::from((n, f))))
        })
    }
}

/// No-grad backward of [`PackedSwigluOp`]: `(gu (N, 2F), dm (N, F))` → `dgu (N, 2F)`.
struct PackedSwigluBwdOp;

impl CustomOp2 for PackedSwigluBwdOp {
    fn name(&self) -> &'static str {
        "luspo-swiglu-packed-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (n, f2) = l1.shape().dims2()?;
        let f = f2 / 2;
        if l2.dims() != [n, f] {
            bail!("{}: shape mismatch", self.name());
        }
        float_dispatch!(s1.dtype(), self.name(), T => {
            let gu = data::<T>(s1, l1, self.name())?;
            let dm = data::<T>(s2, l2, self.name())?;
            let mut out = vec![T::zero(); n * f2];
            if f > 0 {
                par_row_blocks(&mut out, f2, f2, |r0, ob| {
                    let rows = gu[r0 * f2..].chunks_exact(f2).zip(dm[r0 * f..].chunks_exact(f));
                    for ((gr, dr), or) in rows.zip(ob.chunks_exact_mut(f2)) {
                        let (g, u) = gr.split_at(f);
                        let (dg, du) = or.split_at_mut(f);
                        for j in 0..f {
                            let (silu, sg) = silu_sig(g[j]);
                            dg[j] = dr[j] * u[j] * sg * (T::one() + g[j] * (T::one() - sg));
                            du[j] = dr[j] * silu;
                        }
                    }
                });
            }
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
}

/// No-grad `silu(gate) * up` on packed `(N, 2F)` rows `[gate | up]`, for the fused decoder layer.
pub(crate) fn swiglu_packed_no_grad(gu: &Tensor) -> CResult<Tensor> {
    gu.contiguous()?.apply_op1_no_bwd(&PackedSwigluOp)
}

/// No-grad gradient of [`swiglu_packed_no_grad`] w.r.t. its packed input, for upstream `dm (N, F)`.
pub(crate) fn swiglu_packed_bwd_no_grad(gu: &Tensor, dm: &Tensor) -> CResult<Tensor> {
    gu.contiguous()?
        .apply_op2_no_bwd(&dm.contiguous()?, &PackedSwigluBwdOp)
}

/// Composed (reference) `silu(gate) * up` with candle ops.
pub fn composed_silu_mul(gate: &Tensor, up: &Tensor) -> crate::Result<Tensor> {
    Ok((gate.silu()? * up)?)
}

/// Differentiable SwiGLU gate `silu(gate) * up` (same shapes); gradients to both inputs.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> crate::Result<Tensor> {
    if !gate.device().is_cpu() {
        return composed_silu_mul(gate, up);
    }
    if gate.dims() != up.dims() {
        return Err(crate::input_err!(
            "silu_mul: gate {:?} and up {:?} differ in shape",
            gate.dims(),
            up.dims()
        ));
    }
    let up = up.to_dtype(gate.dtype())?.contiguous()?;
    Ok(gate.contiguous()?.apply_op2(&up, SiluMulOp)?)
}

// ---------------------------------------------------------------------------------------------------------
// RoPE (HF rotate_half layout)
// ---------------------------------------------------------------------------------------------------------

/// Fused HF RoPE `x * cos + rotate_half(x) * sin` on `(B,H,T,D)`; with `transpose` it applies the adjoint
/// `g * cos + rotate_half^T(g * sin)` (the backward). `cos`/`sin` are `(B,T,D)` or `(T,D)`.
struct RopeOp {
    transpose: bool,
}

impl CustomOp3 for RopeOp {
    fn name(&self) -> &'static str {
        "luspo-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (b, h, t, d) = l1.shape().dims4()?;
        if d % 2 != 0 {
            bail!("{}: head dim {d} must be even", self.name());
        }
        let half = d / 2;
        float_dispatch!(s1.dtype(), self.name(), T => {
            let x = data::<T>(s1, l1, self.name())?;
            let c = data::<T>(s2, l2, self.name())?;
            let s = data::<T>(s3, l3, self.name())?;
            let per_batch = if c.len() == b * t * d {
                true
            } else if c.len() == t * d {
                false
            } else {
                bail!("{}: cos/sin size {} fits neither (B,T,D) nor (T,D)", self.name(), c.len());
            };
            if s.len() != c.len() {
                bail!("{}: cos and sin differ in size", self.name());
            }
            let mut y = vec![T::zero(); x.len()];
            for (r, (xr, yr)) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).enumerate() {
                let ti = r % t;
                let bi = r / (h * t);
                let off = if per_batch { (bi * t + ti) * d } else { ti * d };
                let (cr, sr) = (&c[off..off + d], &s[off..off + d]);
                if self.transpose {
                    for j in 0..half {
                        yr[j] = xr[j] * cr[j] + xr[j + half] * sr[j + half];
                        yr[j + half] = xr[j + half] * cr[j + half] - xr[j] * sr[j];
                    }
                } else {
                    for j in 0..half {
                        yr[j] = xr[j] * cr[j] - xr[j + half] * sr[j];
                        yr[j + half] = xr[j + half] * cr[j + half] + xr[j] * sr[j + half];
                    }
                }
            }
            Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad
            .contiguous()?
            .apply_op3_no_bwd(cos, sin, &RopeOp { transpose: true })?;
        Ok((Some(dx), None, None))
    }
}

/// HF `rotate_half`: `cat(-x2, x1)` on the last dimension.
fn rotate_half(x: &Tensor) -> crate::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    Ok(Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?)
}

/// Composed (reference) HF RoPE `x * cos + rotate_half(x) * sin` with candle ops (same shapes as [`rope`]).
pub fn composed_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> crate::Result<Tensor> {
    let (cos, sin) = if cos.rank() == 3 {
        (cos.unsqueeze(1)?, sin.unsqueeze(1)?)
    } else {
        (cos.clone(), sin.clone())
    };
    Ok((x.broadcast_mul(&cos)? + rotate_half(x)?.broadcast_mul(&sin)?)?)
}

/// Differentiable HF RoPE (rotate_half layout): `x` `(B,H,T,D)`, `cos`/`sin` `(B,T,D)` (per-row positions) or
/// `(T,D)`, laid out as `cat(freqs, freqs)`. Gradient to `x` only: `cos`/`sin` are treated as constants.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> crate::Result<Tensor> {
    if !x.device().is_cpu() {
        return composed_rope(x, cos, sin);
    }
    let (b, _h, t, d) = x.dims4()?;
    let ok = |c: &Tensor| c.dims() == [b, t, d] || c.dims() == [t, d];
    if !ok(cos) || !ok(sin) || cos.dims() != sin.dims() || d % 2 != 0 {
        return Err(crate::input_err!(
            "rope: x {:?} needs cos/sin of shape (B,T,D) or (T,D) with even D, got {:?} and {:?}",
            x.dims(),
            cos.dims(),
            sin.dims()
        ));
    }
    let cos = cos.to_dtype(x.dtype())?.detach().contiguous()?;
    let sin = sin.to_dtype(x.dtype())?.detach().contiguous()?;
    Ok(x.contiguous()?
        .apply_op3(&cos, &sin, RopeOp { transpose: false })?)
}

/// Thread settings for candle's CPU backend; each applies only when the user has not set the variable.
/// - `CANDLE_BARRIER_POOL_SPIN_LIMIT=0`: candle's elementwise workers otherwise busy-wait 25,000 rounds after every
///   op and compete for the cores with the matmul threads (on 2 cores the tiny train step took 97 ms instead of 79).
/// - `RAYON_NUM_THREADS` = candle's default count, computed once: without it candle recounts the physical cores
///   from `/proc/cpuinfo` on every matmul (2 % of the tiny train step).
///
/// Call once at program start, before any tensor op or thread pool exists.
pub fn tune_candle_threads() {
    const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN).is_none() {
        std::env::set_var(SPIN, "0");
    }
    const THREADS: &str = "RAYON_NUM_THREADS";
    if std::env::var_os(THREADS).is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var(THREADS, n.to_string());
    }
}

/// Tunes glibc malloc for training loops (no-op elsewhere): keeps freed memory instead of returning it to the
/// OS, so the many tensor-sized buffers of each step do not page-fault and get zeroed again. Measured on the
/// tiny train step (examples/ops_bench): see the ops report. Call once at program start.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_TOP_PAD: i32 = -2;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator tuning parameters; it is thread-safe in glibc and these
        // values are within the documented ranges (mmap threshold at most 32 MiB on 64-bit).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 512 << 20);
            mallopt(M_TOP_PAD, 64 << 20);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Elem;

    #[test]
    fn fexp_f32_matches_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (x.fexp() as f64, (x as f64).exp());
            worst = worst.max((a - b).abs() / b);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!((-100f32).fexp(), 0.0);
        assert_eq!(f32::NEG_INFINITY.fexp(), 0.0);
        assert_eq!(0f32.fexp(), 1.0);
        assert!(f32::NAN.fexp().is_nan());
    }
}
