//! LoRA through the RL loop on the tiny model: only adapters in the checkpoint and in AdamW, the base never moves, a
//! run stopped between checkpoints and resumed equals the uninterrupted one bitwise, the KL reference shares the
//! frozen base, and the run ends with a merged HF directory and a PEFT adapter directory that agree.

use candle_core::{DType, Device, Tensor};
use luspo::model::io;
use luspo::model::lora;
use luspo::train::checkpoint;
use luspo::train::config::RunConfig;
use luspo::train::{train, Outcome};
use std::path::Path;

mod common;

use common::{opts, untimed};

fn cfg_with(cache: &Path, extra: &[&str]) -> RunConfig {
    let mut sets = common::tiny_model_sets();
    sets.extend(
        [
            "task.eval_size=8",
            "sft.steps=100",
            "sft.batch_size=16",
            "sft.lr=1e-2",
            "rollout.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=12",
            "train.steps=4",
            "eval.every=2",
            "optim.lr=3e-2",
            // With the default init_std 0.02 a frozen LM head behind a frozen unit-weight final norm bounds every
            // logit by about 0.02·d = 0.64, so no adapter can make the tiny model confident; 0.3 lifts that bound.
            "model.init_std=0.3",
            "model.lora.r=4",
            "model.lora.alpha=8.0",
            "objective.kl_beta=0.05",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    sets.push(format!("sft.cache_dir={:?}", cache.display().to_string()));
    sets.extend(extra.iter().map(|s| s.to_string()));
    RunConfig::load(None, &sets).unwrap()
}

fn tensors(p: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
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
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn lora_trains_resumes_exactly_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cfg = cfg_with(&cache, &[]);
    let a = tmp.path().join("a");
    assert!(matches!(
        train(&cfg, &opts(&a, false)).unwrap(),
        Outcome::Finished(_)
    ));
    let ma = untimed(&a);
    assert_eq!(ma.len(), 4);
    assert!(
        ma.iter().any(|m| m.grad_norm > 0.0),
        "the adapters learned something"
    );
    assert!(ma.iter().all(|m| m.kl.is_some()), "the KL term ran");

    // Checkpoint and optimizer hold the adapters only: 2 tensors × 7 targets × 1 layer (+ moments).
    let (_, ck) = checkpoint::latest(&a).unwrap().unwrap();
    let model = tensors(&ck.join("model.safetensors"));
    assert_eq!(model.len(), 14);
    assert!(model
        .keys()
        .all(|k| k.contains(".lora_A.") || k.contains(".lora_B.")));
    let opt = tensors(&ck.join("optimizer.safetensors"));
    // the step counter `t`, then the first and second moments of each adapter tensor
    assert_eq!(opt.len(), 1 + 2 * 14);
    assert!(
        opt.keys().all(|k| k == "t" || k.contains("lora_")),
        "optimizer state beyond the adapters: {:?}",
        opt.keys().collect::<Vec<_>>()
    );
    let b_moved = model
        .iter()
        .filter(|(k, _)| k.contains("lora_B"))
        .any(|(_, t)| {
            t.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        });
    assert!(b_moved, "B left zero");
    // The KL reference file is the warm-started adapters, not a second base.
    let reference = tensors(&a.join("reference.safetensors"));
    assert_eq!(reference.len(), 14);

    // Exports: merged HF directory and PEFT adapter; the merged model equals base + adapter.
    let fin = io::load(&a.join("final"), &Device::Cpu).unwrap();
    let (lcfg, ad) = lora::read_peft(&a.join("adapter"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!((lcfg.r, lcfg.alpha), (4, 8.0));
    for (k, t) in &ad {
        assert_eq!(max_abs(t, &model[k]), 0.0, "{k}: adapter dir vs checkpoint");
    }
    // The base of the run is the tiny model initialised from the seed: rebuild it and apply the adapter.
    let boot = luspo::train::bootstrap::Bootstrap::new(&cfg).unwrap();
    let with = boot.policy.model().with_adapters(&lcfg, &ad).unwrap();
    let seq: Vec<u32> = vec![2, 3, 4, 2, 3, 3, 4];
    let ids = Tensor::new(&seq[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = Tensor::ones((1, seq.len()), DType::F32, &Device::Cpu).unwrap();
    let l1 = with.forward_no_grad(&ids, &mask).unwrap();
    let l2 = fin.model.forward_no_grad(&ids, &mask).unwrap();
    assert!(max_abs(&l1, &l2) < 1e-4, "merged export vs base + adapter");

    // Stopped after 3 steps with checkpoints every 2, then resumed: the same run, bit for bit.
    let c = tmp.path().join("c");
    let cfg_c = cfg_with(&cache, &["train.stop_after_steps=3", "checkpoint.every=2"]);
    assert!(matches!(
        train(&cfg_c, &opts(&c, false)).unwrap(),
        Outcome::Stopped(3)
    ));
    let cfg_r =
        RunConfig::load_run(&c.join("config.toml"), &["train.stop_after_steps=0".into()]).unwrap();
    assert!(matches!(
        train(&cfg_r, &opts(&c, true)).unwrap(),
        Outcome::Finished(_)
    ));
    let mc = untimed(&c);
    assert_eq!(
        ma, mc,
        "resumed LoRA run differs from the uninterrupted one"
    );
    let (_, ckc) = checkpoint::latest(&c).unwrap().unwrap();
    let model_c = tensors(&ckc.join("model.safetensors"));
    let opt_c = tensors(&ckc.join("optimizer.safetensors"));
    for (k, t) in &model {
        assert_eq!(max_abs(t, &model_c[k]), 0.0, "{k}");
    }
    for (k, t) in &opt {
        assert_eq!(max_abs(t, &opt_c[k]), 0.0, "optimizer {k}");
    }
}

#[test]
fn lora_dropout_is_rejected_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = cfg_with(&tmp.path().join("cache"), &["model.lora.dropout=0.1"]);
    let err = train(&cfg, &opts(&tmp.path().join("x"), false))
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(msg.contains("model.lora.dropout"), "{msg}");
    assert!(!tmp.path().join("x").join("metrics.jsonl").exists());
}
