//! `luspo bench`.

/// Arguments of `luspo bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

/// Runs `luspo bench`.
pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("luspo bench is not implemented yet")
}
