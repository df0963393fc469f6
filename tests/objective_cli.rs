//! `luspo loss` end to end: the built binary against the independent numpy reference fixture
//! (scripts/objective_reference.py → tests/fixtures/objective/reference.json), and bad inputs → exit 2, one line.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

fn run(input: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_luspo"))
        .arg("loss")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn luspo");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn matches_the_numpy_reference_fixture() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/objective/reference.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (code, stdout, stderr) = run(&case["input"].to_string());
        assert_eq!(code, 0, "{name}: {stderr}");
        let got: Value = serde_json::from_str(&stdout).unwrap();
        let exp = &case["expected"];
        let (l, el) = (got["loss"].as_f64().unwrap(), exp["loss"].as_f64().unwrap());
        assert!((l - el).abs() < 1e-6, "{name}: loss {l} vs reference {el}");
        let (g, eg) = (
            got["grad_logp"].as_array().unwrap(),
            exp["grad_logp"].as_array().unwrap(),
        );
        assert_eq!(g.len(), eg.len(), "{name}");
        for (i, (r, er)) in g.iter().zip(eg).enumerate() {
            let (r, er) = (r.as_array().unwrap(), er.as_array().unwrap());
            assert_eq!(r.len(), er.len(), "{name} seq {i}");
            for (t, (x, y)) in r.iter().zip(er).enumerate() {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!(
                    (x - y).abs() < 1e-6,
                    "{name}: grad[{i}][{t}] {x} vs reference {y}"
                );
            }
        }
        for k in ["clip_frac_low", "clip_frac_high", "ratio_mean", "approx_kl"] {
            let (x, y) = (got[k].as_f64().unwrap(), exp[k].as_f64().unwrap());
            assert!((x - y).abs() < 1e-9, "{name}: {k} {x} vs reference {y}");
        }
    }
}

#[test]
fn luspo_case_c_through_the_cli_with_rewards() {
    let input = json!({
        "objective": "luspo", "eps_low": 0.2, "eps_high": 0.28,
        "sequences": [
            {"logp": [-0.7, -0.6], "old_logp": [-1.0, -0.5], "reward": 1.0, "group": 3},
            {"logp": [-1.9, -0.4, 0.5], "old_logp": [-2.0, -0.1, -0.7], "reward": 0.0, "group": 3},
            {"logp": [-0.3, -1.0, -1.05, 0.35, -1.4], "old_logp": [-0.3, -1.2, -0.8, -0.05, -1.5], "reward": 1.0, "group": 3}
        ]
    });
    let (code, out, err) = run(&input.to_string());
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(
        (v["loss"].as_f64().unwrap() - 0.1332640077).abs() < 1e-9,
        "{out}"
    );
    assert!(
        (v["grad_logp"][1][2].as_f64().unwrap() - 0.53717054).abs() < 1e-8,
        "{out}"
    );
    assert!((v["advantages"][1].as_f64().unwrap() + 1.1546985384).abs() < 1e-9);
    assert_eq!(v["resolved"]["aggregation"], "seq-mean-token-sum");
}

#[test]
fn kl_and_entropy_through_the_cli() {
    let input = json!({
        "objective": "dapo", "kl_beta": 0.5, "kl_estimator": "k3", "entropy_coef": 0.1,
        "sequences": [
            {"logp": [-1.0, -0.5], "old_logp": [-1.0, -0.5], "ref_logp": [-1.3, -0.5], "entropy": [1.0, 2.0], "advantage": 0.0},
            {"logp": [-0.2], "old_logp": [-0.2], "ref_logp": [-0.2], "entropy": [0.5], "advantage": 0.0}
        ]
    });
    let (code, out, err) = run(&input.to_string());
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let k3 = (-0.3f64).exp() + 0.3 - 1.0;
    let expect = 0.5 * k3 / 3.0 - 0.1 * 3.5 / 3.0;
    assert!(
        (v["loss"].as_f64().unwrap() - expect).abs() < 1e-12,
        "{out}"
    );
    assert!(
        (v["grad_entropy"][0][1].as_f64().unwrap() + 0.1 / 3.0).abs() < 1e-12,
        "{out}"
    );
    assert!((v["kl"].as_f64().unwrap() - k3 / 3.0).abs() < 1e-12);
}

