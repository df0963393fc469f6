//! `luspo score`.

/// Arguments of `luspo score`.
#[derive(clap::Args, Debug)]
pub struct ScoreArgs {}

/// Runs `luspo score`.
pub fn run(_args: ScoreArgs) -> anyhow::Result<()> {
    anyhow::bail!("luspo score is not implemented yet")
}
