//! research/luspo.md §10 test vectors A–E: every loss and every per-token gradient, to 1e-8, per preset.
//! The numbers below are copied from the tables (an independent torch float64 implementation), not from our output.

mod objective_common;

use candle_core::DType;
use luspo::advantage::{compute, Estimator};
use luspo::objective::ObjectiveConfig;
use objective_common::*;
use serde_json::json;

const TOL: f64 = 1e-8;

fn old_abc() -> Vec<Vec<f64>> {
    vec![
        vec![-1.0, -0.5],
        vec![-2.0, -0.1, -0.7],
        vec![-0.3, -1.2, -0.8, -0.05, -1.5],
    ]
}
const A_ABC: [f64; 3] = [0.5773492692, -1.1546985384, 0.5773492692];

fn zeros(lens: &[usize]) -> Vec<Vec<f64>> {
    lens.iter().map(|&n| vec![0.0; n]).collect()
}

/// Per-sequence constant gradient rows.
fn rep(vals: &[f64], lens: &[usize]) -> Vec<Vec<f64>> {
    vals.iter().zip(lens).map(|(&v, &n)| vec![v; n]).collect()
}

fn check(case: &str, what: &str, c: &ObjectiveConfig, b: &Batch, loss: f64, grad: &[Vec<f64>]) {
    let e = eval(c, b);
    assert!(
        (e.loss - loss).abs() < TOL,
        "{case} {what}: loss {} vs table {}",
        e.loss,
        loss
    );
    let d = max_diff(&e.grad, grad);
    assert!(
        d < TOL,
        "{case} {what}: grad off by {d}: {:?} vs table {:?}",
        e.grad,
        grad
    );
}

fn tok(eps_high: f64) -> serde_json::Value {
    json!({ "eps_low": 0.2, "eps_high": eps_high })
}

/// The configurations the tables name, with the tables' epsilons (luspo.md §10 conventions).
struct Cfgs {
    grpo_eq1: ObjectiveConfig,
    verl_vanilla: ObjectiveConfig,
    dapo_c3: ObjectiveConfig,
    dr_grpo: ObjectiveConfig,
    dr_grpo_default_h: ObjectiveConfig,
    gspo: ObjectiveConfig,
    gspo_token: ObjectiveConfig,
    luspo: ObjectiveConfig,
    gspo_token_tm: ObjectiveConfig,
}

fn cfgs(seq_eps: (f64, f64), h: f64) -> Cfgs {
    let se = json!({ "eps_low": seq_eps.0, "eps_high": seq_eps.1 });
    let luspo = if seq_eps == (2e-3, 2.5e-3) {
        cfg("luspo", json!({}))
    } else {
        cfg("luspo", se.clone())
    };
    Cfgs {
        grpo_eq1: cfg("grpo", tok(0.28)),
        verl_vanilla: cfg("grpo", json!({ "eps_high": 0.28, "dual_clip": 3.0 })),
        dapo_c3: cfg("dapo", json!({ "dual_clip": 3.0 })),
        dr_grpo: cfg(
            "dr_grpo",
            json!({ "eps_high": 0.28, "dual_clip": 3.0, "norm_len": h }),
        ),
        dr_grpo_default_h: cfg("dr_grpo", json!({ "eps_high": 0.28, "dual_clip": 3.0 })),
        gspo: cfg("gspo", se.clone()),
        gspo_token: cfg("gspo_token", se.clone()),
        luspo,
        gspo_token_tm: cfg(
            "gspo_token",
            json!({ "eps_low": seq_eps.0, "eps_high": seq_eps.1, "aggregation": "token-mean" }),
        ),
    }
}

