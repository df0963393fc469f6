//! Plots (SVG and PNG), length analysis, `compare.json` and the Markdown report for finished runs.
//! Used by `luspo report RUN_DIR...` and, after training, by `luspo compare`.
//!
//! Output folder layout: `compare.json`, `report.md`, `report.html` (same content), `plots/<name>.svg` and
//! `plots/<name>.png`.

pub mod analysis;
pub mod markdown;
pub mod plot;
pub mod read;

pub use analysis::{analyse_lengths, LengthAnalysis, Stat};
pub use read::{default_out_dir, is_run_dir, load_run, load_runs, BeforeAfter, Run};

use crate::{input_err, Result};
use analysis::mean;
use plot::{PlotSpec, Series, PALETTE};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Per-step training curves of one run (from `metrics.jsonl`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Curves {
    /// RL step.
    pub step: Vec<u64>,
    /// Mean response length.
    pub response_length_mean: Vec<f64>,
    /// 10th percentile of response length.
    pub response_length_p10: Vec<f64>,
    /// 90th percentile of response length.
    pub response_length_p90: Vec<f64>,
    /// Train accuracy (fraction of correct sampled responses).
    pub accuracy: Vec<f64>,
    /// Mean per-token entropy.
    pub entropy: Vec<f64>,
    /// Low-side clip fraction.
    pub clip_frac_low: Vec<f64>,
    /// High-side clip fraction.
    pub clip_frac_high: Vec<f64>,
    /// Fraction truncated.
    pub truncated_frac: Vec<f64>,
    /// Gradient mass on A>0 responses, mean per optimizer step.
    #[serde(default)]
    pub grad_mass_pos: Vec<f64>,
    /// Gradient mass on A<0 responses.
    #[serde(default)]
    pub grad_mass_neg: Vec<f64>,
    /// Share of gradient mass on the shortest length quartile.
    #[serde(default)]
    pub grad_share_len_q1: Vec<f64>,
    /// Share of gradient mass on the longest length quartile.
    #[serde(default)]
    pub grad_share_len_q4: Vec<f64>,
    /// Mean length of clipped A<0 responses.
    #[serde(default)]
    pub clip_len_low_clipped: Vec<f64>,
    /// Mean length of kept A<0 responses.
    #[serde(default)]
    pub clip_len_low_kept: Vec<f64>,
    /// Mean length of clipped A>0 responses.
    #[serde(default)]
    pub clip_len_high_clipped: Vec<f64>,
    /// Mean length of kept A>0 responses.
    #[serde(default)]
    pub clip_len_high_kept: Vec<f64>,
    /// Covariance of length and advantage over the responses carrying gradient.
    #[serde(default)]
    pub len_adv_cov: Vec<f64>,
    /// First-order length push (tokens).
    #[serde(default)]
    pub len_push: Vec<f64>,
    /// Its reward part.
    #[serde(default)]
    pub len_push_reward: Vec<f64>,
    /// Its weighting part.
    #[serde(default)]
    pub len_push_weighting: Vec<f64>,
    /// Its clip part.
    #[serde(default)]
    pub len_push_clip: Vec<f64>,
}

/// Held-out evaluation curves of one run (from `eval.jsonl`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EvalCurves {
    /// Step after which the evaluation ran (0 = before RL).
    pub step: Vec<u64>,
    /// Accuracy.
    pub accuracy: Vec<f64>,
    /// Mean response length.
    pub response_length_mean: Vec<f64>,
}

