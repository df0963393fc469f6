//! Fused ops (src/ops.rs) against composed candle ops: forward values, autograd backward, f64 central finite
//! differences, gradient flow to every input, and edge cases (masks with -inf, rows of length 1, non-contiguous
//! inputs, f32 and f64).

use candle_core::{DType, Device, Tensor, Var};
use luspo::ops;

type Op = dyn Fn(&[Tensor]) -> luspo::Result<Tensor>;

/// Deterministic pseudo-random tensor in [-scale, scale) (splitmix64; no RNG state shared between tests).
fn rnd(dims: &[usize], seed: u64, scale: f64, dtype: DType) -> Tensor {
    let n: usize = dims.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a = a
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let b = b
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            if x == y {
                0.0 // also covers equal infinities
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f64::max)
}

/// Scalar loss `sum(out * r)` with a fixed random `r`, so every output entry gets a distinct upstream gradient.
fn loss_of(out: &Tensor, seed: u64) -> Tensor {
    let r = rnd(out.dims(), seed, 1.0, out.dtype());
    (out * r).unwrap().sum_all().unwrap()
}

/// Forward and backward of `f` on fresh Vars of `inputs`; returns (output, grads of inputs in `diff`).
fn run(f: &Op, inputs: &[Tensor], diff: &[usize]) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Option<Var>> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| diff.contains(&i).then(|| Var::from_tensor(t).unwrap()))
        .collect();
    let ts: Vec<Tensor> = inputs
        .iter()
        .zip(&vars)
        .map(|(t, v)| {
            v.as_ref()
                .map(|v| v.as_tensor().clone())
                .unwrap_or_else(|| t.clone())
        })
        .collect();
    let out = f(&ts).unwrap();
    let grads = loss_of(&out, 99).backward().unwrap();
    let g = diff
        .iter()
        .map(|&i| {
            grads
                .get(vars[i].as_ref().unwrap().as_tensor())
                .unwrap_or_else(|| panic!("input {i} received no gradient"))
                .clone()
        })
        .collect();
    (out, g)
}

/// Fused vs composed: forward within `tol_f`, backward within `tol_b`; inputs in `diff` are differentiated.
fn compare(fused: &Op, composed: &Op, inputs: &[Tensor], diff: &[usize], tol_f: f64, tol_b: f64) {
    let (o1, g1) = run(fused, inputs, diff);
    let (o2, g2) = run(composed, inputs, diff);
    let df = max_abs_diff(&o1, &o2);
    assert!(df <= tol_f, "forward differs by {df}");
    for (k, (a, b)) in g1.iter().zip(&g2).enumerate() {
        let db = max_abs_diff(a, b);
        assert!(db <= tol_b, "gradient of input {} differs by {db}", diff[k]);
    }
}

/// f64 central finite differences of `sum(f(x) * r)` against the fused backward, on up to 12 entries per input.
fn finite_diff(f: &Op, inputs: &[Tensor], diff: &[usize]) {
    let inputs: Vec<Tensor> = inputs
        .iter()
        .map(|t| {
            if t.dtype() == DType::F32 {
                t.to_dtype(DType::F64).unwrap()
            } else {
                t.clone()
            }
        })
        .collect();
    let (_, grads) = run(f, &inputs, diff);
    let eps = 1e-6;
    for (k, &i) in diff.iter().enumerate() {
        let base = inputs[i].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let g = grads[k].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let n = base.len();
        let step = (n / 12).max(1);
        for j in (0..n).step_by(step) {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                let mut ins = inputs.clone();
                ins[i] = Tensor::from_vec(v, inputs[i].dims(), &Device::Cpu).unwrap();
                loss_of(&f(&ins).unwrap(), 99).to_scalar::<f64>().unwrap()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let err = (fd - g[j]).abs() / fd.abs().max(g[j].abs()).max(1e-3);
            assert!(
                err < 1e-6,
                "input {i} entry {j}: analytic {} vs finite difference {fd} (rel {err})",
                g[j]
            );
        }
    }
}