#[test]
fn advantages_of_the_cases() {
    let a = compute(Estimator::Grpo, &[1.0, 0.0, 1.0], &[0, 0, 0]);
    for (x, y) in a.iter().zip(A_ABC) {
        assert!((x - y).abs() < 1e-10, "{a:?}");
    }
    let d = compute(Estimator::Grpo, &[1.5, 0.5, 1.2, 0.0], &[7, 7, 7, 7]);
    for (x, y) in d
        .iter()
        .zip([1.0320921713, -0.4423252163, 0.5897669551, -1.1795339101])
    {
        assert!((x - y).abs() < 1e-10, "{d:?}");
    }
    let e = compute(Estimator::Grpo, &[1.0, 0.0, 1.0, 1.0], &[0, 0, 1, 1]);
    assert!(
        (e[0] - 0.7071057812).abs() < 1e-10 && (e[1] + 0.7071057812).abs() < 1e-10,
        "{e:?}"
    );
    assert_eq!(
        &e[2..],
        &[0.0, 0.0],
        "zero-variance group must give exactly 0"
    );
}

#[test]
fn case_a_on_policy() {
    let old = old_abc();
    let lens = [2, 3, 5];
    let b = Batch::drift(&old, &zeros(&lens), &A_ABC);
    let c = cfgs((2e-3, 2.5e-3), 5.0);
    let g0 = rep(&[-0.09622488, 0.12829984, -0.03848995], &lens);
    for (n, k) in [
        ("grpo", &c.grpo_eq1),
        ("verl", &c.verl_vanilla),
        ("gspo", &c.gspo),
        ("gspo_token", &c.gspo_token),
    ] {
        check("A", n, k, &b, 0.0, &g0);
    }
    let gd = rep(&[-0.05773493, 0.11546985, -0.05773493], &lens);
    check("A", "dapo", &c.dapo_c3, &b, -0.0577349269, &gd);
    check(
        "A",
        "gspo_token+token-mean",
        &c.gspo_token_tm,
        &b,
        -0.0577349269,
        &gd,
    );
    let gr = rep(&[-0.03848995, 0.07697990, -0.03848995], &lens);
    check("A", "dr_grpo H=5", &c.dr_grpo, &b, -0.0384899513, &gr);
    check(
        "A",
        "dr_grpo default H",
        &c.dr_grpo_default_h,
        &b,
        -0.0384899513,
        &gr,
    );
    let gl = rep(&[-0.19244976, 0.38489951, -0.19244976], &lens);
    check("A", "luspo", &c.luspo, &b, -0.1924497564, &gl);
}

#[test]
fn case_b_small_drift() {
    let old = old_abc();
    let lens = [2, 3, 5];
    let delta = vec![
        vec![0.004, 0.002],
        vec![-0.003, -0.001, -0.005],
        vec![0.001, -0.002, 0.003, 0.0, 0.0005],
    ];
    let b = Batch::drift(&old, &delta, &A_ABC);
    let c = cfgs((2e-3, 2.5e-3), 5.0);
    let y3 = vec![
        -0.03852846,
        -0.03841305,
        -0.03860559,
        -0.03848995,
        -0.03850920,
    ];
    let g = vec![
        vec![-0.09661055, -0.09641752],
        vec![0.12791551, 0.12817160, 0.12765994],
        y3.clone(),
    ];
    check("B", "grpo", &c.grpo_eq1, &b, -0.0018272685, &g);
    check("B", "verl", &c.verl_vanilla, &b, -0.0018272685, &g);
    let g = vec![
        vec![-0.05796633, -0.05785051],
        vec![0.11512396, 0.11535444, 0.11489395],
        vec![
            -0.05779269,
            -0.05761957,
            -0.05790839,
            -0.05773493,
            -0.05776380,
        ],
    ];
    check("B", "dapo", &c.dapo_c3, &b, -0.0592638743, &g);
    let g = vec![
        vec![-0.03864422, -0.03856701],
        vec![0.07674931, 0.07690296, 0.07659596],
        y3,
    ];
    check("B", "dr_grpo", &c.dr_grpo, &b, -0.0395092495, &g);
    check(
        "B",
        "dr_grpo default H",
        &c.dr_grpo_default_h,
        &b,
        -0.0395092495,
        &g,
    );
    let g = rep(&[0.0, 0.0, -0.03850920], &lens);
    check("B", "gspo", &c.gspo, &b, -0.0013471724, &g);
    check("B", "gspo_token", &c.gspo_token, &b, -0.0013471724, &g);
    check(
        "B",
        "luspo",
        &c.luspo,
        &b,
        -0.1962026469,
        &rep(&[0.0, 0.0, -0.19254601], &lens),
    );
    check(
        "B",
        "gspo_token+token-mean",
        &c.gspo_token_tm,
        &b,
        -0.0588607941,
        &rep(&[0.0, 0.0, -0.05776380], &lens),
    );
    // Sequence-level clip statistics: y1 clipped high, y2 clipped low.
    let e = eval(&c.luspo, &b);
    assert!(
        (e.stats.clip_frac_high - 1.0 / 3.0).abs() < 1e-12
            && (e.stats.clip_frac_low - 1.0 / 3.0).abs() < 1e-12
    );
}

