//! Invariants of the objectives (research/luspo.md §10, methods.md §1–3), config resolution and advantages.

mod objective_common;

use luspo::advantage::{compute, Estimator};
use luspo::objective::{Aggregation, Importance, KlEstimator, ObjectiveConfig, Preset, Surrogate};
use luspo::Error;
use objective_common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// A seeded random ragged batch; `scale` is the size of the per-token drift logp − old.
fn random_batch(seed: u64, scale: f64) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let b = rng.random_range(2..7);
    let mut logp = Vec::new();
    let mut old = Vec::new();
    let mut adv = Vec::new();
    for _ in 0..b {
        let n = rng.random_range(1..9);
        let o: Vec<f64> = (0..n).map(|_| -rng.random_range(0.01..3.0)).collect();
        logp.push(
            o.iter()
                .map(|x| x + scale * rng.random_range(-1.0..1.0))
                .collect(),
        );
        old.push(o);
        adv.push(rng.random_range(-1.5..1.5));
    }
    Batch::new(logp, old, adv)
}

#[test]
fn gspo_token_equals_gspo_value_and_grad() {
    for seed in 0..40 {
        for scale in [0.0, 1e-4, 1e-3, 0.05, 0.5] {
            let b = random_batch(seed, scale);
            for eps in [(3e-4, 4e-4), (0.2, 0.28)] {
                let o = json!({"eps_low": eps.0, "eps_high": eps.1});
                let (g, gt) = (
                    eval(&cfg("gspo", o.clone()), &b),
                    eval(&cfg("gspo_token", o), &b),
                );
                assert!(
                    (g.loss - gt.loss).abs() < 1e-12,
                    "seed {seed}: {} vs {}",
                    g.loss,
                    gt.loss
                );
                assert!(
                    max_diff(&g.grad, &gt.grad) < 1e-12,
                    "seed {seed} scale {scale}"
                );
                assert_eq!(g.stats.clip_frac_low, gt.stats.clip_frac_low);
                assert_eq!(g.stats.clip_frac_high, gt.stats.clip_frac_high);
            }
        }
    }
}

#[test]
fn luspo_grad_is_gspo_grad_times_length_and_token_mean_is_a_rescale() {
    for seed in 0..40 {
        let b = random_batch(seed, 0.01);
        let o = json!({"eps_low": 2e-3, "eps_high": 2.5e-3});
        let g = eval(&cfg("gspo", o.clone()), &b);
        let l = eval(&cfg("luspo", json!({})), &b);
        let scaled: Vec<Vec<f64>> = g
            .grad
            .iter()
            .map(|r| r.iter().map(|x| x * r.len() as f64).collect())
            .collect();
        assert!(max_diff(&l.grad, &scaled) < 1e-12, "seed {seed}");
        // luspo.md identity 3: LUSPO with token-mean = LUSPO × B/Σ|y|.
        let tm = eval(&cfg("luspo", json!({"aggregation": "token-mean"})), &b);
        let ratio = b.adv.len() as f64 / b.lens().iter().sum::<usize>() as f64;
        assert!((tm.loss - l.loss * ratio).abs() < 1e-12, "seed {seed}");
    }
}

#[test]
fn on_policy_grpo_equals_gspo() {
    for seed in 0..30 {
        let b = random_batch(seed, 0.0);
        let g = eval(&cfg("grpo", json!({})), &b);
        let s = eval(&cfg("gspo", json!({})), &b);
        assert!((g.loss - s.loss).abs() < 1e-12);
        assert!(max_diff(&g.grad, &s.grad) < 1e-12);
        assert_eq!(g.stats.ratio_mean, 1.0);
        assert_eq!(g.stats.approx_kl, 0.0);
    }
}

