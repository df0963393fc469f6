//! The LM head fused with the token log-prob and entropy (CPU, f32/f64): `(logp, H)` of `h · Wᵀ` at the targets
//! without materialising the `(N, V)` logits or their gradient.
//!
//! The logits are formed one tile at a time (`TILE_ROWS` rows × `TILE_COLS` vocabulary columns, which stays in
//! cache) and folded into running per-row statistics (max, Σ exp, Σ exp·(z − max), the target's logit), as
//! flash attention does. The backward recomputes each tile (one more product than the unfused head: the price of
//! never storing the logits), turns it into `dz` in place and adds `dz · W` to `dh` and `dzᵀ · h` to `dW`.
//!
//! Work is split into tasks of (vocabulary part, row group) that depend only on the shapes, so results are the
//! same for any thread count: each task owns its statistics, its `dW` rows of its vocabulary part, and a partial
//! `dh` for its vocabulary part; partials are summed in a fixed order. Row groups beyond one exist only for small
//! vocabularies (fewer than eight parts), where their `dW` partials are small.

use super::{
    composed_token_logprob_entropy, data, mm, row_max, sum1, sum2, CResult, Elem, Mat, SendPtr,
};
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType, D,
};
use num_traits::{One, Zero};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;

/// Rows of one logits tile.
const TILE_ROWS: usize = 128;
/// Vocabulary columns of one logits tile.
const TILE_COLS: usize = 512;
/// Tasks the work is split into (vocabulary parts × row groups), enough to balance a few threads.
const TASKS: usize = 8;

/// How the `(N, V)` logits are split into tasks and tiles.
#[derive(Clone, Copy, Debug)]
struct Plan {
    n: usize,
    v: usize,
    d: usize,
    /// Vocabulary parts and the tile columns each spans.
    parts: usize,
    cols_per_part: usize,
    /// Row groups and the tile rows each spans.
    groups: usize,
    rows_per_group: usize,
}

impl Plan {
    fn new(n: usize, v: usize, d: usize) -> Plan {
        let col_tiles = v.div_ceil(TILE_COLS).max(1);
        let per = col_tiles.div_ceil(TASKS.min(col_tiles));
        let parts = col_tiles.div_ceil(per);
        let row_tiles = n.div_ceil(TILE_ROWS).max(1);
        let groups = TASKS.div_ceil(parts).min(row_tiles);
        let rows_per = row_tiles.div_ceil(groups);
        Plan {
            n,
            v,
            d,
            parts,
            cols_per_part: per * TILE_COLS,
            groups: row_tiles.div_ceil(rows_per),
            rows_per_group: rows_per * TILE_ROWS,
        }
    }

    fn cols(&self, part: usize) -> Range<usize> {
        (part * self.cols_per_part).min(self.v)..((part + 1) * self.cols_per_part).min(self.v)
    }

    fn rows(&self, group: usize) -> Range<usize> {
        (group * self.rows_per_group).min(self.n)..((group + 1) * self.rows_per_group).min(self.n)
    }

    fn tasks(&self) -> Vec<(usize, usize)> {
        (0..self.parts)
            .flat_map(|p| (0..self.groups).map(move |g| (p, g)))
            .collect()
    }

    /// Runs `f(rows, cols, z)` for every tile of task `(part, group)`, columns outer and rows inner, with `z`
    /// (row stride `TILE_COLS`) holding that tile of `h · Wᵀ`.
    ///
    /// # Safety
    /// `h` must hold `n × d` and `w` `v × d` elements.
    unsafe fn for_each_tile<T: Elem>(
        &self,
        (part, group): (usize, usize),
        h: *const T,
        w: *const T,
        mut f: impl FnMut(Range<usize>, Range<usize>, &mut [T]),
    ) {
        let d = self.d;
        let mut z = vec![T::zero(); TILE_ROWS * TILE_COLS];
        let (cols, rows) = (self.cols(part), self.rows(group));
        for c0 in cols.clone().step_by(TILE_COLS) {
            let cw = TILE_COLS.min(cols.end - c0);
            for r0 in rows.clone().step_by(TILE_ROWS) {
                let rw = TILE_ROWS.min(rows.end - r0);
                let a = Mat::new(h.add(r0 * d), d, 1);
                let b = Mat::new(w.add(c0 * d), 1, d);
                mm(rw, cw, d, z.as_mut_ptr(), TILE_COLS, false, a, b, T::one());
                f(r0..r0 + rw, c0..c0 + cw, &mut z);
            }
        }
    }
}

