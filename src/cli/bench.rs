//! `luspo bench`: generation and train-step throughput of the tiny config or of a given model config.

use crate::model::{Config, Transformer};
use crate::rollout::{generate, response_token_logprobs, Batch, SamplingParams};
use crate::train::optim::{AdamW, AdamWParams};
use anyhow::Context;
use candle_core::DType;
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use std::time::Instant;

/// Arguments of `luspo bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// An HF `config.json` to benchmark with random weights (speed does not depend on the values).
    /// Default: the tiny config (2 layers, d=128, 4 heads, ffn 344, vocab 1024).
    #[arg(long, conflicts_with = "model")]
    pub config: Option<std::path::PathBuf>,
    /// A real model (HF directory or `.gguf`, loaded by `model::io::load`) to benchmark.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Batch sizes for generation.
    #[arg(long, value_delimiter = ',', default_value = "8,32")]
    pub gen_batch: Vec<usize>,
    /// Prompt length for generation (rows get lengths from half of it up to it: a ragged, left-padded batch).
    #[arg(long, default_value_t = 16)]
    pub prompt_len: usize,
    /// New tokens per generation row.
    #[arg(long, default_value_t = 112)]
    pub new_tokens: usize,
    /// Train-step batch size.
    #[arg(long, default_value_t = 8)]
    pub train_batch: usize,
    /// Train-step sequence length.
    #[arg(long, default_value_t = 128)]
    pub train_len: usize,
    /// Timed train steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Use candle's composed differentiable ops on the training path (the slow reference) instead of `crate::ops`.
    #[arg(long)]
    pub composed: bool,
    /// Decode with f16 copies of the weight matrices (`rollout.decode_f16`); prefill and training stay f32.
    #[arg(long)]
    pub decode_f16: bool,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Attach LoRA adapters of this rank (alpha = 2·rank) to all seven projections: only they train.
    #[arg(long)]
    pub lora: Option<usize>,
    /// Skip generation.
    #[arg(long)]
    pub no_gen: bool,
    /// Skip training.
    #[arg(long)]
    pub no_train: bool,
    /// Run the RL-step benchmark instead (`bench_rl`): `--prompts` × `--group` responses of `--rl-new-tokens`.
    #[arg(long)]
    pub rl: bool,
    /// RL bench: prompts per step (random ones of `--prompt-len` tokens unless `--prompts-file`).
    #[arg(long, default_value_t = 8)]
    pub prompts: usize,
    /// RL bench: a JSON list of token-id lists to use as the prompts.
    #[arg(long)]
    pub prompts_file: Option<std::path::PathBuf>,
    /// RL bench: responses per prompt.
    #[arg(long, default_value_t = 8)]
    pub group: usize,
    /// RL bench: new tokens per response.
    #[arg(long, default_value_t = 64)]
    pub rl_new_tokens: usize,
    /// RL bench: sequences per forward/backward (one optimizer step covers all responses).
    #[arg(long, default_value_t = 32)]
    pub micro_batch: usize,
    /// RL bench: token ids that end a response.
    #[arg(long, value_delimiter = ',')]
    pub eos: Vec<u32>,
    /// RL bench: the objective preset.
    #[arg(long, default_value = "luspo")]
    pub objective: String,
    /// RL bench: score the old log-probs in a separate no-grad forward (the trainer's behaviour before it took
    /// them from the on-policy training forward).
    #[arg(long)]
    pub recompute_old_logprobs: bool,
}

/// The tiny benchmark config of issue 3.
pub fn tiny_bench_config() -> Config {
    let v = serde_json::json!({
        "model_type": "llama", "vocab_size": 1024, "hidden_size": 128, "intermediate_size": 344,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false
    });
    // The literal above is a valid Config: every required key is present with the right type.
    serde_json::from_value(v).expect("static tiny config")
}