#[test]
fn clipped_sequences_and_tokens_get_exactly_zero_gradient() {
    // Sequence 0: A>0, s = e^0.01 > 1+2.5e-3 → clipped; sequence 1: A<0, s < 1−2e-3 → clipped; sequence 2 free.
    let b = Batch::new(
        vec![
            vec![-1.0 + 0.01, -2.0 + 0.01],
            vec![-0.5 - 0.01],
            vec![-0.3, -0.2, -0.1],
        ],
        vec![vec![-1.0, -2.0], vec![-0.5], vec![-0.3, -0.2, -0.1]],
        vec![0.7, -0.9, 0.4],
    );
    for name in ["luspo", "gspo", "gspo_token"] {
        let e = eval(&cfg(name, json!({"eps_low": 2e-3, "eps_high": 2.5e-3})), &b);
        assert!(
            e.grad[0].iter().chain(&e.grad[1]).all(|&g| g == 0.0),
            "{name}: {:?}",
            e.grad
        );
        assert!(e.grad[2].iter().all(|&g| g != 0.0), "{name}");
        assert!(
            (e.stats.clip_frac_high - 1.0 / 3.0).abs() < 1e-15
                && (e.stats.clip_frac_low - 1.0 / 3.0).abs() < 1e-15
        );
    }
    // Token level: a token with A>0 and w = e^0.5 > 1.28 gets 0; its neighbour does not.
    let b = Batch::new(vec![vec![-0.5, -1.0]], vec![vec![-1.0, -1.0]], vec![1.0]);
    let e = eval(&cfg("dapo", json!({})), &b);
    assert_eq!(e.grad[0][0], 0.0);
    assert!((e.grad[0][1] + 0.5).abs() < 1e-15, "{:?}", e.grad);
    // Dual clip: A<0, w = e^1.5 > 3 → 0 gradient and loss −A·c.
    let b = Batch::new(vec![vec![0.5]], vec![vec![-1.0]], vec![-2.0]);
    let e = eval(&cfg("grpo", json!({"dual_clip": 3.0})), &b);
    assert_eq!(e.grad[0][0], 0.0);
    assert!((e.loss - 6.0).abs() < 1e-12);
    let e = eval(&cfg("grpo", json!({})), &b);
    assert!((e.grad[0][0] - 2.0 * 1.5f64.exp()).abs() < 1e-12);
}

#[test]
fn zero_advantage_sequences_change_only_normalisers() {
    for seed in 0..20 {
        let b = random_batch(seed, 0.02);
        let mut bz = b.clone();
        bz.logp.push(vec![-0.3, -0.4, -0.5]);
        bz.old.push(vec![-0.35, -0.2, -0.9]);
        bz.adv.push(0.0);
        let nb = b.adv.len() as f64;
        let nt = b.lens().iter().sum::<usize>() as f64;
        for (name, factor) in [
            ("grpo", nb / (nb + 1.0)),
            ("gspo", nb / (nb + 1.0)),
            ("luspo", nb / (nb + 1.0)),
            ("dapo", nt / (nt + 3.0)),
            ("cispo", nt / (nt + 3.0)),
        ] {
            let c = cfg(name, json!({}));
            let (e, ez) = (eval(&c, &b), eval(&c, &bz));
            assert!(
                (ez.loss - e.loss * factor).abs() < 1e-12,
                "{name} seed {seed}"
            );
            assert!(ez.grad.last().unwrap().iter().all(|&g| g == 0.0));
            let scaled: Vec<Vec<f64>> = e
                .grad
                .iter()
                .map(|r| r.iter().map(|x| x * factor).collect())
                .collect();
            assert!(
                max_diff(&ez.grad[..ez.grad.len() - 1], &scaled) < 1e-12,
                "{name} seed {seed}"
            );
        }
    }
}

