//! Loader tests that need no transformer: weights into a hand-declared `VarMap`, tokenizers, chat templates,
//! errors, and the save round trip. References come from HF transformers (scripts/make_hf_fixtures.py).

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarMap};
use luspo::model::chat::{ChatTemplate, Message};
use luspo::model::io::{self, SourceKind};
use luspo::model::tokenizer::Tok;
use luspo::model::Config;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

fn smollm2() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} is missing with CI=true: scripts/fetch_smollm2.sh must have fetched it",
            p.display()
        );
        eprintln!(
            "note: {} not found (run scripts/fetch_smollm2.sh); skipping",
            p.display()
        );
        None
    }
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// HF parameter names and shapes of a Llama/Qwen2 config, written out from the HF modeling code.
fn hf_params(c: &Config) -> Vec<(String, Vec<usize>)> {
    let (d, hd, nh, nkv, ff, v) = (
        c.hidden_size,
        c.head_dim(),
        c.num_attention_heads,
        c.num_kv_heads(),
        c.intermediate_size,
        c.vocab_size,
    );
    let mut p = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, d]),
        ("model.norm.weight".into(), vec![d]),
    ];
    if !c.tie_word_embeddings {
        p.push(("lm_head.weight".into(), vec![v, d]));
    }
    for l in 0..c.num_hidden_layers {
        let n = |s: &str| format!("model.layers.{l}.{s}");
        p.push((n("input_layernorm.weight"), vec![d]));
        p.push((n("post_attention_layernorm.weight"), vec![d]));
        p.push((n("self_attn.q_proj.weight"), vec![nh * hd, d]));
        p.push((n("self_attn.k_proj.weight"), vec![nkv * hd, d]));
        p.push((n("self_attn.v_proj.weight"), vec![nkv * hd, d]));
        p.push((n("self_attn.o_proj.weight"), vec![d, nh * hd]));
        if c.qkv_bias() {
            p.push((n("self_attn.q_proj.bias"), vec![nh * hd]));
            p.push((n("self_attn.k_proj.bias"), vec![nkv * hd]));
            p.push((n("self_attn.v_proj.bias"), vec![nkv * hd]));
        }
        p.push((n("mlp.gate_proj.weight"), vec![ff, d]));
        p.push((n("mlp.up_proj.weight"), vec![ff, d]));
        p.push((n("mlp.down_proj.weight"), vec![d, ff]));
    }
    p
}

fn varmap_for(params: &[(String, Vec<usize>)]) -> VarMap {
    let vm = VarMap::new();
    for (name, shape) in params {
        vm.get(
            shape.as_slice(),
            name,
            Init::Const(0.5),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
    }
    vm
}

fn var(vm: &VarMap, name: &str) -> Tensor {
    vm.data().lock().unwrap()[name].as_tensor().clone()
}

/// All tensors of the HF fixture's safetensors files, read independently of the loader.
fn file_tensors(dir: &Path) -> std::collections::HashMap<String, Tensor> {
    let mut all = std::collections::HashMap::new();
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "safetensors") {
            all.extend(candle_core::safetensors::load(&f, &Device::Cpu).unwrap());
        }
    }
    all
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn hf_fixtures_fill_every_parameter() {
    for name in ["llama", "qwen2", "llama3rope"] {
        let dir = fixture(name);
        let ck = io::read_checkpoint(&dir).unwrap();
        assert_eq!(ck.source, SourceKind::HfDir);
        let params = hf_params(&ck.config);
        let vm = varmap_for(&params);
        io::fill_varmap(&vm, &dir, &ck.config, &Device::Cpu, DType::F32).unwrap();
        let files = file_tensors(&dir);
        for (p, _) in &params {
            assert_eq!(max_abs_diff(&var(&vm, p), &files[p]), 0.0, "{name}: {p}");
        }
        assert_eq!(
            params.len(),
            files.len(),
            "{name}: every file tensor is a parameter"
        );
        // f64 variables for gradient tests.
        let vm64 = VarMap::new();
        for (n, s) in &params {
            vm64.get(s.as_slice(), n, Init::Const(0.), DType::F64, &Device::Cpu)
                .unwrap();
        }
        io::fill_varmap(&vm64, &dir, &ck.config, &Device::Cpu, DType::F64).unwrap();
        let e = var(&vm64, "model.embed_tokens.weight");
        assert_eq!(e.dtype(), DType::F64);
        assert_eq!(
            max_abs_diff(
                &e.to_dtype(DType::F32).unwrap(),
                &files["model.embed_tokens.weight"]
            ),
            0.0
        );
    }
}

