//! AdamW with decoupled weight decay (PyTorch semantics) whose moments can be saved, global gradient-norm
//! clipping, a non-finite guard, and the learning-rate schedule (linear warm-up, then constant or cosine).

use super::config::{OptimConfig, Schedule};
use crate::{input_err, Result};
use candle_core::{
    backprop::GradStore, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Storage, Tensor, Var,
};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::Path;

/// AdamW hyper-parameters that stay fixed during a run (the learning rate is passed to every step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl From<&OptimConfig> for AdamWParams {
    fn from(c: &OptimConfig) -> Self {
        Self {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
        }
    }
}

/// Gradients of the optimizer's parameters, in its (name-sorted) order; `None` = no gradient reached it.
#[derive(Clone)]
pub struct Grads(pub Vec<Option<Tensor>>);

/// What one `AdamW::step` did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Global L2 norm of the gradient before clipping (may be NaN/inf when skipped).
    pub grad_norm: f64,
    /// True when the update was skipped because the gradient was not finite.
    pub skipped: bool,
}

/// AdamW over a fixed list of named `Var`s.
pub struct AdamW {
    names: Vec<String>,
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Number of updates applied (bias-correction counter).
    pub t: u64,
    /// Hyper-parameters.
    pub params: AdamWParams,
}

impl AdamW {
    /// Optimises every variable of `varmap` (sorted by name, so the order is deterministic).
    pub fn new(varmap: &VarMap, params: AdamWParams) -> Result<Self> {
        let mut named: Vec<(String, Var)> = {
            let data = varmap
                .data()
                .lock()
                .map_err(|_| input_err!("variable map lock poisoned"))?;
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Self::from_vars(named, params)
    }

    /// Optimises the given named variables in the given order.
    pub fn from_vars(named: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let mut names = vec![];
        let mut vars = vec![];
        let mut m = vec![];
        let mut v = vec![];
        for (n, var) in named {
            m.push(var.as_tensor().zeros_like()?);
            v.push(var.as_tensor().zeros_like()?);
            names.push(n);
            vars.push(var);
        }
        Ok(Self {
            names,
            vars,
            m,
            v,
            t: 0,
            params,
        })
    }

    /// Parameter names in optimizer order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The optimised variables in optimizer order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Picks this optimizer's gradients out of a `GradStore` (detached).
    pub fn grads_from(&self, store: &GradStore) -> Grads {
        Grads(
            self.vars
                .iter()
                .map(|v| store.get(v.as_tensor()).map(|g| g.detach()))
                .collect(),
        )
    }

    /// Global L2 norm of `grads` (f64 accumulation).
    pub fn grad_norm(grads: &Grads) -> Result<f64> {
        let mut sq = 0f64;
        // per-tensor sums of squares left on the device, read back with one transfer (a sync per tensor is slow
        // on a GPU)
        let mut on_device = vec![];
        for g in grads.0.iter().flatten() {
            match host_sum_sq(g) {
                Some(s) => sq += s,
                // rows first: candle's one-stage sum of a large tensor is slow on CUDA (AdamW on SmolLM2's
                // shapes, H100: 128 ms per step with it, 37 ms without)
                None if g.rank() >= 2 => on_device.push(
                    g.sqr()?
                        .sum(candle_core::D::Minus1)?
                        .to_dtype(DType::F64)?
                        .sum_all()?,
                ),
                None => on_device.push(g.to_dtype(DType::F64)?.sqr()?.sum_all()?),
            }
        }
        if !on_device.is_empty() {
            sq += Tensor::stack(&on_device, 0)?
                .to_vec1::<f64>()?
                .iter()
                .sum::<f64>();
        }
        Ok(sq.sqrt())
    }

    /// One AdamW update at learning rate `lr`, after clipping the global gradient norm to `clip` (0 = off).
    /// A non-finite gradient norm skips the update (parameters and moments untouched).
    pub fn step(&mut self, grads: &Grads, lr: f64, clip: f64) -> Result<StepOutcome> {
        let norm = Self::grad_norm(grads)?;
        if !norm.is_finite() {
            return Ok(StepOutcome {
                grad_norm: norm,
                skipped: true,
            });
        }
        let scale = if clip > 0.0 && norm > clip {
            clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.t += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
        for i in 0..self.vars.len() {
            let Some(g) = &grads.0[i] else { continue };
            let dtype = self.vars[i].dtype();
            let h = HostUpdate {
                p,
                lr,
                grad_scale: scale,
                bc1,
                bc2,
            };
            if h.apply(self.vars[i].as_tensor(), g, &self.m[i], &self.v[i])? {
                continue;
            }
            let g = if scale != 1.0 {
                (g * scale)?
            } else {
                g.clone()
            }
            .to_dtype(dtype)?;
            let m = ((&self.m[i] * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            let v = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let denom = ((&v / bc2)?.sqrt()? + p.eps)?;
            let upd = ((&m / bc1)? / denom)?;
            let w = self.vars[i].as_tensor();
            let decayed = if p.weight_decay != 0.0 {
                (w * (1.0 - lr * p.weight_decay))?
            } else {
                w.clone()
            };
            let new = (decayed - (upd * lr)?)?;
            self.vars[i].set(&new)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(StepOutcome {
            grad_norm: norm,
            skipped: false,
        })
    }

    /// Writes the moments (`m.<name>`, `v.<name>`) and `t` to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (i, n) in self.names.iter().enumerate() {
            map.insert(format!("m.{n}"), self.m[i].clone());
            map.insert(format!("v.{n}"), self.v[i].clone());
        }
        map.insert(
            "t".into(),
            Tensor::new(&[self.t as f64], &candle_core::Device::Cpu)?,
        );
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    /// Restores what `save` wrote; every parameter must be present with its shape.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let dev = self
            .vars
            .first()
            .map(|v| v.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let map = candle_core::safetensors::load(path, &dev)?;
        let get = |k: &str| {
            map.get(k)
                .ok_or_else(|| input_err!("{}: missing tensor {k}", path.display()))
        };
        for (i, n) in self.names.iter().enumerate() {
            let m = get(&format!("m.{n}"))?;
            let v = get(&format!("v.{n}"))?;
            if m.shape() != self.vars[i].shape() || v.shape() != self.vars[i].shape() {
                return Err(input_err!(
                    "{}: optimizer state for {n} has the wrong shape",
                    path.display()
                ));
            }
            self.m[i] = m.to_dtype(self.vars[i].dtype())?;
            self.v[i] = v.to_dtype(self.vars[i].dtype())?;
        }
        let t = get("t")?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        self.t = t.first().copied().unwrap_or(0.0) as u64;
        Ok(())
    }
}

/// Σ g² in f64 straight from a CPU f32 tensor's storage; `None` for other devices/dtypes.
fn host_sum_sq(g: &Tensor) -> Option<f64> {
    let (storage, layout) = g.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(data)), Some((a, b))) => {
            Some(data[a..b].iter().map(|&x| (x as f64) * (x as f64)).sum())
        }
        _ => None,
    }
}

/// The fused CPU f32 AdamW update: three in-place passes (m, v, then the weight) instead of a dozen tensor ops.
/// Same arithmetic as the tensor path of [`AdamW::step`] (PyTorch's `AdamW`, non-fused).
struct HostUpdate {
    p: AdamWParams,
    lr: f64,
    grad_scale: f64,
    bc1: f64,
    bc2: f64,
}

/// Which pass of [`HostUpdate`] an in-place op runs.
#[derive(Clone, Copy)]
enum Pass {
    First,
    Second,
    Weight,
}

/// One pass of the fused update as a candle in-place op.
struct UpdateOp<'a> {
    h: &'a HostUpdate,
    pass: Pass,
}

