//! Micro-benchmark of luspo's fused ops against composed candle ops, and the tiny-config train step
//! (2 layers, d=128, 4 heads, SwiGLU ffn 512, vocab 1024, B=8, T=128, fwd + bwd + AdamW) with and without them.
//!
//! Run: `RAYON_NUM_THREADS=1 cargo run --release --example ops_bench [micro|train|train-fused|train-composed|all] [steps]`.
//! `LUSPO_TUNE_MALLOC=1` calls `ops::tune_malloc()` first.
//! Micro rows time `sum(op(x) * r).backward()`; the identity row is that harness alone.
//! Prints measured milliseconds; the numbers depend on machine load (run `uptime` alongside).

use candle_core::{DType, Device, IndexOp, Module, Tensor, Var, D};
use candle_nn::{linear_no_bias, AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use luspo::ops;
use std::time::Instant;

type R<T> = luspo::Result<T>;

/// Process CPU time in ms (all threads; Linux `CLOCK_PROCESS_CPUTIME_ID`): on a loaded machine it tracks the
/// work done far better than wall time. Falls back to 0 where unavailable.
fn cpu_ms() -> f64 {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clk: i32, tp: *mut Timespec) -> i32;
        }
        let mut t = Timespec { sec: 0, nsec: 0 };
        // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `t`.
        let rc = unsafe { clock_gettime(2, &mut t) };
        if rc == 0 {
            return t.sec as f64 * 1e3 + t.nsec as f64 * 1e-6;
        }
    }
    0.0
}

/// Median of `n` runs of `f` (after one warm-up), in milliseconds of process CPU time (see `cpu_ms`).
fn time_ms(n: usize, mut f: impl FnMut() -> R<()>) -> R<f64> {
    f()?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = cpu_ms();
        f()?;
        v.push(cpu_ms() - t);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[n / 2])
}

fn randn(dims: &[usize], scale: f64) -> R<Tensor> {
    Ok((Tensor::randn(0f32, 1f32, dims, &Device::Cpu)? * scale)?)
}

/// fwd-only and fwd+bwd median times of `f` applied to fresh Vars of `inputs` (loss = sum(out * r)).
fn bench_op(
    name: &str,
    inputs: &[Tensor],
    diff: &[usize],
    f: &dyn Fn(&[Tensor]) -> R<Tensor>,
    n: usize,
) -> R<(f64, f64)> {
    let ts: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if diff.contains(&i) {
                Var::from_tensor(t).map(|v| v.as_tensor().clone())
            } else {
                Ok(t.clone())
            }
        })
        .collect::<candle_core::Result<_>>()?;
    let out = f(&ts)?;
    let r = randn(out.dims(), 1.0)?;
    let fwd = time_ms(n, || {
        f(&ts)?;
        Ok(())
    })?;
    let both = time_ms(n, || {
        let g = (f(&ts)? * &r)?.sum_all()?.backward()?;
        // touch every gradient so lazy work is not skipped
        for &i in diff {
            g.get(&ts[i])
                .ok_or_else(|| luspo::input_err!("{name}: no gradient"))?;
        }
        Ok(())
    })?;
    Ok((fwd, both))
}

