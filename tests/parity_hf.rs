//! Parity with HF transformers: per-token log-probs and greedy tokens of the tiny fixtures
//! (tests/fixtures/hf, made by scripts/make_hf_fixtures.py) and of SmolLM2-135M-Instruct loaded from its GGUF.

use candle_core::{DType, Device, Tensor};
use luspo::model::io::{self, LoadedModel};
use luspo::rollout::{generate, score, SamplingParams};
use rand::SeedableRng;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/hf").join(name)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    serde_json::from_value(v.clone()).unwrap()
}

fn greedy(m: &LoadedModel, prompts: &[Vec<u32>], n: usize, eos: Vec<u32>) -> Vec<Vec<u32>> {
    let params = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: n,
        eos_token_ids: eos,
        stop: vec![],
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    generate(&m.model, prompts, &params, &mut rng)
        .unwrap()
        .into_iter()
        .map(|c| c.ids)
        .collect()
}

fn logits(m: &LoadedModel, seq: &[u32]) -> Tensor {
    let ids = Tensor::new(seq, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = Tensor::ones((1, seq.len()), m.model.dtype(), &Device::Cpu).unwrap();
    m.model
        .forward(&ids, &mask)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Logprobs within 1e-4 of transformers (float64 reference of the f32 weights), one by one and batched,
/// and the same 20 greedy tokens.
#[test]
fn tiny_fixtures_match_transformers() {
    for name in ["llama", "qwen2", "llama3rope"] {
        let m = io::load(&fixture(name), &Device::Cpu).unwrap();
        let r = json(&fixture(name).join("reference.json"));
        let seqs = r["sequences"].as_array().unwrap();
        let all: Vec<Vec<u32>> = seqs.iter().map(|s| ids(&s["ids"])).collect();
        let batched = score(&m.model, &all, 4).unwrap();
        let mut worst = 0f64;
        for (i, s) in seqs.iter().enumerate() {
            let want = floats(&s["logprobs"]);
            let one = score(&m.model, &all[i..i + 1], 1).unwrap().remove(0);
            assert_eq!(one.len(), want.len());
            for ((a, b), w) in one.iter().zip(&batched[i]).zip(&want) {
                worst = worst.max((*a as f64 - w).abs()).max((*b as f64 - w).abs());
            }
        }
        assert!(worst < 1e-4, "{name}: worst |Δ logprob| = {worst:e}");
        let got = greedy(&m, &all, 20, vec![]);
        for (s, g) in seqs.iter().zip(&got) {
            assert_eq!(
                g,
                &ids(&s["greedy"]),
                "{name}: greedy continuation of {:?}",
                s["text"]
            );
        }
        eprintln!("{name}: worst |Δ logprob| vs transformers = {worst:.2e}");
    }
}

/// f64 parameters give logits within 1e-6 of the float64 reference (HF computes RoPE angles in f32 even then).
#[test]
fn f64_load_matches_float64_reference() {
    let m = io::load_with_dtype(&fixture("qwen2"), &Device::Cpu, DType::F64).unwrap();
    let r = json(&fixture("qwen2").join("reference.json"));
    let s = &r["sequences"][1];
    let l = logits(&m, &ids(&s["ids"]));
    let last = l.squeeze(0).unwrap().get(ids(&s["ids"]).len() - 1).unwrap();
    let want = Tensor::new(floats(&s["last_logits"]), &Device::Cpu).unwrap();
    let d = max_abs(&last, &want);
    eprintln!("f64 max |Δ logit| = {d:.2e}");
    assert!(d < 1e-6, "max |Δ logit| = {d:e}");
}

/// load → save_hf → load gives identical logits, for untied and tied models; the legacy `rope_theta` +
/// `rope_scaling` config spelling loads to the same model as transformers 5's `rope_parameters`.
#[test]
fn save_round_trip_and_legacy_rope_config() {
    let seq = [3u32, 43, 290, 79, 82, 307, 5, 6, 7, 200, 100];
    for name in ["llama", "qwen2", "llama3rope"] {
        let m = io::load(&fixture(name), &Device::Cpu).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("saved");
        io::save_hf(&out, &m).unwrap();
        let m2 = io::load(&out, &Device::Cpu).unwrap();
        let d = max_abs(&logits(&m, &seq), &logits(&m2, &seq));
        assert_eq!(d, 0.0, "{name}: saved model differs");
        assert_eq!(
            m2.tokenizer.encode("Hello world!", true).unwrap(),
            m.tokenizer.encode("Hello world!", true).unwrap()
        );
    }
    let src = fixture("llama3rope");
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let mut cfg = json(&src.join("config.json"));
    let mut rp = cfg["rope_parameters"].take();
    let obj = cfg.as_object_mut().unwrap();
    obj.remove("rope_parameters");
    obj.insert("rope_theta".into(), rp["rope_theta"].take());
    let rp = rp.as_object_mut().unwrap();
    rp.remove("rope_theta");
    obj.insert("rope_scaling".into(), Value::Object(rp.clone()));
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let a = io::load(&src, &Device::Cpu).unwrap();
    let b = io::load(tmp.path(), &Device::Cpu).unwrap();
    assert_eq!(max_abs(&logits(&a, &seq), &logits(&b, &seq)), 0.0);
    // And the scaling matters: without it the logits change.
    let obj = cfg.as_object_mut().unwrap();
    obj.remove("rope_scaling");
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let c = io::load(tmp.path(), &Device::Cpu).unwrap();
    assert!(max_abs(&logits(&a, &seq), &logits(&c, &seq)) > 1e-3);
}

fn smollm2() -> Option<(PathBuf, Value)> {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !p.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} is missing with CI=true: scripts/fetch_smollm2.sh must have fetched it",
            p.display()
        );
        eprintln!(
            "note: {} not found (run scripts/fetch_smollm2.sh); skipping SmolLM2 parity",
            p.display()
        );
        return None;
    }
    Some((
        p,
        json(&root().join("tests/fixtures/smollm2_reference.json")),
    ))
}