impl HostUpdate {
    /// Updates `m`, `v` and `w` in place when all four are contiguous CPU f32 tensors of one shape;
    /// returns false (nothing touched) otherwise.
    fn apply(&self, w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> Result<bool> {
        let all = [w, g, m, v];
        if all
            .iter()
            .any(|t| !t.device().is_cpu() || t.dtype() != DType::F32 || !t.is_contiguous())
            || all.iter().any(|t| t.shape() != w.shape())
        {
            return Ok(false);
        }
        m.inplace_op2(
            g,
            &UpdateOp {
                h: self,
                pass: Pass::First,
            },
        )?;
        v.inplace_op2(
            g,
            &UpdateOp {
                h: self,
                pass: Pass::Second,
            },
        )?;
        w.inplace_op3(
            m,
            v,
            &UpdateOp {
                h: self,
                pass: Pass::Weight,
            },
        )?;
        Ok(true)
    }
}

/// The contiguous f32 slice of a CPU storage.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((a, b))) => Ok(&d[a..b]),
        _ => candle_core::bail!("adamw: expected a contiguous f32 tensor"),
    }
}

/// The contiguous f32 slice of a mutable CPU storage.
fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((a, b))) => Ok(&mut d[a..b]),
        _ => candle_core::bail!("adamw: expected a contiguous f32 tensor"),
    }
}

