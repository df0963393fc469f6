//! The `luspo` command line: argument parsing and wiring only.

use clap::{Parser, Subcommand};
use luspo::cli;

/// RLVR for language models: LUSPO, GSPO, GRPO, DAPO, Dr.GRPO, CISPO.
#[derive(Parser)]
#[command(name = "luspo", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Loss and d loss / d logp of one objective on given numbers (JSON on stdin).
    Loss(cli::loss::LossArgs),
    /// What a reward-shaping / advantage method makes of given groups (JSON on stdin).
    Advantage(cli::advantage::AdvantageArgs),
    /// Per-token log-probabilities of given token sequences (JSON on stdin).
    Score(cli::score::ScoreArgs),
    /// Sample a completion from a model.
    Generate(cli::generate::GenerateArgs),
    /// Measure generation and training throughput.
    Bench(cli::bench::BenchArgs),
    /// Supervised warm start on a task's worked solutions.
    Sft(cli::train::SftArgs),
    /// Run RLVR training (the embedded default when no config is given).
    Train(cli::train::TrainArgs),
    /// Train several objectives from one warm start and compare length and accuracy.
    Compare(cli::compare::CompareArgs),
    /// Plots and a report for finished runs.
    Report(cli::compare::ReportArgs),
    /// Write a model as a GGUF file that llama.cpp loads.
    Export(cli::export::ExportArgs),
}

fn main() {
    let args = Args::parse();
    luspo::ops::tune_malloc();
    luspo::ops::tune_candle_threads();
    // Drive the model from a worker of candle's CPU pool: a separate main thread would compete for the cores
    // with the pool's workers.
    let result = candle_core::Device::Cpu.with_context(|| match args.command {
        Command::Loss(a) => cli::loss::run(a),
        Command::Advantage(a) => cli::advantage::run(a),
        Command::Score(a) => cli::score::run(a),
        Command::Generate(a) => cli::generate::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Sft(a) => cli::train::run_sft(a),
        Command::Train(a) => cli::train::run(a),
        Command::Compare(a) => cli::compare::run(a),
        Command::Report(a) => cli::compare::run_report(a),
        Command::Export(a) => cli::export::run(a),
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
