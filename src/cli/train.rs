//! `luspo train` and `luspo sft`.

use crate::train::config::RunConfig;
use crate::train::files::timestamp;
use crate::train::progress::Mode;
use crate::train::{Outcome, TrainOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Arguments of `luspo train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// TOML config, layered over the embedded default (configs/default.toml); keys: docs/config.md.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one key, `section.key=value` (value parsed as TOML, else a string); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run directory (default runs/<objective>-<UTC timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its latest checkpoint (its config.toml, plus any --set).
    #[arg(long, requires = "out")]
    pub resume: bool,
    /// No progress output (the summary is still printed).
    #[arg(long)]
    pub quiet: bool,
}

/// Arguments of `luspo sft`.
#[derive(clap::Args, Debug)]
pub struct SftArgs {
    /// TOML config, layered over the embedded default; the `[model]`, `[task]` and `[sft]` sections are used.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one key, `section.key=value`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Output directory (default runs/sft-<UTC timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

fn mode(quiet: bool) -> Mode {
    if quiet {
        Mode::Quiet
    } else {
        Mode::auto()
    }
}

/// Runs `luspo train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = if args.resume {
        if args.config.is_some() {
            anyhow::bail!("--resume continues with the run's own config.toml; drop --config (use --set to change keys)");
        }
        let out = args
            .out
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--resume needs --out DIR"))?;
        RunConfig::load_run(&out.join("config.toml"), &args.set)?
    } else {
        RunConfig::load(args.config.as_deref(), &args.set)?
    };
    let out = args.out.unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("{}-{}", cfg.objective.name, timestamp()))
    });
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    // A second Ctrl-C exits at once (the last checkpoint stays valid: checkpoints are atomic).
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: finishing the current step, then writing a checkpoint (Ctrl-C again to abandon it)");
    });
    let opts = TrainOptions {
        out: out.clone(),
        resume: args.resume,
        mode: mode(args.quiet),
        interrupt: Some(flag),
    };
    match crate::train::train(&cfg, &opts)? {
        Outcome::Finished(_) => Ok(()),
        Outcome::Stopped(step) => {
            eprintln!(
                "stopped after step {step}; resume with: luspo train --resume --out {}",
                out.display()
            );
            std::process::exit(130);
        }
    }
}

/// Runs `luspo sft`.
pub fn run_sft(args: SftArgs) -> anyhow::Result<()> {
    let cfg = RunConfig::load(args.config.as_deref(), &args.set)?;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("sft-{}", timestamp())));
    crate::train::sft::run(&cfg, &out, mode(args.quiet))?;
    Ok(())
}