#[test]
fn case_c_large_drift() {
    let old = old_abc();
    let lens = [2, 3, 5];
    let delta = vec![
        vec![0.3, -0.1],
        vec![0.1, -0.3, 1.2],
        vec![0.0, 0.2, -0.25, 0.4, 0.1],
    ];
    let b = Batch::drift(&old, &delta, &A_ABC);
    let c = cfgs((0.2, 0.28), 5.0);
    let y3 = vec![-0.03848995, -0.04701173, -0.02997600, 0.0, -0.04253797];
    let g = vec![
        vec![0.0, -0.08706787],
        vec![0.14179325, 0.0, 0.42597046],
        y3.clone(),
    ];
    check("C", "grpo eq1", &c.grpo_eq1, &b, 0.2528850664, &g);
    let g = vec![
        vec![0.0, -0.08706787],
        vec![0.14179325, 0.0, 0.0],
        y3.clone(),
    ];
    check("C", "verl c=3", &c.verl_vanilla, &b, 0.2118141172, &g);
    let g = vec![
        vec![0.0, -0.05224072],
        vec![0.12761392, 0.0, 0.0],
        vec![-0.05773493, -0.07051760, -0.04496401, 0.0, -0.06380696],
    ];
    check("C", "dapo c=3", &c.dapo_c3, &b, 0.1293337395, &g);
    let g = vec![vec![0.0, -0.03482715], vec![0.08507595, 0.0, 0.0], y3];
    check("C", "dr_grpo", &c.dr_grpo, &b, 0.0862224930, &g);
    let g = rep(&[-0.10634494, 0.17905685, -0.04211471], &lens);
    check("C", "gspo", &c.gspo, &b, 0.1139070941, &g);
    check("C", "gspo_token", &c.gspo_token, &b, 0.1139070941, &g);
    check(
        "C",
        "luspo",
        &c.luspo,
        &b,
        0.1332640077,
        &rep(&[-0.21268987, 0.53717054, -0.21057357], &lens),
    );
    let g = rep(&[-0.06380696, 0.16115116, -0.06317207], &lens);
    check(
        "C",
        "gspo_token+token-mean",
        &c.gspo_token_tm,
        &b,
        0.0399792023,
        &g,
    );
    // Token clip statistics of GRPO: 10 tokens, high-clipped y1t1 and y3t4, low-clipped y2t2.
    let e = eval(&c.verl_vanilla, &b);
    assert!(
        (e.stats.clip_frac_high - 0.2).abs() < 1e-12,
        "{:?}",
        e.stats
    );
    assert!((e.stats.clip_frac_low - 0.1).abs() < 1e-12, "{:?}", e.stats);
    assert!(
        (e.stats.approx_kl - (-(0.2 + 1.0 + 0.45) / 10.0)).abs() < 1e-12,
        "{:?}",
        e.stats
    );
    // The same numbers in f32 (training precision) through the same code.
    let e32 = eval_with(&c.luspo, &b, 3, DType::F32, None);
    assert!(
        (e32.loss - 0.1332640077).abs() < 1e-5,
        "f32 loss {}",
        e32.loss
    );
    let d = max_diff(
        &e32.grad,
        &rep(&[-0.21268987, 0.53717054, -0.21057357], &lens),
    );
    assert!(d < 1e-5, "f32 grad off by {d}");
}