#[test]
fn micro_batches_with_global_counts_sum_to_the_whole_batch() {
    use candle_core::DType;
    for seed in 0..10 {
        let b = random_batch(seed, 0.1);
        let n = b.adv.len();
        let k = n / 2;
        let part = |r: std::ops::Range<usize>| {
            Batch::new(
                b.logp[r.clone()].to_vec(),
                b.old[r.clone()].to_vec(),
                b.adv[r].to_vec(),
            )
        };
        let gc = Some((n as f64, b.lens().iter().sum::<usize>() as f64));
        for name in [
            "grpo",
            "dapo",
            "gspo",
            "gspo_token",
            "luspo",
            "cispo",
            "dr_grpo",
        ] {
            let c = cfg(name, json!({"norm_len": 9.0}));
            let whole = eval(&c, &b);
            let (p1, p2) = (
                eval_with(&c, &part(0..k), 1, DType::F64, gc),
                eval_with(&c, &part(k..n), 0, DType::F64, gc),
            );
            assert!(
                (p1.loss + p2.loss - whole.loss).abs() < 1e-12,
                "{name} seed {seed}"
            );
            let joined: Vec<Vec<f64>> = p1.grad.into_iter().chain(p2.grad).collect();
            assert!(max_diff(&joined, &whole.grad) < 1e-12, "{name} seed {seed}");
        }
    }
}

#[test]
fn cispo_keeps_gradient_outside_the_clip_range() {
    // methods.md §3: r = 5 with eps_high = 2 → d loss/d logp = −(1+eps_high)·A/N (non-zero); in range = −A·r/N.
    let r_out = 5f64.ln();
    let r_in = 1.3f64.ln();
    let b = Batch::new(
        vec![vec![-1.0 + r_out, -2.0 + r_in]],
        vec![vec![-1.0, -2.0]],
        vec![0.8],
    );
    let e = eval(&cfg("cispo", json!({"eps_high": 2.0})), &b);
    assert!(
        (e.grad[0][0] + 3.0 * 0.8 / 2.0).abs() < 1e-12,
        "{:?}",
        e.grad
    );
    assert!(
        (e.grad[0][1] + 1.3 * 0.8 / 2.0).abs() < 1e-12,
        "{:?}",
        e.grad
    );
    // Same in-range gradient as DAPO's PPO term with the same epsilons.
    let d = eval(&cfg("dapo", json!({"eps_low": 1.0, "eps_high": 2.0})), &b);
    assert!((d.grad[0][1] - e.grad[0][1]).abs() < 1e-12 && d.grad[0][0] == 0.0);
    // The loss value is −sg(w)·A·logp, token-mean: the weight is detached, so the gradient does not depend on logp's
    // value beyond the weight (a second-order check: gradient at two logp values with the same weight is equal).
    let expect = -(3.0 * 0.8 * (-1.0 + r_out) + 1.3 * 0.8 * (-2.0 + r_in)) / 2.0;
    assert!((e.loss - expect).abs() < 1e-12, "{} vs {expect}", e.loss);
    assert!((e.stats.clip_frac_high - 0.5).abs() < 1e-15);
    // Negative advantage below the floor (eps_low 0.2): weight 0.8, gradient still flows.
    let b = Batch::new(vec![vec![-1.0 + 0.5f64.ln()]], vec![vec![-1.0]], vec![-1.0]);
    let e = eval(&cfg("cispo", json!({"eps_low": 0.2})), &b);
    assert!((e.grad[0][0] - 0.8).abs() < 1e-12);
}

