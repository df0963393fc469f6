//! LoRA adapters: a fresh adapter changes nothing, the adapter gradient (fused and composed paths) matches f64 finite
//! differences and the base gets none, PEFT's own adapters (tests/fixtures/hf/lora_*, made by
//! scripts/make_lora_fixtures.py) give PEFT's log-probs, luspo's adapter directory has PEFT's keys, shapes and
//! config fields, and the merged HF export computes the same function.

mod model_support;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use luspo::model::io;
use luspo::model::lora::{self, LoraConfig};
use model_support::{batch, ids, loss, tiny_config, tiny_model};
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

fn lora(r: usize, alpha: f64, targets: &[&str]) -> LoraConfig {
    LoraConfig {
        r,
        alpha,
        dropout: 0.0,
        targets: targets.iter().map(|s| s.to_string()).collect(),
    }
}

fn logits(model: &luspo::model::Transformer, seq: &[u32]) -> Tensor {
    let ids = Tensor::new(seq, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = Tensor::ones((1, seq.len()), model.dtype(), &Device::Cpu).unwrap();
    model
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

/// Sets every `lora_B` of `varmap` to deterministic nonzero values (B starts at zero, which would hide A's gradient).
fn randomize_b(varmap: &VarMap, dtype: DType) {
    let data = varmap.data().lock().unwrap();
    for (name, var) in data.iter() {
        // from the name, not the (unordered) position in the map
        let i: usize = name.bytes().map(usize::from).sum();
        if name.contains("lora_B") {
            let n = var.as_tensor().elem_count();
            let v: Vec<f64> = (0..n)
                .map(|j| 0.05 * (((j * 13 + i * 7) % 11) as f64 - 5.0))
                .collect();
            let t = Tensor::from_vec(v, var.shape(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            var.set(&t).unwrap();
        }
    }
}

#[test]
fn fresh_adapters_change_nothing_and_are_the_only_parameters() {
    let cfg = tiny_config("llama");
    let (mut model, _base) = tiny_model(&cfg, DType::F32, 3);
    let seq = ids(9, cfg.vocab_size, 1);
    let before = logits(&model, &seq);
    let vm = VarMap::new();
    model
        .attach_lora(&lora(4, 8.0, &lora::TARGETS), &vm, 0)
        .unwrap();
    assert_eq!(
        max_abs(&before, &logits(&model, &seq)),
        0.0,
        "B = 0 at init"
    );
    let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    assert_eq!(names.len(), 2 * 7 * cfg.num_hidden_layers);
    assert!(names
        .iter()
        .all(|n| n.contains(".lora_A.") || n.contains(".lora_B.")));
    // A is PEFT's kaiming-uniform: within ±1/√in and not constant; B is zero.
    let a = vm.data().lock().unwrap()["model.layers.0.mlp.down_proj.lora_A.weight"]
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let bound = 1.0 / (cfg.intermediate_size as f32).sqrt();
    assert!(a.iter().all(|x| x.abs() <= bound));
    assert!(a.iter().map(|x| x.abs()).fold(0f32, f32::max) > 0.5 * bound);
    // The same seed draws the same A.
    let (mut again, _) = tiny_model(&cfg, DType::F32, 3);
    let vm2 = VarMap::new();
    again
        .attach_lora(&lora(4, 8.0, &lora::TARGETS), &vm2, 0)
        .unwrap();
    let a2 = vm2.data().lock().unwrap()["model.layers.0.mlp.down_proj.lora_A.weight"]
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, a2);
}

/// f64 central differences against the backward, on the fused CPU node and on the composed reference ops, for
/// all seven targets and for a subset; the gradient reaches nothing but the adapters.
#[test]
fn adapter_gradient_matches_finite_differences_f64() {
    let eps = 1e-5;
    for (kind, targets) in [
        ("llama", &lora::TARGETS[..]),
        ("qwen2", &["k_proj", "o_proj", "up_proj"][..]),
    ] {
        for composed in [false, true] {
            let cfg = tiny_config(kind);
            let (mut model, base) = tiny_model(&cfg, DType::F64, 23);
            model.set_reference_ops(composed);
            let vm = VarMap::new();
            model.attach_lora(&lora(3, 6.0, targets), &vm, 5).unwrap();
            randomize_b(&vm, DType::F64);
            let b = batch(cfg.vocab_size, DType::F64);
            let grads = loss(&model, &b).backward().unwrap();
            for (name, var) in base.data().lock().unwrap().iter() {
                assert!(
                    grads.get(var.as_tensor()).is_none(),
                    "{kind}: frozen `{name}` got a gradient"
                );
            }
            let data = vm.data().lock().unwrap();
            assert_eq!(data.len(), 2 * targets.len() * cfg.num_hidden_layers);
            let mut checked = 0;
            let mut worst = 0f64;
            for (name, var) in data.iter() {
                let g: Vec<f64> = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{kind}: no gradient for {name}"))
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert!(g.iter().any(|x| *x != 0.0), "{kind} {name}: zero gradient");
                let orig: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                let imax = (0..g.len())
                    .max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs()))
                    .unwrap();
                for idx in [imax, g.len() / 3] {
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
                        "{kind} composed={composed} {name}[{idx}]: numeric {num} analytic {ana} rel err {err}"
                    );
                    worst = worst.max(err);
                    checked += 1;
                }
            }
            eprintln!("{kind} composed={composed}: worst relative error {worst:.2e} over {checked} entries");
        }
    }
}

