//! `luspo generate`: sample one completion from a model (HF directory or GGUF).

use crate::rollout::SamplingParams;
use rand::SeedableRng;
use std::path::PathBuf;

/// Arguments of `luspo generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// HF model directory or `.gguf` file.
    #[arg(long)]
    pub model: PathBuf,
    /// Device: cpu, cuda, cuda:N or auto (CUDA when built with the `cuda` feature and present).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as one user message in the model's chat template (with the assistant header).
    #[arg(long)]
    pub chat: bool,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Random seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print `{"completion_ids": [..], "text": "..", "finished": bool}` instead of the text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `luspo generate`: stops at an EOS id of the model or after `--max-new-tokens`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let m = crate::model::io::load(&args.model, &crate::model::io::parse_device(&args.device)?)?;
    let prompt = m.prompt_ids(&args.prompt, args.chat)?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        max_new_tokens: args.max_new_tokens,
        eos_token_ids: m.tokenizer.eos_ids.clone(),
        stop: vec![],
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let out = crate::rollout::generate(&m.model, &[prompt], &params, &mut rng)?;
    let c = out
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("generation returned no completion"))?;
    let text = m.tokenizer.decode(&c.ids, true)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "completion_ids": c.ids, "text": text, "finished": c.finished })
        );
    } else {
        println!("{text}");
    }
    Ok(())
}