#[test]
fn kl_and_entropy_terms() {
    let mut b = Batch::new(
        vec![vec![-1.0, -0.5], vec![-0.2]],
        vec![vec![-1.0, -0.5], vec![-0.2]],
        vec![0.0, 0.0],
    );
    b.reference = Some(b.logp.clone());
    // KL at logp == ref is 0 with zero gradient for every estimator.
    for est in [
        "k1",
        "k2",
        "k3",
        "low_var_kl",
        "abs",
        "k1+",
        "k3+",
        "mse",
        "kl",
    ] {
        let e = eval(
            &cfg("dapo", json!({"kl_beta": 0.1, "kl_estimator": est})),
            &b,
        );
        assert_eq!(e.loss, 0.0, "{est}");
        assert_eq!(e.stats.kl, Some(0.0));
        assert!(e
            .grad
            .iter()
            .flatten()
            .all(|&g| g == 0.0 || est == "k1" || est == "kl" || est == "abs"));
    }
    // k3 value: x = logp − ref = 0.3 → exp(−0.3) + 0.3 − 1, token-mean over 3 tokens with one such token.
    b.reference = Some(vec![vec![-1.3, -0.5], vec![-0.2]]);
    let e = eval(&cfg("dapo", json!({"kl_beta": 0.5})), &b);
    let k3 = (-0.3f64).exp() + 0.3 - 1.0;
    assert!(
        (e.loss - 0.5 * k3 / 3.0).abs() < 1e-12 && (e.stats.kl.unwrap() - k3 / 3.0).abs() < 1e-12
    );
    assert!((e.grad[0][0] - 0.5 * (1.0 - (-0.3f64).exp()) / 3.0).abs() < 1e-12);
    // k3 clamps: x = −30 → inner clamp to 20 and output clamp to 10 → value 10, zero gradient.
    b.reference = Some(vec![vec![29.0, -0.5], vec![-0.2]]);
    let e = eval(&cfg("dapo", json!({"kl_beta": 1.0})), &b);
    assert!((e.loss - 10.0 / 3.0).abs() < 1e-12 && e.grad[0][0] == 0.0);
    // k3+: value of k3, gradient of k2 (= x).
    b.reference = Some(vec![vec![-1.3, -0.5], vec![-0.2]]);
    let e = eval(
        &cfg("dapo", json!({"kl_beta": 1.0, "kl_estimator": "k3+"})),
        &b,
    );
    assert!((e.loss - k3 / 3.0).abs() < 1e-12 && (e.grad[0][0] - 0.3 / 3.0).abs() < 1e-12);
    // Entropy bonus: loss −= coef·agg(H); gradient to H is −coef × aggregation weight.
    b.entropy = Some(vec![vec![1.0, 2.0], vec![0.5]]);
    b.reference = None;
    let e = eval(&cfg("luspo", json!({"entropy_coef": 0.01})), &b);
    assert!(
        (e.loss + 0.01 * (3.0 + 0.5) / 2.0).abs() < 1e-12,
        "{}",
        e.loss
    );
    assert_eq!(e.stats.entropy, Some(3.5 / 3.0));
    let ge = e.grad_entropy.unwrap();
    assert!(
        ge.iter().flatten().all(|&g| (g + 0.01 / 2.0).abs() < 1e-15),
        "{ge:?}"
    );
}

#[test]
fn presets_resolve_to_the_design_table() {
    let r = |n: &str| ObjectiveConfig::preset(n).resolved().unwrap();
    let g = r("grpo");
    assert_eq!(
        (g.importance, g.aggregation, g.eps_low, g.eps_high),
        (Importance::Token, Aggregation::SeqMeanTokenMean, 0.2, 0.2)
    );
    assert_eq!(g.dual_clip, None);
    let d = r("dapo");
    assert_eq!(
        (d.importance, d.aggregation, d.eps_low, d.eps_high),
        (Importance::Token, Aggregation::TokenMean, 0.2, 0.28)
    );
    let d = r("dr_grpo");
    assert_eq!(
        (d.aggregation, d.eps_high, d.norm_len),
        (Aggregation::SeqMeanTokenSumNorm, 0.2, None)
    );
    let s = r("gspo");
    assert_eq!(
        (s.importance, s.aggregation, s.eps_low, s.eps_high),
        (
            Importance::Sequence,
            Aggregation::SeqMeanTokenMean,
            3e-4,
            4e-4
        )
    );
    assert_eq!(r("gspo_token").importance, Importance::SequenceToken);
    let l = r("luspo");
    assert_eq!(
        (l.importance, l.aggregation, l.eps_low, l.eps_high),
        (
            Importance::Sequence,
            Aggregation::SeqMeanTokenSum,
            2e-3,
            2.5e-3
        )
    );
    let c = r("cispo");
    assert_eq!(
        (c.surrogate, c.aggregation, c.eps_low, c.eps_high),
        (Surrogate::Cispo, Aggregation::TokenMean, 1.0, 4.0)
    );
    assert_eq!(
        ObjectiveConfig::default().resolved().unwrap().preset,
        Preset::Luspo
    );
    assert_eq!(r("Dr-GRPO").preset, Preset::DrGrpo);
    // Overrides from TOML, every axis.
    let t: ObjectiveConfig = toml::from_str(
        "name = \"gspo\"\nimportance = \"token\"\naggregation = \"seq-mean-token-sum-norm\"\neps_low = 0.1\neps_high = 0.3\n\
         dual_clip = 3\nnorm_len = 512\nkl_beta = 0.001\nkl_estimator = \"low_var_kl\"\nentropy_coef = 0.01\n",
    )
    .unwrap();
    let x = t.resolved().unwrap();
    assert_eq!(
        (x.importance, x.aggregation, x.eps_low, x.eps_high),
        (
            Importance::Token,
            Aggregation::SeqMeanTokenSumNorm,
            0.1,
            0.3
        )
    );
    assert_eq!(
        (
            x.dual_clip,
            x.norm_len,
            x.kl_beta,
            x.kl_estimator,
            x.entropy_coef
        ),
        (Some(3.0), Some(512.0), 0.001, KlEstimator::K3, 0.01)
    );
}

