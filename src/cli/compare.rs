//! `luspo compare` and `luspo report`.

/// Arguments of `luspo compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {}

/// Arguments of `luspo report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {}

/// Runs `luspo compare`.
pub fn run(_args: CompareArgs) -> anyhow::Result<()> {
    anyhow::bail!("luspo compare is not implemented yet")
}

/// Runs `luspo report`.
pub fn run_report(_args: ReportArgs) -> anyhow::Result<()> {
    anyhow::bail!("luspo report is not implemented yet")
}
