//! `luspo train` and `luspo sft`.

/// Arguments of `luspo train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {}

/// Arguments of `luspo sft`.
#[derive(clap::Args, Debug)]
pub struct SftArgs {}

/// Runs `luspo train`.
pub fn run(_args: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("luspo train is not implemented yet")
}

/// Runs `luspo sft`.
pub fn run_sft(_args: SftArgs) -> anyhow::Result<()> {
    anyhow::bail!("luspo sft is not implemented yet")
}
