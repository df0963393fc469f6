//! The objective-side length-control methods (DISPO, DRPO, ΔL, SPINE, LLDS, UloRL) against the test properties of
//! ../shared/research/methods.md, through `luspo loss`'s own entry point (`cli::loss::evaluate_json`): hand-computed
//! vectors, reductions to known objectives, and finite differences. Also: every objective knob reaches its own
//! field through `luspo loss` (the old override match sent unknown keys to `entropy_coef`).

use luspo::cli::loss::evaluate_json;
use luspo::objective::methods::{delta_l_factors, drpo_weights, forking_tokens, quantile};
use luspo::objective::ObjectiveConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

fn eval(v: &Value) -> Value {
    evaluate_json(&v.to_string()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

fn loss(v: &Value) -> f64 {
    eval(v)["loss"].as_f64().unwrap()
}

fn rows(v: &Value, key: &str) -> Vec<Vec<f64>> {
    serde_json::from_value(v[key].clone()).unwrap_or_else(|e| panic!("{key}: {e}: {v}"))
}

fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol, "{what}: {a} vs {b}");
}

/// A request with one sequence per `(logp, old_logp, advantage, group)` and extra top-level keys.
fn request(objective: &str, seqs: &[(Vec<f64>, Vec<f64>, f64, usize)], extra: Value) -> Value {
    let mut v = json!({
        "objective": objective,
        "sequences": seqs.iter().map(|(l, o, a, g)| json!({"logp": l, "old_logp": o, "advantage": a, "group": g}))
            .collect::<Vec<_>>(),
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// Sets `key` of sequence `i` to `x`.
fn with_seq(mut v: Value, key: &str, per_seq: Vec<Value>) -> Value {
    for (i, x) in per_seq.into_iter().enumerate() {
        v["sequences"][i][key] = x;
    }
    v
}

/// Central differences of the loss w.r.t. every logp entry of the request.
fn fd(v: &Value) -> Vec<Vec<f64>> {
    let h = 1e-6;
    let n = v["sequences"].as_array().unwrap().len();
    (0..n)
        .map(|i| {
            let len = v["sequences"][i]["logp"].as_array().unwrap().len();
            (0..len)
                .map(|t| {
                    let at = |d: f64| {
                        let mut w = v.clone();
                        let x = w["sequences"][i]["logp"][t].as_f64().unwrap();
                        w["sequences"][i]["logp"][t] = json!(x + d);
                        loss(&w)
                    };
                    (at(h) - at(-h)) / (2.0 * h)
                })
                .collect()
        })
        .collect()
}

fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn random_seqs(seed: u64, scale: f64, groups: usize) -> Vec<(Vec<f64>, Vec<f64>, f64, usize)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..rng.random_range(3..7))
        .map(|i| {
            let n = rng.random_range(1..8);
            let o: Vec<f64> = (0..n).map(|_| -rng.random_range(0.05..3.0)).collect();
            let l = o
                .iter()
                .map(|x| x + scale * rng.random_range(-1.0..1.0))
                .collect();
            (l, o, rng.random_range(-1.5..1.5), i % groups)
        })
        .collect()
}

// ---------------------------------------------------------------- DISPO (methods.md §4)

#[test]
fn dispo_with_four_equal_bounds_is_cispo() {
    for seed in 0..8 {
        for (lo, hi) in [(1.0, 4.0), (0.2, 0.28), (0.05, 0.1)] {
            let seqs = random_seqs(seed, 0.6, 2);
            let d = eval(&request(
                "dispo",
                &seqs,
                json!({"eps_low": lo, "eps_high": hi, "eps_low_neg": lo, "eps_high_neg": hi}),
            ));
            let c = eval(&request(
                "cispo",
                &seqs,
                json!({"eps_low": lo, "eps_high": hi}),
            ));
            close(
                d["loss"].as_f64().unwrap(),
                c["loss"].as_f64().unwrap(),
                1e-12,
                "loss",
            );
            assert!(max_diff(&rows(&d, "grad_logp"), &rows(&c, "grad_logp")) < 1e-12);
            close(
                d["clip_frac_high"].as_f64().unwrap(),
                c["clip_frac_high"].as_f64().unwrap(),
                0.0,
                "clip_frac_high",
            );
        }
    }
}

#[test]
fn dispo_clips_correct_and_incorrect_tokens_with_their_own_bounds() {
    // Same ratio r = e^0.5 ≈ 1.6487 on a positive and a negative token. Preset bounds: A>0 in [0, 5] (unclipped),
    // A<0 in [0.8, 1.28] (clipped to 1.28). CISPO gradient −w·A/N_tok with N_tok = 2.
    let seqs = vec![
        (vec![-1.0], vec![-1.5], 1.0, 0),
        (vec![-1.0], vec![-1.5], -1.0, 0),
    ];
    let out = eval(&request("dispo", &seqs, json!({})));
    let g = rows(&out, "grad_logp");
    let r = 0.5f64.exp();
    close(g[0][0], -r / 2.0, 1e-12, "positive token");
    close(g[1][0], 1.28 / 2.0, 1e-12, "negative token");
    close(
        out["clip_frac_high"].as_f64().unwrap(),
        0.5,
        0.0,
        "one of two clipped high",
    );
    close(
        out["resolved"]["eps_high_neg"].as_f64().unwrap(),
        0.28,
        0.0,
        "preset",
    );
}

// ---------------------------------------------------------------- DRPO (methods.md §5)

#[test]
fn drpo_weights_favour_short_positives_and_sum_to_one() {
    let lens = [2.0, 4.0, 3.0, 1.0, 5.0, 5.0];
    let adv = [1.0, 1.0, 1.0, -1.0, 1.0, 1.0];
    let groups = [0, 0, 0, 0, 1, 1]; // group 1 is all-positive: skipped
    let (w, neg) = drpo_weights(&lens, &adv, &groups, 4.0, 0.1);
    let z = |l: f64| ((1.0 - l / 4.0) / 0.1f64).exp();
    let s = z(2.0) + z(4.0) + z(3.0);
    close(w[0], z(2.0) / s, 1e-12, "w0");
    close(w[1], z(4.0) / s, 1e-12, "w1");
    assert!(
        w[0] > w[2] && w[2] > w[1],
        "shorter positive, larger weight: {w:?}"
    );
    close(w[0] + w[1] + w[2], 1.0, 1e-12, "sum");
    assert_eq!((w[3], w[4], w[5]), (0.0, 0.0, 0.0));
    assert_eq!(neg, vec![vec![3]]);
}

#[test]
fn drpo_loss_and_gradient_by_hand() {
    // One prompt: positives of lengths 2 and 4, a negative of length 1; L_max = 4, λ = 0.1, τ = 10, on-policy
    // (KL = 0 ≤ δ: no trust-region term). J = w0·s0 + w1·s1 − τ·log exp(s2/τ) = w0·s0 + w1·s1 − s2.
    let seqs = vec![
        (vec![-0.5, -1.5], vec![-0.5, -1.5], 1.0, 0),
        (
            vec![-0.2, -0.4, -0.6, -0.8],
            vec![-0.2, -0.4, -0.6, -0.8],
            1.0,
            0,
        ),
        (vec![-2.0], vec![-2.0], -1.0, 0),
        // An all-correct prompt contributes nothing.
        (vec![-0.3, -0.1], vec![-0.3, -0.1], 1.0, 1),
        (vec![-0.9], vec![-0.9], 1.0, 1),
    ];
    let out = eval(&request("drpo", &seqs, json!({"drpo_l_max": 4.0})));
    let e5 = 5.0f64.exp();
    let (w0, w1) = (e5 / (e5 + 1.0), 1.0 / (e5 + 1.0));
    let (s0, s1, s2) = (-1.0, -0.5, -2.0);
    close(
        out["loss"].as_f64().unwrap(),
        -(w0 * s0 + w1 * s1 - s2),
        1e-12,
        "loss",
    );
    let g = rows(&out, "grad_logp");
    let expect = vec![
        vec![-w0 / 2.0; 2],
        vec![-w1 / 4.0; 4],
        vec![1.0],
        vec![0.0; 2],
        vec![0.0],
    ];
    assert!(max_diff(&g, &expect) < 1e-12, "{g:?} vs {expect:?}");
    close(
        out["reg_loss"].as_f64().unwrap(),
        0.0,
        0.0,
        "no trust region",
    );
}

#[test]
fn drpo_negative_weights_do_not_depend_on_length() {
    // Two negatives with the same mean log-prob but lengths 1 and 3: each gets softmax weight 1/2 in total.
    let seqs = vec![
        (vec![-1.0], vec![-1.0], 1.0, 0),
        (vec![-0.7], vec![-0.7], -1.0, 0),
        (vec![-0.5, -0.7, -0.9], vec![-0.5, -0.7, -0.9], -1.0, 0),
    ];
    let g = rows(&eval(&request("drpo", &seqs, json!({}))), "grad_logp");
    close(g[1][0], 0.5, 1e-12, "negative of length 1");
    close(g[2].iter().sum::<f64>(), 0.5, 1e-12, "negative of length 3");
}

#[test]
fn drpo_trust_region_acts_only_above_delta() {
    // logp = old − 0.01 on every token: KL = 0.01 > δ = 1e-4, penalty sg(β(KL − δ))·KL = 1000·0.0099·0.01.
    let seqs = vec![
        (vec![-1.01, -0.51], vec![-1.0, -0.5], 1.0, 0),
        (vec![-2.01], vec![-2.0], -1.0, 0),
    ];
    let out = eval(&request("drpo", &seqs, json!({})));
    close(
        out["reg_loss"].as_f64().unwrap(),
        1000.0 * (0.01 - 1e-4) * 0.01,
        1e-9,
        "active",
    );
    let base = eval(&request("drpo", &seqs, json!({"drpo_beta": 0.0})));
    let (g, gb) = (rows(&out, "grad_logp"), rows(&base, "grad_logp"));
    // d/dlogp of c·mean(old − logp) = −c/N_tok with c = 9.9 and N_tok = 3.
    for (r, rb) in g.iter().zip(&gb) {
        for (x, y) in r.iter().zip(rb) {
            close(x - y, -9.9 / 3.0, 1e-9, "trust-region gradient");
        }
    }
    let small = vec![
        (vec![-1.00001, -0.50001], vec![-1.0, -0.5], 1.0, 0),
        (vec![-2.00001], vec![-2.0], -1.0, 0),
    ];
    close(
        eval(&request("drpo", &small, json!({})))["reg_loss"]
            .as_f64()
            .unwrap(),
        0.0,
        0.0,
        "KL = 1e-5 ≤ δ: inactive",
    );
}

#[test]
fn drpo_gradient_matches_finite_differences() {
    let mut counted = 0;
    for seed in 0..8 {
        // Small drift: KL stays under δ so the loss is the smooth DRPO objective.
        let seqs = random_seqs(100 + seed, 1e-5, 2);
        let v = request("drpo", &seqs, json!({"drpo_tau": 0.7, "drpo_lambda": 0.5}));
        let got = rows(&eval(&v), "grad_logp");
        counted += usize::from(got.iter().flatten().any(|x| x.abs() > 1e-3));
        let d = max_diff(&got, &fd(&v));
        assert!(d < 1e-6, "seed {seed}: off by {d}");
    }
    assert!(
        counted >= 5,
        "only {counted} batches had a prompt with positives and negatives"
    );
}

// ---------------------------------------------------------------- ΔL (methods.md §22)

#[test]
fn delta_l_weights_by_hand() {
    let c = delta_l_factors(&[10.0, 100.0, 40.0], 0.75);
    close(c.iter().sum::<f64>() / 3.0, 1.0, 1e-12, "Σ x_i·T_max = 1");
    // On-policy GRPO-clip: d loss/d logp = −A·x_i with x_i the per-token weight.
    let seq = |n: usize, a: f64| (vec![-1.0; n], vec![-1.0; n], a, 0);
    let seqs = vec![seq(10, 1.0), seq(100, 1.0)];
    let g = rows(&eval(&request("delta_l", &seqs, json!({}))), "grad_logp");
    close(
        g[0][0] / g[1][0],
        10.0,
        1e-9,
        "α = 1: weight ratio of lengths 10 and 100",
    );
    // x_i = L_i^−1 / (T_max · Σ_j L_j^−1)
    close(g[0][0], -0.1 / (100.0 * 0.11), 1e-12, "x_0");
    let g0 = rows(
        &eval(&request("delta_l", &seqs, json!({"delta_l_alpha": 0.0}))),
        "grad_logp",
    );
    for x in g0.iter().flatten() {
        close(*x, -1.0 / (2.0 * 100.0), 1e-12, "α = 0: 1/(B·T_max)");
    }
    // α = 0 is Dr.GRPO's constant normaliser.
    let dr = rows(&eval(&request("dr_grpo", &seqs, json!({}))), "grad_logp");
    assert!(max_diff(&g0, &dr) < 1e-12);
}

// ---------------------------------------------------------------- SPINE (methods.md §13)

#[test]
fn spine_keeps_the_top_fifth_of_tokens_by_entropy() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let lens = [1usize, 3, 5, 7, 10, 11];
    let seqs: Vec<_> = lens
        .iter()
        .map(|&n| (vec![-0.7; n], vec![-0.7; n], 1.0, 0))
        .collect();
    let ent: Vec<Vec<f64>> = lens
        .iter()
        .map(|&n| (0..n).map(|_| rng.random_range(0.0..3.0)).collect())
        .collect();
    let v = with_seq(
        request("spine", &seqs, json!({})),
        "entropy",
        ent.iter().map(|e| json!(e)).collect(),
    );
    let out = eval(&v);
    let w = rows(&out, "token_weights");
    let g = rows(&out, "grad_logp");
    for (i, &n) in lens.iter().enumerate() {
        let k = (0.2 * n as f64).ceil() as usize;
        assert_eq!(w[i].iter().filter(|&&x| x == 1.0).count(), k, "row {i}");
        assert_eq!(g[i].iter().filter(|&&x| x != 0.0).count(), k, "row {i}");
        // The kept tokens are the highest-entropy ones.
        let min_kept = (0..n)
            .filter(|&t| w[i][t] == 1.0)
            .map(|t| ent[i][t])
            .fold(f64::INFINITY, f64::min);
        assert!((0..n).all(|t| w[i][t] == 1.0 || ent[i][t] <= min_kept));
    }
    let total: usize = lens.iter().sum();
    let kept: usize = lens.iter().map(|&n| (0.2 * n as f64).ceil() as usize).sum();
    close(
        out["pg_token_frac"].as_f64().unwrap(),
        kept as f64 / total as f64,
        1e-12,
        "pg_token_frac",
    );
    assert_eq!(
        forking_tokens(&[vec![0.5, 0.5, 0.5]], &[vec![true, true, true]], 0.2),
        vec![vec![true, false, false]],
        "ties go to the earlier token"
    );
}

