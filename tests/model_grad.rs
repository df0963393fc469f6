//! Gradients of the training path: every parameter gets one, and they match f64 central finite differences.

mod model_support;

use candle_core::{DType, Device, Tensor};
use luspo::rollout::{response_token_logprobs, token_logprobs, Batch};
use model_support::{batch, ids, loss, loss_with, tiny_config, tiny_model};

#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    for kind in ["llama", "llama_tied", "llama_bias", "qwen2"] {
        let cfg = tiny_config(kind);
        let (model, varmap) = tiny_model(&cfg, DType::F32, 11);
        let b = batch(cfg.vocab_size, DType::F32);
        let grads = loss(&model, &b).backward().unwrap();
        let data = varmap.data().lock().unwrap();
        let names: Vec<String> = model
            .named_parameters()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            data.len(),
            names.len(),
            "{kind}: VarMap holds exactly the model's parameters"
        );
        for (name, var) in data.iter() {
            assert!(names.contains(name), "{kind}: unexpected var {name}");
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{kind}: {name} has no gradient"));
            let gmax = g
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                gmax > 0.0 && gmax.is_finite(),
                "{kind}: {name} gradient max {gmax}"
            );
        }
    }
}

#[test]
fn hf_parameter_names() {
    let cfg = tiny_config("qwen2");
    let (model, _) = tiny_model(&cfg, DType::F32, 1);
    let names: Vec<String> = model
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for n in [
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_proj.bias",
        "model.layers.0.self_attn.k_proj.bias",
        "model.layers.0.self_attn.v_proj.bias",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.1.post_attention_layernorm.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
    ] {
        assert!(names.contains(&n.to_string()), "missing {n}");
    }
    assert!(
        !names
            .iter()
            .any(|n| n == "lm_head.weight" || n.ends_with("o_proj.bias")),
        "{names:?}"
    );
    let cfg = tiny_config("llama");
    let (model, _) = tiny_model(&cfg, DType::F32, 1);
    let names: Vec<String> = model
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"lm_head.weight".to_string()));
    assert!(!names.iter().any(|n| n.ends_with(".bias")));
    // shapes as HF: q (heads*hd, d), k (kv*hd, d)
    let p: std::collections::HashMap<_, _> = model.named_parameters().into_iter().collect();
    assert_eq!(
        p["model.layers.0.self_attn.q_proj.weight"].dims(),
        &[16, 16]
    );
    assert_eq!(p["model.layers.0.self_attn.k_proj.weight"].dims(), &[8, 16]);
    assert_eq!(p["model.layers.0.mlp.gate_proj.weight"].dims(), &[24, 16]);
    assert_eq!(p["model.layers.0.mlp.down_proj.weight"].dims(), &[16, 24]);
}

#[test]
fn seeded_init_is_reproducible_and_hf_like() {
    let cfg = tiny_config("llama_bias");
    let (a, _) = tiny_model(&cfg, DType::F32, 5);
    let (b, _) = tiny_model(&cfg, DType::F32, 5);
    let (c, _) = tiny_model(&cfg, DType::F32, 6);
    for (((name, x), (_, y)), (_, z)) in a
        .named_parameters()
        .into_iter()
        .zip(b.named_parameters())
        .zip(c.named_parameters())
    {
        let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let z: Vec<f32> = z.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(x, y, "{name}: same seed, same values");
        if name.ends_with("norm.weight") {
            assert!(x.iter().all(|&v| v == 1.0), "{name} is ones");
        } else if name.ends_with(".bias") {
            assert!(x.iter().all(|&v| v == 0.0), "{name} is zeros");
        } else {
            assert_ne!(x, z, "{name}: other seed, other values");
            let n = x.len() as f64;
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
            let sd = (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            assert!(
                (sd - 0.2).abs() < 0.2 * 0.25,
                "{name}: std {sd} vs initializer_range 0.2"
            );
        }
    }
}

#[test]
fn finite_differences_f64() {
    let eps = 1e-5;
    for kind in ["llama", "qwen2", "llama_bias"] {
        let cfg = tiny_config(kind);
        let (model, varmap) = tiny_model(&cfg, DType::F64, 23);
        let b = batch(cfg.vocab_size, DType::F64);
        let grads = loss(&model, &b).backward().unwrap();
        let data = varmap.data().lock().unwrap();
        let mut worst = 0f64;
        let mut checked = 0;
        for (name, var) in data.iter() {
            // one layer's worth of every tensor kind, plus the globals
            if name.contains("layers.1.") {
                continue;
            }
            let g: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let orig: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            // the entry with the largest gradient and two fixed others
            let imax = (0..g.len())
                .max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs()))
                .unwrap();
            for idx in [imax, g.len() / 3, (g.len() * 5) / 7] {
                let at = |delta: f64| {
                    let mut v = orig.clone();
                    v[idx] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss(&model, &b).to_scalar::<f64>().unwrap()
                };
                let num = (at(eps) - at(-eps)) / (2.0 * eps);
                var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let ana = g[idx];
                let err = (num - ana).abs() / (num.abs().max(ana.abs()) + 1e-6);
                assert!(
                    err < 1e-5,
                    "{kind} {name}[{idx}]: numeric {num} analytic {ana} rel err {err}"
                );
                worst = worst.max(err);
                checked += 1;
            }
        }
        assert!(checked >= 30, "{kind}: checked {checked} entries");
        eprintln!("{kind}: worst relative error {worst:.2e} over {checked} entries");
    }
}