#[test]
fn case_d_partial_credit_on_policy() {
    let mut old = old_abc();
    old.push(vec![-0.9, -0.4, -0.6, -1.1]);
    let lens = [2, 3, 5, 4];
    let adv = compute(Estimator::Grpo, &[1.5, 0.5, 1.2, 0.0], &[0, 0, 0, 0]);
    let b = Batch::drift(&old, &zeros(&lens), &adv);
    let c = cfgs((2e-3, 2.5e-3), 5.0);
    let g = rep(&[-0.12901152, 0.03686043, -0.02948835, 0.07372087], &lens);
    for (n, k) in [
        ("grpo", &c.grpo_eq1),
        ("verl", &c.verl_vanilla),
        ("gspo", &c.gspo),
        ("gspo_token", &c.gspo_token),
    ] {
        check("D", n, k, &b, 0.0, &g);
    }
    let g = rep(&[-0.07372087, 0.03159466, -0.04212621, 0.08425242], &lens);
    check("D", "dapo", &c.dapo_c3, &b, 0.0737208694, &g);
    check(
        "D",
        "gspo_token+token-mean",
        &c.gspo_token_tm,
        &b,
        0.0737208694,
        &g,
    );
    let g = rep(&[-0.05160461, 0.02211626, -0.02948835, 0.05897670], &lens);
    check("D", "dr_grpo", &c.dr_grpo, &b, 0.0516046086, &g);
    check(
        "D",
        "dr_grpo default H",
        &c.dr_grpo_default_h,
        &b,
        0.0516046086,
        &g,
    );
    let g = rep(&[-0.25802304, 0.11058130, -0.14744174, 0.29488348], &lens);
    check("D", "luspo", &c.luspo, &b, 0.2580230428, &g);
}

#[test]
fn case_e_two_prompts_zero_variance_group() {
    let old = vec![
        vec![-0.2, -1.0],
        vec![-0.6, -0.3, -2.0, -0.4],
        vec![-1.3, -0.2, -0.9],
        vec![-0.05],
    ];
    let delta = vec![
        vec![0.002, 0.001],
        vec![-0.001, 0.0, -0.002, 0.001],
        vec![0.001, 0.0, -0.001],
        vec![0.003],
    ];
    let lens = [2, 4, 3, 1];
    let adv = compute(Estimator::Grpo, &[1.0, 0.0, 1.0, 1.0], &[0, 0, 1, 1]);
    let b = Batch::drift(&old, &delta, &adv);
    let c = cfgs((2e-3, 2.5e-3), 4.0);
    let z = || vec![vec![0.0; 3], vec![0.0]];
    let mut g = vec![
        vec![-0.08856518, -0.08847666],
        vec![0.04414994, 0.04419411, 0.04410581, 0.04423833],
    ];
    g.extend(z());
    check("E", "grpo", &c.grpo_eq1, &b, -0.0003536415, &g);
    check("E", "verl", &c.verl_vanilla, &b, -0.0003536415, &g);
    let mut g = vec![
        vec![-0.07085214, -0.07078132],
        vec![0.07063990, 0.07071058, 0.07056930, 0.07078132],
    ];
    g.extend(z());
    check("E", "dapo", &c.dapo_c3, &b, 0.1410676385, &g);
    let mut g = vec![
        vec![-0.04428259, -0.04423833],
        vec![0.04414994, 0.04419411, 0.04410581, 0.04423833],
    ];
    g.extend(z());
    check("E", "dr_grpo H=4", &c.dr_grpo, &b, 0.0881672741, &g);
    check(
        "E",
        "dr_grpo default H",
        &c.dr_grpo_default_h,
        &b,
        0.0881672741,
        &g,
    );
    let g = rep(&[-0.08852090, 0.04417202, 0.0, 0.0], &lens);
    check("E", "gspo", &c.gspo, &b, -0.0003537298, &g);
    check("E", "gspo_token", &c.gspo_token, &b, -0.0003537298, &g);
    check(
        "E",
        "luspo",
        &c.luspo,
        &b,
        0.3526686988,
        &rep(&[-0.17704181, 0.17668808, 0.0, 0.0], &lens),
    );
    let g = rep(&[-0.07081672, 0.07067523, 0.0, 0.0], &lens);
    check(
        "E",
        "gspo_token+token-mean",
        &c.gspo_token_tm,
        &b,
        0.1410674795,
        &g,
    );
}