/// One run in `compare.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    /// The arm this run belongs to (see [`arm_labels`]): its objective, its method, or `objective+method`.
    pub arm: String,
    /// Objective preset name.
    pub objective: String,
    /// The `[control]` method (`none` for plain runs).
    pub method: String,
    /// Seed.
    pub seed: u64,
    /// The run directory, as given.
    pub run_dir: String,
    /// RL steps completed.
    pub steps: u64,
    /// Held-out accuracy before RL.
    pub eval_accuracy_before: Option<f64>,
    /// Held-out accuracy after RL.
    pub eval_accuracy_after: Option<f64>,
    /// Held-out mean length before RL.
    pub eval_response_length_before: Option<f64>,
    /// Held-out mean length after RL.
    pub eval_response_length_after: Option<f64>,
    /// Per-step training curves.
    pub curves: Curves,
    /// Held-out evaluation curves.
    pub eval_curves: EvalCurves,
    /// Length analysis of the sampled responses.
    pub length_analysis: LengthAnalysis,
}

/// One arm (all its seeds) in `compare.json`: an objective, or a `[control]` method.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectiveReport {
    /// The arm's label (see [`arm_labels`]).
    pub arm: String,
    /// Objective preset name.
    pub objective: String,
    /// The `[control]` method.
    pub method: String,
    /// Number of runs (seeds).
    pub n_seeds: usize,
    /// Their seeds.
    pub seeds: Vec<u64>,
    /// Held-out accuracy before RL over seeds.
    pub eval_accuracy_before: Option<Stat>,
    /// Held-out accuracy after RL over seeds.
    pub eval_accuracy_after: Option<Stat>,
    /// Held-out mean length before RL over seeds.
    pub eval_response_length_before: Option<Stat>,
    /// Held-out mean length after RL over seeds.
    pub eval_response_length_after: Option<Stat>,
    /// Train mean response length at the last step, over seeds.
    pub final_response_length_mean: Option<Stat>,
    /// Train accuracy at the last step, over seeds.
    pub final_accuracy: Option<Stat>,
    /// Mean length of correct sampled responses (whole run), over seeds.
    pub correct_mean_length: Option<Stat>,
    /// Mean length of incorrect sampled responses (whole run), over seeds.
    pub incorrect_mean_length: Option<Stat>,
    /// Mean length of A>0 responses (whole run), over seeds.
    pub positive_advantage_mean_length: Option<Stat>,
    /// Mean length of A<0 responses (whole run), over seeds.
    pub negative_advantage_mean_length: Option<Stat>,
    /// Fraction truncated (whole run), over seeds.
    pub truncated_frac: Option<Stat>,
}

/// The content of `compare.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    /// Every run, grouped by arm (first-seen order), then by seed.
    pub runs: Vec<RunReport>,
    /// One entry per arm.
    pub by_objective: Vec<ObjectiveReport>,
    /// Plot files written, relative to the output folder (without extension: each has .svg and .png).
    pub plots: Vec<String>,
}

/// The arm label of each run: the objective when no run has a `[control]` method, the method when every run has
/// the same objective (a comparison over methods, `none` the baseline), else `objective+method` (`objective` alone
/// for method `none`).
pub fn arm_labels(runs: &[Run]) -> Vec<String> {
    let plain = runs.iter().all(|r| r.method == "none");
    let one_objective = runs.iter().all(|r| r.objective == runs[0].objective);
    runs.iter()
        .map(|r| {
            if plain {
                r.objective.clone()
            } else if one_objective {
                r.method.clone()
            } else if r.method == "none" {
                r.objective.clone()
            } else {
                format!("{}+{}", r.objective, r.method)
            }
        })
        .collect()
}

