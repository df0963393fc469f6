//! Generation: greedy equals repeated full forwards, seeded sampling, top-k/top-p, EOS, stop checker, max tokens.

mod model_support;

use candle_core::{DType, Device, Tensor, D};
use luspo::model::Transformer;
use luspo::rollout::{generate, generate_with_stop, sample_token, score, SamplingParams};
use model_support::{ids, tiny_config, tiny_model};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn prompts(vocab: usize) -> Vec<Vec<u32>> {
    vec![
        ids(5, vocab, 1),
        ids(1, vocab, 2),
        ids(8, vocab, 3),
        ids(3, vocab, 4),
    ]
}

/// Greedy continuation of one prompt by repeated full (uncached, unpadded) forwards.
fn greedy_reference(model: &Transformer, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let t = seq.len();
        let idt = Tensor::from_vec(seq.clone(), (1, t), &Device::Cpu).unwrap();
        let m = Tensor::ones((1, t), model.dtype(), &Device::Cpu).unwrap();
        let logits = model
            .forward(&idt, &m)
            .unwrap()
            .narrow(1, t - 1, 1)
            .unwrap();
        let next = logits
            .argmax(D::Minus1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()[0];
        seq.push(next);
    }
    seq[prompt.len()..].to_vec()
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_new_tokens: n,
        ..Default::default()
    }
}

