//! Reading run directories back: `metrics.jsonl`, `eval.jsonl`, `rollouts.jsonl`, `summary.json`, `config.toml`.

use crate::metrics::{EvalRecord, RolloutRecord, StepMetrics, Summary};
use crate::{input_err, Result};
use serde::de::DeserializeOwned;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// A run read back from its directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The directory, as given.
    pub dir: PathBuf,
    /// Objective preset name (from `summary.json`, else `objective.name` in `config.toml`).
    pub objective: String,
    /// The `[control]` method (`control.method` in `config.toml`; `none` when absent).
    pub method: String,
    /// Run seed (from `summary.json`, else `seed` in `config.toml`, else 0).
    pub seed: u64,
    /// One record per RL step, in file order.
    pub metrics: Vec<StepMetrics>,
    /// Held-out evaluations, in file order (empty when `eval.jsonl` is absent).
    pub evals: Vec<EvalRecord>,
    /// Sampled responses (empty when `rollouts.jsonl` is absent).
    pub rollouts: Vec<RolloutRecord>,
    /// The end-of-run summary, when the run finished.
    pub summary: Option<Summary>,
}

/// Held-out accuracy and length before and after RL, where known.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BeforeAfter {
    /// Accuracy before RL.
    pub accuracy_before: Option<f64>,
    /// Accuracy after RL.
    pub accuracy_after: Option<f64>,
    /// Mean response length before RL.
    pub length_before: Option<f64>,
    /// Mean response length after RL.
    pub length_after: Option<f64>,
}

impl Run {
    /// Before/after figures: from `summary.json` when present, else from `eval.jsonl`
    /// (step 0 = before, the last record with step > 0 = after).
    pub fn before_after(&self) -> BeforeAfter {
        if let Some(s) = &self.summary {
            return BeforeAfter {
                accuracy_before: Some(s.eval_accuracy_before),
                accuracy_after: Some(s.eval_accuracy_after),
                length_before: Some(s.eval_response_length_before),
                length_after: Some(s.eval_response_length_after),
            };
        }
        let before = self.evals.iter().find(|e| e.step == 0);
        let after = self
            .evals
            .iter()
            .filter(|e| e.step > 0)
            .max_by_key(|e| e.step);
        BeforeAfter {
            accuracy_before: before.map(|e| e.accuracy),
            accuracy_after: after.map(|e| e.accuracy),
            length_before: before.map(|e| e.response_length_mean),
            length_after: after.map(|e| e.response_length_mean),
        }
    }

    /// RL steps completed: the summary's count, else the last step in `metrics.jsonl`.
    pub fn steps(&self) -> u64 {
        match &self.summary {
            Some(s) => s.steps,
            None => self.metrics.iter().map(|m| m.step).max().unwrap_or(0),
        }
    }
}

/// Reads a JSON-lines file; a malformed line is an `Error::Input` naming the file and the line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    read_lines(path, |line| {
        serde_json::from_str(line).map_err(|e| strip_position(&e))
    })
}

/// Parses each non-blank line of `path` with `parse`; its error is prefixed with the file and line.
fn read_lines<T>(
    path: &Path,
    parse: impl Fn(&str) -> std::result::Result<T, String>,
) -> Result<Vec<T>> {
    let file = std::fs::File::open(path)
        .map_err(|e| input_err!("{}: cannot open: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| input_err!("{}: line {}: {e}", path.display(), i + 1))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let rec = parse(line).map_err(|e| input_err!("{}: line {}: {e}", path.display(), i + 1))?;
        out.push(rec);
    }
    Ok(out)
}

/// serde_json's message without its " at line 1 column N" tail (the line is named by the caller).
fn strip_position(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(i) => format!("{} (column {})", &msg[..i], e.column()),
        None => msg,
    }
}

/// A record whose float fields may be written as `null` (serde_json writes NaN and ±inf that way).
pub trait NullAsNan: DeserializeOwned {
    /// The float field named `key`, if there is one.
    fn float_field(&mut self, key: &str) -> Option<&mut f64>;
}