fn micro(n: usize) -> R<()> {
    let (b, h, t, d, v, ffn) = (8, 4, 128, 128, 1024, 512);
    let scores = randn(&[b, h, t, t], 1.0)?;
    let mut mv = vec![0f32; b * t * t];
    for bi in 0..b {
        for i in 0..t {
            for j in (i + 1)..t {
                mv[(bi * t + i) * t + j] = -1e9;
            }
        }
    }
    let mask = Tensor::from_vec(mv, (b, 1, t, t), &Device::Cpu)?;
    let logits = randn(&[b, t, v], 2.0)?;
    let tg = Tensor::from_vec(
        (0..(b * t) as u32).map(|i| (i * 37) % v as u32).collect(),
        (b, t),
        &Device::Cpu,
    )?;
    let x = randn(&[b, t, d], 1.0)?;
    let w = (randn(&[d], 0.1)? + 1.0)?;
    let gate = randn(&[b, t, ffn], 1.0)?;
    let up = randn(&[b, t, ffn], 1.0)?;
    let q = randn(&[b, h, t, d / h], 1.0)?;
    let cos = randn(&[b, t, d / h], 1.0)?;
    let sin = randn(&[b, t, d / h], 1.0)?;
    type F = dyn Fn(&[Tensor]) -> R<Tensor>;
    type Case = (&'static str, Vec<Tensor>, Vec<usize>, Box<F>, Box<F>);
    let cases: Vec<Case> = vec![
        (
            "harness only: identity (8,4,128,128)",
            vec![scores.clone()],
            vec![0],
            Box::new(|t| Ok(t[0].clone())),
            Box::new(|t| Ok(t[0].clone())),
        ),
        (
            "softmax (8,4,128,128)",
            vec![scores.clone()],
            vec![0],
            Box::new(|t| ops::composed_softmax_last_dim(&t[0])),
            Box::new(|t| ops::softmax_last_dim(&t[0])),
        ),
        (
            "masked_softmax (8,4,128,128)+(8,1,128,128)",
            vec![scores.clone(), mask.clone()],
            vec![0],
            Box::new(|t| ops::composed_masked_softmax(&t[0], &t[1])),
            Box::new(|t| ops::masked_softmax(&t[0], &t[1])),
        ),
        (
            "log_softmax_gather (8,128,1024)",
            vec![logits.clone(), tg.clone()],
            vec![0],
            Box::new(|t| ops::composed_log_softmax_gather(&t[0], &t[1])),
            Box::new(|t| ops::log_softmax_gather(&t[0], &t[1])),
        ),
        (
            "token_logprob_entropy (8,128,1024)",
            vec![logits.clone(), tg.clone()],
            vec![0],
            Box::new(|t| {
                let (a, b) = ops::composed_token_logprob_entropy(&t[0], &t[1])?;
                Ok((a + b)?)
            }),
            Box::new(|t| {
                let (a, b) = ops::token_logprob_entropy(&t[0], &t[1])?;
                Ok((a + b)?)
            }),
        ),
        (
            "rope (8,4,128,32), cos/sin (8,128,32)",
            vec![q.clone(), cos.clone(), sin.clone()],
            vec![0],
            Box::new(|t| ops::composed_rope(&t[0], &t[1], &t[2])),
            Box::new(|t| ops::rope(&t[0], &t[1], &t[2])),
        ),
        (
            "scaled_masked_softmax (8,4,128,128)",
            vec![scores.clone(), mask.clone()],
            vec![0],
            Box::new(|t| ops::composed_scaled_masked_softmax(&t[0], 0.17, &t[1])),
            Box::new(|t| ops::scaled_masked_softmax(&t[0], 0.17, &t[1])),
        ),
        (
            "rms_norm (8,128,128)",
            vec![x.clone(), w.clone()],
            vec![0, 1],
            Box::new(|t| ops::composed_rms_norm(&t[0], &t[1], 1e-6)),
            Box::new(|t| ops::rms_norm(&t[0], &t[1], 1e-6)),
        ),
        (
            "silu_mul (8,128,512)",
            vec![gate.clone(), up.clone()],
            vec![0, 1],
            Box::new(|t| ops::composed_silu_mul(&t[0], &t[1])),
            Box::new(|t| ops::silu_mul(&t[0], &t[1])),
        ),
    ];
    println!(
        "{:<44} {:>10} {:>12} {:>10} {:>12}",
        "op (f32, cpu ms, median)", "comp fwd", "comp fwd+bwd", "fused fwd", "fused fwd+bwd"
    );
    for (name, ins, diff, c, f) in &cases {
        let (cf, cb) = bench_op(name, ins, diff, c.as_ref(), n)?;
        let (ff, fb) = bench_op(name, ins, diff, f.as_ref(), n)?;
        println!("{name:<44} {cf:>10.3} {cb:>12.3} {ff:>10.3} {fb:>12.3}");
    }
    Ok(())
}

/// Tiny Llama-style decoder written inline; `fused` selects luspo::ops or composed candle ops.
struct Tiny {
    emb: Tensor,
    layers: Vec<Layer>,
    lnf: Tensor,
    head: Linear,
    cos: Tensor,
    sin: Tensor,
    heads: usize,
}

struct Layer {
    ln1: Tensor,
    ln2: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

const EPS: f64 = 1e-6;

impl Tiny {
    fn new(
        vb: VarBuilder,
        v: usize,
        d: usize,
        heads: usize,
        ffn: usize,
        nl: usize,
        tmax: usize,
    ) -> R<Self> {
        let init1 = candle_nn::Init::Const(1.0);
        let mut layers = Vec::new();
        for l in 0..nl {
            let vb = vb.pp(format!("layers.{l}"));
            layers.push(Layer {
                ln1: vb.get_with_hints(d, "ln1", init1)?,
                ln2: vb.get_with_hints(d, "ln2", init1)?,
                q: linear_no_bias(d, d, vb.pp("q"))?,
                k: linear_no_bias(d, d, vb.pp("k"))?,
                v: linear_no_bias(d, d, vb.pp("v"))?,
                o: linear_no_bias(d, d, vb.pp("o"))?,
                gate: linear_no_bias(d, ffn, vb.pp("gate"))?,
                up: linear_no_bias(d, ffn, vb.pp("up"))?,
                down: linear_no_bias(ffn, d, vb.pp("down"))?,
            });
        }
        let hd = d / heads;
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let inv = Tensor::from_vec(inv, (1, hd / 2), &Device::Cpu)?;
        let pos = Tensor::arange(0u32, tmax as u32, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .unsqueeze(1)?;
        let f = pos.broadcast_mul(&inv)?;
        let f = Tensor::cat(&[&f, &f], 1)?;
        Ok(Self {
            emb: vb.get_with_hints(
                (v, d),
                "emb",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?,
            layers,
            lnf: vb.get_with_hints(d, "lnf", init1)?,
            head: linear_no_bias(d, v, vb.pp("head"))?,
            cos: f.cos()?,
            sin: f.sin()?,
            heads,
        })
    }

    fn norm(x: &Tensor, w: &Tensor, fused: bool) -> R<Tensor> {
        if fused {
            ops::rms_norm(x, w, EPS)
        } else {
            ops::composed_rms_norm(x, w, EPS)
        }
    }

    /// HF rotate_half RoPE with per-row positions `cos`/`sin` `(B,1,T,hd)`.
    fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> R<Tensor> {
        let hd = x.dim(D::Minus1)?;
        let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
        let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
        let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?)?)
    }

    /// Logits `(B,T,V)` for ids `(B,T)` with positions `(B,T)` u32 and additive mask `(B,1,T,T)`.
    fn forward(&self, ids: &Tensor, pos: &Tensor, mask: &Tensor, fused: bool) -> R<Tensor> {
        let (b, t) = ids.dims2()?;
        let d = self.emb.dim(1)?;
        let hd = d / self.heads;
        let flat = pos.flatten_all()?;
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, 1, t, hd))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, 1, t, hd))?;
        let (cos3, sin3) = (cos.squeeze(1)?, sin.squeeze(1)?);
        let mut x = self
            .emb
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in &self.layers {
            let h = Self::norm(&x, &l.ln1, fused)?;
            let split = |y: Tensor| -> R<Tensor> {
                Ok(y.reshape((b, t, self.heads, hd))?.transpose(1, 2)?)
            };
            let (q, k) = (split(l.q.forward(&h)?)?, split(l.k.forward(&h)?)?);
            let (q, k) = if fused {
                (ops::rope(&q, &cos3, &sin3)?, ops::rope(&k, &cos3, &sin3)?)
            } else {
                (Self::rope(&q, &cos, &sin)?, Self::rope(&k, &cos, &sin)?)
            };
            let v = split(l.v.forward(&h)?)?.contiguous()?;
            let s = q.contiguous()?.matmul(&k.transpose(2, 3)?.contiguous()?)?;
            let p = if fused {
                ops::scaled_masked_softmax(&s, scale, mask)?
            } else {
                ops::composed_scaled_masked_softmax(&s, scale, mask)?
            };
            let a = p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
            x = (x + l.o.forward(&a)?)?;
            let h = Self::norm(&x, &l.ln2, fused)?;
            let (g, u) = (l.gate.forward(&h)?, l.up.forward(&h)?);
            let m = if fused {
                ops::silu_mul(&g, &u)?
            } else {
                ops::composed_silu_mul(&g, &u)?
            };
            x = (x + l.down.forward(&m)?)?;
        }
        let x = Self::norm(&x, &self.lnf, fused)?;
        Ok(self.head.forward(&x)?)
    }
}

