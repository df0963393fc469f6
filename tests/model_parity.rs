//! The training forward is padding-invariant, the cached path agrees with it, and scoring is batch-invariant.
#![allow(clippy::needless_range_loop)]

mod model_support;

use candle_core::{DType, Device, Tensor, D};
use luspo::model::{KvCache, Transformer};
use luspo::rollout::{score, token_logprobs, Batch};
use model_support::{ids, tiny_config, tiny_model};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Log-probs of each row's next tokens from one forward over a padded batch: `pad_left` chooses left/right padding.
fn padded_logprobs(model: &Transformer, seqs: &[Vec<u32>], pad_left: bool) -> Vec<Vec<f32>> {
    let t = seqs.iter().map(Vec::len).max().unwrap();
    let b = seqs.len();
    let mut idv = vec![0u32; b * t];
    let mut mv = vec![0f32; b * t];
    let mut off = vec![0; b];
    for (i, s) in seqs.iter().enumerate() {
        off[i] = if pad_left { t - s.len() } else { 0 };
        for (j, &id) in s.iter().enumerate() {
            idv[i * t + off[i] + j] = id;
            mv[i * t + off[i] + j] = 1.0;
        }
    }
    let idt = Tensor::from_vec(idv, (b, t), &Device::Cpu).unwrap();
    let mt = Tensor::from_vec(mv, (b, t), &Device::Cpu)
        .unwrap()
        .to_dtype(model.dtype())
        .unwrap();
    let logits = model.forward(&idt, &mt).unwrap();
    let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let lsm: Vec<Vec<Vec<f32>>> = lsm.to_vec3().unwrap();
    seqs.iter()
        .enumerate()
        .map(|(i, s)| {
            (0..s.len() - 1)
                .map(|j| lsm[i][off[i] + j][s[j + 1] as usize])
                .collect()
        })
        .collect()
}

fn seqs(vocab: usize) -> Vec<Vec<u32>> {
    vec![
        ids(9, vocab, 1),
        ids(4, vocab, 2),
        ids(13, vocab, 3),
        ids(2, vocab, 4),
    ]
}

#[test]
fn padding_invariance_left_right_alone() {
    for (kind, dtype, tol) in [
        ("llama", DType::F32, 2e-5),
        ("qwen2", DType::F32, 2e-5),
        ("llama_bias", DType::F64, 1e-12),
    ] {
        let cfg = tiny_config(kind);
        let (model, _) = tiny_model(&cfg, dtype, 3);
        let s = seqs(cfg.vocab_size);
        let left = padded_logprobs(&model, &s, true);
        let right = padded_logprobs(&model, &s, false);
        for (i, row) in s.iter().enumerate() {
            let alone = padded_logprobs(&model, std::slice::from_ref(row), false);
            assert!(
                max_abs_diff(&left[i], &alone[0]) < tol,
                "{kind} row {i}: left vs alone"
            );
            assert!(
                max_abs_diff(&right[i], &alone[0]) < tol,
                "{kind} row {i}: right vs alone"
            );
        }
        // score() batches rows by length; same numbers as alone, and as token_logprobs
        let scored = score(&model, &s, 3).unwrap();
        for (i, row) in s.iter().enumerate() {
            assert_eq!(scored[i].len(), row.len() - 1);
            assert!(
                max_abs_diff(&scored[i], &right[i]) < tol,
                "{kind} row {i}: score"
            );
        }
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = s
            .iter()
            .map(|r| (r[..1].to_vec(), r[1..].to_vec()))
            .collect();
        let b = Batch::from_pairs(&pairs, 0, dtype, &Device::Cpu).unwrap();
        let (lp, ent) = token_logprobs(&model, &b).unwrap();
        let lp: Vec<Vec<f32>> = lp.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
        let ent: Vec<Vec<f32>> = ent.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
        let rm: Vec<Vec<f32>> = b
            .response_mask
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (i, row) in s.iter().enumerate() {
            assert!(
                max_abs_diff(&lp[i][..row.len() - 1], &right[i]) < tol,
                "{kind} row {i}: token_logprobs"
            );
            for j in 0..lp[i].len() {
                assert_eq!(
                    rm[i][j],
                    if j < row.len() - 1 { 1.0 } else { 0.0 },
                    "response mask"
                );
                let e = ent[i][j];
                assert!(
                    e.is_finite() && e >= -1e-5 && e <= (cfg.vocab_size as f32).ln() + 1e-4,
                    "entropy {e}"
                );
            }
        }
    }
}