/// Elements per parallel block of the fused update.
const UPDATE_BLOCK: usize = 32 * 1024;

impl UpdateOp<'_> {
    /// Runs the pass over blocks of the tensor, in parallel on rayon's current pool.
    fn run(&self, dst: &mut [f32], a: &[f32], b: Option<&[f32]>) {
        use rayon::prelude::*;
        dst.par_chunks_mut(UPDATE_BLOCK)
            .enumerate()
            .for_each(|(i, blk)| {
                let o = i * UPDATE_BLOCK;
                let n = blk.len();
                self.run_block(blk, &a[o..o + n], b.map(|b| &b[o..o + n]));
            });
    }

    fn run_block(&self, dst: &mut [f32], a: &[f32], b: Option<&[f32]>) {
        let h = self.h;
        let (b1, b2) = (h.p.beta1 as f32, h.p.beta2 as f32);
        let s = h.grad_scale as f32;
        match (self.pass, b) {
            (Pass::First, _) => {
                for (m, &g) in dst.iter_mut().zip(a) {
                    *m = *m * b1 + (g * s) * (1.0 - b1);
                }
            }
            (Pass::Second, _) => {
                for (v, &g) in dst.iter_mut().zip(a) {
                    let g = g * s;
                    *v = *v * b2 + (g * g) * (1.0 - b2);
                }
            }
            (Pass::Weight, Some(vs)) => {
                let decay = (1.0 - h.lr * h.p.weight_decay) as f32;
                let (bc1, bc2, eps, lr) = (h.bc1 as f32, h.bc2 as f32, h.p.eps as f32, h.lr as f32);
                for ((w, &m), &v) in dst.iter_mut().zip(a).zip(vs) {
                    let upd = (m / bc1) / ((v / bc2).sqrt() + eps);
                    *w = *w * decay - upd * lr;
                }
            }
            (Pass::Weight, None) => {}
        }
    }
}

impl InplaceOp2 for UpdateOp<'_> {
    fn name(&self) -> &'static str {
        "luspo-adamw"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> candle_core::Result<()> {
        let a = f32_slice(src, src_l)?;
        self.run(f32_slice_mut(dst, dst_l)?, a, None);
        Ok(())
    }
}

impl InplaceOp3 for UpdateOp<'_> {
    fn name(&self) -> &'static str {
        "luspo-adamw"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let a = f32_slice(s2, l2)?;
        let b = f32_slice(s3, l3)?;
        self.run(f32_slice_mut(dst, dst_l)?, a, Some(b));
        Ok(())
    }
}

impl Grads {
    /// Adds `other` into `self` element-wise (`None` + x = x).
    pub fn add(&mut self, other: Grads) -> Result<()> {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = match (a.take(), b) {
                (Some(x), Some(y)) => Some((x + y)?),
                (x, y) => x.or(y),
            };
        }
        Ok(())
    }

    /// Number of parameters that received a gradient.
    pub fn count(&self) -> usize {
        self.0.iter().filter(|g| g.is_some()).count()
    }
}

/// The learning rate for unit index `k` (0-based: the k-th optimizer step or RL step, per `warmup_unit`),
/// with `total` units in the run (used by the cosine schedule).
pub fn lr_at(cfg: &OptimConfig, k: u64, total: u64) -> f64 {
    schedule(
        cfg.lr,
        cfg.warmup_steps,
        cfg.schedule,
        cfg.min_lr_ratio,
        k,
        total,
    )
}

/// Linear warm-up `base·(k+1)/warmup` for `k < warmup`, then constant or cosine decay to `base·min_ratio` at `total−1`.
pub fn schedule(
    base: f64,
    warmup: u64,
    shape: Schedule,
    min_ratio: f64,
    k: u64,
    total: u64,
) -> f64 {
    if k < warmup {
        return base * (k + 1) as f64 / warmup as f64;
    }
    match shape {
        Schedule::Constant => base,
        Schedule::Cosine => {
            let span = total.saturating_sub(warmup).saturating_sub(1);
            if span == 0 {
                return base;
            }
            let progress = ((k - warmup) as f64 / span as f64).min(1.0);
            let floor = base * min_ratio;
            floor + (base - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}