fn run_report(run: &Run, arm: String) -> RunReport {
    let ba = run.before_after();
    let m = &run.metrics;
    let col = |f: fn(&crate::metrics::StepMetrics) -> f64| m.iter().map(f).collect::<Vec<f64>>();
    RunReport {
        arm,
        objective: run.objective.clone(),
        method: run.method.clone(),
        seed: run.seed,
        run_dir: run.dir.display().to_string(),
        steps: run.steps(),
        eval_accuracy_before: ba.accuracy_before,
        eval_accuracy_after: ba.accuracy_after,
        eval_response_length_before: ba.length_before,
        eval_response_length_after: ba.length_after,
        curves: Curves {
            step: m.iter().map(|s| s.step).collect(),
            response_length_mean: col(|s| s.response_length_mean),
            response_length_p10: col(|s| s.response_length_p10),
            response_length_p90: col(|s| s.response_length_p90),
            accuracy: col(|s| s.accuracy),
            entropy: col(|s| s.entropy),
            clip_frac_low: col(|s| s.clip_frac_low),
            clip_frac_high: col(|s| s.clip_frac_high),
            truncated_frac: col(|s| s.truncated_frac),
            grad_mass_pos: col(|s| s.grad_mass_pos),
            grad_mass_neg: col(|s| s.grad_mass_neg),
            grad_share_len_q1: col(|s| s.grad_share_len_q1),
            grad_share_len_q4: col(|s| s.grad_share_len_q4),
            clip_len_low_clipped: col(|s| s.clip_len_low_clipped),
            clip_len_low_kept: col(|s| s.clip_len_low_kept),
            clip_len_high_clipped: col(|s| s.clip_len_high_clipped),
            clip_len_high_kept: col(|s| s.clip_len_high_kept),
            len_adv_cov: col(|s| s.len_adv_cov),
            len_push: col(|s| s.len_push),
            len_push_reward: col(|s| s.len_push_reward),
            len_push_weighting: col(|s| s.len_push_weighting),
            len_push_clip: col(|s| s.len_push_clip),
        },
        eval_curves: EvalCurves {
            step: run.evals.iter().map(|e| e.step).collect(),
            accuracy: run.evals.iter().map(|e| e.accuracy).collect(),
            response_length_mean: run.evals.iter().map(|e| e.response_length_mean).collect(),
        },
        length_analysis: analyse_lengths(&run.rollouts),
    }
}

/// Arms in first-seen order, each with its runs sorted by seed.
fn group_by_objective(runs: &[RunReport]) -> Vec<(String, Vec<&RunReport>)> {
    let mut groups: Vec<(String, Vec<&RunReport>)> = Vec::new();
    for r in runs {
        match groups.iter_mut().find(|(o, _)| *o == r.arm) {
            Some((_, v)) => v.push(r),
            None => groups.push((r.arm.clone(), vec![r])),
        }
    }
    for (_, v) in &mut groups {
        v.sort_by_key(|r| r.seed);
    }
    groups
}

fn objective_report(arm: &str, runs: &[&RunReport]) -> ObjectiveReport {
    let stat = |f: &dyn Fn(&RunReport) -> Option<f64>| {
        Stat::of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
    };
    ObjectiveReport {
        arm: arm.to_string(),
        objective: runs[0].objective.clone(),
        method: runs[0].method.clone(),
        n_seeds: runs.len(),
        seeds: runs.iter().map(|r| r.seed).collect(),
        eval_accuracy_before: stat(&|r| r.eval_accuracy_before),
        eval_accuracy_after: stat(&|r| r.eval_accuracy_after),
        eval_response_length_before: stat(&|r| r.eval_response_length_before),
        eval_response_length_after: stat(&|r| r.eval_response_length_after),
        final_response_length_mean: stat(&|r| r.curves.response_length_mean.last().copied()),
        final_accuracy: stat(&|r| r.curves.accuracy.last().copied()),
        correct_mean_length: stat(&|r| r.length_analysis.correct.mean_length),
        incorrect_mean_length: stat(&|r| r.length_analysis.incorrect.mean_length),
        positive_advantage_mean_length: stat(&|r| r.length_analysis.positive_advantage.mean_length),
        negative_advantage_mean_length: stat(&|r| r.length_analysis.negative_advantage.mean_length),
        truncated_frac: stat(&|r| r.length_analysis.truncated_frac),
    }
}

