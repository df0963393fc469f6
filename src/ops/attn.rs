//! Causal self-attention kernels for the fused decoder layer (CPU, f32/f64): RoPE, scores, masked softmax and the
//! value mix, forward and backward, one (batch row, head) at a time.
//!
//! Each head's products are small (T×hd by hd×T), so instead of batched matmuls over transposed copies the kernels
//! run one single-threaded `gemm` per head straight on the strided q/k/v columns and spread the heads over rayon.
//! The work split depends only on the shapes, so results do not depend on the thread count.
//!
//! Layouts: `qkv (N, W)` with `N = B·T` rows `[q (nh·hd) | k (nkv·hd) | v (nkv·hd) | …]`; `rope (B, T, hd)` rows
//! `[cos (hd/2) | sin (hd/2)]` (HF rotate_half convention, attention factor included); `mask (B, T, T)` additive.
//! The forward output is one flat buffer `[out (N·nh·hd) | q_rot (B·nh·T·hd) | k_rot (B·nkv·T·hd) | v (B·nkv·T·hd) |
//! p (B·nh·T·T)]`: the attention output followed by what the backward needs.

use super::{data, mm, row_max, sum1, sum2, CResult, Elem, Mat, SendPtr};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Shape, WithDType};
use rayon::prelude::*;

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttnShape {
    /// Batch rows.
    pub b: usize,
    /// Sequence length.
    pub t: usize,
    /// Query heads.
    pub nh: usize,
    /// Key/value heads (GQA: query head `h` reads kv head `h / (nh/nkv)`).
    pub nkv: usize,
    /// Head width.
    pub hd: usize,
}

impl AttnShape {
    fn n(&self) -> usize {
        self.b * self.t
    }
    /// Width of the q/k/v part of a `qkv` row.
    pub(crate) fn qkv_width(&self) -> usize {
        (self.nh + 2 * self.nkv) * self.hd
    }
    /// Sizes of the parts of the forward's flat output.
    fn parts(&self) -> [usize; 5] {
        let (b, t, hd) = (self.b, self.t, self.hd);
        [
            self.n() * self.nh * hd,
            b * self.nh * t * hd,
            b * self.nkv * t * hd,
            b * self.nkv * t * hd,
            b * self.nh * t * t,
        ]
    }
    /// Length of the forward's flat output.
    pub(crate) fn saved_len(&self) -> usize {
        self.parts().iter().sum()
    }
    /// Length of the attention output at the start of the flat output.
    pub(crate) fn out_len(&self) -> usize {
        self.parts()[0]
    }
}

/// RoPE on one row of width `hd` (`cs` = `[cos | sin]` halves), times `scale`; `inverse` rotates by −angle
/// (the transpose, used by the backward).
#[inline(always)]
fn rope_row<T: Elem>(x: &[T], cs: &[T], y: &mut [T], scale: T, inverse: bool) {
    let half = x.len() / 2;
    let (c, s) = cs.split_at(half);
    for j in 0..half {
        let (a, b) = (x[j], x[j + half]);
        let (cj, sj) = (c[j], s[j]);
        if inverse {
            y[j] = (a * cj + b * sj) * scale;
            y[j + half] = (b * cj - a * sj) * scale;
        } else {
            y[j] = (a * cj - b * sj) * scale;
            y[j + half] = (b * cj + a * sj) * scale;
        }
    }
}

