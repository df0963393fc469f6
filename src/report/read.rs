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
    let file = std::fs::File::open(path)
        .map_err(|e| input_err!("{}: cannot open: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| input_err!("{}: line {}: {e}", path.display(), i + 1))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let rec = serde_json::from_str(line).map_err(|e| {
            input_err!("{}: line {}: {}", path.display(), i + 1, strip_position(&e))
        })?;
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
        return Err(input_err!(
            "{}: not a run directory (no such directory)",
            dir.display()
        ));
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
    let seed = match &summary {
        Some(s) => s.seed,
        None => config.as_ref().and_then(config_seed).unwrap_or(0),
    };
    Ok(Run {
        dir: dir.to_path_buf(),
        objective,
        seed,
        metrics: read_jsonl_opt(&dir.join("metrics.jsonl"))?,
        evals: read_jsonl_opt(&dir.join("eval.jsonl"))?,
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
