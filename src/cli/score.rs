//! `luspo score`: per-token log-probabilities of token sequences read as JSON from stdin.

use anyhow::Context;
use std::io::Read;
use std::path::PathBuf;

/// Arguments of `luspo score`.
#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// HF model directory or `.gguf` file.
    #[arg(long)]
    pub model: PathBuf,
    /// Device: cpu, cuda, cuda:N or auto (CUDA when built with the `cuda` feature and present).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

/// The stdin document: `{"sequences": [[ids..], ..]}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreInput {
    sequences: Vec<Vec<u32>>,
}

/// Runs `luspo score`: stdout is `{"logprobs": [[..], ..]}`, entry t = log p(ids[t+1] | ids[..=t]).
pub fn run(args: ScoreArgs) -> anyhow::Result<()> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read stdin")?;
    let input: ScoreInput = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!("stdin: expected {{\"sequences\": [[token ids], ..]}}: {e}")
    })?;
    if let Some(i) = input.sequences.iter().position(Vec::is_empty) {
        anyhow::bail!("stdin: sequence {i} is empty");
    }
    let m = crate::model::io::load(&args.model, &crate::model::io::parse_device(&args.device)?)?;
    let logprobs = crate::rollout::score(&m.model, &input.sequences, args.batch_size.max(1))?;
    println!("{}", serde_json::json!({ "logprobs": logprobs }));
    Ok(())
}