#[test]
fn hf_configs_parse() {
    let l = io::read_hf_config(&fixture("llama")).unwrap();
    assert_eq!(
        (
            l.model_type.as_str(),
            l.num_kv_heads(),
            l.head_dim(),
            l.tie_word_embeddings
        ),
        ("llama", 2, 16, false)
    );
    assert!(!l.qkv_bias());
    let q = io::read_hf_config(&fixture("qwen2")).unwrap();
    assert!(q.tie_word_embeddings && q.qkv_bias());
    let r = io::read_hf_config(&fixture("llama3rope")).unwrap();
    assert_eq!(r.rope_parameters.as_ref().unwrap()["rope_type"], "llama3");
}

#[test]
fn hf_tokenizers_match_transformers() {
    for name in ["llama", "qwen2", "llama3rope"] {
        let dir = fixture(name);
        let ck = io::read_checkpoint(&dir).unwrap();
        let r = json(&dir.join("reference.json"));
        for s in r["sequences"].as_array().unwrap() {
            let ids: Vec<u32> = serde_json::from_value(s["ids"].clone()).unwrap();
            let text = s["text"].as_str().unwrap();
            assert_eq!(
                ck.tokenizer.encode(text, true).unwrap(),
                ids,
                "{name}: {text:?}"
            );
            assert_eq!(
                ck.tokenizer.decode(&ids, true).unwrap(),
                text.replace("<|im_start|>", "").replace("<|im_end|>", "")
            );
        }
        let t = ck.chat_template.as_ref().expect("chat template");
        for c in r["chat"].as_array().unwrap() {
            let msgs: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
            let text = t
                .render(&msgs, c["add_generation_prompt"].as_bool().unwrap())
                .unwrap();
            assert_eq!(text, c["text"].as_str().unwrap());
            let ids: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
            assert_eq!(ck.tokenizer.encode(&text, false).unwrap(), ids);
        }
        assert_eq!(ck.tokenizer.eos_ids, vec![2], "{name}");
        assert_eq!(ck.tokenizer.pad_id, 0, "{name}");
        assert_eq!(
            ck.tokenizer.bos_id,
            if name == "qwen2" { None } else { Some(3) },
            "{name}"
        );
        assert_eq!(t.eos_token, "<|im_end|>");
    }
}

#[test]
fn chat_templates_match_transformers() {
    let f = json(&fixture("chat_templates.json"));
    let (bos, eos) = (
        f["bos_token"].as_str().unwrap(),
        f["eos_token"].as_str().unwrap(),
    );
    let mut n = 0;
    for c in f["cases"].as_array().unwrap() {
        let name = c["template"].as_str().unwrap();
        let t = ChatTemplate::new(f["templates"][name].as_str().unwrap(), bos, eos).unwrap();
        let got = t
            .render_value(
                &c["messages"],
                c["add_generation_prompt"].as_bool().unwrap(),
            )
            .unwrap();
        assert_eq!(
            got,
            c["text"].as_str().unwrap(),
            "template {name}, case {c}"
        );
        n += 1;
    }
    assert!(n >= 18, "{n} cases");
}