/// Builds the comparison of `runs` (no files written).
pub fn compare(runs: &[Run]) -> Comparison {
    let reports: Vec<RunReport> = runs
        .iter()
        .zip(arm_labels(runs))
        .map(|(r, arm)| run_report(r, arm))
        .collect();
    let groups = group_by_objective(&reports);
    let by_objective = groups
        .iter()
        .map(|(o, rs)| objective_report(o, rs))
        .collect();
    let ordered: Vec<RunReport> = groups
        .iter()
        .flat_map(|(_, rs)| rs.iter().map(|r| (*r).clone()))
        .collect();
    Comparison {
        runs: ordered,
        by_objective,
        plots: Vec::new(),
    }
}

/// Per-step aggregate over seeds: (x, mean, min, max) at each step some seed has a value for.
fn aggregate(per_run: &[Vec<(u64, f64)>]) -> Vec<(f64, f64, f64, f64)> {
    let mut at: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for run in per_run {
        for &(s, v) in run {
            if v.is_finite() {
                at.entry(s).or_default().push(v);
            }
        }
    }
    at.into_iter()
        .filter_map(|(s, v)| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Some((s as f64, mean(&v)?, lo, hi))
        })
        .collect()
}

/// One line per objective: mean over seeds, band min–max over seeds when there are several.
fn seed_series(
    groups: &[(String, Vec<&RunReport>)],
    get: &dyn Fn(&RunReport) -> Vec<(u64, f64)>,
    dashed: bool,
    label_suffix: &str,
) -> Vec<Series> {
    groups
        .iter()
        .enumerate()
        .map(|(i, (obj, rs))| {
            let agg = aggregate(&rs.iter().map(|r| get(r)).collect::<Vec<_>>());
            let band = if rs.len() > 1 {
                agg.iter().map(|&(x, _, lo, hi)| (x, lo, hi)).collect()
            } else {
                Vec::new()
            };
            Series {
                label: format!("{obj}{label_suffix}"),
                color: PALETTE[i % PALETTE.len()],
                dashed,
                points: agg.iter().map(|&(x, m, _, _)| (x, m)).collect(),
                band,
            }
        })
        .collect()
}

fn zip(steps: &[u64], v: &[f64]) -> Vec<(u64, f64)> {
    steps.iter().copied().zip(v.iter().copied()).collect()
}

fn step_opt(r: &RunReport, f: fn(&analysis::StepLengths) -> Option<f64>) -> Vec<(u64, f64)> {
    r.length_analysis
        .by_step
        .iter()
        .filter_map(|s| Some((s.step, f(s)?)))
        .collect()
}