/// Runs `luspo bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let device = crate::model::io::parse_device(&args.device)?;
    let (mut model, varmap) = match (&args.model, &args.config) {
        (Some(path), _) => {
            let loaded = crate::model::io::load(path, &device)?;
            (loaded.model, loaded.varmap)
        }
        (None, cfg) => {
            let config = match cfg {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    serde_json::from_str::<Config>(&text)
                        .with_context(|| format!("parsing {}", p.display()))?
                }
                None => tiny_bench_config(),
            };
            let varmap = VarMap::new();
            let model = Transformer::new(
                &config,
                VarBuilder::from_varmap(&varmap, DType::F32, &device),
            )?;
            model.init_weights(&varmap, 0)?;
            (model, varmap)
        }
    };
    model.set_reference_ops(args.composed);
    let varmap = match args.lora {
        Some(r) => {
            let lora = crate::model::lora::LoraConfig {
                r,
                alpha: 2.0 * r as f64,
                ..Default::default()
            };
            let adapters = VarMap::new();
            model.attach_lora(&lora, &adapters, 0)?;
            adapters
        }
        None => varmap,
    };
    model.set_decode_f16(args.decode_f16);
    let config = model.config.clone();
    let nparams: usize = model
        .named_parameters()
        .iter()
        .map(|(_, t)| t.elem_count())
        .sum();
    println!(
        "model: {} layers, d={}, heads {}/{}, ffn {}, vocab {}, {:.2} M params, f32{}, rayon threads {}, {} ops",
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.num_kv_heads(),
        config.intermediate_size,
        config.vocab_size,
        nparams as f64 / 1e6,
        if args.decode_f16 {
            " (f16 decoding)"
        } else {
            ""
        },
        candle_core::utils::get_num_threads(),
        if args.composed { "composed" } else { "fused" }
    );
    if let Some(r) = args.lora {
        let n: usize = model
            .adapter_parameters()
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum();
        println!(
            "LoRA r={r} on all seven projections: {:.2} M trainable parameters",
            n as f64 / 1e6
        );
    }
    let v = config.vocab_size as u32;
    let mut x = 12345u64;
    let mut tok = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) % v as u64) as u32
    };
    if args.rl {
        let prompts = match &args.prompts_file {
            Some(p) => super::bench_rl::read_prompts(p)?,
            None => (0..args.prompts)
                .map(|_| (0..args.prompt_len.max(1)).map(|_| tok()).collect())
                .collect(),
        };
        let w = super::bench_rl::RlWorkload {
            prompts,
            group: args.group,
            new_tokens: args.rl_new_tokens,
            micro_batch: args.micro_batch,
            eos: args.eos.clone(),
            objective: args.objective.clone(),
            steps: args.steps,
            recompute_old: args.recompute_old_logprobs,
        };
        return super::bench_rl::run(&model, &varmap, &w);
    }
    if !args.no_gen {
        for &b in &args.gen_batch {
            let prompts: Vec<Vec<u32>> = (0..b)
                .map(|i| {
                    let len = args.prompt_len / 2 + (i * 7) % (args.prompt_len / 2 + 1);
                    (0..len.max(1)).map(|_| tok()).collect()
                })
                .collect();
            let params = SamplingParams {
                temperature: 1.0,
                max_new_tokens: args.new_tokens,
                ..Default::default()
            };
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            // warm-up
            generate(
                &model,
                &prompts[..1],
                &SamplingParams {
                    max_new_tokens: 4,
                    ..params.clone()
                },
                &mut rng,
            )?;
            let t0 = Instant::now();
            let out = generate(&model, &prompts, &params, &mut rng)?;
            let dt = t0.elapsed().as_secs_f64();
            let n: usize = out.iter().map(|c| c.ids.len()).sum();
            println!(
                "generate  batch {b:>3}: {n} new tokens in {dt:.3} s = {:>8.0} tok/s (prompts {}..{} tokens, KV cache, sampled)",
                n as f64 / dt,
                args.prompt_len / 2,
                args.prompt_len
            );
        }
    }
    if !args.no_train {
        let (b, t) = (args.train_batch, args.train_len.max(2));
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..b)
            .map(|_| {
                let p: Vec<u32> = (0..t / 4).map(|_| tok()).collect();
                let r: Vec<u32> = (0..t - t / 4).map(|_| tok()).collect();
                (p, r)
            })
            .collect();
        let batch = Batch::from_pairs(&pairs, 0, DType::F32, &device)?;
        // The trainer's optimizer, with the default config's β, ε, weight decay and gradient clipping.
        let optim = crate::train::config::OptimConfig::default();
        let mut opt = AdamW::new(&varmap, AdamWParams::from(&optim))?;
        let mut times = vec![];
        for step in 0..=args.steps {
            let t0 = Instant::now();
            let (logp, _ent) = response_token_logprobs(&model, &batch)?;
            let loss = (logp * &batch.response_mask)?
                .sum_all()?
                .neg()?
                .affine(1.0 / (b * t) as f64, 0.0)?;
            let t1 = Instant::now();
            let grads = loss.backward()?;
            let t2 = Instant::now();
            opt.step(&opt.grads_from(&grads), optim.lr, optim.grad_clip)?;
            let t3 = Instant::now();
            if step > 0 {
                times.push((t1 - t0, t2 - t1, t3 - t2, t3 - t0));
            }
        }
        // seconds per phase: forward, backward, AdamW, whole step
        let mut sums = [0f64; 4];
        for x in &times {
            for (s, d) in sums.iter_mut().zip([x.0, x.1, x.2, x.3]) {
                *s += d.as_secs_f64() / times.len().max(1) as f64;
            }
        }
        let [fw, bw, op, all] = sums;
        println!(
            "train     B={b} T={t}: fwd {:.1} ms, bwd {:.1} ms, AdamW {:.1} ms = {:.1} ms/step = {:>8.0} tok/s (mean of {} steps)",
            fw * 1e3,
            bw * 1e3,
            op * 1e3,
            all * 1e3,
            (b * t) as f64 / all,
            times.len()
        );
    }
    Ok(())
}