#[test]
fn spine_entropy_band_by_hand() {
    // Ten tokens, forking fraction 0.5: the five highest entropies [1, 2, 3, 4, 6] are forking (the others 0.1).
    // H_low = q0.1 = 1.4, H_high = q0.6 = 3.4 (linear interpolation). Penalty = (4 − 3.4) + (6 − 3.4) + (1.4 − 1).
    close(
        quantile(&[1.0, 2.0, 3.0, 4.0, 6.0], 0.1),
        1.4,
        1e-12,
        "q0.1",
    );
    close(
        quantile(&[1.0, 2.0, 3.0, 4.0, 6.0], 0.6),
        3.4,
        1e-12,
        "q0.6",
    );
    let ent = vec![0.1, 1.0, 0.1, 2.0, 0.1, 3.0, 0.1, 4.0, 0.1, 6.0];
    let seqs = vec![(vec![-1.0; 10], vec![-1.0; 10], 0.0, 0)];
    let knobs = json!({"spine_frac": 0.5, "spine_q_high": 0.6, "spine_band_coef": 0.5});
    let v = with_seq(request("spine", &seqs, knobs), "entropy", vec![json!(ent)]);
    let out = eval(&v);
    close(
        out["reg_loss"].as_f64().unwrap(),
        0.5 * 3.6,
        1e-12,
        "band penalty",
    );
    let ge = rows(&out, "grad_entropy");
    let expect = vec![0.0, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.5];
    assert!(
        max_diff(&ge, std::slice::from_ref(&expect)) < 1e-12,
        "{ge:?} vs {expect:?}"
    );
}