impl NullAsNan for StepMetrics {
    fn float_field(&mut self, key: &str) -> Option<&mut f64> {
        Some(match key {
            "reward_mean" => &mut self.reward_mean,
            "reward_std" => &mut self.reward_std,
            "accuracy" => &mut self.accuracy,
            "reward_format" => &mut self.reward_format,
            "reward_overlong" => &mut self.reward_overlong,
            "response_length_mean" => &mut self.response_length_mean,
            "response_length_p10" => &mut self.response_length_p10,
            "response_length_p90" => &mut self.response_length_p90,
            "response_length_max" => &mut self.response_length_max,
            "response_length_correct" => &mut self.response_length_correct,
            "response_length_incorrect" => &mut self.response_length_incorrect,
            "truncated_frac" => &mut self.truncated_frac,
            "frac_reward_zero_std" => &mut self.frac_reward_zero_std,
            "entropy" => &mut self.entropy,
            "clip_frac_low" => &mut self.clip_frac_low,
            "clip_frac_high" => &mut self.clip_frac_high,
            "ratio_mean" => &mut self.ratio_mean,
            "approx_kl" => &mut self.approx_kl,
            "loss" => &mut self.loss,
            "grad_norm" => &mut self.grad_norm,
            "lr" => &mut self.lr,
            "tokens_per_s" => &mut self.tokens_per_s,
            "step_seconds" => &mut self.step_seconds,
            "grad_mass_pos" => &mut self.grad_mass_pos,
            "grad_mass_neg" => &mut self.grad_mass_neg,
            "grad_share_len_q1" => &mut self.grad_share_len_q1,
            "grad_share_len_q2" => &mut self.grad_share_len_q2,
            "grad_share_len_q3" => &mut self.grad_share_len_q3,
            "grad_share_len_q4" => &mut self.grad_share_len_q4,
            "clip_len_low_clipped" => &mut self.clip_len_low_clipped,
            "clip_len_low_kept" => &mut self.clip_len_low_kept,
            "clip_len_high_clipped" => &mut self.clip_len_high_clipped,
            "clip_len_high_kept" => &mut self.clip_len_high_kept,
            "len_adv_cov" => &mut self.len_adv_cov,
            "len_push" => &mut self.len_push,
            "len_push_reward" => &mut self.len_push_reward,
            "len_push_weighting" => &mut self.len_push_weighting,
            "len_push_clip" => &mut self.len_push_clip,
            _ => return None,
        })
    }
}

impl NullAsNan for EvalRecord {
    fn float_field(&mut self, key: &str) -> Option<&mut f64> {
        Some(match key {
            "accuracy" => &mut self.accuracy,
            "response_length_mean" => &mut self.response_length_mean,
            "response_length_correct" => &mut self.response_length_correct,
            "response_length_incorrect" => &mut self.response_length_incorrect,
            "truncated_frac" => &mut self.truncated_frac,
            _ => return None,
        })
    }
}

/// Like `read_jsonl`, but a `null` in a float field reads as NaN (a diverged step stays readable;
/// plots and statistics skip non-finite values).
pub fn read_jsonl_nan<T: NullAsNan + Default>(path: &Path) -> Result<Vec<T>> {
    read_lines(path, |line| {
        let mut v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| strip_position(&e))?;
        let mut nulls = Vec::new();
        if let Some(obj) = v.as_object_mut() {
            for (k, x) in obj.iter_mut() {
                // Only float fields: a null optional field (e.g. `kl`) stays null and reads as None.
                if x.is_null() && T::default().float_field(k).is_some() {
                    nulls.push(k.clone());
                    *x = serde_json::Value::from(0.0);
                }
            }
        }
        let mut rec: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
        for k in nulls {
            if let Some(f) = rec.float_field(&k) {
                *f = f64::NAN;
            }
        }
        Ok(rec)
    })
}

/// Optional JSON-lines file with null floats read as NaN: absent → empty.
fn read_jsonl_nan_opt<T: NullAsNan + Default>(path: &Path) -> Result<Vec<T>> {
    if path.exists() {
        read_jsonl_nan(path)
    } else {
        Ok(Vec::new())
    }
}

/// Reads an optional JSON-lines file: absent → empty.
fn read_jsonl_opt<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if path.exists() {
        read_jsonl(path)
    } else {
        Ok(Vec::new())
    }
}

