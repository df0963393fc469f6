//! AdamW against a hand-written scalar reference, gradient clipping, the non-finite guard, the schedule.

use candle_core::{Device, Tensor, Var};
use luspo::train::config::{OptimConfig, Schedule};
use luspo::train::optim::{lr_at, schedule, AdamW, AdamWParams, Grads};

/// Scalar PyTorch-AdamW reference (decoupled decay), written independently of the tensor code.
fn reference(
    p0: &[f64],
    grads: &[Vec<f64>],
    lrs: &[f64],
    b1: f64,
    b2: f64,
    eps: f64,
    wd: f64,
) -> Vec<f64> {
    let mut p = p0.to_vec();
    let mut m = vec![0.0; p.len()];
    let mut v = vec![0.0; p.len()];
    for (t, (g, lr)) in grads.iter().zip(lrs).enumerate() {
        let t = (t + 1) as i32;
        for i in 0..p.len() {
            p[i] -= lr * wd * p[i];
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let mh = m[i] / (1.0 - b1.powi(t));
            let vh = v[i] / (1.0 - b2.powi(t));
            p[i] -= lr * mh / (vh.sqrt() + eps);
        }
    }
    p
}

fn var(vals: &[f64]) -> Var {
    Var::from_tensor(&Tensor::new(vals, &Device::Cpu).unwrap()).unwrap()
}

#[test]
fn first_step_by_hand() {
    // Step 1: m̂ = g, v̂ = g², so p ← p(1 − lr·wd) − lr·g/(|g|+ε).
    let w = var(&[1.0, -2.0]);
    let params = AdamWParams {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut opt = AdamW::from_vars(vec![("w".into(), w.clone())], params).unwrap();
    let g = Grads(vec![Some(
        Tensor::new(&[0.5f64, -0.1], &Device::Cpu).unwrap(),
    )]);
    let out = opt.step(&g, 0.1, 0.0).unwrap();
    assert!(!out.skipped);
    assert!((out.grad_norm - (0.25f64 + 0.01).sqrt()).abs() < 1e-12);
    let p = w.as_tensor().to_vec1::<f64>().unwrap();
    let want0 = 1.0 * (1.0 - 0.1 * 0.01) - 0.1 * 0.5 / (0.5 + 1e-8);
    let want1 = -2.0 * (1.0 - 0.1 * 0.01) + 0.1 * 0.1 / (0.1 + 1e-8);
    assert!(
        (p[0] - 0.899).abs() < 1e-7 && (p[0] - want0).abs() < 1e-12,
        "{p:?}"
    );
    assert!((p[1] - want1).abs() < 1e-12, "{p:?}");
}

#[test]
fn several_steps_match_the_reference() {
    let p0 = [0.3, -1.2, 2.0, 0.0];
    let gs = vec![
        vec![0.1, -0.4, 0.0, 2.0],
        vec![-0.3, 0.2, 0.5, -1.0],
        vec![0.05, 0.05, -0.6, 0.3],
        vec![1.0, -1.0, 0.1, 0.0],
    ];
    let lrs = [0.01, 0.02, 0.03, 0.015];
    let (b1, b2, eps, wd) = (0.8, 0.95, 1e-6, 0.1);
    let w = var(&p0);
    let mut opt = AdamW::from_vars(
        vec![("w".into(), w.clone())],
        AdamWParams {
            beta1: b1,
            beta2: b2,
            eps,
            weight_decay: wd,
        },
    )
    .unwrap();
    for (g, lr) in gs.iter().zip(lrs) {
        let grads = Grads(vec![Some(Tensor::new(g.as_slice(), &Device::Cpu).unwrap())]);
        opt.step(&grads, lr, 0.0).unwrap();
    }
    let got = w.as_tensor().to_vec1::<f64>().unwrap();
    let want = reference(&p0, &gs, &lrs, b1, b2, eps, wd);
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-12, "{got:?} vs {want:?}");
    }
    assert_eq!(opt.t, 4);
}

