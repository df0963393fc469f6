//! The GGUF path without SmolLM2: the tiny llama fixture written as a llama.cpp-style GGUF (q/k rows permuted
//! for interleaved RoPE, llama.cpp tensor names, BPE tokenizer metadata) must load to the same model as the HF dir.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use luspo::model::io::{self, SourceKind};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// llama.cpp's tensor name for an HF name (the inverse of the loader's mapping, written out independently).
fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (part, kind) = rest.rsplit_once('.').unwrap();
    let g = match part {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        p => panic!("{p}"),
    };
    format!("blk.{layer}.{g}.{kind}")
}

/// llama.cpp's convert permute, as in convert_hf_to_gguf.py: reshape(n_head, 2, hd/2, in).swapaxes(1, 2).
fn permute(w: &Tensor, n_head: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    let v: Vec<Vec<f32>> = w.to_vec2().unwrap();
    let half = rows / n_head / 2;
    let mut out = vec![vec![0f32; cols]; rows];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                // new index (h, i, j) <- old index (h, j, i)
                out[h * 2 * half + i * 2 + j] = v[h * 2 * half + j * half + i].clone();
            }
        }
    }
    Tensor::new(out, &Device::Cpu).unwrap()
}

/// Writes the llama fixture as GGUF with the given architecture name.
fn write_gguf(path: &Path, arch: &str) {
    use gguf_file::Value as V;
    let dir = fixture("llama");
    let cfg = json(&dir.join("config.json"));
    let tok = json(&dir.join("tokenizer.json"));
    let u = |k: &str| cfg[k].as_u64().unwrap() as u32;
    let mut vocab: Vec<(u64, String)> = tok["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (v.as_u64().unwrap(), k.clone()))
        .collect();
    vocab.sort();
    let tokens: Vec<V> = vocab.iter().map(|(_, t)| V::String(t.clone())).collect();
    assert_eq!(tokens.len(), u("vocab_size") as usize);
    let merges: Vec<V> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => V::String(s.clone()),
            Value::Array(p) => V::String(format!(
                "{} {}",
                p[0].as_str().unwrap(),
                p[1].as_str().unwrap()
            )),
            _ => panic!(),
        })
        .collect();
    let types: Vec<V> = vocab
        .iter()
        .map(|(_, t)| {
            V::I32(if t.starts_with('<') && t.ends_with('>') {
                3
            } else {
                1
            })
        })
        .collect();
    let k = |s: &str| format!("{arch}.{s}");
    let md: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(arch.into())),
        (k("embedding_length"), V::U32(u("hidden_size"))),
        (k("feed_forward_length"), V::U32(u("intermediate_size"))),
        (k("block_count"), V::U32(u("num_hidden_layers"))),
        (k("attention.head_count"), V::U32(u("num_attention_heads"))),
        (
            k("attention.head_count_kv"),
            V::U32(u("num_key_value_heads")),
        ),
        (k("attention.layer_norm_rms_epsilon"), V::F32(1e-6)),
        (k("rope.freq_base"), V::F32(10000.0)),
        (k("context_length"), V::U32(u("max_position_embeddings"))),
        ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), V::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), V::Array(tokens)),
        ("tokenizer.ggml.merges".into(), V::Array(merges)),
        ("tokenizer.ggml.token_type".into(), V::Array(types)),
        (
            "tokenizer.ggml.bos_token_id".into(),
            V::U32(u("bos_token_id")),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            V::U32(u("eos_token_id")),
        ),
        ("tokenizer.ggml.add_bos_token".into(), V::Bool(true)),
        (
            "tokenizer.chat_template".into(),
            V::String(std::fs::read_to_string(dir.join("chat_template.jinja")).unwrap()),
        ),
    ];
    let st = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let (nh, nkv) = (
        u("num_attention_heads") as usize,
        u("num_key_value_heads") as usize,
    );
    let mut qts: Vec<(String, QTensor)> = vec![];
    for (name, t) in &st {
        let t = if name.contains("q_proj") {
            permute(t, nh)
        } else if name.contains("k_proj") {
            permute(t, nkv)
        } else {
            t.clone()
        };
        qts.push((
            gguf_name(name),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    let mdr: Vec<(&str, &V)> = md.iter().map(|(a, b)| (a.as_str(), b)).collect();
    let tr: Vec<(&str, &QTensor)> = qts.iter().map(|(a, b)| (a.as_str(), b)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &mdr, &tr).unwrap();
}

#[test]
fn gguf_written_from_hf_fixture_loads_to_the_same_weights_and_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tmp.path().join("tiny.gguf");
    write_gguf(&g, "llama");
    let ck = io::read_checkpoint(&g).unwrap();
    assert_eq!(ck.source, SourceKind::Gguf);
    let hf = io::read_checkpoint(&fixture("llama")).unwrap();
    let (a, b) = (&ck.config, &hf.config);
    assert_eq!(
        (
            a.vocab_size,
            a.hidden_size,
            a.intermediate_size,
            a.num_hidden_layers,
            a.num_kv_heads(),
            a.head_dim()
        ),
        (
            b.vocab_size,
            b.hidden_size,
            b.intermediate_size,
            b.num_hidden_layers,
            b.num_kv_heads(),
            b.head_dim()
        )
    );
    assert!(!a.tie_word_embeddings);
    assert_eq!(a.rms_norm_eps, 1e-6);
    // Weights: every HF tensor comes back, q/k un-permuted exactly.
    let vm = candle_nn::VarMap::new();
    let st =
        candle_core::safetensors::load(fixture("llama").join("model.safetensors"), &Device::Cpu)
            .unwrap();
    for (n, t) in &st {
        vm.get(
            t.dims(),
            n,
            candle_nn::Init::Const(0.),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
    }
    io::fill_varmap(&vm, &g, a, &Device::Cpu, DType::F32).unwrap();
    let data = vm.data().lock().unwrap();
    for (n, t) in &st {
        let d = (data[n].as_tensor() - t)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{n}");
    }
    // Tokenizer (incl. the add_prefix_space fix and the BOS post-processor) and template as in the HF dir.
    let r = json(&fixture("llama").join("reference.json"));
    for s in r["sequences"].as_array().unwrap() {
        let want: Vec<u32> = serde_json::from_value(s["ids"].clone()).unwrap();
        assert_eq!(
            ck.tokenizer
                .encode(s["text"].as_str().unwrap(), true)
                .unwrap(),
            want,
            "{}",
            s["text"]
        );
    }
    assert_eq!(
        (ck.tokenizer.bos_id, ck.tokenizer.eos_ids.clone()),
        (Some(3), vec![2])
    );
    let m = [luspo::model::chat::Message::new("user", "Hi")];
    assert_eq!(
        ck.chat_template.unwrap().render(&m, true).unwrap(),
        hf.chat_template.unwrap().render(&m, true).unwrap()
    );
}

#[test]
fn gguf_with_another_architecture_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tmp.path().join("falcon.gguf");
    write_gguf(&g, "falcon");
    let e = io::read_checkpoint(&g).err().unwrap().to_string();
    assert!(
        e.contains("falcon") && e.contains("falcon.gguf") && !e.contains('\n'),
        "{e}"
    );
}