/// Runs `compare` in f32 and f64 (inputs with float dtype converted) and `finite_diff` in f64.
fn check_all(fused: &Op, composed: &Op, inputs: &[Tensor], diff: &[usize]) {
    for (dt, tf, tb) in [(DType::F32, 1e-5, 1e-5), (DType::F64, 1e-12, 1e-12)] {
        let ins: Vec<Tensor> = inputs
            .iter()
            .map(|t| {
                if t.dtype().is_float() {
                    t.to_dtype(dt).unwrap()
                } else {
                    t.clone()
                }
            })
            .collect();
        compare(fused, composed, &ins, diff, tf, tb);
    }
    finite_diff(fused, inputs, diff);
}

#[test]
fn softmax_matches_composed_and_finite_differences() {
    let f: &Op = &|t| ops::softmax_last_dim(&t[0]);
    let c: &Op = &|t| ops::composed_softmax_last_dim(&t[0]);
    check_all(f, c, &[rnd(&[3, 4, 7], 1, 3.0, DType::F64)], &[0]);
    // rows of length 1: output 1, gradient 0
    check_all(f, c, &[rnd(&[5, 1], 2, 3.0, DType::F64)], &[0]);
    let y = ops::softmax_last_dim(&rnd(&[5, 1], 2, 3.0, DType::F64)).unwrap();
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        vec![1.0; 5]
    );
    // large logits do not overflow
    let big = Tensor::new(&[[1000f32, 999.0, -1000.0]], &Device::Cpu).unwrap();
    let y = ops::softmax_last_dim(&big)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let e = (-1f64).exp();
    assert!(
        (y[0][0] as f64 - 1.0 / (1.0 + e)).abs() < 1e-6 && y[0][2] == 0.0,
        "{y:?}"
    );
}