/// The fused node and the composed ops give the same adapter gradients in f32 on a bigger ragged batch.
#[test]
fn fused_and_composed_adapter_gradients_agree() {
    let cfg = tiny_config("llama");
    let grads_of = |composed: bool| {
        let (mut model, _) = tiny_model(&cfg, DType::F32, 7);
        model.set_reference_ops(composed);
        let vm = VarMap::new();
        model
            .attach_lora(&lora(4, 8.0, &lora::TARGETS), &vm, 1)
            .unwrap();
        randomize_b(&vm, DType::F32);
        let b = batch(cfg.vocab_size, DType::F32);
        let g = loss(&model, &b).backward().unwrap();
        let data = vm.data().lock().unwrap();
        let mut out: Vec<(String, Vec<f32>)> = data
            .iter()
            .map(|(n, v)| {
                let t = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
                (n.clone(), t.to_vec1().unwrap())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    let (f, c) = (grads_of(false), grads_of(true));
    assert_eq!(f.len(), c.len());
    for ((n, a), (_, b)) in f.iter().zip(&c) {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff / scale < 1e-4,
            "{n}: fused vs composed rel diff {}",
            diff / scale
        );
    }
}

/// PEFT's adapters over the tiny random Llama: luspo's log-probs within 1e-4 of PEFT's float64 ones, through the
/// training forward, the no-grad forward and the cached generation forward.
#[test]
fn peft_adapters_give_peft_logprobs() {
    let base = io::load(&fixture("llama"), &Device::Cpu).unwrap();
    for name in ["lora_all", "lora_qv"] {
        let dir = fixture(name);
        let (cfg, tensors) = lora::read_peft(&dir, DType::F32, &Device::Cpu).unwrap();
        let reference = json(&dir.join("reference.json"));
        assert_eq!(cfg.r as u64, reference["r"].as_u64().unwrap());
        let model = base.model.with_adapters(&cfg, &tensors).unwrap();
        assert_eq!(model.adapter_parameters().len(), tensors.len());
        let mut worst = 0f64;
        for s in reference["sequences"].as_array().unwrap() {
            let seq: Vec<u32> = s["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let want: Vec<f64> = s["logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let lg = logits(&model, &seq);
            let lp = candle_nn::ops::log_softmax(&lg, 2).unwrap();
            let lp: Vec<Vec<f64>> = lp.squeeze(0).unwrap().to_vec2().unwrap();
            for (t, w) in want.iter().enumerate() {
                let got = lp[t][seq[t + 1] as usize];
                worst = worst.max((got - w).abs());
            }
            // The cached (generation) path: last-position logits.
            let n = seq.len();
            let mut cache = luspo::model::KvCache::new(&model, 1, n).unwrap();
            let idt = Tensor::new(&seq[..], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let pos: Vec<u32> = (0..n as u32).collect();
            let pos = Tensor::new(&pos[..], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let km = Tensor::ones((1, n), DType::F32, &Device::Cpu).unwrap();
            let last = model
                .forward_cached(&idt, &pos, &km, &mut cache, true)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let want_last: Vec<f64> = s["last_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            for (a, b) in last.iter().zip(&want_last) {
                worst = worst.max((a - b).abs());
            }
        }
        assert!(worst < 1e-4, "{name}: max |luspo − peft| = {worst:.2e}");
        eprintln!("{name}: max |luspo − peft| = {worst:.2e}");
    }
}

/// luspo's adapter directory: the same tensor keys and shapes as PEFT's for the same adapter, every config field
/// PEFT wrote for the fields luspo writes... and it reads back to the same tensors and config.
#[test]
fn saved_adapter_has_peft_layout_and_round_trips() {
    let base = io::load(&fixture("llama"), &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for name in ["lora_all", "lora_qv"] {
        let dir = fixture(name);
        let (cfg, tensors) = lora::read_peft(&dir, DType::F32, &Device::Cpu).unwrap();
        let model = base.model.with_adapters(&cfg, &tensors).unwrap();
        let out = tmp.path().join(name);
        lora::save_peft(&out, &cfg, &model.adapter_parameters(), "base").unwrap();
        // Same keys with the same shapes as the file PEFT wrote.
        let read = |p: &Path| -> Vec<(String, Vec<usize>)> {
            let bytes = std::fs::read(p.join("adapter_model.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut v: Vec<(String, Vec<usize>)> = st
                .tensors()
                .into_iter()
                .map(|(k, t)| (k, t.shape().to_vec()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(read(&out), read(&dir), "{name}: safetensors keys/shapes");
        // Every field luspo writes is one PEFT writes too, with the same value where it describes the adapter.
        let ours = json(&out.join("adapter_config.json"));
        let peft = json(&dir.join("adapter_config.json"));
        for (k, v) in ours.as_object().unwrap() {
            assert!(peft.get(k).is_some(), "{name}: PEFT's config has no `{k}`");
            if [
                "peft_type",
                "task_type",
                "r",
                "lora_alpha",
                "lora_dropout",
                "bias",
                "use_rslora",
                "use_dora",
                "fan_in_fan_out",
            ]
            .contains(&k.as_str())
            {
                assert_eq!(v, &peft[k], "{name}: `{k}`");
            }
        }
        let mut t_ours: Vec<String> =
            serde_json::from_value(ours["target_modules"].clone()).unwrap();
        let mut t_peft: Vec<String> =
            serde_json::from_value(peft["target_modules"].clone()).unwrap();
        t_ours.sort();
        t_peft.sort();
        assert_eq!(t_ours, t_peft);
        let (cfg2, tensors2) = lora::read_peft(&out, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(cfg2.r, cfg.r);
        assert_eq!(cfg2.alpha, cfg.alpha);
        assert_eq!(tensors2.len(), tensors.len());
        for (k, t) in &tensors {
            assert_eq!(
                max_abs(
                    &t.to_dtype(DType::F64).unwrap(),
                    &tensors2[k].to_dtype(DType::F64).unwrap()
                ),
                0.0,
                "{k}"
            );
        }
    }
}

/// The merged HF export (`W + (alpha/r)·B·A`) loads as a plain model with the adapter model's logits.
#[test]
fn merged_export_equals_the_adapter_model() {
    let mut m = io::load(&fixture("llama"), &Device::Cpu).unwrap();
    let (cfg, tensors) = lora::read_peft(&fixture("lora_all"), DType::F32, &Device::Cpu).unwrap();
    m.model = m.model.with_adapters(&cfg, &tensors).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    io::save_hf(tmp.path(), &m).unwrap();
    let merged = io::load(tmp.path(), &Device::Cpu).unwrap();
    assert!(merged.model.lora().is_none());
    let seq = ids(12, m.config.vocab_size, 4);
    let d = max_abs(&logits(&m.model, &seq), &logits(&merged.model, &seq));
    assert!(d < 1e-4, "merged vs adapter logits differ by {d:.2e}");
    // and the merge is not a no-op: the base model's logits differ
    let plain = io::load(&fixture("llama"), &Device::Cpu).unwrap();
    assert!(max_abs(&logits(&plain.model, &seq), &logits(&merged.model, &seq)) > 1e-2);
}

#[test]
fn bad_lora_settings_are_named() {
    let e = lora(4, 8.0, &["q_proj"]);
    let mut d = e.clone();
    d.dropout = 0.1;
    let msg = d.validate("model.lora").unwrap_err().to_string();
    assert!(
        msg.contains("model.lora.dropout") && msg.contains("not implemented"),
        "{msg}"
    );
    let mut t = e.clone();
    t.targets = vec!["qkv".into()];
    let msg = t.validate("model.lora").unwrap_err().to_string();
    assert!(
        msg.contains("model.lora.targets") && msg.contains("qkv"),
        "{msg}"
    );
    let mut a = e.clone();
    a.alpha = 0.0;
    assert!(a.validate("model.lora").is_err());
    // an unknown key of the table is an error naming it
    let err = luspo::train::config::RunConfig::load(None, &["model.lora.rank=4".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("rank"), "{err}");
}

/// Writes an adapter with luspo's writer to `$LUSPO_LORA_CHECK` (PEFT's `lora_all` with B halved) and prints
/// luspo's log-probs of the first reference sequence, for `scripts/make_lora_fixtures.py check DIR`: PEFT must load
/// the directory and give the same numbers.
#[test]
#[ignore]
fn write_adapter_for_python_check() {
    let out = PathBuf::from(std::env::var("LUSPO_LORA_CHECK").expect("set LUSPO_LORA_CHECK"));
    let base = io::load(&fixture("llama"), &Device::Cpu).unwrap();
    let (cfg, mut tensors) =
        lora::read_peft(&fixture("lora_all"), DType::F32, &Device::Cpu).unwrap();
    for (k, t) in tensors.iter_mut() {
        if k.contains("lora_B") {
            *t = (&*t * 0.5).unwrap();
        }
    }
    let model = base.model.with_adapters(&cfg, &tensors).unwrap();
    lora::save_peft(
        &out,
        &cfg,
        &model.adapter_parameters(),
        "tests/fixtures/hf/llama",
    )
    .unwrap();
    let reference = json(&fixture("lora_all").join("reference.json"));
    let seq: Vec<u32> = reference["sequences"][0]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let lp = candle_nn::ops::log_softmax(&logits(&model, &seq), 2).unwrap();
    let lp: Vec<Vec<f64>> = lp.squeeze(0).unwrap().to_vec2().unwrap();
    let got: Vec<f64> = (0..seq.len() - 1)
        .map(|t| lp[t][seq[t + 1] as usize])
        .collect();
    println!("{}", serde_json::json!({ "luspo": got }));
}