fn train(steps: usize, modes: &[bool]) -> R<()> {
    let (b, t, v, d, heads, ffn, nl) = (
        8usize, 128usize, 1024usize, 128usize, 4usize, 512usize, 2usize,
    );
    // left-padded batch: row i has 8*i pad tokens
    let mut ids = vec![0u32; b * t];
    let mut am = vec![0f32; b * t];
    let mut pos = vec![0u32; b * t];
    for i in 0..b {
        let pad = 8 * i;
        for j in pad..t {
            ids[i * t + j] = ((i * 131 + j * 17) % v) as u32;
            am[i * t + j] = 1.0;
            pos[i * t + j] = (j - pad) as u32;
        }
    }
    let ids = Tensor::from_vec(ids, (b, t), &Device::Cpu)?;
    let amask = Tensor::from_vec(am, (b, t), &Device::Cpu)?;
    let pos = Tensor::from_vec(pos, (b, t), &Device::Cpu)?;
    let mut mv = vec![0f32; b * t * t];
    for bi in 0..b {
        let pad = 8 * bi;
        for i in 0..t {
            for j in 0..t {
                if j > i || (j < pad && i >= pad) {
                    mv[(bi * t + i) * t + j] = -1e9;
                }
            }
        }
    }
    let mask = Tensor::from_vec(mv, (b, 1, t, t), &Device::Cpu)?;
    let targets = ids.i((.., 1..))?.contiguous()?;
    let lmask = amask.i((.., 1..))?.contiguous()?;
    let adv = Tensor::from_vec(
        (0..b).map(|i| i as f32 / b as f32 - 0.5).collect(),
        (b, 1),
        &Device::Cpu,
    )?;
    {
        // equivalence: same weights, composed vs fused logits and gradients
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let model = Tiny::new(vb, v, d, heads, ffn, nl, t)?;
        let mut outs = Vec::new();
        for fused in [false, true] {
            let logits = model.forward(&ids, &pos, &mask, fused)?;
            let lp = if fused {
                ops::log_softmax_gather(&logits.i((.., ..t - 1, ..))?, &targets)?
            } else {
                ops::composed_log_softmax_gather(
                    &logits.i((.., ..t - 1, ..))?.contiguous()?,
                    &targets,
                )?
            };
            let g = (lp * &lmask)?.sum_all()?.backward()?;
            let gs: Vec<Tensor> = vm
                .all_vars()
                .iter()
                .filter_map(|v| g.get(v.as_tensor()).cloned())
                .collect();
            outs.push((logits, gs));
        }
        let diff = |a: &Tensor, b: &Tensor| -> R<f32> {
            Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
        };
        let mut gmax = 0f32;
        for (a, b) in outs[0].1.iter().zip(&outs[1].1) {
            let scale = a
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?
                .max(1e-12);
            gmax = gmax.max(diff(a, b)? / scale);
        }
        println!(
            "equivalence (same weights): max |logits diff| {:.2e}, {} vs {} vars with grads, max |grad diff| / max |grad| per var {:.2e}",
            diff(&outs[0].0, &outs[1].0)?,
            outs[0].1.len(),
            outs[1].1.len(),
            gmax
        );
    }
    for &fused in modes {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let model = Tiny::new(vb, v, d, heads, ffn, nl, t)?;
        let mut opt = AdamW::new(
            vm.all_vars(),
            ParamsAdamW {
                lr: 1e-3,
                ..Default::default()
            },
        )?;
        let (mut tf, mut tb, mut to) = (Vec::new(), Vec::new(), Vec::new());
        let mut cpu = Vec::new();
        let mut last = 0f32;
        for step in 0..=steps {
            let c0 = cpu_ms();
            let t0 = Instant::now();
            let logits = model
                .forward(&ids, &pos, &mask, fused)?
                .i((.., ..t - 1, ..))?;
            let lp = if fused {
                ops::log_softmax_gather(&logits, &targets)?
            } else {
                ops::composed_log_softmax_gather(&logits.contiguous()?, &targets)?
            };
            // GRPO clipped surrogate, masked token mean
            let ratio = (&lp - lp.detach())?.exp()?;
            let s1 = ratio.broadcast_mul(&adv)?;
            let s2 = ratio.clamp(0.8f32, 1.2f32)?.broadcast_mul(&adv)?;
            let per_tok = s1.minimum(&s2)?.neg()?;
            let loss =
                ((per_tok * &lmask)?.sum_all()? / lmask.sum_all()?.to_scalar::<f32>()? as f64)?;
            last = loss.to_scalar::<f32>()?;
            let t1 = Instant::now();
            let grads = loss.backward()?;
            let t2 = Instant::now();
            opt.step(&grads)?;
            let t3 = Instant::now();
            if step > 0 {
                cpu.push(cpu_ms() - c0);
                tf.push((t1 - t0).as_secs_f64() * 1e3);
                tb.push((t2 - t1).as_secs_f64() * 1e3);
                to.push((t3 - t2).as_secs_f64() * 1e3);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let total = mean(&tf) + mean(&tb) + mean(&to);
        let c = mean(&cpu);
        println!(
            "train step {:<8} wall: fwd {:6.2} bwd {:6.2} adamw {:5.2} total {:6.2} ms = {:6.0} tok/s | cpu {:6.2} ms/step = {:6.0} tok/s per cpu-second | loss {last:.4}",
            if fused { "fused" } else { "composed" },
            mean(&tf),
            mean(&tb),
            mean(&to),
            total,
            (b * t) as f64 / total * 1e3,
            c,
            (b * t) as f64 / c * 1e3
        );
    }
    Ok(())
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("all");
    if std::env::var("LUSPO_TUNE_MALLOC").is_ok_and(|v| v == "1") {
        ops::tune_malloc();
    }
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    if mode == "micro" || mode == "all" {
        micro(n)?;
    }
    match mode {
        "train" | "all" => train(n, &[false, true])?,
        "train-fused" => train(n, &[true])?,
        "train-composed" => train(n, &[false])?,
        _ => {}
    }
    Ok(())
}
