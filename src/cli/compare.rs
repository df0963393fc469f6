//! `luspo compare` and `luspo report`.

use std::path::PathBuf;

/// Arguments of `luspo compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Objective presets, comma-separated (default: the config's `[compare] objectives`, else grpo,gspo,luspo).
    #[arg(long, value_name = "LIST")]
    pub objectives: Option<String>,
    /// `[control]` methods to compare under one objective, comma-separated, e.g. `none,hapo,dler` (default: the
    /// config's `[compare] methods`; none = compare objectives).
    #[arg(long, value_name = "LIST")]
    pub methods: Option<String>,
    /// Seeds per objective (seed, seed+1, ...); the spread over seeds is shown (default 1).
    #[arg(long, value_name = "N")]
    pub seeds: Option<u64>,
    /// TOML config layered over the embedded configs/default.toml and configs/compare.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one key of every run, `section.key=value`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Compare directory (default runs/compare-<UTC timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Runs in parallel, each single-threaded (default: the number of cores).
    #[arg(long, value_name = "J")]
    pub jobs: Option<usize>,
    /// Keep the finished runs in --out and resume the interrupted ones.
    #[arg(long, requires = "out")]
    pub resume: bool,
    /// Only print the final table.
    #[arg(long)]
    pub quiet: bool,
    /// Internal: train and cache the warm start of one resolved run config, then exit.
    #[arg(long, hide = true, value_name = "CONFIG")]
    pub warm_start_only: Option<PathBuf>,
}

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
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    if let Some(cfg) = &args.warm_start_only {
        crate::compare::warm_start_only(cfg)?;
        return Ok(());
    }
    let objectives = args.objectives.map(|o| vec![o]);
    let methods = args.methods.map(|m| vec![m]);
    let plan = crate::compare::plan(
        args.config.as_deref(),
        &args.set,
        objectives.as_deref(),
        methods.as_deref(),
        args.seeds,
    )?;
    let jobs = args.jobs.unwrap_or_else(crate::compare::default_jobs);
    if jobs == 0 {
        anyhow::bail!("--jobs: must be ≥ 1");
    }
    let out = args.out.unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("compare-{}", crate::train::files::timestamp()))
    });
    let opts = crate::compare::CompareOptions {
        out: out.clone(),
        jobs,
        exe: std::env::current_exe()?,
        resume: args.resume,
        verbose: !args.quiet,
    };
    if !args.quiet {
        let objective = if plan.methods.is_empty() {
            String::new()
        } else {
            format!(" (objective {})", plan.objectives[0])
        };
        eprintln!(
            "compare: {}{objective} × {} seed(s) = {} runs into {}",
            plan.arms().join(", "),
            plan.seeds.len(),
            plan.runs.len(),
            out.display()
        );
    }
    let res = crate::compare::run(&plan, &opts)?;
    print!("{}", crate::compare::final_table(&res.comparison));
    println!(
        "wrote {} (plots in {}, compare.json) in {:.0}s",
        out.join("report.md").display(),
        out.join("plots").display(),
        res.seconds
    );
    Ok(())
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