#[test]
fn bad_configs_name_the_key() {
    let msg = |c: ObjectiveConfig| match c.resolved() {
        Err(Error::Input(m)) => m,
        other => panic!("expected Error::Input, got {other:?}"),
    };
    assert!(
        msg(ObjectiveConfig::preset("ppo")).starts_with("objective.name: unknown objective `ppo`")
    );
    assert!(msg(cfg("grpo", json!({"eps_low": -0.1}))).starts_with("objective.eps_low:"));
    assert!(msg(cfg("grpo", json!({"eps_low": 1.5}))).starts_with("objective.eps_low:"));
    assert!(msg(cfg("grpo", json!({"eps_high": -1.0}))).starts_with("objective.eps_high:"));
    assert!(msg(cfg("grpo", json!({"dual_clip": 0.5}))).starts_with("objective.dual_clip:"));
    assert!(msg(cfg("cispo", json!({"dual_clip": 3.0}))).starts_with("objective.dual_clip:"));
    assert!(msg(cfg("dr_grpo", json!({"norm_len": 0.0}))).starts_with("objective.norm_len:"));
    assert!(msg(cfg("grpo", json!({"kl_beta": -1.0}))).starts_with("objective.kl_beta:"));
    let e = toml::from_str::<ObjectiveConfig>("name = \"grpo\"\nepsilon = 0.2\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("epsilon"), "{e}");
    let e = toml::from_str::<ObjectiveConfig>("name = \"grpo\"\naggregation = \"mean\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("token-mean"), "{e}");
}

#[test]
fn advantage_estimators() {
    let g = [0, 0, 0, 1, 1, 2, 3, 3];
    let r = [1.0, 0.0, 0.5, 2.0, 2.0, 3.0, 0.1, 0.1];
    // grpo: Bessel std + 1e-6; zero-variance groups exactly 0; group of one r/(1+1e-6).
    let a = compute(Estimator::Grpo, &r, &g);
    let std = (((0.5f64).powi(2) * 2.0) / 2.0).sqrt();
    assert!(
        (a[0] - 0.5 / (std + 1e-6)).abs() < 1e-12
            && (a[1] + 0.5 / (std + 1e-6)).abs() < 1e-12
            && a[2] == 0.0
    );
    assert_eq!((a[3], a[4], a[6], a[7]), (0.0, 0.0, 0.0, 0.0));
    assert_eq!(a[5], 3.0 / (1.0 + 1e-6));
    // dr_grpo: r − mean; invariant to a reward shift, linear in scale.
    let d = compute(Estimator::DrGrpo, &r, &g);
    assert_eq!((d[0], d[1], d[2], d[5]), (0.5, -0.5, 0.0, 3.0));
    let shifted: Vec<f64> = r.iter().map(|x| 2.0 * x + 7.0).collect();
    let d2 = compute(Estimator::DrGrpo, &shifted, &g);
    for (i, (x, y)) in d.iter().zip(&d2).enumerate() {
        if g[i] != 2 {
            assert!((2.0 * x - y).abs() < 1e-12);
        }
    }
    // rloo: r_i − mean of the others; size-1 group → 0.
    let l = compute(Estimator::Rloo, &r, &g);
    assert!(
        (l[0] - (1.0 - 0.25)).abs() < 1e-12
            && (l[1] - (0.0 - 0.75)).abs() < 1e-12
            && (l[2] - 0.0).abs() < 1e-12
    );
    assert_eq!((l[5], l[3], l[6]), (0.0, 0.0, 0.0));
    // batch: group-centred then scaled to unit (Bessel) std over the batch; zero-variance groups stay 0.
    let bt = compute(Estimator::Batch, &r, &g);
    let n = bt.len() as f64;
    let mean = bt.iter().sum::<f64>() / n;
    let var = bt.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-6, "{bt:?}");
    assert_eq!((bt[3], bt[4], bt[5], bt[6]), (0.0, 0.0, 0.0, 0.0));
    // Non-contiguous group ids.
    let a = compute(Estimator::Grpo, &[1.0, 5.0, 0.0, 5.0], &[9, 4, 9, 4]);
    assert!(a[0] > 0.0 && a[2] < 0.0 && a[1] == 0.0 && a[3] == 0.0);
}

#[test]
fn bad_shapes_are_input_errors() {
    use candle_core::{Device, Tensor};
    use luspo::objective::{policy_loss, PolicyInputs};
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 3), candle_core::DType::F64, &dev).unwrap();
    let y = Tensor::zeros((2, 4), candle_core::DType::F64, &dev).unwrap();
    let a = Tensor::zeros(2, candle_core::DType::F64, &dev).unwrap();
    let a3 = Tensor::zeros(3, candle_core::DType::F64, &dev).unwrap();
    let ones = x.ones_like().unwrap();
    let mk = |old: &Tensor, adv: &Tensor, mask: &Tensor| {
        let inp = PolicyInputs {
            logp: &x,
            old_logp: old,
            mask,
            advantages: adv,
            ref_logp: None,
            entropy: None,
            groups: None,
            token_weights: None,
            entropy_coefs: None,
            global_counts: None,
        };
        match policy_loss(&ObjectiveConfig::default(), &inp) {
            Err(Error::Input(m)) => m,
            Err(e) => panic!("{e}"),
            Ok(_) => "ok".into(),
        }
    };
    assert!(mk(&y, &a, &ones).starts_with("old_logp:"));
    assert!(mk(&x, &a3, &ones).starts_with("advantages:"));
    assert!(mk(&x, &a, &x).starts_with("mask: the batch has no response tokens"));
    assert_eq!(mk(&x, &a, &ones), "ok");
    let inp = PolicyInputs {
        logp: &x,
        old_logp: &x,
        mask: &ones,
        advantages: &a,
        ref_logp: None,
        entropy: None,
        groups: None,
        token_weights: None,
        entropy_coefs: None,
        global_counts: None,
    };
    match policy_loss(&cfg("grpo", json!({"kl_beta": 0.1})), &inp) {
        Err(Error::Input(m)) => assert!(m.starts_with("ref_logp:"), "{m}"),
        _ => panic!("kl without reference must fail"),
    }
    let inp = PolicyInputs {
        groups: None,
        token_weights: None,
        entropy_coefs: None,
        global_counts: Some((4.0, 12.0)),
        ..inp
    };
    match policy_loss(&cfg("dr_grpo", json!({})), &inp) {
        Err(Error::Input(m)) => assert!(m.starts_with("objective.norm_len:"), "{m}"),
        _ => panic!("dr_grpo micro-batches without norm_len must fail"),
    }
    assert!(policy_loss(&cfg("dr_grpo", json!({"norm_len": 8.0})), &inp).is_ok());
}

