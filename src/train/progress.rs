//! Progress display on stderr: an indicatif bar with key metrics on a terminal, one plain line per step
//! otherwise; and the end-of-run summary table.

use crate::metrics::{EvalRecord, StepMetrics, Summary};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing (tests).
    Quiet,
    /// One line per step on stderr.
    Lines,
    /// An indicatif bar on stderr.
    Bar,
}

impl Mode {
    /// `Bar` when stderr is a terminal, else `Lines`.
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        }
    }
}

/// A progress display for `total` steps of some phase.
pub struct Progress {
    mode: Mode,
    bar: Option<ProgressBar>,
    phase: String,
    total: u64,
}

impl Progress {
    /// Starts a display for a phase (`"sft"`, `"rl"`) of `total` units, `done` of them already finished.
    pub fn new(mode: Mode, phase: &str, total: u64, done: u64) -> Self {
        let bar = if mode == Mode::Bar {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix:>4} [{bar:24}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b.set_prefix(phase.to_string());
            b.set_position(done);
            Some(b)
        } else {
            None
        };
        Self {
            mode,
            bar,
            phase: phase.into(),
            total,
        }
    }

    /// Shows a free-form message for unit `pos`.
    pub fn update(&self, pos: u64, msg: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("{} {pos}/{} {msg}", self.phase, self.total),
            Mode::Bar => {
                if let Some(b) = &self.bar {
                    b.set_position(pos);
                    b.set_message(msg.to_string());
                }
            }
        }
    }

    /// Prints a line above the bar (or as a plain line).
    pub fn println(&self, msg: &str) {
        match (&self.bar, self.mode) {
            (_, Mode::Quiet) => {}
            (Some(b), _) => b.println(msg),
            (None, _) => eprintln!("{msg}"),
        }
    }

    /// Shows one RL step's key metrics.
    pub fn step(&self, m: &StepMetrics) {
        self.update(m.step, &step_line(m));
    }

    /// Shows an evaluation.
    pub fn eval(&self, e: &EvalRecord) {
        self.println(&format!(
            "eval step {}: accuracy {:.3}  mean length {:.1}  truncated {:.3}  (n={})",
            e.step, e.accuracy, e.response_length_mean, e.truncated_frac, e.n
        ));
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The key metrics of one step on one line.
pub fn step_line(m: &StepMetrics) -> String {
    format!(
        "reward {:.3} acc {:.3} len {:.1} (max {:.0}) trunc {:.2} ent {:.3} clip {:.3}/{:.3} gnorm {:.3} lr {:.2e} {:.0} tok/s {:.1}s",
        m.reward_mean,
        m.accuracy,
        m.response_length_mean,
        m.response_length_max,
        m.truncated_frac,
        m.entropy,
        m.clip_frac_low,
        m.clip_frac_high,
        m.grad_norm,
        m.lr,
        m.tokens_per_s,
        m.step_seconds
    )
}

/// The end-of-run summary as a small table.
pub fn summary_table(s: &Summary, run_dir: &std::path::Path) -> String {
    let mut out = String::new();
    out.push_str(&format!("run        {}\n", run_dir.display()));
    out.push_str(&format!(
        "objective  {}   seed {}   steps {}   wall {:.1}s\n",
        s.objective, s.seed, s.steps, s.wall_seconds
    ));
    out.push_str("                     before     after     delta\n");
    out.push_str(&format!(
        "eval accuracy     {:>9.3} {:>9.3} {:>+9.3}\n",
        s.eval_accuracy_before,
        s.eval_accuracy_after,
        s.eval_accuracy_after - s.eval_accuracy_before
    ));
    out.push_str(&format!(
        "eval mean length  {:>9.1} {:>9.1} {:>+9.1}\n",
        s.eval_response_length_before,
        s.eval_response_length_after,
        s.eval_response_length_after - s.eval_response_length_before
    ));
    out
}