#[test]
fn spine_kl_acts_on_forking_tokens_only() {
    let seqs = vec![(vec![-1.0, -1.2, -0.8, -1.1, -0.9], vec![-1.0; 5], 0.0, 0)];
    let v = with_seq(
        with_seq(
            request(
                "spine",
                &seqs,
                json!({"kl_beta": 0.5, "kl_estimator": "k2"}),
            ),
            "entropy",
            vec![json!([0.1, 0.2, 2.0, 0.3, 0.4])],
        ),
        "ref_logp",
        vec![json!([-1.5, -1.5, -1.5, -1.5, -1.5])],
    );
    let g = rows(&eval(&v), "grad_logp");
    // Only token 2 is forking (⌈0.2·5⌉ = 1); k2 gradient β·x/N (seq-mean-token-mean, one sequence: 1/5).
    let expect = [0.0, 0.0, 0.5 * (-0.8 + 1.5) / 5.0, 0.0, 0.0];
    assert!(max_diff(&g, &[expect.to_vec()]) < 1e-12, "{g:?}");
}

// ---------------------------------------------------------------- LLDS (methods.md §16)

#[test]
fn llds_penalises_only_likelihood_drops_of_non_negative_responses() {
    // A = 0 so the policy-gradient term is zero and the loss is the LLDS term alone (λ = 0.2, N_tok = 6).
    let seqs = vec![
        (vec![-1.2, -0.9], vec![-1.0, -1.0], 0.0, 0), // net drop 0.1 > 0: penalised, 0.2 on token 0
        (vec![-1.2, -0.7], vec![-1.0, -1.0], 0.0, 0), // net increase: R-gate off
        (vec![-1.5, -1.5], vec![-1.0, -1.0], -1.0, 0), // negative advantage: never penalised
    ];
    let mut seqs = seqs;
    let out = eval(&request("llds", &seqs, json!({})));
    close(
        out["reg_loss"].as_f64().unwrap(),
        0.2 * 0.2 / 6.0,
        1e-12,
        "penalty",
    );
    let base = eval(&request("grpo", &seqs, json!({})));
    let (g, gb) = (rows(&out, "grad_logp"), rows(&base, "grad_logp"));
    close(g[0][0] - gb[0][0], -0.2 / 6.0, 1e-12, "dropped token");
    for (i, t) in [(0, 1), (1, 0), (1, 1), (2, 0), (2, 1)] {
        close(g[i][t], gb[i][t], 1e-12, "no penalty gradient");
    }
    // No likelihood decrease anywhere: zero.
    seqs[0].0 = vec![-0.9, -0.9];
    close(
        eval(&request("llds", &seqs, json!({})))["reg_loss"]
            .as_f64()
            .unwrap(),
        0.0,
        0.0,
        "no drop",
    );
}