/// A batch big enough that the fused kernels split their rows into several parallel blocks (6 rows of up to 70 tokens).
fn big_batch(vocab: usize, dtype: DType) -> Batch {
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..6)
        .map(|i| {
            (
                ids(10 + 3 * i, vocab, 50 + i as u64),
                ids(60 - 5 * i, vocab, 60 + i as u64),
            )
        })
        .collect();
    Batch::from_pairs(&pairs, 0, dtype, &Device::Cpu).unwrap()
}

/// The fused CPU training path (one node per decoder layer) and the composed candle reference give the same loss
/// and gradients: llama with GQA, llama_tied without, llama_bias with q/k/v, o_proj and MLP biases and one kv head,
/// qwen2 with q/k/v biases, and a batch large enough to split every kernel into several parallel blocks.
#[test]
fn fused_ops_match_composed_reference() {
    for (kind, big) in [
        ("llama", false),
        ("llama_tied", false),
        ("llama_bias", false),
        ("qwen2", false),
        ("llama", true),
    ] {
        let cfg = tiny_config(kind);
        let (mut model, varmap) = tiny_model(&cfg, DType::F64, 31);
        let b = if big {
            big_batch(cfg.vocab_size, DType::F64)
        } else {
            batch(cfg.vocab_size, DType::F64)
        };
        let l1 = loss(&model, &b);
        let g1 = l1.backward().unwrap();
        model.set_reference_ops(true);
        let l2 = loss(&model, &b);
        let g2 = l2.backward().unwrap();
        let (l1, l2) = (
            l1.to_scalar::<f64>().unwrap(),
            l2.to_scalar::<f64>().unwrap(),
        );
        assert!(
            (l1 - l2).abs() < 1e-10 * l1.abs().max(1.0),
            "{kind}: loss {l1} vs {l2}"
        );
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let a: Vec<f64> = g1
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let c: Vec<f64> = g2
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let scale = c.iter().fold(0f64, |m, x| m.max(x.abs()));
            for (x, y) in a.iter().zip(&c) {
                assert!(
                    (x - y).abs() <= 1e-9 * scale + 1e-14,
                    "{kind} {name}: fused {x} vs composed {y}"
                );
            }
        }
    }
}

/// The trainers' response-only log-probs equal the all-positions ones at the response positions (0 elsewhere), and
/// a masked loss has the same gradient through either: the prompt and padding rows only skip the LM head.
#[test]
fn response_logprobs_equal_masked_token_logprobs() {
    for kind in ["llama", "llama_tied", "qwen2"] {
        let cfg = tiny_config(kind);
        let (model, varmap) = tiny_model(&cfg, DType::F64, 41);
        let b = big_batch(cfg.vocab_size, DType::F64);
        let (lp, ent) = token_logprobs(&model, &b).unwrap();
        let (rlp, rent) = response_token_logprobs(&model, &b).unwrap();
        for (all, resp) in [(lp, rlp), (ent, rent)] {
            let masked = (all * &b.response_mask).unwrap();
            let d = (masked - resp).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f64>().unwrap() < 1e-12, "{kind}: values");
        }
        let g1 = loss(&model, &b).backward().unwrap();
        let g2 = loss_with(&model, &b, response_token_logprobs)
            .backward()
            .unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let a = g1.get(var.as_tensor()).unwrap();
            let c = g2.get(var.as_tensor()).unwrap();
            let d = (a - c).unwrap().abs().unwrap().max_all().unwrap();
            assert!(
                d.to_scalar::<f64>().unwrap() < 1e-12,
                "{kind} {name}: gradient"
            );
        }
    }
}
