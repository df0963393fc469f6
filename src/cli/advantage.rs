//! `luspo advantage`: what a reward-shaping / advantage method makes of given groups (JSON on stdin, JSON on
//! stdout; format in `luspo::control::json`).

use std::io::Read;

/// Arguments of `luspo advantage`.
#[derive(clap::Args, Debug)]
pub struct AdvantageArgs {}

/// Runs `luspo advantage`: reads the groups JSON from stdin, prints the result JSON on stdout.
pub fn run(_args: AdvantageArgs) -> anyhow::Result<()> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| anyhow::anyhow!("stdin: cannot read: {e}"))?;
    let out = crate::control::json::evaluate_json(&text)?;
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