/// Running statistics of one row over some vocabulary columns: max `m`, `s = Σ exp(z − m)`,
/// `u = Σ exp(z − m)·(z − m)`, and the target's logit if it lies in those columns.
#[derive(Clone, Copy)]
struct RowStats<T> {
    m: T,
    s: T,
    u: T,
    target_logit: T,
}

impl<T: Elem> RowStats<T> {
    fn empty() -> Self {
        Self {
            m: T::neg_infinity(),
            s: T::zero(),
            u: T::zero(),
            target_logit: T::zero(),
        }
    }

    /// Moves the reference max to `m ≥ self.m`.
    fn rebase(&mut self, m: T) {
        if self.s > T::zero() {
            let a = (self.m - m).fexp();
            self.u = a * (self.u + (self.m - m) * self.s);
            self.s = a * self.s;
        }
        self.m = m;
    }

    /// Folds in the logits `z`; `e` (same length) is scratch.
    fn add_logits(&mut self, z: &[T], e: &mut [T]) {
        let mx = row_max(z);
        if mx == T::neg_infinity() {
            return;
        }
        if mx > self.m {
            self.rebase(mx);
        }
        let m = self.m;
        for (o, &v) in e.iter_mut().zip(z) {
            *o = (v - m).fexp();
        }
        self.s += sum1(e);
        // exp == 0 (a -inf logit) contributes 0, not 0 * -inf
        self.u += sum2(e, z, |e, v| {
            if e > T::zero() {
                e * (v - m)
            } else {
                T::zero()
            }
        });
    }

    /// Folds in another part's statistics.
    fn merge(&mut self, o: &Self) {
        // an empty part adds nothing; a NaN sum is added so that it reaches the result
        if o.s != T::zero() {
            let m = if o.m > self.m { o.m } else { self.m };
            self.rebase(m);
            let mut o = *o;
            o.rebase(m);
            self.s += o.s;
            self.u += o.u;
        }
    }
}

/// The forward: `(N, 3)` per row `[logp, entropy, lse]`; the log-sum-exp is kept for the backward.
struct LmHeadLogprobOp {
    targets: Arc<Vec<u32>>,
}

/// Checks hidden rows `lh (N, d)`, head `lw (V, d)` and `targets` against each other and returns the plan.
fn plan(lh: &Layout, lw: &Layout, targets: &[u32]) -> CResult<Plan> {
    let (n, d) = lh.shape().dims2()?;
    let (v, dw) = lw.shape().dims2()?;
    if d != dw || n != targets.len() {
        bail!(
            "lm_head_logprob_entropy: hidden {:?}, head {:?} and {} targets do not fit",
            lh.dims(),
            lw.dims(),
            targets.len()
        );
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
        bail!("lm_head_logprob_entropy: target id {bad} out of range for vocabulary size {v}");
    }
    Ok(Plan::new(n, v, d))
}