#[test]
fn clipping_scales_the_global_norm() {
    // Two tensors with global norm 5 clipped to 1: equivalent to feeding g/5 to an unclipped AdamW.
    let a = var(&[1.0, 1.0]);
    let b = var(&[1.0]);
    let params = AdamWParams {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-3,
        weight_decay: 0.0,
    };
    let mut opt = AdamW::from_vars(
        vec![("a".into(), a.clone()), ("b".into(), b.clone())],
        params,
    )
    .unwrap();
    let g = Grads(vec![
        Some(Tensor::new(&[3.0f64, 0.0], &Device::Cpu).unwrap()),
        Some(Tensor::new(&[4.0f64], &Device::Cpu).unwrap()),
    ]);
    let out = opt.step(&g, 0.1, 1.0).unwrap();
    assert!(
        (out.grad_norm - 5.0).abs() < 1e-12,
        "norm is reported before clipping"
    );
    let s = 1.0 / (5.0 + 1e-6);
    let want_a = reference(
        &[1.0, 1.0],
        &[vec![3.0 * s, 0.0]],
        &[0.1],
        0.9,
        0.999,
        1e-3,
        0.0,
    );
    let want_b = reference(&[1.0], &[vec![4.0 * s]], &[0.1], 0.9, 0.999, 1e-3, 0.0);
    let got_a = a.as_tensor().to_vec1::<f64>().unwrap();
    let got_b = b.as_tensor().to_vec1::<f64>().unwrap();
    assert!((got_a[0] - want_a[0]).abs() < 1e-12 && (got_a[1] - want_a[1]).abs() < 1e-12);
    assert!((got_b[0] - want_b[0]).abs() < 1e-12);
    // With eps ≫ |g| the clipped update differs from an unclipped one: the clip actually acted.
    assert!(
        (got_b[0] - reference(&[1.0], &[vec![4.0]], &[0.1], 0.9, 0.999, 1e-3, 0.0)[0]).abs() > 1e-6
    );
}

#[test]
fn non_finite_gradient_skips_the_update() {
    let w = var(&[1.0, 2.0]);
    let mut opt = AdamW::from_vars(
        vec![("w".into(), w.clone())],
        AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        },
    )
    .unwrap();
    for bad in [f64::NAN, f64::INFINITY] {
        let g = Grads(vec![Some(Tensor::new(&[bad, 0.5], &Device::Cpu).unwrap())]);
        let out = opt.step(&g, 0.1, 1.0).unwrap();
        assert!(out.skipped);
        assert_eq!(w.as_tensor().to_vec1::<f64>().unwrap(), vec![1.0, 2.0]);
        assert_eq!(opt.t, 0);
    }
    // A later finite step behaves like a first step.
    let g = Grads(vec![Some(
        Tensor::new(&[0.5f64, 0.5], &Device::Cpu).unwrap(),
    )]);
    opt.step(&g, 0.1, 0.0).unwrap();
    assert_eq!(opt.t, 1);
    let want = reference(
        &[1.0, 2.0],
        &[vec![0.5, 0.5]],
        &[0.1],
        0.9,
        0.999,
        1e-8,
        0.1,
    );
    let got = w.as_tensor().to_vec1::<f64>().unwrap();
    assert!((got[0] - want[0]).abs() < 1e-12 && (got[1] - want[1]).abs() < 1e-12);
}

#[test]
fn missing_gradient_leaves_parameter_alone_and_grads_accumulate() {
    let a = var(&[1.0]);
    let b = var(&[1.0]);
    let params = AdamWParams {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.5,
    };
    let mut opt = AdamW::from_vars(
        vec![("a".into(), a.clone()), ("b".into(), b.clone())],
        params,
    )
    .unwrap();
    let mut g = Grads(vec![
        Some(Tensor::new(&[0.25f64], &Device::Cpu).unwrap()),
        None,
    ]);
    g.add(Grads(vec![
        Some(Tensor::new(&[0.25f64], &Device::Cpu).unwrap()),
        None,
    ]))
    .unwrap();
    assert_eq!(g.count(), 1);
    assert_eq!(
        g.0[0].as_ref().unwrap().to_vec1::<f64>().unwrap(),
        vec![0.5]
    );
    opt.step(&g, 0.1, 0.0).unwrap();
    assert_eq!(b.as_tensor().to_vec1::<f64>().unwrap(), vec![1.0]);
    assert!(a.as_tensor().to_vec1::<f64>().unwrap()[0] < 1.0);
}