#[test]
fn entropy_matches_hand_computation() {
    let cfg = tiny_config("llama");
    let (model, _) = tiny_model(&cfg, DType::F64, 8);
    let s = ids(6, cfg.vocab_size, 9);
    let b = Batch::from_pairs(
        &[(s[..2].to_vec(), s[2..].to_vec())],
        0,
        DType::F64,
        &Device::Cpu,
    )
    .unwrap();
    let (lp, ent) = token_logprobs(&model, &b).unwrap();
    let lp: Vec<f64> = lp.squeeze(0).unwrap().to_vec1().unwrap();
    let ent: Vec<f64> = ent.squeeze(0).unwrap().to_vec1().unwrap();
    let logits: Vec<Vec<f64>> = model
        .forward(&b.ids, &b.attention_mask)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    for t in 0..5 {
        let row = &logits[t];
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = row.iter().map(|x| (x - m).exp()).sum();
        let p: Vec<f64> = row.iter().map(|x| (x - m).exp() / z).collect();
        let h: f64 = -p.iter().map(|q| q * q.ln()).sum::<f64>();
        assert!((h - ent[t]).abs() < 1e-12, "entropy at {t}");
        assert!(
            (p[s[t + 1] as usize].ln() - lp[t]).abs() < 1e-12,
            "logp at {t}"
        );
    }
}