/// `softmax(x + mask)` of one row, in place (separate passes so each loop vectorises).
#[inline(always)]
fn softmax_row_in_place<T: Elem>(x: &mut [T], mask: &[T]) {
    for (v, &m) in x.iter_mut().zip(mask) {
        *v += m;
    }
    let mx = row_max(x);
    for v in x.iter_mut() {
        *v = (*v - mx).fexp();
    }
    let inv = T::one() / sum1(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// The forward kernel; see the module doc for the layouts.
fn forward<T: Elem>(s: AttnShape, scale: T, qkv: &[T], rope: &[T], mask: &[T]) -> Vec<T> {
    let AttnShape { t, nh, nkv, hd, .. } = s;
    let (w, rep) = (s.qkv_width(), nh / nkv);
    let [n_out, n_q, n_k, n_v, _] = s.parts();
    let mut buf = vec![T::zero(); s.saved_len()];
    let (out, rest) = buf.split_at_mut(n_out);
    let (qr, rest) = rest.split_at_mut(n_q);
    let (kr, rest) = rest.split_at_mut(n_k);
    let (vh, p) = rest.split_at_mut(n_v);
    // keys (rotated) and values, per (batch row, kv head)
    kr.par_chunks_mut(t * hd)
        .zip(vh.par_chunks_mut(t * hd))
        .enumerate()
        .for_each(|(bg, (kb, vb))| {
            let (bi, g) = (bg / nkv, bg % nkv);
            for ti in 0..t {
                let row = &qkv[(bi * t + ti) * w..][..w];
                let cs = &rope[(bi * t + ti) * hd..][..hd];
                let k0 = nh * hd + g * hd;
                let v0 = (nh + nkv) * hd + g * hd;
                rope_row(
                    &row[k0..k0 + hd],
                    cs,
                    &mut kb[ti * hd..][..hd],
                    T::one(),
                    false,
                );
                vb[ti * hd..][..hd].copy_from_slice(&row[v0..v0 + hd]);
            }
        });
    let (kr, vh) = (&*kr, &*vh);
    let out_ptr = SendPtr(out.as_mut_ptr());
    qr.par_chunks_mut(t * hd)
        .zip(p.par_chunks_mut(t * t))
        .enumerate()
        .for_each(|(bh, (qb, pb))| {
            let (bi, h) = (bh / nh, bh % nh);
            let g = h / rep;
            for ti in 0..t {
                let row = &qkv[(bi * t + ti) * w..][..w];
                let cs = &rope[(bi * t + ti) * hd..][..hd];
                rope_row(
                    &row[h * hd..][..hd],
                    cs,
                    &mut qb[ti * hd..][..hd],
                    scale,
                    false,
                );
            }
            let kg = &kr[(bi * nkv + g) * t * hd..][..t * hd];
            let vg = &vh[(bi * nkv + g) * t * hd..][..t * hd];
            // SAFETY: all views lie inside their buffers; `pb` and this head's output columns are written by this
            // task only.
            unsafe {
                let q = Mat::new(qb.as_ptr(), hd, 1);
                let k_t = Mat::new(kg.as_ptr(), 1, hd);
                mm(t, t, hd, pb.as_mut_ptr(), t, false, q, k_t, T::one());
            }
            let mb = &mask[bi * t * t..][..t * t];
            for (pr, mr) in pb.chunks_exact_mut(t).zip(mb.chunks_exact(t)) {
                softmax_row_in_place(pr, mr);
            }
            unsafe {
                let dst = out_ptr.get().add(bi * t * nh * hd + h * hd);
                let pm = Mat::new(pb.as_ptr(), t, 1);
                let v = Mat::new(vg.as_ptr(), hd, 1);
                mm(t, hd, t, dst, nh * hd, false, pm, v, T::one());
            }
        });
    buf
}

/// The backward kernel: `d_out (N, nh·hd)` → `dqkv (N, W)` (`[dq | dk | dv]` per row).
fn backward<T: Elem>(s: AttnShape, scale: T, saved: &[T], d_out: &[T], rope: &[T]) -> Vec<T> {
    let AttnShape { b, t, nh, nkv, hd } = s;
    let (w, rep) = (s.qkv_width(), nh / nkv);
    let [n_out, n_q, n_k, n_v, _] = s.parts();
    let qr = &saved[n_out..][..n_q];
    let kr = &saved[n_out + n_q..][..n_k];
    let vh = &saved[n_out + n_q + n_k..][..n_v];
    let p = &saved[n_out + n_q + n_k + n_v..];
    let mut dqkv = vec![T::zero(); s.n() * w];
    let dst = SendPtr(dqkv.as_mut_ptr());
    (0..b * nkv).into_par_iter().for_each(|bg| {
        let (bi, g) = (bg / nkv, bg % nkv);
        let kg = &kr[bg * t * hd..][..t * hd];
        let vg = &vh[bg * t * hd..][..t * hd];
        let mut dk = vec![T::zero(); t * hd];
        let mut dv = vec![T::zero(); t * hd];
        let mut dq = vec![T::zero(); t * hd];
        let mut ds = vec![T::zero(); t * t];
        for h in g * rep..(g + 1) * rep {
            let bh = bi * nh + h;
            let ph = &p[bh * t * t..][..t * t];
            let qh = &qr[bh * t * hd..][..t * hd];
            let d_o = Mat::new(d_out[bi * t * nh * hd + h * hd..].as_ptr(), nh * hd, 1);
            // SAFETY: every view lies inside its buffer; the temporaries are this task's own.
            unsafe {
                // O = P V: dV += Pᵀ dO, dP = dO Vᵀ
                let p_t = Mat::new(ph.as_ptr(), 1, t);
                mm(
                    t,
                    hd,
                    t,
                    dv.as_mut_ptr(),
                    hd,
                    h > g * rep,
                    p_t,
                    d_o,
                    T::one(),
                );
                let v_t = Mat::new(vg.as_ptr(), 1, hd);
                mm(t, t, hd, ds.as_mut_ptr(), t, false, d_o, v_t, T::one());
            }
            // softmax backward: dS = P ⊙ (dP − Σ_j dP⊙P)
            for (dr, pr) in ds.chunks_exact_mut(t).zip(ph.chunks_exact(t)) {
                let dot = sum2(dr, pr, |a, b| a * b);
                for (x, &pv) in dr.iter_mut().zip(pr) {
                    *x = pv * (*x - dot);
                }
            }
            // S = Q_s Kᵀ (Q_s = scale · rope(q)): dQ_rot = scale · dS K, dK_rot += dSᵀ Q_s
            unsafe {
                let d_s = Mat::new(ds.as_ptr(), t, 1);
                let k = Mat::new(kg.as_ptr(), hd, 1);
                mm(t, hd, t, dq.as_mut_ptr(), hd, false, d_s, k, scale);
                let d_s_t = Mat::new(ds.as_ptr(), 1, t);
                let q = Mat::new(qh.as_ptr(), hd, 1);
                mm(
                    t,
                    hd,
                    t,
                    dk.as_mut_ptr(),
                    hd,
                    h > g * rep,
                    d_s_t,
                    q,
                    T::one(),
                );
            }
            // RoPE backward (the inverse rotation) into this head's dq columns
            for ti in 0..t {
                let cs = &rope[(bi * t + ti) * hd..][..hd];
                // SAFETY: row bi·T+ti, columns h·hd.. of dqkv belong to this task (query head h of kv group g).
                let row = unsafe {
                    std::slice::from_raw_parts_mut(dst.get().add((bi * t + ti) * w + h * hd), hd)
                };
                rope_row(&dq[ti * hd..][..hd], cs, row, T::one(), true);
            }
        }
        for ti in 0..t {
            let cs = &rope[(bi * t + ti) * hd..][..hd];
            // SAFETY: the k and v columns of kv head g in row bi·T+ti belong to this task.
            let (krow, vrow) = unsafe {
                let base = dst.get().add((bi * t + ti) * w);
                (
                    std::slice::from_raw_parts_mut(base.add(nh * hd + g * hd), hd),
                    std::slice::from_raw_parts_mut(base.add((nh + nkv) * hd + g * hd), hd),
                )
            };
            rope_row(&dk[ti * hd..][..hd], cs, krow, T::one(), true);
            vrow.copy_from_slice(&dv[ti * hd..][..hd]);
        }
    });
    dqkv
}

/// No-grad forward as a candle op: `(qkv (N, W), rope (B, T, hd), mask (B, T, T))` → the flat buffer of the module
/// doc.
pub(crate) struct AttnFwdOp {
    /// Shapes.
    pub shape: AttnShape,
    /// Score scale (1/√hd).
    pub scale: f64,
}

/// No-grad backward as a candle op: `(saved, d_out (N, nh·hd), rope (B, T, hd))` → `dqkv (N, W)`.
pub(crate) struct AttnBwdOp {
    /// Shapes.
    pub shape: AttnShape,
    /// Score scale (1/√hd).
    pub scale: f64,
}

/// Checks the element counts of the op inputs.
fn check(name: &str, got: [usize; 3], want: [usize; 3]) -> CResult<()> {
    if got != want {
        bail!("{name}: input sizes {got:?}, expected {want:?}");
    }
    Ok(())
}

impl CustomOp3 for AttnFwdOp {
    fn name(&self) -> &'static str {
        "luspo-attention-fwd"
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
        let s = self.shape;
        if s.nkv == 0 || !s.nh.is_multiple_of(s.nkv) || !s.hd.is_multiple_of(2) {
            bail!("{}: bad head layout {s:?}", self.name());
        }
        float_dispatch!(s1.dtype(), self.name(), T => {
            let qkv = data::<T>(s1, l1, self.name())?;
            let rope = data::<T>(s2, l2, self.name())?;
            let mask = data::<T>(s3, l3, self.name())?;
            let want = [s.n() * s.qkv_width(), s.n() * s.hd, s.b * s.t * s.t];
            check(self.name(), [qkv.len(), rope.len(), mask.len()], want)?;
            let out = forward(s, <T as WithDType>::from_f64(self.scale), qkv, rope, mask);
            Ok((T::to_cpu_storage_owned(out), Shape::from(s.saved_len())))
        })
    }
}

impl CustomOp3 for AttnBwdOp {
    fn name(&self) -> &'static str {
        "luspo-attention-bwd"
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
        let s = self.shape;
        float_dispatch!(s1.dtype(), self.name(), T => {
            let saved = data::<T>(s1, l1, self.name())?;
            let d_out = data::<T>(s2, l2, self.name())?;
            let rope = data::<T>(s3, l3, self.name())?;
            let want = [s.saved_len(), s.out_len(), s.n() * s.hd];
            check(self.name(), [saved.len(), d_out.len(), rope.len()], want)?;
            let d = backward(s, <T as WithDType>::from_f64(self.scale), saved, d_out, rope);
            Ok((T::to_cpu_storage_owned(d), Shape::from((s.n(), s.qkv_width()))))
        })
    }
}