/// The figures drawn for a comparison.
fn plot_specs(cmp: &Comparison) -> Vec<PlotSpec> {
    let groups = group_by_objective(&cmp.runs);
    let multi = groups.iter().any(|(_, rs)| rs.len() > 1);
    let band_note = if multi {
        " (band: min–max over seeds)"
    } else {
        ""
    };
    let spec = |stem: &str, title: String, y: &str, series: Vec<Series>| PlotSpec {
        stem: stem.to_string(),
        title,
        x_label: "RL step".to_string(),
        y_label: y.to_string(),
        series,
    };
    let curve =
        |f: fn(&Curves) -> &Vec<f64>| move |r: &RunReport| zip(&r.curves.step, f(&r.curves));
    // Response length: mean over seeds, band = mean over seeds of the p10 and p90 curves.
    let length_series: Vec<Series> = groups
        .iter()
        .enumerate()
        .map(|(i, (obj, rs))| {
            let series = |f: fn(&Curves) -> &Vec<f64>| {
                aggregate(
                    &rs.iter()
                        .map(|r| zip(&r.curves.step, f(&r.curves)))
                        .collect::<Vec<_>>(),
                )
            };
            let m = series(|c| &c.response_length_mean);
            let p10: BTreeMap<u64, f64> = series(|c| &c.response_length_p10)
                .iter()
                .map(|p| (p.0 as u64, p.1))
                .collect();
            let p90: BTreeMap<u64, f64> = series(|c| &c.response_length_p90)
                .iter()
                .map(|p| (p.0 as u64, p.1))
                .collect();
            let band = p10
                .iter()
                .filter_map(|(s, lo)| Some((*s as f64, *lo, *p90.get(s)?)))
                .collect();
            Series {
                label: obj.clone(),
                color: PALETTE[i % PALETTE.len()],
                dashed: false,
                points: m.iter().map(|&(x, y, _, _)| (x, y)).collect(),
                band,
            }
        })
        .collect();
    let mut by_adv = seed_series(
        &groups,
        &|r| step_opt(r, |s| s.positive_advantage_mean_length),
        false,
        " A>0",
    );
    by_adv.extend(seed_series(
        &groups,
        &|r| step_opt(r, |s| s.negative_advantage_mean_length),
        true,
        " A<0",
    ));
    for s in &mut by_adv {
        s.band.clear();
    }
    let mut by_correct = seed_series(
        &groups,
        &|r| step_opt(r, |s| s.correct_mean_length),
        false,
        " correct",
    );
    by_correct.extend(seed_series(
        &groups,
        &|r| step_opt(r, |s| s.incorrect_mean_length),
        true,
        " incorrect",
    ));
    for s in &mut by_correct {
        s.band.clear();
    }
    let pair = |a: fn(&Curves) -> &Vec<f64>, b: fn(&Curves) -> &Vec<f64>, sa: &str, sb: &str| {
        let mut v = seed_series(&groups, &curve(a), false, sa);
        v.extend(seed_series(&groups, &curve(b), true, sb));
        for s in &mut v {
            s.band.clear();
        }
        v
    };
    let mechanism = vec![
        spec(
            "grad_mass_by_sign",
            "Gradient mass Σ|w| (solid A>0, dashed A<0; mean over seeds)".to_string(),
            "mass per optimizer step",
            pair(|c| &c.grad_mass_pos, |c| &c.grad_mass_neg, " A>0", " A<0"),
        ),
        spec(
            "grad_share_by_length",
            "Share of gradient mass: longest (solid) vs shortest (dashed) length quartile"
                .to_string(),
            "fraction",
            pair(
                |c| &c.grad_share_len_q4,
                |c| &c.grad_share_len_q1,
                " Q4",
                " Q1",
            ),
        ),
        spec(
            "clip_length_low",
            "Length of A<0 responses: clipped (solid) vs kept (dashed)".to_string(),
            "tokens",
            pair(
                |c| &c.clip_len_low_clipped,
                |c| &c.clip_len_low_kept,
                " clipped",
                " kept",
            ),
        ),
        spec(
            "clip_length_high",
            "Length of A>0 responses: clipped (solid) vs kept (dashed)".to_string(),
            "tokens",
            pair(
                |c| &c.clip_len_high_clipped,
                |c| &c.clip_len_high_kept,
                " clipped",
                " kept",
            ),
        ),
        spec(
            "len_adv_cov",
            format!("Cov(length, advantage) over responses carrying gradient{band_note}"),
            "tokens",
            seed_series(&groups, &curve(|c| &c.len_adv_cov), false, ""),
        ),
        spec(
            "len_push",
            format!("First-order length push (> 0 favours longer){band_note}"),
            "tokens",
            seed_series(&groups, &curve(|c| &c.len_push), false, ""),
        ),
    ];
    let mut specs = vec![
        spec(
            "response_length",
            "Response length (mean over seeds; band: p10–p90)".to_string(),
            "tokens",
            length_series,
        ),
        spec(
            "accuracy",
            format!("Train accuracy{band_note}"),
            "fraction correct",
            seed_series(&groups, &curve(|c| &c.accuracy), false, ""),
        ),
        spec(
            "eval_accuracy",
            format!("Held-out accuracy{band_note}"),
            "fraction correct",
            seed_series(
                &groups,
                &|r| zip(&r.eval_curves.step, &r.eval_curves.accuracy),
                false,
                "",
            ),
        ),
        spec(
            "eval_response_length",
            format!("Held-out response length{band_note}"),
            "tokens",
            seed_series(
                &groups,
                &|r| zip(&r.eval_curves.step, &r.eval_curves.response_length_mean),
                false,
                "",
            ),
        ),
        spec(
            "entropy",
            format!("Policy entropy{band_note}"),
            "nats per token",
            seed_series(&groups, &curve(|c| &c.entropy), false, ""),
        ),
        spec(
            "clip_frac_low",
            format!("Clip fraction, low side{band_note}"),
            "fraction",
            seed_series(&groups, &curve(|c| &c.clip_frac_low), false, ""),
        ),
        spec(
            "clip_frac_high",
            format!("Clip fraction, high side{band_note}"),
            "fraction",
            seed_series(&groups, &curve(|c| &c.clip_frac_high), false, ""),
        ),
        spec(
            "truncated_frac",
            format!("Truncated responses{band_note}"),
            "fraction",
            seed_series(&groups, &curve(|c| &c.truncated_frac), false, ""),
        ),
        spec(
            "length_by_advantage",
            "Length by advantage sign (solid A>0, dashed A<0; mean over seeds)".to_string(),
            "tokens",
            by_adv,
        ),
        spec(
            "length_correct_incorrect",
            "Length of correct (solid) vs incorrect (dashed) responses".to_string(),
            "tokens",
            by_correct,
        ),
    ];
    specs.extend(mechanism);
    specs
}