/// Per-sequence entropy coefficients (CEEH's λ(x, t)): the loss gets −aggregate(λ_i·H_it); equal λ_i equal the
/// objective's own `entropy_coef`; the gradient w.r.t. H_it is −λ_i/n_tok under token-mean; no entropies → error.
#[test]
fn per_sequence_entropy_coefficients() {
    use candle_core::{DType, Device, Tensor, Var};
    use luspo::objective::{policy_loss, PolicyInputs};
    let dev = Device::Cpu;
    let t = |v: Vec<f64>, s: (usize, usize)| Tensor::from_vec(v, s, &dev).unwrap();
    let logp = t(vec![-1.0, -2.0, -0.5, -0.7, -0.2, 0.0], (2, 3));
    let old = t(vec![-1.1, -1.9, -0.5, -0.6, -0.3, 0.0], (2, 3));
    // Sequence 0 has 3 response tokens, sequence 1 has 2 (the last is padding).
    let mask = t(vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0], (2, 3));
    let adv = Tensor::from_vec(vec![0.5, -0.5], 2, &dev).unwrap();
    let ent = Var::from_tensor(&t(vec![0.3, 0.6, 0.9, 1.2, 1.5, 7.0], (2, 3))).unwrap();
    let run = |obj: &ObjectiveConfig, coefs: Option<&Tensor>, e: Option<&Tensor>| {
        policy_loss(
            obj,
            &PolicyInputs {
                logp: &logp,
                old_logp: &old,
                mask: &mask,
                advantages: &adv,
                ref_logp: None,
                entropy: e,
                groups: None,
                token_weights: None,
                entropy_coefs: coefs,
                global_counts: None,
            },
        )
    };
    let grpo = cfg("grpo", json!({"aggregation": "token-mean"}));
    assert_eq!(grpo.resolved().unwrap().aggregation, Aggregation::TokenMean);
    let base = run(&grpo, None, Some(ent.as_tensor())).unwrap();
    let scalar = |x: &Tensor| x.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let l0 = scalar(&base.loss);
    let c = Tensor::from_vec(vec![0.1, 0.4], 2, &dev).unwrap();
    let out = run(&grpo, Some(&c), Some(ent.as_tensor())).unwrap();
    // Token mean over the 5 response tokens: (0.1·(0.3 + 0.6 + 0.9) + 0.4·(1.2 + 1.5)) / 5 = 0.252.
    assert!((l0 - scalar(&out.loss) - 0.252).abs() < 1e-12);
    let g = out.loss.backward().unwrap();
    let ge: Vec<Vec<f64>> = g.get(ent.as_tensor()).unwrap().to_vec2().unwrap();
    let want = [[-0.02, -0.02, -0.02], [-0.08, -0.08, 0.0]];
    for (a, b) in ge.iter().flatten().zip(want.iter().flatten()) {
        assert!((a - b).abs() < 1e-12, "{ge:?}");
    }
    // Equal coefficients = the objective's entropy_coef, for a sequence-mean aggregation too.
    // (GRPO's preset aggregation is seq-mean-token-mean.)
    for name in ["grpo", "gspo"] {
        let same = Tensor::from_vec(vec![0.3, 0.3], 2, &dev).unwrap();
        let a = run(&cfg(name, json!({})), Some(&same), Some(ent.as_tensor())).unwrap();
        let b = run(
            &cfg(name, json!({"entropy_coef": 0.3})),
            None,
            Some(ent.as_tensor()),
        )
        .unwrap();
        assert!((scalar(&a.loss) - scalar(&b.loss)).abs() < 1e-12, "{name}");
    }
    match run(&grpo, Some(&c), None) {
        Err(Error::Input(m)) => assert!(m.starts_with("entropy:"), "{m}"),
        _ => panic!("coefficients without entropies must fail"),
    }
    let c3 = Tensor::from_vec(vec![0.1, 0.4, 0.2], 3, &dev).unwrap();
    match run(&grpo, Some(&c3), Some(ent.as_tensor())) {
        Err(Error::Input(m)) => assert!(m.starts_with("entropy_coefs:"), "{m}"),
        _ => panic!("a wrong shape must fail"),
    }
}