#[test]
fn bad_inputs_exit_2_with_one_line_naming_the_problem() {
    let seq = |lp: Value, old: Value| json!({"logp": lp, "old_logp": old, "advantage": 1.0});
    let cases: Vec<(String, &str)> = vec![
        ("{\"objective\": \"luspo\", ".into(), "invalid JSON"),
        ("[1, 2]".into(), "expected one JSON object"),
        (json!({"sequences": [seq(json!([-1.0]), json!([-1.0]))]}).to_string(), "missing key `objective`"),
        (json!({"objective": "luspo"}).to_string(), "missing key `sequences`"),
        (json!({"objective": "ppo", "sequences": []}).to_string(), "objective: unknown objective `ppo`"),
        (json!({"objective": "luspo", "epsilon": 0.2, "sequences": []}).to_string(), "unknown key `epsilon`"),
        (json!({"objective": "luspo", "sequences": []}).to_string(), "sequences: the list is empty"),
        (
            json!({"objective": "grpo", "sequences": [seq(json!([-1.0]), json!([-1.0])), seq(json!([-1.0]), json!([-1.0])),
                seq(json!([-1.0, -2.0, -3.0]), json!([-1.0, -2.0, -3.0, -4.0]))]})
            .to_string(),
            "sequences[2]: logp has 3 values but old_logp has 4",
        ),
        (json!({"objective": "grpo", "sequences": [seq(json!([]), json!([]))]}).to_string(), "sequences[0]: logp is empty"),
        (
            json!({"objective": "grpo", "sequences": [{"logp": [-1.0], "old_logp": [-1.0]}]}).to_string(),
            "sequences[0]: missing key `advantage`",
        ),
        (
            json!({"objective": "grpo", "sequences": [{"logp": [-1.0], "advantage": 1.0}]}).to_string(),
            "sequences[0]: missing key `old_logp`",
        ),
        (
            json!({"objective": "grpo", "sequences": [{"logp": [-1.0], "old_logp": [-1.0], "advantage": 1.0, "adv": 2}]})
                .to_string(),
            "sequences[0]: unknown key `adv`",
        ),
        (
            "{\"objective\": \"grpo\", \"sequences\": [{\"logp\": [1e999], \"old_logp\": [-1.0], \"advantage\": 1.0}]}".into(),
            "invalid JSON",
        ),
        (
            json!({"objective": "grpo", "sequences": [{"logp": ["x"], "old_logp": [-1.0], "advantage": 1.0}]}).to_string(),
            "sequences[0].logp[0]: expected a number",
        ),
        (json!({"objective": "grpo", "eps_low": -0.5, "sequences": [seq(json!([-1.0]), json!([-1.0]))]}).to_string(), "eps_low:"),
        (
            json!({"objective": "grpo", "aggregation": "mean", "sequences": [seq(json!([-1.0]), json!([-1.0]))]}).to_string(),
            "aggregation: unknown variant",
        ),
        (
            json!({"objective": "grpo", "kl_beta": 0.1, "sequences": [seq(json!([-1.0]), json!([-1.0]))]}).to_string(),
            "ref_logp: kl_beta is 0.1",
        ),
    ];
    for (input, needle) in cases {
        let (code, out, err) = run(&input);
        assert_eq!(code, 2, "{input}: stdout {out} stderr {err}");
        assert!(out.is_empty(), "{input}: stdout must stay empty, got {out}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{input}: not one line: {err}"
        );
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{input}: expected `{needle}` in {err}"
        );
    }
}