#[test]
fn optimizer_state_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let w = var(&[0.1, 0.2, 0.3]);
    let params = AdamWParams {
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut opt = AdamW::from_vars(vec![("w".into(), w.clone())], params).unwrap();
    let g = |x: f64| {
        Grads(vec![Some(
            Tensor::new(&[x, -x, 2.0 * x], &Device::Cpu).unwrap(),
        )])
    };
    opt.step(&g(0.3), 0.01, 0.0).unwrap();
    opt.save(&dir.path().join("o.safetensors")).unwrap();
    // Continue in the original, and in a copy restored from disk: identical results.
    let w2 = var(&w.as_tensor().to_vec1::<f64>().unwrap());
    let mut opt2 = AdamW::from_vars(vec![("w".into(), w2.clone())], params).unwrap();
    opt2.load(&dir.path().join("o.safetensors")).unwrap();
    assert_eq!(opt2.t, 1);
    opt.step(&g(-0.7), 0.01, 0.0).unwrap();
    opt2.step(&g(-0.7), 0.01, 0.0).unwrap();
    assert_eq!(
        w.as_tensor().to_vec1::<f64>().unwrap(),
        w2.as_tensor().to_vec1::<f64>().unwrap()
    );
}

#[test]
fn warmup_is_linear_then_constant_or_cosine() {
    let c = Schedule::Constant;
    assert_eq!(schedule(1.0, 4, c, 0.0, 0, 10), 0.25);
    assert_eq!(schedule(1.0, 4, c, 0.0, 1, 10), 0.5);
    assert_eq!(schedule(1.0, 4, c, 0.0, 3, 10), 1.0);
    assert_eq!(schedule(1.0, 4, c, 0.0, 9, 10), 1.0);
    assert_eq!(schedule(2.0, 0, c, 0.0, 0, 10), 2.0);
    // cosine: peak right after warm-up, floor at the last unit, midpoint halfway.
    let k = Schedule::Cosine;
    assert_eq!(schedule(1.0, 2, k, 0.1, 2, 12), 1.0);
    assert!((schedule(1.0, 2, k, 0.1, 11, 12) - 0.1).abs() < 1e-12);
    assert!(
        (schedule(1.0, 2, k, 0.1, 2 + 9 / 2, 12)
            - (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * 4.0 / 9.0).cos())))
        .abs()
            < 1e-12
    );
    let cfg = OptimConfig {
        lr: 3.0,
        warmup_steps: 3,
        ..OptimConfig::default()
    };
    assert_eq!(lr_at(&cfg, 0, 100), 1.0);
    assert_eq!(lr_at(&cfg, 5, 100), 3.0);
}

/// The fused in-place update for CPU f32 tensors (several parallel blocks, gradient clipping active) against the
/// scalar reference, and its gradient norm against an f64 sum.
#[test]
fn f32_fused_update_matches_the_reference() {
    let n = 70_000; // more than two blocks of the fused update
    let wave = |k: usize, a: f64| -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 37 + k * 11) % 101) as f64 / 101.0 * a - a / 2.0)
            .map(|x| x as f32 as f64)
            .collect()
    };
    let p0 = wave(0, 2.0);
    let raw: Vec<Vec<f64>> = (1..4).map(|k| wave(k, 0.02)).collect();
    let lrs = [0.01, 0.02, 0.005];
    let (b1, b2, eps, wd, clip) = (0.9, 0.99, 1e-8, 0.05, 1.0);
    let w = Var::from_tensor(
        &Tensor::new(
            p0.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap(),
    )
    .unwrap();
    let params = AdamWParams {
        beta1: b1,
        beta2: b2,
        eps,
        weight_decay: wd,
    };
    let mut opt = AdamW::from_vars(vec![("w".into(), w.clone())], params).unwrap();
    let mut clipped = vec![];
    for (g, lr) in raw.iter().zip(lrs) {
        let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(norm > clip, "the test wants clipping active, norm {norm}");
        let t = Tensor::new(
            g.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap();
        let out = opt.step(&Grads(vec![Some(t)]), lr, clip).unwrap();
        assert!(
            (out.grad_norm - norm).abs() < 1e-9 * norm,
            "{} vs {norm}",
            out.grad_norm
        );
        let scale = clip / (norm + 1e-6);
        clipped.push(g.iter().map(|x| x * scale).collect::<Vec<f64>>());
    }
    let want = reference(&p0, &clipped, &lrs, b1, b2, eps, wd);
    let got = w.as_tensor().to_vec1::<f32>().unwrap();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(&a, b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 2e-6, "worst |f32 fused − reference| = {worst}");
}