/// SmolLM2-135M-Instruct from its Q4_1 GGUF: logprobs within 2e-3 of transformers loading the same file,
/// and the greedy chat answer to "What is the capital of France?" is "The capital of France is Paris.".
#[test]
fn smollm2_gguf_matches_transformers() {
    let Some((path, r)) = smollm2() else { return };
    let m = io::load(&path, &Device::Cpu).unwrap();
    let mut worst = 0f64;
    for s in r["sequences"].as_array().unwrap() {
        let got = score(&m.model, &[ids(&s["ids"])], 1).unwrap().remove(0);
        for (a, w) in got.iter().zip(floats(&s["logprobs"])) {
            worst = worst.max((*a as f64 - w).abs());
        }
    }
    eprintln!("SmolLM2: worst |Δ logprob| vs transformers = {worst:.2e}");
    assert!(worst < 2e-3, "worst |Δ logprob| = {worst:e}");
    let prompt = m
        .prompt_ids("What is the capital of France?", true)
        .unwrap();
    assert_eq!(prompt, ids(&r["chat_ids"]));
    let out = greedy(&m, &[prompt], 24, m.tokenizer.eos_ids.clone()).remove(0);
    assert_eq!(out, ids(&r["greedy_ids"]));
    assert_eq!(
        m.tokenizer.decode(&out, true).unwrap(),
        "The capital of France is Paris."
    );
}

/// Writes saved copies of the fixtures (and SmolLM2, if present) under `$LUSPO_SAVE_DIR` for the Python check
/// `scripts/make_hf_fixtures.py check-saved DIR` (transformers must load what save_hf writes).
#[test]
#[ignore]
fn save_for_python_check() {
    let out = PathBuf::from(std::env::var("LUSPO_SAVE_DIR").expect("set LUSPO_SAVE_DIR"));
    for name in ["llama", "qwen2", "llama3rope"] {
        let m = io::load(&fixture(name), &Device::Cpu).unwrap();
        io::save_hf(&out.join(name), &m).unwrap();
        let ids = m.tokenizer.encode("Hello world!", true).unwrap();
        eprintln!(
            "{name} {:?} {:?}",
            ids,
            score(&m.model, std::slice::from_ref(&ids), 1).unwrap()[0]
        );
    }
    // A tiny char-level model as the built-in tasks make them.
    let tok = luspo::model::tokenizer::Tok::char_level("0123456789+=? Hello", &["<pad>", "<eos>"])
        .unwrap();
    let mut cfg = io::read_hf_config(&fixture("llama")).unwrap();
    cfg.vocab_size = tok.vocab_size();
    cfg.bos_token_id = None;
    cfg.eos_token_id = Some(1.into());
    cfg.extra.remove("pad_token_id");
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let model = luspo::model::Transformer::new(&cfg, vb).unwrap();
    io::save_hf_parts(&out.join("charlevel"), &cfg, &vm, &tok, None, None, None).unwrap();
    let ids = tok
        .encode("Hello world!", true)
        .unwrap_or_else(|_| tok.encode("Hello 12+30=?", true).unwrap());
    eprintln!(
        "charlevel {:?} {:?}",
        ids,
        score(&model, std::slice::from_ref(&ids), 1).unwrap()[0]
    );
    if let Some((p, _)) = smollm2() {
        let m = io::load(&p, &Device::Cpu).unwrap();
        io::save_hf(&out.join("smollm2"), &m).unwrap();
        let ids = m.tokenizer.encode("Hello world!", true).unwrap();
        eprintln!(
            "smollm2 {:?} {:?}",
            ids,
            score(&m.model, std::slice::from_ref(&ids), 1).unwrap()[0]
        );
    }
}

/// `io::load` (through the transformer's own parameter list) names the missing or misshapen tensor and file.
#[test]
fn load_errors_name_tensor_and_file() {
    let src = fixture("qwen2");
    let cases: [(&str, Value, &str); 3] = [
        (
            "num_hidden_layers",
            3.into(),
            "missing tensor `model.layers.2.",
        ),
        (
            "intermediate_size",
            96.into(),
            "gate_proj.weight` has shape [128, 64], the config needs [96, 64]",
        ),
        (
            "tie_word_embeddings",
            false.into(),
            "missing tensor `lm_head.weight`",
        ),
    ];
    for (key, val, needle) in cases {
        let tmp = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(&src).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
        }
        let mut cfg = json(&src.join("config.json"));
        cfg[key] = val;
        std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
        let e = io::load(tmp.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(needle) && e.contains(".safetensors") && !e.contains('\n'),
            "{key}: {e}"
        );
    }
}