// ---------------------------------------------------------------- UloRL (methods.md §17)

#[test]
fn ulorl_masks_mastered_tokens_of_confident_positive_responses() {
    let p = |x: f64| x.ln();
    let old = vec![p(0.995), p(0.5), p(0.999)];
    let seqs = vec![
        (old.clone(), old.clone(), 1.0, 0), // mean entropy 0.1 < σ: tokens 0 and 2 masked
        (old.clone(), old.clone(), -1.0, 0), // negative: never masked
        (old.clone(), old.clone(), 1.0, 0), // mean entropy 0.5 ≥ σ: not masked
    ];
    let v = with_seq(
        request("ulorl", &seqs, json!({})),
        "entropy",
        vec![
            json!([0.1, 0.1, 0.1]),
            json!([0.1, 0.1, 0.1]),
            json!([0.5, 0.5, 0.5]),
        ],
    );
    let out = eval(&v);
    let w = rows(&out, "token_weights");
    assert_eq!(
        w,
        vec![vec![0.0, 1.0, 0.0], vec![1.0; 3], vec![1.0; 3]],
        "mask"
    );
    let g = rows(&out, "grad_logp");
    assert_eq!((g[0][0], g[0][2]), (0.0, 0.0));
    assert!(g[0][1] != 0.0 && g[1].iter().all(|&x| x != 0.0));
    close(
        out["pg_token_frac"].as_f64().unwrap(),
        7.0 / 9.0,
        1e-12,
        "frac",
    );
}

