//! The control methods (src/control/) against hand-computed values from research/methods.md's test properties,
//! and the `dr-grpo` spelling bug: the estimator follows the resolved objective preset.

use luspo::advantage::Estimator;
use luspo::control::{ControlConfig, Group, History, MethodName, Response, StepInfo};
use luspo::train::config::RunConfig;

fn resp(length: usize, correct: bool) -> Response {
    Response {
        length,
        correct,
        truncated: false,
        reward: None,
        entropies: None,
        answer: None,
        think_end: None,
    }
}

fn group(id: &str, rs: Vec<Response>) -> Group {
    Group {
        prompt_id: id.into(),
        responses: rs,
    }
}

const AT: StepInfo = StepInfo {
    step: 1,
    max_new_tokens: 64,
    total_steps: 0,
};

fn cfg(method: &str, params: serde_json::Value) -> ControlConfig {
    ControlConfig::from_json(method, params).unwrap()
}

#[test]
fn dr_grpo_spellings_train_with_dr_grpo_advantages() {
    for name in ["dr_grpo", "dr-grpo", "DR_GRPO"] {
        let c = RunConfig::load(None, &[format!("objective.name=\"{name}\"")]).unwrap();
        assert_eq!(c.estimator().unwrap(), Estimator::DrGrpo, "{name}");
    }
    let c = RunConfig::load(None, &["objective.name=\"grpo\"".to_string()]).unwrap();
    assert_eq!(c.estimator().unwrap(), Estimator::Grpo);
    // A method with its own estimator (DLER: batch whitening) wins.
    let c = RunConfig::load(None, &["control.method=\"dler\"".to_string()]).unwrap();
    assert_eq!(c.estimator().unwrap(), Estimator::Batch);
}

#[test]
fn none_is_the_verifier_reward() {
    let m = cfg("none", serde_json::json!({})).build();
    let g = vec![group("q", vec![resp(5, true), resp(7, false)])];
    assert_eq!(m.shape(&g, &History::default(), AT), vec![vec![1.0, 0.0]]);
}

#[test]
fn hapo_length_reward_and_history() {
    let c = cfg("hapo", serde_json::json!({"w": 1.0}));
    assert_eq!(c.method, MethodName::Hapo);
    let m = c.build();
    let g = vec![group(
        "q",
        vec![
            resp(10, true),
            resp(20, true),
            resp(5, true),
            resp(40, true),
            resp(5, false),
            resp(40, false),
        ],
    )];
    // No history: length reward 0.
    let mut h = History::default();
    assert_eq!(
        m.shape(&g, &h, AT),
        vec![vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0]]
    );
    h.set("q", "h", 10.0);
    let r = &m.shape(&g, &h, AT)[0];
    // L = h → cos(π/2) = 0; L = 2h → −1 floored at −0.7; L = h/2 → cos(π/4); wrong: min(0, c).
    assert!((r[0] - 1.0).abs() < 1e-12, "{r:?}");
    assert!((r[1] - 0.3).abs() < 1e-12, "{r:?}");
    assert!(
        (r[2] - (1.0 + std::f64::consts::FRAC_1_SQRT_2)).abs() < 1e-12,
        "{r:?}"
    );
    assert!((r[3] - 0.3).abs() < 1e-12, "{r:?}");
    assert_eq!(r[4], 0.0);
    assert_eq!(r[5], -1.0);
    // Update after the rewards: h = min(10, shortest correct 5); monotone (a longer batch does not raise it).
    m.update(&g, &mut h);
    assert_eq!(h.get("q", "h"), Some(5.0));
    m.update(&[group("q", vec![resp(30, true)])], &mut h);
    assert_eq!(h.get("q", "h"), Some(5.0));
    // A prompt with no correct answer gets no history.
    m.update(&[group("z", vec![resp(3, false)])], &mut h);
    assert_eq!(h.get("z", "h"), None);
}