/// Writes `compare.json`, `report.md`, `report.html` and `plots/*.{svg,png}` for `runs` into `out_dir`
/// (created if needed); returns the comparison written.
pub fn write_comparison(runs: &[Run], out_dir: &Path) -> Result<Comparison> {
    if runs.is_empty() {
        return Err(input_err!("no runs to compare"));
    }
    let plots_dir = out_dir.join("plots");
    std::fs::create_dir_all(&plots_dir)
        .map_err(|e| input_err!("{}: cannot create: {e}", plots_dir.display()))?;
    let mut cmp = compare(runs);
    for spec in plot_specs(&cmp) {
        plot::write_plot(&plots_dir, &spec)?;
        cmp.plots.push(format!("plots/{}", spec.stem));
    }
    let json = serde_json::to_string_pretty(&cmp)?;
    crate::atomic::write(&out_dir.join("compare.json"), json.as_bytes())?;
    crate::atomic::write(
        &out_dir.join("report.md"),
        markdown::render(&cmp).as_bytes(),
    )?;
    crate::atomic::write(
        &out_dir.join("report.html"),
        markdown::render_html(&cmp).as_bytes(),
    )?;
    Ok(cmp)
}

/// Reads the run directories and writes the comparison into `out_dir`.
pub fn report_dirs<P: AsRef<Path>>(dirs: &[P], out_dir: &Path) -> Result<Comparison> {
    let runs = load_runs(dirs)?;
    write_comparison(&runs, out_dir)
}

/// The plot file stems `write_comparison` writes (under `plots/`).
pub fn plot_names() -> Vec<String> {
    plot_specs(&Comparison {
        runs: Vec::new(),
        by_objective: Vec::new(),
        plots: Vec::new(),
    })
    .into_iter()
    .map(|s| s.stem)
    .collect()
}

/// Paths of the files `write_comparison` writes into `out_dir`.
pub fn output_files(out_dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![
        out_dir.join("compare.json"),
        out_dir.join("report.md"),
        out_dir.join("report.html"),
    ];
    for n in plot_names() {
        v.push(out_dir.join("plots").join(format!("{n}.svg")));
        v.push(out_dir.join("plots").join(format!("{n}.png")));
    }
    v
}
