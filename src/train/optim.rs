//! AdamW with decoupled weight decay (PyTorch semantics) whose moments can be saved, global gradient-norm
//! clipping, a non-finite guard, and the learning-rate schedule (linear warm-up, then constant or cosine).

use super::config::{OptimConfig, Schedule};
use crate::{input_err, Result};
use candle_core::{backprop::GradStore, DType, Tensor, Var};
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
        for g in grads.0.iter().flatten() {
            sq += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
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