#[test]
fn dler_truncation_penalty_and_da_dler() {
    let m = cfg("dler", serde_json::json!({"l_trunc": 10})).build();
    assert_eq!(m.estimator(), Some(Estimator::Batch));
    let g = vec![group(
        "q",
        vec![resp(10, true), resp(11, true), resp(3, false)],
    )];
    assert_eq!(
        m.shape(&g, &History::default(), AT),
        vec![vec![1.0, 0.0, 0.0]]
    );
    // l_trunc = 0: the rollout length.
    let m = cfg("dler", serde_json::json!({})).build();
    let g2 = vec![group("q", vec![resp(64, true), resp(65, true)])];
    assert_eq!(m.shape(&g2, &History::default(), AT), vec![vec![1.0, 0.0]]);
    // DA-DLER: accuracy 3/4 > 0.5 → easy length 8; accuracy 1/4 → hard length 20.
    let m = cfg(
        "da_dler",
        serde_json::json!({"l_trunc_easy": 8, "l_trunc_hard": 20}),
    )
    .build();
    let easy = group(
        "e",
        vec![resp(8, true), resp(9, true), resp(2, true), resp(2, false)],
    );
    let hard = group(
        "h",
        vec![
            resp(15, true),
            resp(2, false),
            resp(2, false),
            resp(2, false),
        ],
    );
    let r = m.shape(&[easy, hard], &History::default(), AT);
    assert_eq!(r, vec![vec![1.0, 0.0, 1.0, 0.0], vec![1.0, 0.0, 0.0, 0.0]]);
}

#[test]
fn l_grpo_only_for_all_correct_groups_after_stage_1() {
    let m = cfg(
        "l_grpo",
        serde_json::json!({"alpha": 0.5, "l_max": 100, "stage1_steps": 2}),
    )
    .build();
    let all = group("a", vec![resp(20, true), resp(60, true)]);
    let mixed = group("b", vec![resp(20, true), resp(60, false)]);
    let gs = [all, mixed];
    let late = StepInfo { step: 3, ..AT };
    let r = m.shape(&gs, &History::default(), late);
    // 1 + 0.5·(1 − 20/100) = 1.4; 1 + 0.5·(1 − 60/100) = 1.2; the mixed group stays 0/1.
    assert!(
        (r[0][0] - 1.4).abs() < 1e-12 && (r[0][1] - 1.2).abs() < 1e-12,
        "{r:?}"
    );
    assert_eq!(r[1], vec![1.0, 0.0]);
    // Stage 1 (step ≤ stage1_steps): the verifier reward only.
    let early = StepInfo { step: 2, ..AT };
    assert_eq!(
        m.shape(&gs, &History::default(), early),
        vec![vec![1.0, 1.0], vec![1.0, 0.0]]
    );
}

#[test]
fn grpo_lambda_penalises_only_the_top_groups() {
    let m = cfg(
        "grpo_lambda",
        serde_json::json!({"lambda": 0.5, "alpha": 0.6}),
    )
    .build();
    let low = group("l", vec![resp(10, true), resp(30, false), resp(5, false)]);
    let top = group("t", vec![resp(10, true), resp(30, true), resp(5, false)]);
    let r = m.shape(&[low, top], &History::default(), AT);
    assert_eq!(r[0], vec![1.0, 0.0, 0.0]);
    // Correct lengths 10, 30: mean 20, population std 10 → z = ∓1.
    let s = |x: f64| 1.0 / (1.0 + (-x).exp());
    assert!((r[1][0] - (1.0 - 0.6 * s(-1.0))).abs() < 1e-12, "{r:?}");
    assert!((r[1][1] - (1.0 - 0.6 * s(1.0))).abs() < 1e-12, "{r:?}");
    assert!(r[1][0] > r[1][1]);
    assert_eq!(r[1][2], 0.0);
}