// ---------------------------------------------------------------- per-token weights and knob overrides

#[test]
fn given_token_weights_scale_the_policy_gradient() {
    let seqs = random_seqs(3, 0.05, 1);
    let base = eval(&request("grpo", &seqs, json!({})));
    let ws: Vec<Vec<f64>> = seqs
        .iter()
        .map(|s| (0..s.0.len()).map(|t| (t % 3) as f64 * 0.5).collect())
        .collect();
    let v = with_seq(
        request("grpo", &seqs, json!({})),
        "token_weight",
        ws.iter().map(|w| json!(w)).collect(),
    );
    let out = eval(&v);
    let (g, gb) = (rows(&out, "grad_logp"), rows(&base, "grad_logp"));
    for i in 0..seqs.len() {
        for t in 0..seqs[i].0.len() {
            close(g[i][t], ws[i][t] * gb[i][t], 1e-12, "weighted gradient");
        }
    }
}

#[test]
fn every_knob_reaches_its_own_field_through_luspo_loss() {
    // A valid non-default value per knob; the table must cover `ObjectiveConfig::KEYS` exactly.
    let samples = [
        ("importance", json!("sequence")),
        ("aggregation", json!("token-mean")),
        ("eps_low", json!(0.15)),
        ("eps_high", json!(0.35)),
        ("eps_low_neg", json!(0.11)),
        ("eps_high_neg", json!(0.22)),
        ("dual_clip", json!(3.5)),
        ("norm_len", json!(17.0)),
        ("kl_beta", json!(0.25)),
        ("kl_estimator", json!("k2")),
        ("entropy_coef", json!(0.05)),
        ("delta_l_alpha", json!(0.75)),
        ("drpo_lambda", json!(0.3)),
        ("drpo_tau", json!(2.0)),
        ("drpo_beta", json!(10.0)),
        ("drpo_delta", json!(0.01)),
        ("drpo_l_max", json!(64.0)),
        ("spine_frac", json!(0.3)),
        ("spine_q_low", json!(0.2)),
        ("spine_q_high", json!(0.6)),
        ("spine_band_coef", json!(0.03)),
        ("llds_lambda", json!(0.1)),
        ("ulorl_tau", json!(0.9)),
        ("ulorl_sigma", json!(0.3)),
    ];
    let names: Vec<&str> = samples.iter().map(|s| s.0).collect();
    assert_eq!(
        names,
        ObjectiveConfig::KEYS,
        "sample table vs declared knobs"
    );
    let seqs = vec![(vec![-1.0, -0.5], vec![-1.0, -0.6], 0.5, 0)];
    let with_ref = |v: Value| {
        let v = with_seq(v, "ref_logp", vec![json!([-1.1, -0.4])]);
        with_seq(v, "entropy", vec![json!([0.3, 0.6])])
    };
    let base = eval(&with_ref(request("grpo", &seqs, json!({}))))["resolved"].clone();
    for (k, x) in &samples {
        let objective = if k.ends_with("_neg") { "dispo" } else { "grpo" };
        let out = eval(&with_ref(request(objective, &seqs, json!({ *k: x }))));
        let r = &out["resolved"];
        assert_eq!(&r[*k], x, "{k}");
        if objective == "grpo" {
            for other in ObjectiveConfig::KEYS.iter().filter(|o| *o != k) {
                assert_eq!(r[*other], base[*other], "setting {k} changed {other}");
            }
        }
    }
    // A value of the wrong type names its key.
    let e = evaluate_json(&request("grpo", &seqs, json!({"drpo_tau": "hot"})).to_string())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("drpo_tau: "), "{e}");
    let e = evaluate_json(&request("grpo", &seqs, json!({"spine_q_low": 1.5})).to_string())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("spine_q_low: must be a number in [0, 1]"),
        "{e}"
    );
}