impl CustomOp2 for LmHeadLogprobOp {
    fn name(&self) -> &'static str {
        "luspo-lm-head-logprob"
    }

    fn cpu_fwd(
        &self,
        sh: &CpuStorage,
        lh: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let plan = plan(lh, lw, &self.targets)?;
        let n = plan.n;
        float_dispatch!(sh.dtype(), self.name(), T => {
            let h = data::<T>(sh, lh, self.name())?;
            let w = data::<T>(sw, lw, self.name())?;
            let mut stats = vec![RowStats::<T>::empty(); plan.parts * n];
            let sp = SendPtr(stats.as_mut_ptr());
            let tg = &self.targets;
            plan.tasks().into_par_iter().for_each(|task| {
                let mut e = vec![T::zero(); TILE_COLS];
                // SAFETY: task (part, group) writes only the statistics of its part's rows of its group.
                let st = unsafe { std::slice::from_raw_parts_mut(sp.get().add(task.0 * n), n) };
                unsafe {
                    plan.for_each_tile(task, h.as_ptr(), w.as_ptr(), |rows, cols, z| {
                        for (i, r) in rows.enumerate() {
                            let zr = &z[i * TILE_COLS..i * TILE_COLS + cols.len()];
                            st[r].add_logits(zr, &mut e[..cols.len()]);
                            let t = tg[r] as usize;
                            if cols.contains(&t) {
                                st[r].target_logit = zr[t - cols.start];
                            }
                        }
                    });
                }
            });
            let mut out = vec![T::zero(); n * 3];
            for (r, o) in out.chunks_exact_mut(3).enumerate() {
                let mut all = RowStats::empty();
                for p in 0..plan.parts {
                    all.merge(&stats[p * n + r]);
                }
                let target_part = tg[r] as usize / plan.cols_per_part;
                let ls = all.s.ln();
                let lse = all.m + ls;
                o[0] = stats[target_part * n + r].target_logit - lse;
                o[1] = ls - all.u / all.s;
                o[2] = lse;
            }
            Ok((T::to_cpu_storage_owned(out), Shape::from((n, 3))))
        })
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (need_dh, need_dw) = (h.track_op(), w.track_op());
        if !need_dh && !need_dw {
            return Ok((None, None));
        }
        // one small (N, 6) tensor: upstream gradients, then the forward's outputs (incl. lse)
        let g = Tensor::cat(&[grad, res], D::Minus1)?.contiguous()?;
        let bwd = LmHeadLogprobBwdOp {
            targets: self.targets.clone(),
            need_dh,
            need_dw,
        };
        let flat = h.apply_op3_no_bwd(w, &g, &bwd)?;
        let (n, d) = h.dims2()?;
        let v = w.dim(0)?;
        let dh = need_dh
            .then(|| flat.narrow(0, 0, n * d)?.reshape((n, d)))
            .transpose()?;
        let at = if need_dh { n * d } else { 0 };
        let dw = need_dw
            .then(|| flat.narrow(0, at, v * d)?.reshape((v, d)))
            .transpose()?;
        Ok((dh, dw))
    }
}

/// Gradient-free backward: inputs `h`, `W` and `[upstream grads (3), forward outputs (3)]` per row; output the
/// flat `[dh (N·d) if needed | dW (V·d) if needed]`. Per logit `dz = g_lp (onehot − p) − g_H p (log p + H)`.
struct LmHeadLogprobBwdOp {
    targets: Arc<Vec<u32>>,
    need_dh: bool,
    need_dw: bool,
}