#[test]
fn bad_method_or_params_name_the_key() {
    let e = ControlConfig::from_json("nope", serde_json::json!({}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    let e = ControlConfig::from_json("hapo", serde_json::json!({"x": 1}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("x"), "{e}");
    let e = ControlConfig::from_json("grpo_lambda", serde_json::json!({"lambda": 2.0}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("control.grpo_lambda.lambda"), "{e}");
    let e = RunConfig::load(None, &["control.hapo.w=-1".to_string()]);
    assert!(e.is_ok(), "only the chosen method is validated");
    let e = RunConfig::load(
        None,
        &[
            "control.method=\"hapo\"".to_string(),
            "control.hapo.w=-1".to_string(),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("control.hapo.w"), "{e}");
}

fn with_entropies(mut r: Response, e: &[f32]) -> Response {
    r.entropies = Some(e.to_vec());
    r
}

#[test]
fn canon_matches_the_half_baselines_and_ignores_order() {
    // Lengths 1, 2 (low half) and 3, 4 (high half); rewards 0, 1, 1, 1; C = 10.
    let c = cfg("canon", serde_json::json!({"c": 10.0}));
    let m = c.build();
    let g = group(
        "q",
        vec![resp(3, true), resp(1, false), resp(4, true), resp(2, true)],
    );
    let r = vec![vec![1.0, 0.0, 1.0, 1.0]];
    let a = m
        .advantages(
            std::slice::from_ref(&g),
            &r,
            &History::default(),
            Estimator::Grpo,
            AT,
        )
        .seq;
    // μ = 1, α = 1, β = 0: high half (R − mean_low = 0.5)/C; low half R − mean_high (= 1).
    let want = [0.5 / 10.0, -1.0 / 10.0, 0.5 / 10.0, 0.0];
    for (x, y) in a[0].iter().zip(want) {
        assert!((x - y).abs() < 1e-12, "{a:?}");
    }
    // μ = 0: A = (R − mean of own half)/C.
    let m0 = cfg("canon", serde_json::json!({"c": 10.0, "mu": 0.0})).build();
    let a0 = m0
        .advantages(
            std::slice::from_ref(&g),
            &r,
            &History::default(),
            Estimator::Grpo,
            AT,
        )
        .seq;
    let want0 = [0.0, -0.5 / 10.0, 0.0, 0.5 / 10.0];
    for (x, y) in a0[0].iter().zip(want0) {
        assert!((x - y).abs() < 1e-12, "{a0:?}");
    }
    // Reversed input order: the same advantage per response.
    let mut rev = g.clone();
    rev.responses.reverse();
    let rr = vec![vec![1.0, 1.0, 0.0, 1.0]];
    let ar = m
        .advantages(&[rev], &rr, &History::default(), Estimator::Grpo, AT)
        .seq;
    let mut back = ar[0].clone();
    back.reverse();
    assert_eq!(back, a[0]);
    // The entropy variant splits by mean entropy and needs entropies.
    let me = cfg("canon", serde_json::json!({"metric": "entropy", "c": 1.0})).build();
    assert!(me.needs_entropies());
    let ge = group(
        "e",
        vec![
            with_entropies(resp(9, true), &[0.1]),
            with_entropies(resp(1, false), &[2.0]),
        ],
    );
    let ae = me
        .advantages(
            &[ge],
            &[vec![1.0, 0.0]],
            &History::default(),
            Estimator::Grpo,
            AT,
        )
        .seq;
    // Low entropy half = the correct one: 1 − 0 = 1; high half: 0 − 1 = −1.
    assert_eq!(ae, vec![vec![1.0, -1.0]]);
}

#[test]
fn pear_penalises_thinking_entropy_of_correct_answers() {
    let m = cfg("pear", serde_json::json!({})).build();
    assert!(m.needs_entropies());
    let mut calm = with_entropies(resp(4, true), &[0.2, 0.2, 9.0, 0.5]);
    calm.think_end = Some(2); // think mean 0.2 ≤ answer mean 0.5: exactly 1.
    let mut hot = with_entropies(resp(4, true), &[0.8, 0.8, 9.0, 0.5]);
    hot.think_end = Some(2); // P = 0.8 − 0.5 = 0.3.
    let wrong = with_entropies(resp(4, false), &[5.0, 5.0, 5.0, 5.0]);
    let plain = with_entropies(resp(2, true), &[0.25, 0.75]); // no </think>: P = mean 0.5.
    let r = &m.shape(
        &[group("q", vec![calm, hot, wrong, plain])],
        &History::default(),
        AT,
    )[0];
    assert_eq!(r[0], 1.0);
    assert!((r[1] - 0.7).abs() < 1e-6, "{r:?}");
    assert_eq!(r[2], 0.0);
    assert!((r[3] - 0.5).abs() < 1e-6, "{r:?}");
}

#[test]
fn ttrl_rewards_the_majority_answer() {
    let m = cfg("ttrl", serde_json::json!({})).build();
    assert!(m.needs_answers());
    let a = |x: Option<&str>, correct| Response {
        answer: x.map(String::from),
        ..resp(3, correct)
    };
    // "7" is the mode (2 of 4), whatever the gold says; no answer never matches.
    let g = group(
        "q",
        vec![
            a(Some("7"), false),
            a(Some("3"), true),
            a(Some(" 7"), false),
            a(None, false),
        ],
    );
    assert_eq!(
        m.shape(&[g], &History::default(), AT),
        vec![vec![1.0, 0.0, 1.0, 0.0]]
    );
    // A tie goes to the smallest answer; a group without answers gets 0.
    let t = group("t", vec![a(Some("b"), false), a(Some("a"), false)]);
    let n = group("n", vec![a(None, true)]);
    assert_eq!(
        m.shape(&[t, n], &History::default(), AT),
        vec![vec![0.0, 1.0], vec![0.0]]
    );
}

#[test]
fn dot_truncates_outliers_of_all_correct_groups_only() {
    use luspo::control::dot::DotParams;
    let d = DotParams::default();
    let mut rs: Vec<Response> = (0..31).map(|_| resp(100, true)).collect();
    rs.push(resp(1000, true));
    let g = group("q", rs.clone());
    let cuts = d.cuts(&g);
    // mean 128.125, sample std sqrt(31·28.125² + 871.875²)/sqrt(31) = 159.099…; T = floor(mean + 3·std).
    let mean = 128.125f64;
    let std = ((31.0 * 28.125f64.powi(2) + 871.875f64.powi(2)) / 31.0).sqrt();
    let t = (mean + 3.0 * std).floor() as usize;
    assert_eq!(t, 605);
    assert!(cuts[..31].iter().all(Option::is_none));
    assert_eq!(cuts[31], Some(t));
    // A group with a failure is untouched.
    rs[0].correct = false;
    assert!(d.cuts(&group("q", rs)).iter().all(Option::is_none));
    // Exceeding T by less than m is not cut: with m = 400, 1000 − 605 = 395 < 400.
    let d400 = DotParams { m: 400, ..d };
    assert!(d400.cuts(&g).iter().all(Option::is_none));
}

#[test]
fn ceeh_length_penalty_history_and_entropy_advantage() {
    use luspo::control::ceeh::{CeehParams, Difficulty};
    let m = cfg("ceeh", serde_json::json!({})).build();
    let mut h = History::default();
    // Prompt e easy (acc_h 0.6 ≥ mean 0.4), improving now (accuracy 3/4 > 0.6); prompt x hard (0.2).
    h.set("e", "acc_h", 0.6);
    h.set("e", "l_x", 10.0);
    h.set("x", "acc_h", 0.2);
    h.set("x", "l_x", 10.0);
    assert_eq!(CeehParams::difficulty(&h, "e"), Difficulty::Easy);
    assert_eq!(CeehParams::difficulty(&h, "x"), Difficulty::Hard);
    let e = group(
        "e",
        vec![
            resp(10, true),
            resp(15, true),
            resp(2, true),
            resp(30, false),
        ],
    );
    let x = group("x", vec![resp(30, true), resp(5, false)]);
    let r = m.shape(&[e.clone(), x.clone()], &h, AT);
    // β = 0.1: L = l_x → 1; L = 15 → 1 − 0.1·0.5; L = 2 → 1 − 0.1·(−0.8); wrong: 0. Hard prompt: plain.
    let want = [1.0, 0.95, 1.08, 0.0];
    for (a, b) in r[0].iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{r:?}");
    }
    assert_eq!(r[1], vec![1.0, 0.0]);
    // Entropy advantage on the hard prompt only: Â_t = A·w_t with ψ = min(0.4·H, |A|/2), sign kept.
    let ents = |r: Response, v: f32| with_entropies(r.clone(), &vec![v; r.length]);
    let x = group(
        "x",
        vec![ents(resp(3, true), 0.5), ents(resp(2, false), 10.0)],
    );
    let e = group(
        "e",
        vec![ents(resp(1, true), 1.0), ents(resp(1, false), 1.0)],
    );
    let adv = m.advantages(
        &[e, x],
        &[vec![1.0, 0.0], vec![1.0, 0.0]],
        &h,
        Estimator::DrGrpo,
        AT,
    );
    assert_eq!(adv.seq, vec![vec![0.5, -0.5], vec![0.5, -0.5]]);
    let w = adv
        .token_weights
        .expect("hard prompt gets per-token weights");
    assert!(w[0].iter().flatten().all(|&x| x == 1.0), "easy: no bonus");
    // A = 0.5, H = 0.5: ψ = min(0.2, 0.25) = 0.2 → w = 1.4. A = −0.5, H = 10: ψ = 0.25 → w = 0.5.
    assert!(w[1][0].iter().all(|&x| (x - 1.4).abs() < 1e-6), "{w:?}");
    assert!(w[1][1].iter().all(|&x| (x - 0.5).abs() < 1e-6), "{w:?}");
    // History: asymmetric EMA and shortest correct length.
    let mut h2 = h.clone();
    m.update(&[group("e", vec![resp(4, true), resp(4, false)])], &mut h2);
    // Acc 0.5 < acc_h 0.6 → η = 0.05: 0.6 − 0.005.
    assert!((h2.get("e", "acc_h").unwrap() - 0.595).abs() < 1e-12);
    assert_eq!(h2.get("e", "l_x"), Some(4.0));
    m.update(&[group("n", vec![resp(4, false)])], &mut h2);
    assert_eq!(h2.get("n", "acc_h"), Some(0.0));
    assert_eq!(h2.get("n", "l_x"), None);
}

/// CEEH's difficulty-aware entropy regulariser λ(x, t) = k·λ0·cos(πt/T) (k = 5 hard, 1 easy; t = step − 1),
/// clamped at 0 by default, 0 for a prompt without history; carried as per-response entropy coefficients.
#[test]
fn ceeh_entropy_regulariser_follows_the_schedule() {
    use luspo::control::ceeh::{CeehParams, Difficulty};
    let p = CeehParams::default();
    assert_eq!(
        (p.lambda0, p.lambda_hard, p.lambda_clamp),
        (0.001, 5.0, true)
    );
    let at = |step| StepInfo {
        step,
        max_new_tokens: 64,
        total_steps: 4,
    };
    let pi = std::f64::consts::PI;
    // Hand values: t = 0 → cos 0 = 1; t = 1 of T = 4 → cos(π/4); t = 2 → cos(π/2) ≈ 0; t = 3 → cos(3π/4) < 0.
    let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
    assert!(close(p.entropy_coef(Difficulty::Hard, at(1)), 0.005));
    assert!(close(p.entropy_coef(Difficulty::Easy, at(1)), 0.001));
    assert!(close(
        p.entropy_coef(Difficulty::Hard, at(2)),
        0.005 * (pi / 4.0).cos()
    ));
    assert!(close(
        p.entropy_coef(Difficulty::Easy, at(2)),
        0.001 * 0.5f64.sqrt()
    ));
    assert!(p.entropy_coef(Difficulty::Hard, at(3)).abs() < 1e-18);
    assert_eq!(p.entropy_coef(Difficulty::Hard, at(4)), 0.0, "clamped at 0");
    assert_eq!(p.entropy_coef(Difficulty::Unknown, at(1)), 0.0);
    let raw = CeehParams {
        lambda_clamp: false,
        ..p.clone()
    };
    assert!(close(
        raw.entropy_coef(Difficulty::Easy, at(4)),
        -0.001 * 0.5f64.sqrt()
    ));
    // T = 0 (unknown): no decay.
    assert_eq!(p.entropy_coef(Difficulty::Hard, AT), 0.005);

    // Through the method: easy e, hard x, unknown n; every response of a group gets its prompt's λ.
    let m = cfg("ceeh", serde_json::json!({"alpha": 0.0})).build();
    let mut h = History::default();
    h.set("e", "acc_h", 0.6);
    h.set("x", "acc_h", 0.2);
    let gs = [
        group("e", vec![resp(3, true), resp(4, false)]),
        group("x", vec![resp(3, true), resp(4, false), resp(5, false)]),
        group("n", vec![resp(3, true)]),
    ];
    let r = m.shape(&gs, &h, at(2));
    let adv = m.advantages(&gs, &r, &h, Estimator::DrGrpo, at(2));
    let c = adv.entropy_coefs.expect("λ0 > 0 sets entropy coefficients");
    let (le, lh) = (0.001 * (pi / 4.0).cos(), 0.005 * (pi / 4.0).cos());
    assert_eq!(c, vec![vec![le; 2], vec![lh; 3], vec![0.0]]);
    // λ0 = 0 turns it off.
    let off = cfg("ceeh", serde_json::json!({"alpha": 0.0, "lambda0": 0.0})).build();
    let adv = off.advantages(&gs, &r, &h, Estimator::DrGrpo, at(2));
    assert!(adv.entropy_coefs.is_none());
    let e = ControlConfig::from_json("ceeh", serde_json::json!({"lambda0": -1.0}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("control.ceeh.lambda0"), "{e}");
}

/// CANON's μ schedules against the official code's `cosine_annealing_with_restart` (values from a Python port of
/// it: `c(epoch, total, mx, mn, w, cycles=3)`, e.g. `c(50, 150, 0.6, 0, 30) = 0.3`), and μ through the advantages.
#[test]
fn canon_mu_schedules_follow_the_code() {
    use luspo::control::canon::{cosine_with_restart, CanonParams, MuSchedule};
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    // The code's own settings: T = 150, W = 30, 3 cycles of 40 steps.
    for (step, lo, hi) in [
        (1, 0.04, 0.066_666_666_666_666_67),
        (29, 0.6, 1.0),
        (30, 0.6, 1.0),
        (50, 0.3, 0.7),
        (60, 0.087_867_965_644_035_76, 0.487_867_965_644_035_8),
        (70, 0.6, 1.0),
        (149, 0.000_924_799_880_061_610_8, 0.400_924_799_880_061_63),
    ] {
        assert!(
            close(cosine_with_restart(step, 150, 0.6, 0.0, 30), lo),
            "{step}"
        );
        assert!(
            close(cosine_with_restart(step, 150, 1.0, 0.4, 30), hi),
            "{step}"
        );
    }
    // Here T = train.steps and W = T/5: T = 40 → W = 8, cycles of 10.
    let at = |step| StepInfo {
        step,
        max_new_tokens: 64,
        total_steps: 40,
    };
    let p = |s| CanonParams {
        mu_schedule: s,
        ..CanonParams::default()
    };
    assert!(close(
        p(MuSchedule::CosineRestart).mu_at(&[], at(12)),
        1.0 - 0.392_705_098_312_484_24
    ));
    assert!(close(
        p(MuSchedule::CosineRestartR).mu_at(&[], at(14)),
        0.607_294_901_687_515_8
    ));
    assert!(close(p(MuSchedule::CosineRestartR).mu_at(&[], at(1)), 0.25));
    assert_eq!(p(MuSchedule::Constant).mu_at(&[], at(12)), 1.0);
    let rewards = vec![vec![1.0, 0.0, 1.0, 1.0], vec![0.0, 0.0, 1.0, 0.0]];
    assert_eq!(p(MuSchedule::Accuracy).mu_at(&rewards, at(3)), 0.5);

    // Through the method: the scheduled μ is the constant μ of that value.
    let g = group(
        "q",
        vec![resp(3, true), resp(1, false), resp(4, true), resp(2, true)],
    );
    let h = group(
        "r",
        vec![
            resp(3, false),
            resp(1, false),
            resp(4, true),
            resp(2, false),
        ],
    );
    let gs = [g, h];
    let sched = cfg(
        "canon",
        serde_json::json!({"c": 10.0, "mu_schedule": "accuracy"}),
    )
    .build();
    let fixed = cfg("canon", serde_json::json!({"c": 10.0, "mu": 0.5})).build();
    let fixed0 = cfg("canon", serde_json::json!({"c": 10.0, "mu": 1.0})).build();
    let a = sched.advantages(&gs, &rewards, &History::default(), Estimator::DrGrpo, at(3));
    let b = fixed.advantages(&gs, &rewards, &History::default(), Estimator::DrGrpo, at(3));
    let c = fixed0.advantages(&gs, &rewards, &History::default(), Estimator::DrGrpo, at(3));
    assert_eq!(a.seq, b.seq);
    assert_ne!(a.seq, c.seq);
    let e = ControlConfig::from_json("canon", serde_json::json!({"mu_schedule": "nope"}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("mu_schedule") || e.contains("nope"), "{e}");
}
