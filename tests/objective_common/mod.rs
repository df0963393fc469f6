//! Shared helpers of the objective tests: ragged batches in, loss and per-token gradients out (f64 autograd).
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use luspo::objective::{policy_loss, ObjectiveConfig, ObjectiveStats, PolicyInputs};

/// A ragged batch: per-sequence token rows and one advantage per sequence.
#[derive(Clone, Debug)]
pub struct Batch {
    pub logp: Vec<Vec<f64>>,
    pub old: Vec<Vec<f64>>,
    pub adv: Vec<f64>,
    pub reference: Option<Vec<Vec<f64>>>,
    pub entropy: Option<Vec<Vec<f64>>>,
}

impl Batch {
    pub fn new(logp: Vec<Vec<f64>>, old: Vec<Vec<f64>>, adv: Vec<f64>) -> Self {
        Batch {
            logp,
            old,
            adv,
            reference: None,
            entropy: None,
        }
    }
    /// old + delta, row by row.
    pub fn drift(old: &[Vec<f64>], delta: &[Vec<f64>], adv: &[f64]) -> Self {
        let logp = old
            .iter()
            .zip(delta)
            .map(|(o, d)| o.iter().zip(d).map(|(a, b)| a + b).collect())
            .collect();
        Batch::new(logp, old.to_vec(), adv.to_vec())
    }
    pub fn lens(&self) -> Vec<usize> {
        self.logp.iter().map(|r| r.len()).collect()
    }
}

/// Result of one evaluation.
pub struct Eval {
    pub loss: f64,
    pub grad: Vec<Vec<f64>>,
    pub grad_entropy: Option<Vec<Vec<f64>>>,
    pub stats: ObjectiveStats,
}

/// Pads rows to `t` columns; padding is filled with `fill` (garbage on purpose: it must not matter).
pub fn pad(rows: &[Vec<f64>], t: usize, fill: f64, dt: DType) -> Tensor {
    let mut v = vec![fill; rows.len() * t];
    for (i, r) in rows.iter().enumerate() {
        v[i * t..i * t + r.len()].copy_from_slice(r);
    }
    Tensor::from_vec(v, (rows.len(), t), &Device::Cpu)
        .unwrap()
        .to_dtype(dt)
        .unwrap()
}

/// Evaluates `cfg` on the batch with `extra_pad` padding columns, in dtype `dt`, with optional global counts.
pub fn eval_with(
    cfg: &ObjectiveConfig,
    b: &Batch,
    extra_pad: usize,
    dt: DType,
    gc: Option<(f64, f64)>,
) -> Eval {
    let lens = b.lens();
    let t = lens.iter().copied().max().unwrap() + extra_pad;
    let logp = Var::from_tensor(&pad(&b.logp, t, 3.7, dt)).unwrap();
    let old = pad(&b.old, t, -55.0, dt);
    let ones: Vec<Vec<f64>> = lens.iter().map(|&n| vec![1.0; n]).collect();
    let mask = pad(&ones, t, 0.0, dt);
    let adv = Tensor::from_vec(b.adv.clone(), b.adv.len(), &Device::Cpu)
        .unwrap()
        .to_dtype(dt)
        .unwrap();
    let reference = b.reference.as_ref().map(|r| pad(r, t, 99.0, dt));
    let entropy = b
        .entropy
        .as_ref()
        .map(|e| Var::from_tensor(&pad(e, t, 42.0, dt)).unwrap());
    let inputs = PolicyInputs {
        logp: logp.as_tensor(),
        old_logp: &old,
        mask: &mask,
        advantages: &adv,
        ref_logp: reference.as_ref(),
        entropy: entropy.as_ref().map(|e| e.as_tensor()),
        groups: None,
        token_weights: None,
        entropy_coefs: None,
        global_counts: gc,
    };
    let out = policy_loss(cfg, &inputs).unwrap();
    let grads = out.loss.backward().unwrap();
    let to_rows = |g: Option<&Tensor>| -> Vec<Vec<f64>> {
        let full: Vec<Vec<f64>> = match g {
            Some(g) => g.to_dtype(DType::F64).unwrap().to_vec2().unwrap(),
            None => vec![vec![0.0; t]; lens.len()],
        };
        for (i, row) in full.iter().enumerate() {
            for (j, v) in row.iter().enumerate().skip(lens[i]) {
                assert_eq!(*v, 0.0, "padding position ({i},{j}) got gradient {v}");
            }
        }
        full.into_iter()
            .zip(&lens)
            .map(|(r, &n)| r[..n].to_vec())
            .collect()
    };
    let grad = to_rows(grads.get(logp.as_tensor()));
    let grad_entropy = entropy.as_ref().map(|e| to_rows(grads.get(e.as_tensor())));
    Eval {
        loss: out
            .loss
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap(),
        grad,
        grad_entropy,
        stats: out.stats,
    }
}

/// f64, two padding columns, whole batch.
pub fn eval(cfg: &ObjectiveConfig, b: &Batch) -> Eval {
    eval_with(cfg, b, 2, DType::F64, None)
}

/// Config helper: preset plus overrides given as a JSON object.
pub fn cfg(name: &str, overrides: serde_json::Value) -> ObjectiveConfig {
    let mut m = overrides.as_object().cloned().unwrap_or_default();
    m.insert("name".into(), serde_json::Value::String(name.into()));
    serde_json::from_value(serde_json::Value::Object(m)).unwrap()
}

/// Loss only (no autograd), for finite differences.
pub fn loss_only(cfg: &ObjectiveConfig, b: &Batch) -> f64 {
    eval(cfg, b).loss
}

/// Max absolute difference between two ragged arrays (panics on shape mismatch).
pub fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut m: f64 = 0.0;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(y) {
            m = m.max((p - q).abs());
        }
    }
    m
}