#[test]
fn softmax_non_contiguous_and_neg_inf() {
    let f: &Op = &|t| ops::softmax_last_dim(&t[0].transpose(0, 1).unwrap());
    let c: &Op = &|t| ops::composed_softmax_last_dim(&t[0].transpose(0, 1).unwrap());
    check_all(f, c, &[rnd(&[6, 5], 3, 2.0, DType::F64)], &[0]);
    let x = Tensor::new(
        &[
            [0f64, f64::NEG_INFINITY, 1.0],
            [f64::NEG_INFINITY, 2.0, f64::NEG_INFINITY],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let a = ops::softmax_last_dim(&x).unwrap();
    let b = ops::composed_softmax_last_dim(&x).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-15);
    assert_eq!(a.to_vec2::<f64>().unwrap()[1], vec![0.0, 1.0, 0.0]);
}

fn causal_mask(b: usize, t: usize, neg: f64, pad_first: usize) -> Tensor {
    // (B,1,T,T): causal, plus the first `pad_first` keys of batch row 0 masked (left padding)
    let mut v = vec![0f64; b * t * t];
    for bi in 0..b {
        for i in 0..t {
            for j in 0..t {
                if j > i || (bi == 0 && j < pad_first && i >= pad_first) {
                    v[(bi * t + i) * t + j] = neg;
                }
            }
        }
    }
    Tensor::from_vec(v, (b, 1, t, t), &Device::Cpu).unwrap()
}

#[test]
fn masked_softmax_matches_composed() {
    let f: &Op = &|t| ops::masked_softmax(&t[0], &t[1]);
    let c: &Op = &|t| ops::composed_masked_softmax(&t[0], &t[1]);
    let s = rnd(&[2, 3, 5, 5], 4, 2.0, DType::F64);
    check_all(f, c, &[s.clone(), causal_mask(2, 5, -1e9, 2)], &[0]);
    // -inf entries (no fully masked row: the diagonal is always kept)
    for dt in [DType::F32, DType::F64] {
        compare(
            f,
            c,
            &[
                s.to_dtype(dt).unwrap(),
                causal_mask(2, 5, f64::NEG_INFINITY, 2)
                    .to_dtype(dt)
                    .unwrap(),
            ],
            &[0],
            1e-6,
            1e-6,
        );
    }
    // a differentiable mask, broadcast over heads, gets the summed gradient
    check_all(
        f,
        c,
        &[s.clone(), rnd(&[2, 1, 5, 5], 5, 1.0, DType::F64)],
        &[0, 1],
    );
    // mask broadcast over the batch and the last dim, non-contiguous scores
    let f2: &Op = &|t| ops::masked_softmax(&t[0].transpose(2, 3).unwrap(), &t[1]);
    let c2: &Op = &|t| ops::composed_masked_softmax(&t[0].transpose(2, 3).unwrap(), &t[1]);
    check_all(
        f2,
        c2,
        &[s, rnd(&[1, 3, 5, 1], 6, 1.0, DType::F64)],
        &[0, 1],
    );
    // wrong mask shape is an input error
    let e = ops::masked_softmax(
        &rnd(&[2, 3, 5, 5], 1, 1.0, DType::F32),
        &rnd(&[2, 1, 5, 4], 1, 1.0, DType::F32),
    );
    assert!(e.is_err());
}

fn targets(n: &[usize], v: u32, seed: u64) -> Tensor {
    let r = rnd(n, seed, 1.0, DType::F64)
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let ids: Vec<u32> = r
        .iter()
        .map(|x| (((x + 1.0) / 2.0) * v as f64) as u32 % v)
        .collect();
    Tensor::from_vec(ids, n, &Device::Cpu).unwrap()
}

#[test]
fn log_softmax_gather_matches_composed() {
    let f: &Op = &|t| ops::log_softmax_gather(&t[0], &t[1]);
    let c: &Op = &|t| ops::composed_log_softmax_gather(&t[0], &t[1]);
    let z = rnd(&[3, 4, 11], 7, 4.0, DType::F64);
    let tg = targets(&[3, 4], 11, 8);
    check_all(f, c, &[z.clone(), tg.clone()], &[0]);
    // i64 targets, non-contiguous logits, vocabulary of 1
    let tg64 = tg.to_dtype(DType::I64).unwrap();
    let a = ops::log_softmax_gather(&z, &tg64).unwrap();
    assert!(max_abs_diff(&a, &ops::composed_log_softmax_gather(&z, &tg).unwrap()) < 1e-13);
    let ft: &Op = &|t| ops::log_softmax_gather(&t[0].transpose(0, 1).unwrap(), &t[1]);
    let ct: &Op = &|t| ops::composed_log_softmax_gather(&t[0].transpose(0, 1).unwrap(), &t[1]);
    check_all(ft, ct, &[z, targets(&[4, 3], 11, 9)], &[0]);
    let one = rnd(&[4, 1], 3, 1.0, DType::F64);
    let lp = ops::log_softmax_gather(&one, &Tensor::zeros(4, DType::U32, &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(lp.to_vec1::<f64>().unwrap(), vec![0.0; 4]);
    // out-of-range target and shape mismatch are errors
    let z = rnd(&[2, 5], 1, 1.0, DType::F32);
    assert!(ops::log_softmax_gather(&z, &Tensor::new(&[0u32, 5], &Device::Cpu).unwrap()).is_err());
    assert!(
        ops::log_softmax_gather(&z, &Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap()).is_err()
    );
}

#[test]
fn token_logprob_entropy_matches_composed() {
    // both outputs used, with independent upstream gradients
    let both = |f: fn(&Tensor, &Tensor) -> luspo::Result<(Tensor, Tensor)>| {
        move |t: &[Tensor]| -> luspo::Result<Tensor> {
            let (lp, h) = f(&t[0], &t[1])?;
            Ok(Tensor::stack(&[lp, (h * 0.7)?], 0)?)
        }
    };
    let fb = both(ops::token_logprob_entropy);
    let cb = both(ops::composed_token_logprob_entropy);
    let z = rnd(&[2, 5, 13], 11, 3.0, DType::F64);
    let tg = targets(&[2, 5], 13, 12);
    check_all(&fb, &cb, &[z.clone(), tg.clone()], &[0]);
    // only the entropy used, and only the logprob used
    let fh: &Op = &|t| Ok(ops::token_logprob_entropy(&t[0], &t[1])?.1);
    let ch: &Op = &|t| Ok(ops::composed_token_logprob_entropy(&t[0], &t[1])?.1);
    check_all(fh, ch, &[z.clone(), tg.clone()], &[0]);
    let fl: &Op = &|t| Ok(ops::token_logprob_entropy(&t[0], &t[1])?.0);
    let cl: &Op = &|t| ops::composed_log_softmax_gather(&t[0], &t[1]);
    check_all(fl, cl, &[z.clone(), tg.clone()], &[0]);
    // large negative logits (masked vocabulary entries)
    let mut zv = z.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for (i, x) in zv.iter_mut().enumerate() {
        if i % 5 == 1 {
            *x = -1e9;
        }
    }
    // each row's target avoids the masked entries (flat index % 5 == 1)
    let tgv: Vec<u32> = (0..10u32)
        .map(|r| if (r * 13) % 5 != 1 { 0 } else { 2 })
        .collect();
    let zm = Tensor::from_vec(zv, (2, 5, 13), &Device::Cpu).unwrap();
    let tgm = Tensor::from_vec(tgv, (2, 5), &Device::Cpu).unwrap();
    check_all(&fb, &cb, &[zm.clone(), tgm.clone()], &[0]);
    // -inf logits: entropy stays finite and matches the -1e9 result (composed gives NaN there)
    let zi = zm
        .ge(-1e8)
        .unwrap()
        .where_cond(&zm, &zm.affine(0.0, f64::NEG_INFINITY).unwrap())
        .unwrap();
    let (lp_i, h_i) = ops::token_logprob_entropy(&zi, &tgm).unwrap();
    let (lp_m, h_m) = ops::token_logprob_entropy(&zm, &tgm).unwrap();
    assert!(max_abs_diff(&lp_i, &lp_m) < 1e-12 && max_abs_diff(&h_i, &h_m) < 1e-12);
    let v = Var::from_tensor(&zi).unwrap();
    let (lp, h) = ops::token_logprob_entropy(v.as_tensor(), &tgm).unwrap();
    let g = (lp.sum_all().unwrap() + h.sum_all().unwrap())
        .unwrap()
        .backward()
        .unwrap();
    let gv = g
        .get(v.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert!(gv.iter().all(|x| x.is_finite()));
    // hand-computed: uniform logits over V=4, target 0: logp = -ln 4, H = ln 4,
    // d logp/dz = onehot - 1/4, dH/dz = -p (log p + H) = 0
    let u = Var::from_tensor(&Tensor::zeros((1, 4), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let (lp, h) =
        ops::token_logprob_entropy(u.as_tensor(), &Tensor::new(&[0u32], &Device::Cpu).unwrap())
            .unwrap();
    assert!((lp.to_vec1::<f64>().unwrap()[0] + 4f64.ln()).abs() < 1e-15);
    assert!((h.to_vec1::<f64>().unwrap()[0] - 4f64.ln()).abs() < 1e-15);
    let g = (lp.sum_all().unwrap() + h.sum_all().unwrap())
        .unwrap()
        .backward()
        .unwrap();
    let gu = g.get(u.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(gu, vec![vec![0.75, -0.25, -0.25, -0.25]]);
}

#[test]
fn rms_norm_matches_composed() {
    let f: &Op = &|t| ops::rms_norm(&t[0], &t[1], 1e-6);
    let c: &Op = &|t| ops::composed_rms_norm(&t[0], &t[1], 1e-6);
    let x = rnd(&[2, 3, 8], 13, 2.0, DType::F64);
    let w = (rnd(&[8], 14, 0.5, DType::F64) + 1.0).unwrap();
    check_all(f, c, &[x.clone(), w.clone()], &[0, 1]);
    // non-contiguous input, hidden size 1
    let ft: &Op = &|t| ops::rms_norm(&t[0].transpose(0, 1).unwrap(), &t[1], 1e-5);
    let ct: &Op = &|t| ops::composed_rms_norm(&t[0].transpose(0, 1).unwrap(), &t[1], 1e-5);
    check_all(ft, ct, &[x, w], &[0, 1]);
    check_all(
        f,
        c,
        &[
            rnd(&[4, 1], 15, 2.0, DType::F64),
            rnd(&[1], 16, 1.0, DType::F64),
        ],
        &[0, 1],
    );
    assert!(ops::rms_norm(
        &rnd(&[2, 8], 1, 1.0, DType::F32),
        &rnd(&[7], 1, 1.0, DType::F32),
        1e-6
    )
    .is_err());
}

#[test]
fn silu_mul_matches_composed() {
    let f: &Op = &|t| ops::silu_mul(&t[0], &t[1]);
    let c: &Op = &|t| ops::composed_silu_mul(&t[0], &t[1]);
    let a = rnd(&[3, 4, 6], 17, 4.0, DType::F64);
    let b = rnd(&[3, 4, 6], 18, 2.0, DType::F64);
    check_all(f, c, &[a.clone(), b.clone()], &[0, 1]);
    let ft: &Op = &|t| {
        ops::silu_mul(
            &t[0].transpose(1, 2).unwrap(),
            &t[1].transpose(1, 2).unwrap(),
        )
    };
    let ct: &Op = &|t| {
        ops::composed_silu_mul(
            &t[0].transpose(1, 2).unwrap(),
            &t[1].transpose(1, 2).unwrap(),
        )
    };
    check_all(ft, ct, &[a, b], &[0, 1]);
}

#[test]
fn gradients_reach_every_variable_through_a_small_graph() {
    // x -> rms_norm(w) -> q,k projections -> rope -> masked softmax -> mix -> silu_mul -> head -> logprob/entropy
    let dt = DType::F32;
    let vars: Vec<Var> = [
        rnd(&[2, 4, 8], 21, 1.0, dt),
        (rnd(&[8], 22, 0.1, dt) + 1.0).unwrap(),
        rnd(&[8, 8], 23, 0.5, dt),
        rnd(&[8, 8], 24, 0.5, dt),
        rnd(&[8, 8], 25, 0.5, dt),
        rnd(&[8, 8], 26, 0.5, dt),
        rnd(&[8, 10], 27, 0.5, dt),
    ]
    .iter()
    .map(|t| Var::from_tensor(t).unwrap())
    .collect();
    let v: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
    let h = ops::rms_norm(v[0], v[1], 1e-6).unwrap();
    // RoPE on q and k viewed as one head: (B,1,T,D) with a (T,D) table
    let cos = rnd(&[4, 8], 29, 1.0, dt);
    let sin = rnd(&[4, 8], 30, 1.0, dt);
    let q = h.broadcast_matmul(v[2]).unwrap().unsqueeze(1).unwrap();
    let k = h.broadcast_matmul(v[3]).unwrap().unsqueeze(1).unwrap();
    let q = ops::rope(&q, &cos, &sin).unwrap().squeeze(1).unwrap();
    let k = ops::rope(&k, &cos, &sin).unwrap().squeeze(1).unwrap();
    let s = q
        .matmul(&k.transpose(1, 2).unwrap().contiguous().unwrap())
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    let mask = causal_mask(2, 4, -1e9, 1).to_dtype(dt).unwrap();
    let p = ops::masked_softmax(&s, &mask).unwrap().squeeze(1).unwrap();
    let p = ops::softmax_last_dim(&(p * 3.0).unwrap()).unwrap();
    let m = p.matmul(&h).unwrap();
    let a = ops::silu_mul(
        &m.broadcast_matmul(v[4]).unwrap(),
        &m.broadcast_matmul(v[5]).unwrap(),
    )
    .unwrap();
    let logits = a.broadcast_matmul(v[6]).unwrap();
    let tg = targets(&[2, 4], 10, 28);
    let (lp, ent) = ops::token_logprob_entropy(&logits, &tg).unwrap();
    let lp2 = ops::log_softmax_gather(&logits, &tg).unwrap();
    let loss = ((lp + lp2).unwrap().mean_all().unwrap()
        + (ent.mean_all().unwrap() * 0.01).unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    for (i, var) in vars.iter().enumerate() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("variable {i} got no gradient"));
        let n = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n > 0.0 && n.is_finite(), "variable {i} gradient norm² {n}");
    }
}

#[test]
fn scaled_masked_softmax_matches_composed() {
    let f: &Op = &|t| ops::scaled_masked_softmax(&t[0], 0.35, &t[1]);
    let c: &Op = &|t| ops::composed_scaled_masked_softmax(&t[0], 0.35, &t[1]);
    let s = rnd(&[2, 3, 6, 6], 31, 3.0, DType::F64);
    check_all(f, c, &[s.clone(), causal_mask(2, 6, -1e9, 3)], &[0]);
    check_all(f, c, &[s, rnd(&[2, 1, 6, 6], 32, 1.0, DType::F64)], &[0, 1]);
}

#[test]
fn rope_matches_composed() {
    // per-row positions: cos/sin (B,T,D) laid out as cat(freqs, freqs), and a shared (T,D) table
    let (b, h, t, d) = (2, 3, 5, 8);
    let pos: Vec<f64> = (0..b * t).map(|i| ((i % t) + 2 * (i / t)) as f64).collect();
    let mut c = vec![0f64; b * t * d];
    let mut s = vec![0f64; b * t * d];
    for (r, p) in pos.iter().enumerate() {
        for j in 0..d {
            let f = p / 10000f64.powf(2.0 * (j % (d / 2)) as f64 / d as f64);
            c[r * d + j] = f.cos();
            s[r * d + j] = f.sin();
        }
    }
    let cos = Tensor::from_vec(c, (b, t, d), &Device::Cpu).unwrap();
    let sin = Tensor::from_vec(s, (b, t, d), &Device::Cpu).unwrap();
    let f: &Op = &|x| ops::rope(&x[0], &x[1], &x[2]);
    let cf: &Op = &|x| ops::composed_rope(&x[0], &x[1], &x[2]);
    let x = rnd(&[b, h, t, d], 33, 2.0, DType::F64);
    check_all(f, cf, &[x.clone(), cos.clone(), sin.clone()], &[0]);
    let (c2, s2) = (cos.get(1).unwrap(), sin.get(1).unwrap());
    check_all(f, cf, &[x.clone(), c2, s2], &[0]);
    // non-contiguous x (heads and time swapped back)
    let ft: &Op = &|x| ops::rope(&x[0].transpose(1, 2).unwrap(), &x[1], &x[2]);
    let ct: &Op = &|x| ops::composed_rope(&x[0].transpose(1, 2).unwrap(), &x[1], &x[2]);
    check_all(
        ft,
        ct,
        &[
            rnd(&[b, t, h, d], 34, 2.0, DType::F64),
            cos.clone(),
            sin.clone(),
        ],
        &[0],
    );
    // rotation preserves the norm of each (x_j, x_{j+D/2}) pair with a genuine cos/sin table
    let y = ops::rope(&x, &cos, &sin).unwrap();
    let n = |a: &Tensor| {
        a.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    assert!((n(&y) - n(&x)).abs() < 1e-10);
    assert!(ops::rope(&x, &cos.narrow(2, 0, 4).unwrap(), &sin).is_err());
}

/// Sizes above one parallel block (16k elements of work): the kernels split rows into several blocks (the same
/// blocks for any thread count), and every block must see its own rows, mask rows and targets.
#[test]
fn kernels_split_into_blocks_match_composed() {
    let tol = 1e-12;
    // softmax: 300 rows of 128 = 3 blocks
    let f: &Op = &|t| ops::softmax_last_dim(&t[0]);
    let c: &Op = &|t| ops::composed_softmax_last_dim(&t[0]);
    compare(
        f,
        c,
        &[rnd(&[3, 100, 128], 41, 3.0, DType::F64)],
        &[0],
        tol,
        tol,
    );
    // masked attention softmax: 2·3·160 rows of 160 keys, a per-batch mask broadcast over heads
    let f: &Op = &|t| ops::scaled_masked_softmax(&t[0], 0.3, &t[1]);
    let c: &Op = &|t| ops::composed_scaled_masked_softmax(&t[0], 0.3, &t[1]);
    let s = rnd(&[2, 3, 160, 160], 42, 3.0, DType::F64);
    compare(f, c, &[s, causal_mask(2, 160, -1e9, 7)], &[0], tol, tol);
    // token logprob + entropy: 700 rows of vocabulary 64
    let both = |f: fn(&Tensor, &Tensor) -> luspo::Result<(Tensor, Tensor)>| {
        move |t: &[Tensor]| -> luspo::Result<Tensor> {
            let (lp, h) = f(&t[0], &t[1])?;
            Ok(Tensor::stack(&[lp, (h * 0.7)?], 0)?)
        }
    };
    let fb = both(ops::token_logprob_entropy);
    let cb = both(ops::composed_token_logprob_entropy);
    let z = rnd(&[7, 100, 64], 43, 3.0, DType::F64);
    compare(&fb, &cb, &[z, targets(&[7, 100], 64, 44)], &[0], tol, tol);
    // rms_norm: 3000 rows of 16 (the weight gradient sums per-block partials)
    let f: &Op = &|t| ops::rms_norm(&t[0], &t[1], 1e-6);
    let c: &Op = &|t| ops::composed_rms_norm(&t[0], &t[1], 1e-6);
    let w = (rnd(&[16], 45, 0.5, DType::F64) + 1.0).unwrap();
    compare(
        f,
        c,
        &[rnd(&[3000, 16], 46, 2.0, DType::F64), w],
        &[0, 1],
        tol,
        1e-10,
    );
    // silu_mul: 40,000 elements
    let f: &Op = &|t| ops::silu_mul(&t[0], &t[1]);
    let c: &Op = &|t| ops::composed_silu_mul(&t[0], &t[1]);
    let (a, b) = (
        rnd(&[200, 200], 47, 4.0, DType::F64),
        rnd(&[200, 200], 48, 2.0, DType::F64),
    );
    compare(f, c, &[a, b], &[0, 1], tol, tol);
}

/// `(logp, 0.7·entropy)` stacked, so both outputs get their own upstream gradient.
fn stacked(lp: Tensor, h: Tensor) -> luspo::Result<Tensor> {
    Ok(Tensor::stack(&[lp, (h * 0.7)?], 0)?)
}

#[test]
fn lm_head_logprob_entropy_matches_composed() {
    let f: &Op = &|t| {
        let (lp, h) = ops::lm_head_logprob_entropy(&t[0], &t[1], &t[2])?;
        stacked(lp, h)
    };
    let c: &Op = &|t| {
        let (lp, h) = ops::composed_lm_head_logprob_entropy(&t[0], &t[1], &t[2])?;
        stacked(lp, h)
    };
    // one tile; then shapes that split the logits into several tiles, vocabulary parts and row groups (with
    // partial dh and dW sums), vocabularies that are not a multiple of the tile width, and eight parts of
    // many tiles with one row group
    for (n, v, d, fd) in [
        (7, 13, 5, true),
        (300, 1100, 24, false),
        (200, 5000, 16, false),
        (130, 40_000, 8, false),
    ] {
        let h = rnd(&[n, d], n as u64, 1.0, DType::F64);
        let w = rnd(&[v, d], v as u64, 1.0, DType::F64);
        let tg = targets(&[n], v as u32, d as u64);
        let inputs = [h, w, tg];
        if fd {
            check_all(f, c, &inputs, &[0, 1]);
        } else {
            compare(f, c, &inputs, &[0, 1], 1e-12, 1e-12);
            let ins: Vec<Tensor> = inputs
                .iter()
                .map(|t| {
                    if t.dtype().is_float() {
                        t.to_dtype(DType::F32).unwrap()
                    } else {
                        t.clone()
                    }
                })
                .collect();
            compare(f, c, &ins, &[0, 1], 2e-5, 2e-5);
        }
    }
    // tied embeddings: the hidden rows are themselves rows of the head, so the head gets both contributions
    let ids = targets(&[9], 40, 3);
    let tied = |lm: fn(&Tensor, &Tensor, &Tensor) -> luspo::Result<(Tensor, Tensor)>| {
        move |t: &[Tensor]| -> luspo::Result<Tensor> {
            let h = (t[0].index_select(&t[1], 0)? * 0.5)?;
            let (lp, e) = lm(&h, &t[0], &t[2])?;
            stacked(lp, e)
        }
    };
    let (ft, ct) = (
        tied(ops::lm_head_logprob_entropy),
        tied(ops::composed_lm_head_logprob_entropy),
    );
    check_all(
        &ft,
        &ct,
        &[rnd(&[40, 6], 5, 2.0, DType::F64), ids, targets(&[9], 40, 4)],
        &[0],
    );
}

#[test]
fn lm_head_logprob_entropy_frozen_head_threads_and_errors() {
    let (n, v, d) = (260, 1500, 12);
    let h = rnd(&[n, d], 1, 1.0, DType::F32);
    let w = rnd(&[v, d], 2, 1.0, DType::F32);
    let tg = targets(&[n], v as u32, 3);
    let grads_with = |threads: usize, head_var: bool| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let hv = Var::from_tensor(&h).unwrap();
            let wv = Var::from_tensor(&w).unwrap();
            let head = if head_var {
                wv.as_tensor().clone()
            } else {
                w.clone()
            };
            let (lp, e) = ops::lm_head_logprob_entropy(hv.as_tensor(), &head, &tg).unwrap();
            let out = stacked(lp, e).unwrap();
            let g = loss_of(&out, 7).backward().unwrap();
            let gw = g.get(wv.as_tensor()).cloned();
            (out, g.get(hv.as_tensor()).unwrap().clone(), gw)
        })
    };
    let (o1, gh1, gw1) = grads_with(1, true);
    let (o2, gh2, gw2) = grads_with(2, true);
    // bitwise the same with one or two threads
    assert_eq!(max_abs_diff(&o1, &o2), 0.0);
    assert_eq!(max_abs_diff(&gh1, &gh2), 0.0);
    assert_eq!(
        max_abs_diff(gw1.as_ref().unwrap(), gw2.as_ref().unwrap()),
        0.0
    );
    // a frozen head (LoRA) gets no gradient, and the hidden rows' gradient is unchanged
    let (o3, gh3, gw3) = grads_with(2, false);
    assert!(gw3.is_none());
    assert_eq!(max_abs_diff(&o1, &o3), 0.0);
    assert_eq!(max_abs_diff(&gh1, &gh3), 0.0);
    // a NaN hidden row gives that row NaN, not a finite number
    let mut hv = h.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    hv[5 * d] = f32::NAN;
    let hn = Tensor::from_vec(hv, (n, d), &Device::Cpu).unwrap();
    let (lp, e) = ops::lm_head_logprob_entropy(&hn, &w, &tg).unwrap();
    let (lp, e) = (lp.to_vec1::<f32>().unwrap(), e.to_vec1::<f32>().unwrap());
    assert!(lp[5].is_nan() && e[5].is_nan());
    assert!(lp[4].is_finite() && e[6].is_finite());
    // bad input: a target outside the vocabulary, mismatched widths, too few targets
    let bad = Tensor::new(&[v as u32], &Device::Cpu).unwrap();
    let err = ops::lm_head_logprob_entropy(&h.narrow(0, 0, 1).unwrap(), &w, &bad).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    assert!(ops::lm_head_logprob_entropy(&h, &w.narrow(1, 0, d - 1).unwrap(), &tg).is_err());
    assert!(ops::lm_head_logprob_entropy(&h, &w, &tg.narrow(0, 0, n - 1).unwrap()).is_err());
}
