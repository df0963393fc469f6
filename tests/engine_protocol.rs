//! Engine protocol: request bodies and response parsing against fixtures taken from the engines' definitions
//! (tests/fixtures/engine/README.md), through a real HTTP round trip to a local stub server.

use luspo::engine::protocol::{self, EngineCompletion};
use luspo::engine::{mismatch, tis_weight, Engine, EngineKind, TisMode};
use luspo::rollout::SamplingParams;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

fn fixture(name: &str) -> Value {
    let p = format!(
        "{}/tests/fixtures/engine/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// A one-thread HTTP/1.1 server answering every request with `status` and `body`; records request bodies.
/// The (path, JSON body) of every request a stub received.
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

fn stub(status: u16, body: Value, max: usize) -> (String, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(vec![]));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming().take(max) {
            let mut s = s.unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut buf = vec![0u8; len];
            r.read_exact(&mut buf).unwrap();
            let req = serde_json::from_slice(&buf).unwrap_or(Value::Null);
            seen2.lock().unwrap().push((path, req));
            let text = body.to_string();
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    (url, seen)
}

fn params() -> SamplingParams {
    SamplingParams {
        temperature: 0.7,
        top_p: 0.9,
        top_k: 0,
        max_new_tokens: 3,
        eos_token_ids: vec![2],
        stop: vec![],
    }
}

#[test]
fn sglang_generate_round_trip() {
    let (url, seen) = stub(200, fixture("sglang_generate.json"), 2);
    let e = Engine::new(EngineKind::Sglang, &url, "", 2, 5.0, 0).unwrap();
    let out = e
        .generate(&[vec![5, 6], vec![7]], &params(), &[11, 12])
        .unwrap();
    let want = EngineCompletion {
        ids: vec![16, 17, 2],
        logprobs: vec![-0.25, -1.5, -0.125],
        finished: true,
    };
    assert_eq!(out, vec![want.clone(), want]);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for (path, req) in seen.iter() {
        assert_eq!(path, "/generate");
        assert_eq!(req["return_logprob"], true);
        assert_eq!(req["sampling_params"]["max_new_tokens"], 3);
        assert_eq!(req["sampling_params"]["top_k"], -1);
        assert_eq!(
            req["sampling_params"]["stop_token_ids"],
            serde_json::json!([2])
        );
    }
    let ids: Vec<&Value> = seen.iter().map(|(_, r)| &r["input_ids"]).collect();
    assert!(ids.contains(&&serde_json::json!([5, 6])) && ids.contains(&&serde_json::json!([7])));
}

#[test]
fn vllm_completions_round_trip() {
    let (url, seen) = stub(200, fixture("vllm_completions.json"), 1);
    let e = Engine::new(EngineKind::Vllm, &url, "m", 4, 5.0, 0).unwrap();
    let out = e.generate(&[vec![1, 2, 3]], &params(), &[9]).unwrap();
    assert_eq!(
        out[0],
        EngineCompletion {
            ids: vec![16, 17, 18],
            logprobs: vec![-0.5, -0.75, -2.0],
            finished: false
        }
    );
    let (path, req) = &seen.lock().unwrap()[0];
    assert_eq!(path, "/v1/completions");
    assert_eq!(req["prompt"], serde_json::json!([1, 2, 3]));
    assert_eq!(req["return_token_ids"], true);
    assert_eq!(req["return_tokens_as_token_ids"], true);
    assert_eq!(req["logprobs"], 1);
    assert_eq!(req["seed"], 9);
    assert_eq!(req["model"], "m");
}

#[test]
fn vllm_ids_from_token_strings_when_token_ids_absent() {
    let mut v = fixture("vllm_completions.json");
    v["choices"][0].as_object_mut().unwrap().remove("token_ids");
    let c = protocol::parse_response(EngineKind::Vllm, &v).unwrap();
    assert_eq!(c.ids, vec![16, 17, 18]);
}

#[test]
fn llamacpp_content_logprobs_parse() {
    let c = protocol::parse_response(EngineKind::Openai, &fixture("llamacpp_completions.json"))
        .unwrap();
    assert_eq!(
        c,
        EngineCompletion {
            ids: vec![16, 17],
            logprobs: vec![-0.0625, -3.0],
            finished: true
        }
    );
}

#[test]
fn sglang_update_answer() {
    assert!(protocol::parse_sglang_update(&fixture("sglang_update_weights.json")).is_ok());
    let err = protocol::parse_sglang_update(
        &serde_json::json!({"success": false, "message": "bad path"}),
    );
    assert!(err.unwrap_err().contains("bad path"));
}

#[test]
fn nonsense_answer_is_one_line_naming_the_url() {
    let (url, _) = stub(200, serde_json::json!({"hello": 1}), 1);
    let e = Engine::new(EngineKind::Openai, &url, "", 1, 5.0, 0).unwrap();
    let err = e
        .generate(&[vec![1]], &params(), &[0])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&url) && err.contains("choices[0]") && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn server_error_is_retried_then_reported() {
    let (url, seen) = stub(503, serde_json::json!({"error": "overloaded"}), 3);
    let e = Engine::new(EngineKind::Sglang, &url, "", 1, 5.0, 2).unwrap();
    let err = e
        .generate(&[vec![1]], &params(), &[0])
        .unwrap_err()
        .to_string();
    assert_eq!(seen.lock().unwrap().len(), 3, "1 try + 2 retries");
    assert!(
        err.contains(&url) && err.contains("HTTP 503") && err.contains("3 attempts"),
        "{err}"
    );
}

#[test]
fn server_down_names_the_url() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let e = Engine::new(EngineKind::Vllm, &url, "", 1, 2.0, 0).unwrap();
    let err = e
        .generate(&[vec![1]], &params(), &[0])
        .unwrap_err()
        .to_string();
    assert!(err.contains(&url) && !err.contains('\n'), "{err}");
}

#[test]
fn mismatch_and_tis_by_hand() {
    // d = trainer - engine = ln 2 and 0: |d| mean = ln2/2; k3 = (2 - 1 - ln 2 + 0)/2.
    let e = vec![vec![(0.25f32).ln(), -1.0]];
    let t = vec![vec![(0.5f32).ln(), -1.0]];
    let (abs, kl) = mismatch(&e, &t);
    let l2 = 2f64.ln();
    assert!((abs - l2 / 2.0).abs() < 1e-6);
    assert!((kl - (1.0 - l2) / 2.0).abs() < 1e-6);
    // Sequence weight: exp(Σ d) = exp(ln 2 + 0) = 2, then capped.
    assert!((tis_weight(&e[0], &t[0], 100.0) - 2.0).abs() < 1e-6);
    assert!((tis_weight(&e[0], &t[0], 1.5) - 1.5).abs() < 1e-9);
}

#[test]
fn tis_modes_by_hand() {
    // Per-token ratios trainer/engine: 0.5/0.25 = 2, 1, 0.5; the sequence ratio is their product, 1.
    let e = [(0.25f32).ln(), -1.0, (0.2f32).ln()];
    let t = [(0.5f32).ln(), -1.0, (0.1f32).ln()];
    let close = |a: &[f64], b: &[f64]| {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    };
    close(
        &TisMode::TokenTruncate.weights(&e, &t, 1.5),
        &[1.5, 1.0, 0.5],
    );
    close(&TisMode::TokenMask.weights(&e, &t, 1.5), &[0.0, 1.0, 0.5]);
    close(&TisMode::SequenceTruncate.weights(&e, &t, 1.5), &[1.0]);
    close(&TisMode::SequenceMask.weights(&e, &t, 1.5), &[1.0]);
    // Without the last token the sequence ratio is 2: capped, or masked to 0.
    close(
        &TisMode::SequenceTruncate.weights(&e[..2], &t[..2], 1.5),
        &[1.5],
    );
    close(
        &TisMode::SequenceMask.weights(&e[..2], &t[..2], 1.5),
        &[0.0],
    );
    // The default is the sequence-level TIS of `tis_weight`.
    assert_eq!(TisMode::default(), TisMode::SequenceTruncate);
    close(
        &TisMode::default().weights(&e[..2], &t[..2], 100.0),
        &[tis_weight(&e[..2], &t[..2], 100.0)],
    );
}
