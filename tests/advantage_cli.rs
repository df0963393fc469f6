//! `luspo advantage` end to end: the binary on stdin, the issue's example, `none`, history out, bad input.

use std::io::Write;
use std::process::{Command, Stdio};

fn run(input: &str) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_luspo"))
        .arg("advantage")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

fn ok(input: &str) -> serde_json::Value {
    let (code, out, err) = run(input);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn hapo_example_rewards_advantages_and_history() {
    let v = ok(r#"{"method": "hapo", "params": {"w": 1.0},
        "groups": [{"prompt_id": "q1", "history": {"h": 20},
                    "responses": [{"length": 10, "correct": true, "truncated": false},
                                  {"length": 20, "correct": true, "truncated": false},
                                  {"length": 30, "correct": false, "truncated": false}]}]}"#);
    let g = &v["groups"][0];
    let r: Vec<f64> = serde_json::from_value(g["rewards"].clone()).unwrap();
    // L = h/2: 1 + cos(π/4); L = h: 1 + 0; wrong, L = 1.5h: min(0, cos(3π/4)).
    let want = [1.0 + 0.5f64.sqrt(), 1.0, -(0.5f64.sqrt())];
    for (a, b) in r.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{r:?}");
    }
    // GRPO advantages of those rewards (the configured default).
    let a: Vec<f64> = serde_json::from_value(g["advantages"].clone()).unwrap();
    let want_a = luspo::advantage::compute(luspo::advantage::Estimator::Grpo, &r, &[0, 0, 0]);
    for (x, y) in a.iter().zip(&want_a) {
        assert!((x - y).abs() < 1e-12, "{a:?} vs {want_a:?}");
    }
    assert_eq!(g["history"]["h"], 10.0, "shortest correct after the step");
    assert_eq!(v["resolved"]["method"], "hapo");
    assert_eq!(v["resolved"]["params"]["floor"], -0.7);
    assert_eq!(v["resolved"]["estimator"], "grpo");
}

#[test]
fn none_is_accuracy_and_grpo() {
    let v = ok(r#"{"method": "none", "groups": [{"prompt_id": "a",
        "responses": [{"length": 3, "correct": true}, {"length": 4, "correct": false}]}]}"#);
    assert_eq!(v["groups"][0]["rewards"], serde_json::json!([1.0, 0.0]));
    let a: Vec<f64> = serde_json::from_value(v["groups"][0]["advantages"].clone()).unwrap();
    assert!(
        (a[0] - 1.0 / (0.5f64.sqrt() + 1e-6) * 0.5).abs() < 1e-9,
        "{a:?}"
    );
    assert_eq!(v["groups"][0]["history"], serde_json::json!({}));
}

#[test]
fn dler_brings_its_batch_estimator_and_dot_reports_cut_lengths() {
    let v = ok(r#"{"method": "dler", "params": {"l_trunc": 5}, "groups": [
        {"prompt_id": "a", "responses": [{"length": 3, "correct": true}, {"length": 9, "correct": true}]},
        {"prompt_id": "b", "responses": [{"length": 3, "correct": true}, {"length": 3, "correct": false}]}]}"#);
    assert_eq!(v["resolved"]["estimator"], "batch");
    assert_eq!(v["groups"][0]["rewards"], serde_json::json!([1.0, 0.0]));
    let v = ok(
        r#"{"method": "dot", "params": {"m": 1, "k": 0.0}, "groups": [
        {"prompt_id": "a", "responses": [{"length": 2, "correct": true}, {"length": 6, "correct": true}]}]}"#,
    );
    // T = floor(mean 4) = 4; 6 − 4 ≥ 1: cut to 4 and counted incorrect.
    assert_eq!(v["groups"][0]["lengths"], serde_json::json!([2, 4]));
    assert_eq!(v["groups"][0]["rewards"], serde_json::json!([1.0, 0.0]));
}

#[test]
fn bad_input_is_one_line_exit_2() {
    for (input, needle) in [
        ("not json", "stdin"),
        (r#"{"method": "nope", "groups": []}"#, "nope"),
        (
            r#"{"method": "hapo", "params": {"q": 1}, "groups": []}"#,
            "q",
        ),
        (r#"{"method": "hapo", "groups": [], "extra": 1}"#, "extra"),
        (
            r#"{"method": "none", "groups": [{"prompt_id": "a", "responses": [{"length": 1}]}]}"#,
            "correct",
        ),
        (
            r#"{"method": "none", "groups": [{"prompt_id": "a", "responses": []}]}"#,
            "groups[0].responses",
        ),
        (
            r#"{"method": "pear", "groups": [{"prompt_id": "a", "responses": [{"length": 2, "correct": true}]}]}"#,
            "entropies",
        ),
        (
            r#"{"method": "none", "groups": [{"prompt_id": "a", "responses": [{"length": 1, "correct": true}]},
             {"prompt_id": "a", "responses": [{"length": 1, "correct": true}]}]}"#,
            "twice",
        ),
    ] {
        let (code, out, err) = run(input);
        assert_eq!(code, 2, "{input}: {err}");
        assert!(out.is_empty(), "{input}");
        assert_eq!(err.trim().lines().count(), 1, "{input}: {err}");
        assert!(err.contains(needle), "{input}: {err}");
    }
}