#[test]
fn template_from_list_and_raise_exception() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("llama");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let tc = serde_json::json!({"eos_token": {"content": "<|im_end|>"}, "chat_template": [
        {"name": "tool_use", "template": "TOOLS"},
        {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{% if m.role == 'x' %}{{ raise_exception('role x') }}{% endif %}{{ m.content }}{% endfor %}"}]});
    std::fs::write(dir.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
    let ck = io::read_checkpoint(dir.path()).unwrap();
    let t = ck.chat_template.unwrap();
    // bos_token falls back to config.json's bos_token_id (3 = "<s>").
    assert_eq!(
        t.render(&[Message::new("user", "hi")], true).unwrap(),
        "<s>hi"
    );
    let e = t
        .render(&[Message::new("x", "hi")], true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("role x") && !e.contains('\n'), "{e}");
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for f in std::fs::read_dir(src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
    }
}

#[test]
fn bad_inputs_give_one_line_naming_the_culprit() {
    let cpu = Device::Cpu;
    let one_line = |e: luspo::Error| {
        let s = e.to_string();
        assert!(!s.contains('\n'), "{s}");
        s
    };
    // Missing path.
    let e = one_line(
        io::read_checkpoint(Path::new("/nonexistent/model"))
            .err()
            .unwrap(),
    );
    assert!(e.contains("/nonexistent/model"), "{e}");
    // Unsupported architecture.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("llama"), dir.path());
    let mut cfg = json(&dir.path().join("config.json"));
    cfg["model_type"] = "gpt_neox".into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let e = one_line(io::read_checkpoint(dir.path()).err().unwrap());
    assert!(e.contains("gpt_neox") && e.contains("config.json"), "{e}");
    // Missing weights file.
    let dir2 = tempfile::tempdir().unwrap();
    copy_dir(&fixture("llama"), dir2.path());
    std::fs::remove_file(dir2.path().join("model.safetensors")).unwrap();
    let config = io::read_hf_config(dir2.path()).unwrap();
    let vm = varmap_for(&hf_params(&config));
    let e = one_line(
        io::fill_varmap(&vm, dir2.path(), &config, &cpu, DType::F32)
            .err()
            .unwrap(),
    );
    assert!(e.contains("model.safetensors"), "{e}");
    // Missing tensor: the config asks for a third layer the file lacks.
    let mut c3 = config.clone();
    c3.num_hidden_layers = 3;
    let vm = varmap_for(&hf_params(&c3));
    let e = one_line(
        io::fill_varmap(&vm, &fixture("llama"), &c3, &cpu, DType::F32)
            .err()
            .unwrap(),
    );
    assert!(
        e.contains("missing tensor `model.layers.2.") && e.contains("model.safetensors"),
        "{e}"
    );
    // Wrong shape: a wider MLP than the file.
    let mut cw = config.clone();
    cw.intermediate_size = 96;
    let vm = varmap_for(&hf_params(&cw));
    let e = one_line(
        io::fill_varmap(&vm, &fixture("llama"), &cw, &cpu, DType::F32)
            .err()
            .unwrap(),
    );
    assert!(
        e.contains("mlp.down_proj") && e.contains("[64, 128]") && e.contains("model.safetensors"),
        "{e}"
    );
    // Unexpected tensor: the file has a second layer the config does not declare.
    let mut ct = config.clone();
    ct.num_hidden_layers = 1;
    let vm = varmap_for(&hf_params(&ct));
    let e = one_line(
        io::fill_varmap(&vm, &fixture("llama"), &ct, &cpu, DType::F32)
            .err()
            .unwrap(),
    );
    assert!(e.contains("unexpected tensor `model.layers.1."), "{e}");
    // A missing shard of a sharded checkpoint.
    let dir3 = tempfile::tempdir().unwrap();
    copy_dir(&fixture("qwen2"), dir3.path());
    std::fs::remove_file(dir3.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = one_line(io::hf_weight_files(dir3.path()).err().unwrap());
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    // Not a model at all.
    let e = one_line(
        io::read_checkpoint(dir3.path().join("tokenizer.json").as_path())
            .err()
            .unwrap(),
    );
    assert!(e.contains("tokenizer.json"), "{e}");
    // Garbage GGUF.
    let g = dir3.path().join("bad.gguf");
    std::fs::write(&g, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let e = one_line(io::read_checkpoint(&g).err().unwrap());
    assert!(e.contains("bad.gguf"), "{e}");
}

#[test]
fn save_hf_round_trips_weights_tokenizer_and_template() {
    for name in ["llama", "qwen2"] {
        let src = fixture(name);
        let ck = io::read_checkpoint(&src).unwrap();
        let params = hf_params(&ck.config);
        let vm = varmap_for(&params);
        io::fill_varmap(&vm, &src, &ck.config, &Device::Cpu, DType::F32).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("saved");
        for _ in 0..2 {
            // Saving twice replaces the directory.
            io::save_hf_parts(
                &out,
                &ck.config,
                &vm,
                &ck.tokenizer,
                ck.chat_template.as_ref(),
                ck.tokenizer_config.as_ref(),
                ck.generation_config.as_ref(),
            )
            .unwrap();
        }
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        let saved = file_tensors(&out);
        assert_eq!(
            saved.contains_key("lm_head.weight"),
            !ck.config.tie_word_embeddings
        );
        let ck2 = io::read_checkpoint(&out).unwrap();
        let vm2 = varmap_for(&params);
        io::fill_varmap(&vm2, &out, &ck2.config, &Device::Cpu, DType::F32).unwrap();
        for (p, _) in &params {
            assert_eq!(
                max_abs_diff(&var(&vm, p), &var(&vm2, p)),
                0.0,
                "{name}: {p}"
            );
        }
        assert_eq!(ck2.tokenizer.eos_ids, ck.tokenizer.eos_ids);
        assert_eq!(ck2.tokenizer.bos_id, ck.tokenizer.bos_id);
        assert_eq!(ck2.tokenizer.pad_id, ck.tokenizer.pad_id);
        let text = "Hello world! What is 12 + 30?";
        assert_eq!(
            ck2.tokenizer.encode(text, true).unwrap(),
            ck.tokenizer.encode(text, true).unwrap()
        );
        let m = [Message::new("user", "Hi")];
        assert_eq!(
            ck2.chat_template.unwrap().render(&m, true).unwrap(),
            ck.chat_template.as_ref().unwrap().render(&m, true).unwrap()
        );
        let cfg = json(&out.join("config.json"));
        assert_eq!(cfg["torch_dtype"], "float32");
        assert_eq!(
            cfg["rope_parameters"],
            json(&src.join("config.json"))["rope_parameters"]
        );
    }
}

#[test]
fn char_level_tokenizer_round_trips_and_matches_hf() {
    let tok = Tok::char_level(
        "0123456789+-*=?: \nWhatisnwrAe",
        &["<pad>", "<eos>", "<bos>"],
    )
    .unwrap();
    assert_eq!(
        (tok.pad_id, tok.eos_ids.clone(), tok.bos_id),
        (0, vec![1], Some(2))
    );
    assert_eq!(
        tok.encode("12+30=42", false).unwrap(),
        vec![4, 5, 13, 6, 3, 16, 7, 5]
    );
    for text in ["What is 7*6?\nAnswer: 42", "", "  ", "1<eos>2"] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    assert_eq!(
        tok.decode(&tok.encode("1<eos>2", false).unwrap(), true)
            .unwrap(),
        "12"
    );
    let e = tok.encode("12%", false).unwrap_err().to_string();
    assert!(e.contains("'%'"), "{e}");
    // tokenizer.json written by luspo, read back by luspo and by HF (fixture ids).
    let dir = fixture("charlevel");
    let back = Tok::from_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(
        back.to_json().unwrap(),
        tok.to_json().unwrap(),
        "fixture tokenizer.json is what char_level writes"
    );
    let r = json(&dir.join("reference.json"));
    let texts = r["texts"].as_array().unwrap();
    assert_eq!(texts.len(), 5);
    for ((t, ids), dec) in texts
        .iter()
        .zip(r["ids"].as_array().unwrap())
        .zip(r["decoded"].as_array().unwrap())
    {
        let ids: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
        assert_eq!(tok.encode(t.as_str().unwrap(), false).unwrap(), ids, "{t}");
        assert_eq!(tok.decode(&ids, false).unwrap(), dec.as_str().unwrap());
    }
}

/// Writes tests/fixtures/hf/charlevel/tokenizer.json (run with --ignored, then `make_hf_fixtures.py charlevel`).
#[test]
#[ignore]
fn write_charlevel_fixture() {
    let tok = Tok::char_level(
        "0123456789+-*=?: \nWhatisnwrAe",
        &["<pad>", "<eos>", "<bos>"],
    )
    .unwrap();
    let dir = fixture("charlevel");
    std::fs::create_dir_all(&dir).unwrap();
    tok.save(&dir.join("tokenizer.json")).unwrap();
}

#[test]
fn smollm2_gguf_config_tokenizer_template_and_weights() {
    let Some(path) = smollm2() else { return };
    let ck = io::read_checkpoint(&path).unwrap();
    let c = &ck.config;
    assert_eq!(ck.source, SourceKind::Gguf);
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_kv_heads(),
            c.intermediate_size,
            c.vocab_size
        ),
        (30, 576, 9, 3, 1536, 49152)
    );
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_theta, Some(100000.0));
    let r =
        json(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_reference.json"));
    for s in r["sequences"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(s["ids"].clone()).unwrap();
        assert_eq!(
            ck.tokenizer
                .encode(s["text"].as_str().unwrap(), false)
                .unwrap(),
            ids,
            "{}",
            s["text"]
        );
    }
    let t = ck.chat_template.as_ref().unwrap();
    let chat = t
        .render(
            &[Message::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    assert_eq!(chat, r["chat_text"].as_str().unwrap());
    assert_eq!(
        ck.tokenizer.eos_ids,
        vec![r["eos_token_id"].as_u64().unwrap() as u32]
    );
    // Every GGUF tensor lands on an HF parameter of the right shape.
    let params = hf_params(c);
    let vm = varmap_for(&params);
    io::fill_varmap(&vm, &path, c, &Device::Cpu, DType::F32).unwrap();
    let norm = var(&vm, "model.norm.weight");
    assert!(max_abs_diff(&norm, &Tensor::full(0.5f32, 576, &Device::Cpu).unwrap()) > 0.1);
}

#[test]
fn half_precision_checkpoints_load_as_f32_and_tied_files_may_carry_lm_head() {
    let src = fixture("llama");
    let config = io::read_hf_config(&src).unwrap();
    let params = hf_params(&config);
    let orig = file_tensors(&src);
    for dt in [DType::BF16, DType::F16] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&src, dir.path());
        let half: std::collections::HashMap<String, Tensor> = orig
            .iter()
            .map(|(k, v)| (k.clone(), v.to_dtype(dt).unwrap()))
            .collect();
        candle_core::safetensors::save(&half, dir.path().join("model.safetensors")).unwrap();
        let vm = varmap_for(&params);
        io::fill_varmap(&vm, dir.path(), &config, &Device::Cpu, DType::F32).unwrap();
        for (p, _) in &params {
            let v = var(&vm, p);
            assert_eq!(v.dtype(), DType::F32);
            let want = half[p].to_dtype(DType::F32).unwrap();
            assert_eq!(max_abs_diff(&v, &want), 0.0, "{dt:?} {p}");
        }
    }
    // A tied config whose file still holds lm_head.weight (some exporters write it): the copy is ignored.
    let mut tied = config.clone();
    tied.tie_word_embeddings = true;
    let tp = hf_params(&tied);
    let vm = varmap_for(&tp);
    io::fill_varmap(&vm, &src, &tied, &Device::Cpu, DType::F32).unwrap();
    assert!(!vm.data().lock().unwrap().contains_key("lm_head.weight"));
}