#[test]
fn greedy_equals_repeated_full_forward() {
    for kind in ["llama", "qwen2"] {
        let cfg = tiny_config(kind);
        let (model, _) = tiny_model(&cfg, DType::F32, 7);
        let p = prompts(cfg.vocab_size);
        let out = generate(&model, &p, &greedy(10), &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        for (i, c) in out.iter().enumerate() {
            assert_eq!(c.ids, greedy_reference(&model, &p[i], 10), "{kind} row {i}");
            assert_eq!(c.logprobs.len(), 10);
            assert!(!c.finished, "cut by max_new_tokens");
        }
    }
}

#[test]
fn logprobs_match_score_and_topk1_is_greedy() {
    let cfg = tiny_config("llama_bias");
    let (model, _) = tiny_model(&cfg, DType::F32, 9);
    let p = prompts(cfg.vocab_size);
    let params = SamplingParams {
        temperature: 0.7,
        max_new_tokens: 9,
        ..Default::default()
    };
    let out = generate(&model, &p, &params, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    let seqs: Vec<Vec<u32>> = p
        .iter()
        .zip(&out)
        .map(|(a, c)| a.iter().chain(&c.ids).copied().collect())
        .collect();
    let scored = score(&model, &seqs, 2).unwrap();
    for (i, c) in out.iter().enumerate() {
        let tail = &scored[i][p[i].len() - 1..];
        assert_eq!(tail.len(), c.logprobs.len());
        for (a, b) in tail.iter().zip(&c.logprobs) {
            assert!((a - b).abs() < 1e-4, "row {i}: score {a} vs generate {b}");
        }
    }
    let g = generate(&model, &p, &greedy(9), &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
    let k1 = SamplingParams {
        temperature: 1.0,
        top_k: 1,
        max_new_tokens: 9,
        ..Default::default()
    };
    let s = generate(&model, &p, &k1, &mut ChaCha8Rng::seed_from_u64(99)).unwrap();
    let tiny_p = SamplingParams {
        temperature: 1.3,
        top_p: 1e-6,
        max_new_tokens: 9,
        ..Default::default()
    };
    let s2 = generate(&model, &p, &tiny_p, &mut ChaCha8Rng::seed_from_u64(5)).unwrap();
    for i in 0..p.len() {
        assert_eq!(g[i].ids, s[i].ids, "top_k=1 row {i}");
        assert_eq!(g[i].ids, s2[i].ids, "top_p→0 row {i}");
        assert_eq!(g[i].logprobs, s[i].logprobs);
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let cfg = tiny_config("qwen2");
    let (model, _) = tiny_model(&cfg, DType::F32, 2);
    let p = prompts(cfg.vocab_size);
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 0.9,
        top_k: 20,
        max_new_tokens: 12,
        ..Default::default()
    };
    let a = generate(&model, &p, &params, &mut ChaCha8Rng::seed_from_u64(42)).unwrap();
    let b = generate(&model, &p, &params, &mut ChaCha8Rng::seed_from_u64(42)).unwrap();
    let c = generate(&model, &p, &params, &mut ChaCha8Rng::seed_from_u64(43)).unwrap();
    let ids =
        |v: &[luspo::rollout::Completion]| v.iter().map(|c| c.ids.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    assert_ne!(ids(&a), ids(&c), "a different seed gives different samples");
}

#[test]
fn eos_stops_rows_and_max_new_tokens_caps() {
    let cfg = tiny_config("llama");
    let (model, _) = tiny_model(&cfg, DType::F32, 7);
    let p = prompts(cfg.vocab_size);
    let free = generate(&model, &p, &greedy(8), &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
    // EOS = the 3rd greedy token of row 0; every row must stop at its first occurrence of it
    let eos = free[0].ids[2];
    let params = SamplingParams {
        eos_token_ids: vec![eos],
        ..greedy(8)
    };
    let out = generate(&model, &p, &params, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
    for (i, c) in out.iter().enumerate() {
        match free[i].ids.iter().position(|&t| t == eos) {
            Some(k) => {
                assert_eq!(c.ids, free[i].ids[..=k].to_vec(), "row {i} cut after EOS");
                assert!(c.finished);
            }
            None => {
                assert_eq!(
                    c.ids, free[i].ids,
                    "row {i} unaffected by other rows finishing"
                );
                assert!(!c.finished);
            }
        }
        assert_eq!(c.logprobs.len(), c.ids.len());
        assert_eq!(c.logprobs[..], free[i].logprobs[..c.ids.len()]);
    }
    // when every row ends on EOS at step one, each completion is exactly that token
    let firsts: Vec<u32> = free.iter().map(|c| c.ids[0]).collect();
    let params = SamplingParams {
        eos_token_ids: firsts.clone(),
        ..greedy(8)
    };
    let out = generate(&model, &p, &params, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
    for (i, c) in out.iter().enumerate() {
        assert_eq!(c.ids, vec![firsts[i]]);
        assert!(c.finished);
    }
    // max_new_tokens = 0 and 1
    let out = generate(&model, &p, &greedy(0), &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
    assert!(out.iter().all(|c| c.ids.is_empty() && !c.finished));
    let out = generate(&model, &p, &greedy(1), &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
    for (i, c) in out.iter().enumerate() {
        assert_eq!(c.ids, vec![free[i].ids[0]]);
    }
}

#[test]
fn stop_checker_ends_rows() {
    let cfg = tiny_config("llama");
    let (model, _) = tiny_model(&cfg, DType::F32, 7);
    let p = prompts(cfg.vocab_size);
    let free = generate(&model, &p, &greedy(8), &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
    // stop once a completion has 4 tokens
    let checker = |ids: &[u32]| ids.len() >= 4;
    let out = generate_with_stop(
        &model,
        &p,
        &greedy(8),
        &mut ChaCha8Rng::seed_from_u64(0),
        Some(&checker),
    )
    .unwrap();
    for (i, c) in out.iter().enumerate() {
        assert_eq!(c.ids, free[i].ids[..4].to_vec());
        assert!(c.finished);
    }
    // a decoder-based stop string checker: "decode" ids as letters
    let stop = vec![format!(
        "{}",
        char::from(b'a' + (free[1].ids[1] % 26) as u8)
    )];
    let decode = |ids: &[u32]| {
        ids.iter()
            .map(|&t| char::from(b'a' + (t % 26) as u8))
            .collect::<String>()
    };
    let checker = luspo::rollout::stop_string_checker(decode, &stop);
    let params = SamplingParams {
        stop: stop.clone(),
        ..greedy(8)
    };
    let out = generate_with_stop(
        &model,
        &p,
        &params,
        &mut ChaCha8Rng::seed_from_u64(0),
        Some(&checker),
    )
    .unwrap();
    let k = free[1]
        .ids
        .iter()
        .position(|&t| t % 26 == free[1].ids[1] % 26)
        .unwrap();
    assert_eq!(out[1].ids, free[1].ids[..=k].to_vec());
    // stop strings without a checker are a clear error
    let e = generate(&model, &p, &params, &mut ChaCha8Rng::seed_from_u64(0))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("stop"), "{e}");
}

#[test]
fn bad_inputs_are_errors() {
    let cfg = tiny_config("llama");
    let (model, _) = tiny_model(&cfg, DType::F32, 7);
    let r = &mut ChaCha8Rng::seed_from_u64(0);
    assert!(generate(&model, &[vec![]], &greedy(2), r)
        .err()
        .unwrap()
        .to_string()
        .contains("prompt 0"));
    assert!(generate(&model, &[vec![1, 500]], &greedy(2), r)
        .err()
        .unwrap()
        .to_string()
        .contains("500"));
    let bad = SamplingParams {
        top_p: 0.0,
        ..greedy(2)
    };
    assert!(generate(&model, &[vec![1]], &bad, r)
        .err()
        .unwrap()
        .to_string()
        .contains("top_p"));
    let bad = SamplingParams {
        temperature: -1.0,
        ..greedy(2)
    };
    assert!(generate(&model, &[vec![1]], &bad, r)
        .err()
        .unwrap()
        .to_string()
        .contains("temperature"));
    assert!(generate(&model, &[], &greedy(2), r).unwrap().is_empty());
}

/// Empirical frequencies of the host sampler on a known distribution, with temperature, top-k and top-p.
#[test]
fn sampler_distribution() {
    let probs = [0.5f64, 0.3, 0.15, 0.05];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln() as f32 + 1.7).collect();
    let n = 20000;
    let freq = |params: &SamplingParams, seed: u64| -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut c = vec![0f64; probs.len()];
        for _ in 0..n {
            let (t, lp) = sample_token(&logits, params, &mut rng);
            assert!(
                (lp as f64 - probs[t as usize].ln()).abs() < 1e-5,
                "temperature-1 logprob"
            );
            c[t as usize] += 1.0 / n as f64;
        }
        c
    };
    let close = |got: &[f64], want: &[f64]| {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 0.015, "got {got:?} want {want:?}");
        }
    };
    close(&freq(&SamplingParams::default(), 1), &probs);
    // top-p 0.6: the mass before 0.3 is 0.5 < 0.6 (kept); before 0.15 it is 0.8 (dropped)
    close(
        &freq(
            &SamplingParams {
                top_p: 0.6,
                ..Default::default()
            },
            2,
        ),
        &[0.625, 0.375, 0.0, 0.0],
    );
    close(
        &freq(
            &SamplingParams {
                top_p: 0.45,
                ..Default::default()
            },
            3,
        ),
        &[1.0, 0.0, 0.0, 0.0],
    );
    close(
        &freq(
            &SamplingParams {
                top_k: 3,
                ..Default::default()
            },
            4,
        ),
        &[0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0],
    );
    // temperature 2: p ∝ sqrt(p)
    let s: f64 = probs.iter().map(|p| p.sqrt()).sum();
    let want: Vec<f64> = probs.iter().map(|p| p.sqrt() / s).collect();
    close(
        &freq(
            &SamplingParams {
                temperature: 2.0,
                ..Default::default()
            },
            5,
        ),
        &want,
    );
    // top-k then top-p on the renormalised top-k set: {0.5,0.3}/0.8 = {0.625, 0.375}; top_p 0.7 keeps both
    close(
        &freq(
            &SamplingParams {
                top_k: 2,
                top_p: 0.7,
                ..Default::default()
            },
            6,
        ),
        &[0.625, 0.375, 0.0, 0.0],
    );
}

/// top-p over a large vocabulary (exercises the incremental partial selection).
#[test]
fn sampler_top_p_large_vocab() {
    let v = 5000;
    // geometric-ish distribution over a shuffled order
    let logits: Vec<f32> = (0..v).map(|i| -(((i * 7919) % v) as f32) * 0.01).collect();
    let max = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let mut order: Vec<usize> = (0..v).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top_p = 0.9;
    let mut mass = 0.0;
    let mut kept = std::collections::HashSet::new();
    for &i in &order {
        if mass >= top_p {
            break;
        }
        kept.insert(i as u32);
        mass += (logits[i] as f64 - max).exp() / z;
    }
    assert!(kept.len() > 100, "the nucleus is large ({})", kept.len());
    let params = SamplingParams {
        top_p,
        ..Default::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20000 {
        let (t, _) = sample_token(&logits, &params, &mut rng);
        assert!(kept.contains(&t), "token {t} outside the nucleus");
        seen.insert(t);
    }
    assert!(
        seen.len() > kept.len() / 2,
        "samples spread over the nucleus"
    );
}

/// The host decoding step (`DecodeState`) gives `forward_cached`'s logits step by step, for every layout
/// (GQA, biases, tied head), with a left-padded ragged batch and one row whose new slots are masked out.
#[test]
fn host_decode_step_matches_forward_cached() {
    use luspo::model::{DecodeState, KvCache};
    for kind in ["llama", "llama_tied", "llama_bias", "qwen2", "llama+lora"] {
        let cfg = tiny_config(kind.trim_end_matches("+lora"));
        let (mut model, _) = tiny_model(&cfg, DType::F32, 11);
        if kind.ends_with("+lora") {
            // Adapters on every projection, with B made nonzero (it starts at zero).
            let vm = candle_nn::VarMap::new();
            let lcfg = luspo::model::lora::LoraConfig {
                r: 3,
                alpha: 5.0,
                ..Default::default()
            };
            model.attach_lora(&lcfg, &vm, 2).unwrap();
            for (name, var) in vm.data().lock().unwrap().iter() {
                let i: usize = name.bytes().map(usize::from).sum();
                if name.contains("lora_B") {
                    let n = var.as_tensor().elem_count();
                    let v: Vec<f32> = (0..n)
                        .map(|j| 0.05 * (((j * 13 + i * 7) % 11) as f32 - 5.0))
                        .collect();
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                }
            }
        }
        // 10 rows: more than ops::gemv takes, so the gemm path runs (the other tests, with 4 rows, run gemv).
        let (b, lmax, cap, steps) = (10usize, 5usize, 12usize, 6usize);
        let lens: Vec<usize> = (0..b).map(|r| [5, 2, 4][r % 3]).collect();
        let mut ids = vec![0u32; b * lmax];
        let mut pos = vec![0u32; b * lmax];
        let mut km = vec![0u8; b * cap];
        for (r, &n) in lens.iter().enumerate() {
            let p = model_support::ids(n, cfg.vocab_size, r as u64 + 3);
            for (j, &id) in p.iter().enumerate() {
                let at = lmax - n + j;
                ids[r * lmax + at] = id;
                pos[r * lmax + at] = j as u32;
                km[r * cap + at] = 1;
            }
        }
        let t = |v: Vec<u32>, n: usize| Tensor::from_vec(v, (b, n), &Device::Cpu).unwrap();
        let mask = |km: &[u8], len: usize| {
            let m: Vec<u8> = (0..b)
                .flat_map(|r| km[r * cap..r * cap + len].to_vec())
                .collect();
            Tensor::from_vec(m, (b, len), &Device::Cpu).unwrap()
        };
        let mut c1 = KvCache::new(&model, b, cap).unwrap();
        let mut c2 = KvCache::new(&model, b, cap).unwrap();
        for c in [&mut c1, &mut c2] {
            model
                .forward_cached(
                    &t(ids.clone(), lmax),
                    &t(pos.clone(), lmax),
                    &mask(&km, lmax),
                    c,
                    true,
                )
                .unwrap();
        }
        let mut st = DecodeState::from_cache(&model, &c2)
            .unwrap()
            .expect("CPU f32 applies");
        let mut host = vec![];
        let mut next_pos: Vec<u32> = lens.iter().map(|&n| n as u32).collect();
        for s in 0..steps {
            let feed = model_support::ids(b, cfg.vocab_size, 100 + s as u64);
            let slot = lmax + s;
            for r in 0..b {
                // Row 1 stops after two steps: its later slots stay masked out, as for a finished row.
                km[r * cap + slot] = u8::from(r != 1 || s < 2);
            }
            let want: Vec<f32> = model
                .forward_cached(
                    &t(feed.clone(), 1),
                    &t(next_pos.clone(), 1),
                    &mask(&km, slot + 1),
                    &mut c1,
                    true,
                )
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            st.step(&model, &feed, &next_pos, &km, &mut host).unwrap();
            let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
            let err = want
                .iter()
                .zip(&host)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert_eq!(host.len(), want.len());
            assert!(
                err <= 2e-5 * scale,
                "{kind} step {s}: max |diff| {err} (scale {scale})"
            );
            next_pos.iter_mut().for_each(|p| *p += 1);
        }
        assert_eq!(st.len(), lmax + steps);
        // Outside its domain the kernel declines.
        let (m64, _) = tiny_model(&cfg, DType::F64, 11);
        let c64 = KvCache::new(&m64, b, cap).unwrap();
        assert!(DecodeState::from_cache(&m64, &c64).unwrap().is_none());
    }
}

#[test]
fn f16_decoding_equals_f32_on_f16_weights_and_stays_close_otherwise() {
    // On weights that f16 represents exactly, decoding with f16 copies is the same arithmetic: the same greedy
    // tokens and (up to summation order where gemm runs for > 8 rows in f32) the same log-probs.
    for kind in ["llama", "llama_tied", "llama_bias", "qwen2"] {
        let cfg = tiny_config(kind);
        let (mut model, varmap) = tiny_model(&cfg, DType::F32, 5);
        for var in varmap.all_vars() {
            let r = var
                .as_tensor()
                .to_dtype(DType::F16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            var.set(&r).unwrap();
        }
        for rows in [4usize, 10] {
            let p: Vec<Vec<u32>> = (0..rows)
                .map(|r| ids(2 + r % 4, cfg.vocab_size, r as u64 + 1))
                .collect();
            let run = |m: &Transformer| {
                generate(m, &p, &greedy(8), &mut ChaCha8Rng::seed_from_u64(0)).unwrap()
            };
            model.set_decode_f16(false);
            let a = run(&model);
            model.set_decode_f16(true);
            let b = run(&model);
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.ids, y.ids, "{kind}, {rows} rows");
                for (u, v) in x.logprobs.iter().zip(&y.logprobs) {
                    assert!((u - v).abs() < 1e-5, "{kind}, {rows} rows: {u} vs {v}");
                }
            }
        }
    }
    // On general f32 weights the f16 copies round each weight by at most 2^-11 relative: log-probs stay close.
    let cfg = tiny_config("llama");
    let (mut model, _) = tiny_model(&cfg, DType::F32, 5);
    let p = prompts(cfg.vocab_size);
    let a = generate(&model, &p, &greedy(6), &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
    model.set_decode_f16(true);
    let b = generate(&model, &p, &greedy(6), &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
    let gap = a
        .iter()
        .zip(&b)
        .flat_map(|(x, y)| {
            x.logprobs
                .iter()
                .zip(&y.logprobs)
                .take_while(|_| x.ids == y.ids)
        })
        .map(|(u, v)| (u - v).abs())
        .fold(0f32, f32::max);
    assert!(gap < 1e-2, "f16 decoding moved a log-prob by {gap}");
    // Where the kernel exists (AVX-512) it must have run: the rounded weights move some log-prob.
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    if avx512 {
        assert!(
            gap > 0.0,
            "decode_f16 left every log-prob unchanged: the f16 path did not run"
        );
    }
}