/// Whether `dir` looks like a run directory (`metrics.jsonl` or `summary.json` inside).
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join("metrics.jsonl").is_file() || dir.join("summary.json").is_file()
}

/// Reads one run directory.
pub fn load_run(dir: &Path) -> Result<Run> {
    if !dir.is_dir() {
        let why = if dir.exists() {
            "not a directory"
        } else {
            "no such directory"
        };
        return Err(input_err!("{}: not a run directory ({why})", dir.display()));
    }
    if !is_run_dir(dir) {
        return Err(input_err!(
            "{}: not a run directory (no metrics.jsonl or summary.json)",
            dir.display()
        ));
    }
    let summary_path = dir.join("summary.json");
    let summary: Option<Summary> = if summary_path.is_file() {
        let text = std::fs::read_to_string(&summary_path)
            .map_err(|e| input_err!("{}: cannot read: {e}", summary_path.display()))?;
        Some(serde_json::from_str(&text).map_err(|e| {
            input_err!(
                "{}: line {}: {}",
                summary_path.display(),
                e.line(),
                strip_position(&e)
            )
        })?)
    } else {
        None
    };
    let config_path = dir.join("config.toml");
    let config: Option<toml::Value> = if config_path.is_file() {
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| input_err!("{}: cannot read: {e}", config_path.display()))?;
        let value = text.parse::<toml::Value>().map_err(|e| {
            let msg = e.message().trim().replace('\n', "; ");
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0);
            input_err!("{}: line {line}: {msg}", config_path.display())
        })?;
        Some(value)
    } else {
        None
    };
    let objective = match &summary {
        Some(s) if !s.objective.is_empty() => s.objective.clone(),
        _ => config
            .as_ref()
            .and_then(|c| c.get("objective"))
            .and_then(|o| o.get("name"))
            .and_then(|n| n.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                input_err!(
                    "{}: cannot tell the objective (no summary.json and no objective.name in config.toml)",
                    dir.display()
                )
            })?,
    };
    let method = config
        .as_ref()
        .and_then(|c| c.get("control"))
        .and_then(|c| c.get("method"))
        .and_then(|m| m.as_str())
        .unwrap_or("none")
        .to_string();
    let seed = match &summary {
        Some(s) => s.seed,
        None => config.as_ref().and_then(config_seed).unwrap_or(0),
    };
    Ok(Run {
        dir: dir.to_path_buf(),
        objective,
        method,
        seed,
        metrics: read_jsonl_nan_opt(&dir.join("metrics.jsonl"))?,
        evals: read_jsonl_nan_opt(&dir.join("eval.jsonl"))?,
        rollouts: read_jsonl_opt(&dir.join("rollouts.jsonl"))?,
        summary,
    })
}

/// The run seed in a config: `seed`, else `run.seed` or `train.seed`.
fn config_seed(c: &toml::Value) -> Option<u64> {
    let top = c.get("seed");
    let nested = || {
        ["run", "train"]
            .iter()
            .find_map(|t| c.get(t).and_then(|v| v.get("seed")))
    };
    top.or_else(nested)
        .and_then(|v| v.as_integer())
        .and_then(|i| u64::try_from(i).ok())
}

/// Reads several run directories, in the order given.
pub fn load_runs<P: AsRef<Path>>(dirs: &[P]) -> Result<Vec<Run>> {
    dirs.iter().map(|d| load_run(d.as_ref())).collect()
}

/// Default output folder of `luspo report`: the runs' common parent, or `./report` when that is
/// empty, the current folder or the filesystem root.
pub fn default_out_dir<P: AsRef<Path>>(dirs: &[P]) -> PathBuf {
    let mut common: Option<Vec<std::path::Component>> = None;
    for d in dirs {
        let parent: Vec<_> = d
            .as_ref()
            .parent()
            .map(|p| p.components().collect())
            .unwrap_or_default();
        common = Some(match common {
            None => parent,
            Some(c) => c
                .iter()
                .zip(parent.iter())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| *a)
                .collect(),
        });
    }
    let common: PathBuf = common.unwrap_or_default().into_iter().collect();
    let trivial =
        common.as_os_str().is_empty() || common == Path::new(".") || common.parent().is_none();
    if trivial {
        PathBuf::from("report")
    } else {
        common
    }
}
