//! `luspo loss`.

/// Arguments of `luspo loss`.
#[derive(clap::Args, Debug)]
pub struct LossArgs {}

/// Runs `luspo loss`.
pub fn run(_args: LossArgs) -> anyhow::Result<()> {
    anyhow::bail!("luspo loss is not implemented yet")
}