impl CustomOp3 for LmHeadLogprobBwdOp {
    fn name(&self) -> &'static str {
        "luspo-lm-head-logprob-bwd"
    }

    fn cpu_fwd(
        &self,
        sh: &CpuStorage,
        lh: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let plan = plan(lh, lw, &self.targets)?;
        let (n, v, d) = (plan.n, plan.v, plan.d);
        float_dispatch!(sh.dtype(), self.name(), T => {
            let h = data::<T>(sh, lh, self.name())?;
            let w = data::<T>(sw, lw, self.name())?;
            let g = data::<T>(sg, lg, self.name())?;
            if g.len() != n * 6 {
                bail!("{}: gradient shape mismatch", self.name());
            }
            let dh_len = if self.need_dh { n * d } else { 0 };
            let dw_len = if self.need_dw { v * d } else { 0 };
            let mut out = vec![T::zero(); dh_len + dw_len];
            // Partials only where several tasks add to the same rows; a single part or group writes `out` itself.
            let dh_parts = self.need_dh && plan.parts > 1;
            let dw_parts = self.need_dw && plan.groups > 1;
            let mut dh_part = vec![T::zero(); if dh_parts { plan.parts * n * d } else { 0 }];
            let mut dw_part = vec![T::zero(); if dw_parts { plan.groups * v * d } else { 0 }];
            let (dh_out, dw_out) = out.split_at_mut(dh_len);
            let dh_base = SendPtr(if dh_parts { dh_part.as_mut_ptr() } else { dh_out.as_mut_ptr() });
            let dw_base = SendPtr(if dw_parts { dw_part.as_mut_ptr() } else { dw_out.as_mut_ptr() });
            let tg = &self.targets;
            plan.tasks().into_par_iter().for_each(|(part, group)| {
                // SAFETY: each task writes the dh rows of its group in its part's partial (or, with one part, in
                // `out`) and the dW rows of its part in its group's partial (or, with one group, in `out`).
                let dh = unsafe { dh_base.get().add(if dh_parts { part * n * d } else { 0 }) };
                let dw = unsafe { dw_base.get().add(if dw_parts { group * v * d } else { 0 }) };
                let (first_col, first_row) = (plan.cols(part).start, plan.rows(group).start);
                unsafe {
                    plan.for_each_tile((part, group), h.as_ptr(), w.as_ptr(), |rows, cols, z| {
                        let (rw, cw) = (rows.len(), cols.len());
                        for (i, r) in rows.clone().enumerate() {
                            let gr = &g[r * 6..r * 6 + 6];
                            let (gl, gh, ent, lse) = (gr[0], gr[1], gr[4], gr[5]);
                            let zr = &mut z[i * TILE_COLS..i * TILE_COLS + cw];
                            for o in zr.iter_mut() {
                                let lp = *o - lse;
                                let p = lp.fexp();
                                // p == 0 (e.g. a -inf logit): both terms vanish; avoid 0 * -inf
                                *o = if p > T::zero() { -p * (gl + gh * (lp + ent)) } else { T::zero() };
                            }
                            let t = tg[r] as usize;
                            if cols.contains(&t) {
                                zr[t - cols.start] += gl;
                            }
                        }
                        if self.need_dw {
                            // dW[cols] (+)= dzᵀ · h[rows]
                            let a = Mat::new(z.as_ptr(), 1, TILE_COLS);
                            let b = Mat::new(h.as_ptr().add(rows.start * d), d, 1);
                            let acc = rows.start != first_row;
                            mm(cw, d, rw, dw.add(cols.start * d), d, acc, a, b, T::one());
                        }
                        if self.need_dh {
                            // dh[rows] (+)= dz · W[cols]
                            let a = Mat::new(z.as_ptr(), TILE_COLS, 1);
                            let b = Mat::new(w.as_ptr().add(cols.start * d), d, 1);
                            let acc = cols.start != first_col;
                            mm(rw, d, cw, dh.add(rows.start * d), d, acc, a, b, T::one());
                        }
                    });
                }
            });
            if dh_parts {
                for p in dh_part.chunks_exact(n * d) {
                    dh_out.iter_mut().zip(p).for_each(|(o, &x)| *o += x);
                }
            }
            if dw_parts {
                for p in dw_part.chunks_exact(v * d) {
                    dw_out.iter_mut().zip(p).for_each(|(o, &x)| *o += x);
                }
            }
            let len = out.len();
            Ok((T::to_cpu_storage_owned(out), Shape::from(len)))
        })
    }
}

/// Differentiable `token_logprob_entropy(h · Wᵀ, targets)`: hidden rows `(N, d)`, head `W (V, d)`, targets `(N)`
/// (u32 or i64) → `(logp (N), entropy (N))`, never forming the `(N, V)` logits or their gradient (CPU f32/f64;
/// elsewhere the composed ops).
pub fn lm_head_logprob_entropy(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
) -> crate::Result<(Tensor, Tensor)> {
    let (n, d) = h.dims2()?;
    let (_, dw) = w.dims2()?;
    if d != dw || targets.dims() != [n] {
        return Err(crate::input_err!(
            "lm_head_logprob_entropy: hidden {:?}, head {:?} and targets {:?} do not fit",
            h.dims(),
            w.dims(),
            targets.dims()
        ));
    }
    let fused = h.device().is_cpu() && matches!(h.dtype(), DType::F32 | DType::F64);
    if !fused {
        let logits = h.matmul(&w.t()?)?;
        return super::token_logprob_entropy(&logits, targets);
    }
    let t = if targets.dtype() == DType::U32 {
        targets.clone()
    } else {
        targets.to_dtype(DType::U32)?
    };
    let t: Vec<u32> = t.to_vec1()?;
    let op = LmHeadLogprobOp {
        targets: Arc::new(t),
    };
    let out = h.contiguous()?.apply_op2(&w.contiguous()?, op)?;
    let lp = out.narrow(1, 0, 1)?.squeeze(1)?;
    let ent = out.narrow(1, 1, 1)?.squeeze(1)?;
    Ok((lp, ent))
}

/// The composed reference of [`lm_head_logprob_entropy`]: the full logits, then the composed log-softmax.
pub fn composed_lm_head_logprob_entropy(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
) -> crate::Result<(Tensor, Tensor)> {
    composed_token_logprob_entropy(&h.matmul(&w.t()?)?, targets)
}
