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
