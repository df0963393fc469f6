//! Mechanism metrics (`train::mechanism`) on hand-computed batches: the per-token weights of each objective at
//! ratio 1 (docs/length_theory.md's table), what a sequence clip removes, and the accumulator's shares, clipped
//! lengths, covariance and length-push decomposition.

use candle_core::{Device, Tensor};
use luspo::objective::{ObjectiveConfig, PolicyInputs, ResolvedObjective};
use luspo::train::mechanism::{seq_weights, Mechanism, SeqWeight};

fn obj(name: &str) -> ResolvedObjective {
    ObjectiveConfig::preset(name).resolved().unwrap()
}

/// A batch of responses of lengths `lens` (right-padded to the longest), log-ratio `d` on every token.
fn batch(lens: &[usize], d: f64) -> (Tensor, Tensor, Tensor) {
    let t = *lens.iter().max().unwrap();
    let mut mask = vec![];
    for &l in lens {
        mask.extend((0..t).map(|j| if j < l { 1.0 } else { 0.0 }));
    }
    let dev = Device::Cpu;
    let mask = Tensor::from_vec(mask, (lens.len(), t), &dev).unwrap();
    let old = (mask.ones_like().unwrap() * -1.0).unwrap();
    let logp = (&old + (&mask * d).unwrap()).unwrap();
    (logp, old, mask)
}

fn weights(name: &str, lens: &[usize], adv: &[f64], d: f64, unclipped: bool) -> Vec<SeqWeight> {
    let (logp, old, mask) = batch(lens, d);
    let a = Tensor::new(adv, &Device::Cpu).unwrap();
    let inputs = PolicyInputs {
        logp: &logp,
        old_logp: &old,
        mask: &mask,
        advantages: &a,
        ref_logp: None,
        entropy: None,
        groups: None,
        token_weights: None,
        entropy_coefs: None,
        global_counts: None,
    };
    seq_weights(&obj(name), &inputs, unclipped).unwrap()
}

/// Expected net weight from (A, L, B, ΣL, H).
type Expected = fn(f64, f64, f64, f64, f64) -> f64;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9 * (1.0 + b.abs())
}

#[test]
fn per_response_weights_at_ratio_one() {
    let lens = [2usize, 6];
    let adv = [1.0, -0.5];
    let (b, sum_l, h) = (2.0, 8.0, 6.0);
    // Net weight g = Σ_t w_t of each response, from the per-token weights of the theory table.
    let cases: [(&str, Expected); 6] = [
        ("grpo", |a, _l, b, _s, _h| a / b),     // A/(B|y|) per token
        ("gspo", |a, _l, b, _s, _h| a / b),     // s·A/(B|y|)
        ("luspo", |a, l, b, _s, _h| a * l / b), // s·A/B
        ("dapo", |a, l, _b, s, _h| a * l / s),  // A/ΣL
        ("dr_grpo", |a, l, b, _s, h| a * l / (b * h)), // A/(B·H)
        ("cispo", |a, l, _b, s, _h| a * l / s), // clip(r)·A/ΣL
    ];
    for (name, g) in cases {
        let w = weights(name, &lens, &adv, 0.0, false);
        for i in 0..2 {
            let want = g(adv[i], lens[i] as f64, b, sum_l, h);
            assert!(
                close(w[i].net, want),
                "{name} row {i}: {} vs {want}",
                w[i].net
            );
            assert!(
                close(w[i].mass, want.abs()),
                "{name} row {i}: mass {}",
                w[i].mass
            );
            assert_eq!(w[i].zero_tokens, 0, "{name}");
        }
    }
}

#[test]
fn a_sequence_clip_removes_the_whole_response() {
    // log-ratio −0.01 per token: s = e^−0.01 < 1 − 2e-3, so LUSPO clips the A<0 response and keeps the A>0 one
    // (s < 1 + eps_high: the pessimistic max takes the unclipped branch).
    let w = weights("luspo", &[3, 5], &[1.0, -1.0], -0.01, false);
    let s = (-0.01f64).exp();
    assert!(close(w[0].net, s * 3.0 / 2.0), "{:?}", w[0]);
    assert_eq!((w[1].net, w[1].mass, w[1].zero_tokens), (0.0, 0.0, 5));
    let u = weights("luspo", &[3, 5], &[1.0, -1.0], -0.01, true);
    assert!(close(u[1].net, -s * 5.0 / 2.0), "{:?}", u[1]);
    assert_eq!(u[1].zero_tokens, 0);
}

fn sw(net: f64, zero_tokens: usize) -> SeqWeight {
    SeqWeight {
        net,
        mass: net.abs(),
        zero_tokens,
    }
}

#[test]
fn accumulator_on_a_hand_batch() {
    // Lengths 2, 4, 6, 8 (one per quartile), L̄ = 5; A = +1, −1, +1, −1.
    let lens = [2.0, 4.0, 6.0, 8.0];
    let advs = [1.0, -1.0, 1.0, -1.0];
    // Unclipped net weights LUSPO-like (A·L/4); the clip removes the 8-token A<0 response and half of the 4-token.
    let wu: Vec<SeqWeight> = (0..4).map(|i| sw(advs[i] * lens[i] / 4.0, 0)).collect();
    let w = vec![sw(0.5, 0), sw(-0.5, 2), sw(1.5, 0), sw(0.0, 8)];
    let mut m = Mechanism::new(&lens);
    m.add(&lens, &advs, &w, &wu);
    m.end_optimizer_step();
    let s = m.finish();
    assert!(
        close(s.grad_mass_pos, 2.0) && close(s.grad_mass_neg, 0.5),
        "{s:?}"
    );
    let total = 2.5;
    let want_q = [0.5 / total, 0.5 / total, 1.5 / total, 0.0];
    for (g, w) in s.grad_share_len_q.iter().zip(want_q) {
        assert!(close(*g, w), "{s:?}");
    }
    // A<0: clipped shares 0.5 (of the 4) and 1 (the 8): (0.5·4 + 8)/1.5; kept 0.5 of the 4 → 4.
    assert!(
        close(s.clip_len_low[0], 10.0 / 1.5) && close(s.clip_len_low[1], 4.0),
        "{s:?}"
    );
    assert!(
        s.clip_len_high[0] == 0.0 && close(s.clip_len_high[1], 4.0),
        "{s:?}"
    );
    // Carrying gradient: (2,+1), (4,−1), (6,+1): mean L 4, mean A 1/3; cov = Σ(L−4)(A−1/3)/3.
    let cov = ((-2.0) * (2.0 / 3.0) + 0.0 + 2.0 * (2.0 / 3.0)) / 3.0;
    assert!(close(s.len_adv_cov, cov), "{s:?}");
    // Coefficients c = net/L: [0.25, −0.125, 0.25, 0]; unclipped c^u = A/4. Over Σ|c^u| = 1: m̄ = 1/4;
    // reward Σ m̄·A·(L−5) = 0.25·(−3+1+1−3) = −1;
    // weighting Σ (c^u − m̄A)(L−5) = 0; clip Σ (c − c^u)(L−5) = 0.125·(−1) + 0.25·3 = 0.625.
    // Total = Σ c·(L−5) = −0.75 + 0.125 + 0.25 = −0.375.
    let want = [-0.375, -1.0, 0.0, 0.625];
    for (g, w) in s.len_push.iter().zip(want) {
        assert!(close(*g, w), "{:?} vs {want:?}", s.len_push);
    }
}