#[test]
fn batch_from_pairs_layout() {
    let b = Batch::from_pairs(
        &[(vec![5, 6], vec![7]), (vec![1], vec![2, 3, 4])],
        9,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let ids: Vec<Vec<u32>> = b.ids.to_vec2().unwrap();
    assert_eq!(ids, vec![vec![5, 6, 7, 9], vec![1, 2, 3, 4]]);
    let am: Vec<Vec<f32>> = b.attention_mask.to_vec2().unwrap();
    assert_eq!(am, vec![vec![1., 1., 1., 0.], vec![1., 1., 1., 1.]]);
    let rm: Vec<Vec<f32>> = b.response_mask.to_vec2().unwrap();
    assert_eq!(rm, vec![vec![0., 1., 0.], vec![1., 1., 1.]]);
    assert!(Batch::from_pairs(&[(vec![], vec![1])], 0, DType::F32, &Device::Cpu).is_err());
}

/// Prefill a left-padded ragged batch, then decode token by token: logits equal the full training forward.
#[test]
fn cache_matches_full_forward() {
    for (kind, dtype, tol) in [
        ("llama", DType::F32, 1e-4),
        ("qwen2", DType::F32, 1e-4),
        ("llama_bias", DType::F64, 1e-10),
    ] {
        let cfg = tiny_config(kind);
        let (model, _) = tiny_model(&cfg, dtype, 4);
        let v = cfg.vocab_size;
        let prompts = [ids(5, v, 11), ids(2, v, 12), ids(7, v, 13)];
        let conts = [ids(4, v, 21), ids(4, v, 22), ids(4, v, 23)];
        let b = prompts.len();
        let lp = 7;
        let total = lp + 4;
        // full left-padded sequences
        let mut idv = vec![0u32; b * total];
        let mut mv = vec![0f32; b * total];
        for i in 0..b {
            let off = lp - prompts[i].len();
            for (j, &id) in prompts[i].iter().chain(conts[i].iter()).enumerate() {
                idv[i * total + off + j] = id;
                mv[i * total + off + j] = 1.0;
            }
        }
        let idt = Tensor::from_vec(idv.clone(), (b, total), &Device::Cpu).unwrap();
        let mt = Tensor::from_vec(mv.clone(), (b, total), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let full: Vec<Vec<Vec<f32>>> = model
            .forward(&idt, &mt)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec3()
            .unwrap();
        // cached: prefill prompts, then one token at a time
        let mut cache = KvCache::new(&model, b, total).unwrap();
        let pos_of = |i: usize, slot: usize| -> u32 {
            let off = lp - prompts[i].len();
            slot.saturating_sub(off) as u32
        };
        let pre_ids = idt.narrow(1, 0, lp).unwrap();
        let pre_pos: Vec<u32> = (0..b)
            .flat_map(|i| (0..lp).map(move |s| (i, s)))
            .map(|(i, s)| pos_of(i, s))
            .collect();
        let pre_pos = Tensor::from_vec(pre_pos, (b, lp), &Device::Cpu).unwrap();
        let pre_mask = mt.narrow(1, 0, lp).unwrap();
        let pre = model
            .forward_cached(&pre_ids, &pre_pos, &pre_mask, &mut cache, false)
            .unwrap();
        let pre: Vec<Vec<Vec<f32>>> = pre.to_dtype(DType::F32).unwrap().to_vec3().unwrap();
        for i in 0..b {
            for s in lp - prompts[i].len()..lp {
                assert!(
                    max_abs_diff(&pre[i][s], &full[i][s]) < tol,
                    "{kind} prefill row {i} slot {s}"
                );
            }
        }
        for s in lp..total {
            let step_ids = idt.narrow(1, s, 1).unwrap();
            let step_pos: Vec<u32> = (0..b).map(|i| pos_of(i, s)).collect();
            let step_pos = Tensor::from_vec(step_pos, (b, 1), &Device::Cpu).unwrap();
            let key_mask = mt.narrow(1, 0, s + 1).unwrap();
            let out = model
                .forward_cached(&step_ids, &step_pos, &key_mask, &mut cache, true)
                .unwrap();
            let out: Vec<Vec<Vec<f32>>> = out.to_dtype(DType::F32).unwrap().to_vec3().unwrap();
            for i in 0..b {
                assert!(
                    max_abs_diff(&out[i][0], &full[i][s]) < tol,
                    "{kind} decode row {i} slot {s}"
                );
            }
        }
        assert_eq!(cache.len(), total);
        // overflowing the cache is an error, not a panic
        let e = model.forward_cached(
            &idt.narrow(1, 0, 1).unwrap(),
            &Tensor::zeros((b, 1), DType::U32, &Device::Cpu).unwrap(),
            &mt,
            &mut cache,
            true,
        );
        assert!(e.is_err());
    }
}

#[test]
fn input_errors() {
    let cfg = tiny_config("llama");
    let (model, _) = tiny_model(&cfg, DType::F32, 1);
    let bad = Tensor::from_vec(vec![1u32, 999], (1, 2), &Device::Cpu).unwrap();
    let m = Tensor::ones((1, 2), DType::F32, &Device::Cpu).unwrap();
    let e = model.forward(&bad, &m).err().unwrap().to_string();
    assert!(e.contains("999") && e.contains("vocab_size"), "{e}");
    let ok = Tensor::from_vec(vec![1u32, 2], (1, 2), &Device::Cpu).unwrap();
    let m3 = Tensor::ones((1, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(model
        .forward(&ok, &m3)
        .err()
        .unwrap()
        .to_string()
        .contains("attention_mask"));
    let mut c = tiny_config("llama");
    c.rope_scaling = Some(serde_json::json!({"rope_type": "weird", "factor": 2.0}));
    let e = Transformer::new(
        &c,
        candle_nn::VarBuilder::from_varmap(&candle_nn::VarMap::new(), DType::F32, &Device::Cpu),
    );
    assert!(e.err().unwrap().to_string().contains("weird"));
}
