//! `luspo compare` and `luspo report`.

use std::path::PathBuf;

/// Arguments of `luspo compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {}

/// Arguments of `luspo report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Finished run directories (each holds metrics.jsonl or summary.json).
    #[arg(required = true, value_name = "RUN_DIR")]
    pub run_dirs: Vec<PathBuf>,
    /// Output folder for plots, compare.json and report.md (default: the runs' common parent, or ./report).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Runs `luspo compare`.
pub fn run(_args: CompareArgs) -> anyhow::Result<()> {
    anyhow::bail!("luspo compare is not implemented yet")
}

/// Runs `luspo report`.
pub fn run_report(args: ReportArgs) -> anyhow::Result<()> {
    let out = args
        .out
        .unwrap_or_else(|| crate::report::default_out_dir(&args.run_dirs));
    let cmp = crate::report::report_dirs(&args.run_dirs, &out)?;
    println!(
        "wrote {} ({} runs, {} plots as SVG and PNG, compare.json)",
        out.join("report.md").display(),
        cmp.runs.len(),
        cmp.plots.len()
    );
    Ok(())
}
