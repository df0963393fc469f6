//! `luspo generate`.

/// Arguments of `luspo generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {}

/// Runs `luspo generate`.
pub fn run(_args: GenerateArgs) -> anyhow::Result<()> {
    anyhow::bail!("luspo generate is not implemented yet")
}
