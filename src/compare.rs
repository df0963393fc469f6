//! `luspo compare`: several objectives, or several `[control]` methods under one objective, trained from one warm
//! start on the same prompts, seeds and data order, each into its own run directory, then one report (plots,
//! `compare.json`, `report.md`) over all of them.
//!
//! Arms: by default one per objective (`--objectives` / `[compare] objectives`). With methods (`--methods` /
//! `[compare] methods`) one per method, all with the one objective (`--objectives` with a single name, else the
//! config's `objective.name`) and `control.method = <method>`; `none` is the plain baseline.
//!
//! Configuration layering: the embedded `configs/default.toml`, the embedded `configs/compare.toml`, the user's
//! `--config` file, then the arm's objective's `[compare.overrides.<objective>]` table, then (method arms) its
//! `[compare.overrides.<method>]` table, then every `--set`, then `objective.name`, `control.method` (method arms)
//! and `seed`. The `[compare]` section (objectives, methods, seeds, overrides) is read here and never reaches
//! `RunConfig`.
//!
//! Sameness across objectives: a run's warm start (SFT cache key), its initial weights and its RL data, rollout and
//! shuffle RNGs all derive from `seed` alone (`train::files::derive_seed`), never from the objective; `compare`
//! first fills the warm-start cache once per seed (child processes in parallel), then starts the RL runs.
//!
//! Runs are child processes of the same binary (`luspo train --config <resolved> --out DIR/<objective>-s<seed>`)
//! with `RAYON_NUM_THREADS=1`, `jobs` at a time; their logs go to `DIR/logs/`.

use crate::control::MethodName;
use crate::objective::Preset;
use crate::train::config::{apply_sets, merge, RunConfig, DEFAULT_TOML};
use crate::{input_err, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The embedded compare configuration (`configs/compare.toml`): the length experiment's settings.
pub const COMPARE_TOML: &str = include_str!("../configs/compare.toml");

/// The `[compare]` section of a config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompareSection {
    /// Objective presets to run (when `--objectives` is not given).
    pub objectives: Vec<String>,
    /// `[control]` methods to run as arms under one objective (when `--methods` is not given); empty = compare
    /// objectives.
    pub methods: Vec<String>,
    /// Seeds per objective (when `--seeds` is not given).
    pub seeds: Option<u64>,
    /// Per-objective or per-method overrides, layered after the config file and before `--set`, e.g.
    /// `[compare.overrides.gspo]`, `[compare.overrides.hapo]`.
    pub overrides: BTreeMap<String, toml::Table>,
}

/// One run of a comparison.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// The arm's label: its objective, or its method when the comparison is over methods.
    pub arm: String,
    /// Objective preset.
    pub objective: String,
    /// The `[control]` method (`none` unless the comparison is over methods).
    pub method: String,
    /// Run seed.
    pub seed: u64,
    /// Run directory name under the compare directory (`<arm>-s<seed>`).
    pub name: String,
    /// Its fully resolved configuration.
    pub config: RunConfig,
}

/// Everything a comparison will run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Objectives, in order (one when the comparison is over methods).
    pub objectives: Vec<String>,
    /// Methods, in order (empty when the comparison is over objectives).
    pub methods: Vec<String>,
    /// Seeds, in order.
    pub seeds: Vec<u64>,
    /// Runs, seed-major (all arms of the first seed first).
    pub runs: Vec<PlannedRun>,
}

impl Plan {
    /// The arm labels, in order: the methods when comparing methods, else the objectives.
    pub fn arms(&self) -> &[String] {
        if self.methods.is_empty() {
            &self.objectives
        } else {
            &self.methods
        }
    }
}

fn parse(text: &str, origin: &str) -> Result<toml::Table> {
    let mut t = text.parse::<toml::Table>().map_err(|e| {
        let msg = e.to_string();
        let first = msg
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        input_err!("{origin}: {}", first.replace("TOML parse error ", ""))
    })?;
    canonical_overrides(&mut t, origin)?;
    Ok(t)
}

/// Renames the `[compare.overrides.<name>]` tables of one layer to their preset's (or method's) canonical name, so
/// that `[compare.overrides.GSPO]` layers over (and applies like) the embedded `[compare.overrides.gspo]`.
fn canonical_overrides(layer: &mut toml::Table, origin: &str) -> Result<()> {
    let Some(toml::Value::Table(ov)) = layer
        .get_mut("compare")
        .and_then(|c| c.as_table_mut())
        .and_then(|c| c.get_mut("overrides"))
    else {
        return Ok(());
    };
    let mut out = toml::Table::new();
    for (k, v) in std::mem::take(ov) {
        let Some(name) = Preset::from_name(&k)
            .map(|p| p.name())
            .or_else(|| MethodName::from_name(&k).map(|m| m.name()))
        else {
            return Err(input_err!(
                "{origin}: [compare.overrides.{k}]: unknown objective or method `{k}`"
            ));
        };
        if out.insert(name.to_string(), v).is_some() {
            return Err(input_err!(
                "{origin}: [compare.overrides.{k}]: `{name}` has two override tables"
            ));
        }
    }
    *ov = out;
    Ok(())
}

/// Parses `grpo,gspo,luspo` into checked preset names (exactly one line of error for an unknown or repeated one).
pub fn parse_objectives(list: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = vec![];
    for name in list
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if Preset::from_name(name).is_none() {
            let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
            return Err(input_err!(
                "--objectives: unknown objective `{name}` (expected one of: {})",
                names.join(", ")
            ));
        }
        if out.iter().any(|o| o == name) {
            return Err(input_err!("--objectives: `{name}` is listed twice"));
        }
        out.push(name.to_string());
    }
    if out.is_empty() {
        return Err(input_err!("--objectives: no objective given"));
    }
    Ok(out)
}

/// Parses `none,hapo,dler` into checked `[control]` method names (one line of error for an unknown or repeated
/// one).
pub fn parse_methods(list: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = vec![];
    for name in list
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let Some(m) = MethodName::from_name(name) else {
            let names: Vec<&str> = MethodName::ALL.iter().map(|m| m.name()).collect();
            return Err(input_err!(
                "--methods: unknown method `{name}` (expected one of: {})",
                names.join(", ")
            ));
        };
        if out.iter().any(|o| o == m.name()) {
            return Err(input_err!("--methods: `{name}` is listed twice"));
        }
        out.push(m.name().to_string());
    }
    if out.is_empty() {
        return Err(input_err!("--methods: no method given"));
    }
    Ok(out)
}

/// Resolves the runs of a comparison (see the module doc for the layering). `objectives`/`seeds` override the
/// `[compare]` section, and so do `methods` (a comparison over methods); every run config is validated here, before
/// anything runs.
pub fn plan(
    config: Option<&Path>,
    sets: &[String],
    objectives: Option<&[String]>,
    methods: Option<&[String]>,
    seeds: Option<u64>,
) -> Result<Plan> {
    let mut table = parse(DEFAULT_TOML, "configs/default.toml (embedded)")?;
    merge(
        &mut table,
        parse(COMPARE_TOML, "configs/compare.toml (embedded)")?,
    );
    if let Some(path) = config {
        let text =
            std::fs::read_to_string(path).map_err(|e| input_err!("{}: {e}", path.display()))?;
        merge(&mut table, parse(&text, &path.display().to_string())?);
    }
    let section: CompareSection = match table.remove("compare") {
        Some(v) => v
            .try_into()
            .map_err(|e: toml::de::Error| input_err!("[compare]: {}", e.message().trim()))?,
        None => CompareSection::default(),
    };
    let methods = match methods {
        Some(list) => parse_methods(list)?,
        None if section.methods.is_empty() => vec![],
        None => parse_methods(&section.methods)?,
    };
    let objectives = match objectives {
        Some(list) => parse_objectives(list)?,
        None if !methods.is_empty() => {
            // The config's objective after the `--set`s (the one every method arm trains with).
            let mut t = table.clone();
            apply_sets(&mut t, sets)?;
            let name = t
                .get("objective")
                .and_then(|o| o.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or("luspo")
                .to_string();
            let p =
                Preset::from_name(&name).ok_or_else(|| Preset::unknown("objective.name", &name))?;
            vec![p.name().to_string()]
        }
        None if section.objectives.is_empty() => {
            parse_objectives(&["grpo,gspo,luspo".to_string()])?
        }
        None => parse_objectives(&section.objectives)?,
    };
    if !methods.is_empty() && objectives.len() != 1 {
        return Err(input_err!(
            "--methods: a comparison over methods takes one objective, got --objectives {}",
            objectives.join(",")
        ));
    }
    let n_seeds = seeds.or(section.seeds).unwrap_or(1);
    if n_seeds == 0 {
        return Err(input_err!("--seeds: must be ≥ 1"));
    }
    let base_seed = match table.get("seed") {
        Some(toml::Value::Integer(s)) if *s >= 0 => *s as u64,
        Some(v) => return Err(input_err!("seed: expected a non-negative integer, got {v}")),
        None => 0,
    };
    let seed_list: Vec<u64> = (0..n_seeds).map(|i| base_seed + i).collect();
    let mut runs = vec![];
    // (objective, method) per arm.
    let arms: Vec<(String, Option<String>)> = if methods.is_empty() {
        objectives.iter().map(|o| (o.clone(), None)).collect()
    } else {
        methods
            .iter()
            .map(|m| (objectives[0].clone(), Some(m.clone())))
            .collect()
    };
    for &seed in &seed_list {
        for (obj, method) in &arms {
            let mut t = table.clone();
            // Override tables are keyed by canonical preset / method name (see `canonical_overrides`).
            let preset = Preset::from_name(obj).map(|p| p.name());
            if let Some(o) = preset.and_then(|p| section.overrides.get(p)) {
                merge(&mut t, o.clone());
            }
            if let Some(o) = method.as_ref().and_then(|m| section.overrides.get(m)) {
                merge(&mut t, o.clone());
            }
            let mut all_sets = sets.to_vec();
            all_sets.push(format!("objective.name=\"{obj}\""));
            if let Some(m) = method {
                all_sets.push(format!("control.method=\"{m}\""));
            }
            all_sets.push(format!("seed={seed}"));
            apply_sets(&mut t, &all_sets)?;
            let arm = method.clone().unwrap_or_else(|| obj.clone());
            let origin = format!("compare config of {arm}, seed {seed}");
            let config = RunConfig::from_toml_str(
                &toml::to_string(&t).map_err(|e| input_err!("{origin}: {e}"))?,
                &origin,
            )?;
            runs.push(PlannedRun {
                name: format!("{arm}-s{seed}"),
                arm,
                objective: obj.clone(),
                method: method.clone().unwrap_or_else(|| "none".into()),
                seed,
                config,
            });
        }
    }
    Ok(Plan {
        objectives,
        methods,
        seeds: seed_list,
        runs,
    })
}

/// How `run` is run.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The compare directory (run dirs, configs/, logs/, plots/, compare.json, report.md).
    pub out: PathBuf,
    /// Runs in parallel.
    pub jobs: usize,
    /// The `luspo` binary to spawn (normally `std::env::current_exe()`).
    pub exe: PathBuf,
    /// Keep finished runs (`summary.json`) and resume interrupted ones (checkpoint present) in `out`.
    pub resume: bool,
    /// Print progress lines on stderr.
    pub verbose: bool,
}

/// The default number of parallel runs: the machine's cores (at least 1).
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

struct Running {
    name: String,
    child: Child,
    log: PathBuf,
    started: Instant,
    metrics: PathBuf,
    total: u64,
}

fn spawn(opts: &CompareOptions, args: &[String], log: &Path) -> Result<Child> {
    let file = std::fs::File::create(log).map_err(|e| input_err!("{}: {e}", log.display()))?;
    let err = file
        .try_clone()
        .map_err(|e| input_err!("{}: {e}", log.display()))?;
    Command::new(&opts.exe)
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| input_err!("cannot start {}: {e}", opts.exe.display()))
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n    ")
}

fn count_lines(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count() as u64)
        .unwrap_or(0)
}

/// Runs jobs (`(name, args, log, metrics file, steps)`) `jobs` at a time; returns the names that failed.
fn run_pool(
    opts: &CompareOptions,
    phase: &str,
    jobs: Vec<(String, Vec<String>, PathBuf, PathBuf, u64)>,
    t0: Instant,
    on_done: &mut dyn FnMut(&str, f64),
) -> Result<Vec<String>> {
    let total = jobs.len();
    let mut queue = jobs.into_iter();
    let mut running: Vec<Running> = vec![];
    let mut failed = vec![];
    let mut done = 0usize;
    let mut last_print = Instant::now();
    let mut last_line = String::new();
    loop {
        while running.len() < opts.jobs.max(1) {
            let Some((name, args, log, metrics, steps)) = queue.next() else {
                break;
            };
            let child = spawn(opts, &args, &log)?;
            running.push(Running {
                name,
                child,
                log,
                started: Instant::now(),
                metrics,
                total: steps,
            });
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        let mut i = 0;
        while i < running.len() {
            let status = running[i]
                .child
                .try_wait()
                .map_err(|e| input_err!("waiting for {}: {e}", running[i].name))?;
            match status {
                None => i += 1,
                Some(st) => {
                    let r = running.remove(i);
                    done += 1;
                    let secs = r.started.elapsed().as_secs_f64();
                    if st.success() {
                        on_done(&r.name, secs);
                    } else {
                        if opts.verbose {
                            eprintln!(
                                "{phase} {}: FAILED ({st}) after {secs:.0}s; log {}:\n    {}",
                                r.name,
                                r.log.display(),
                                tail(&r.log, 5)
                            );
                        }
                        failed.push(r.name);
                    }
                }
            }
        }
        if opts.verbose && last_print.elapsed() >= Duration::from_secs(10) && !running.is_empty() {
            let parts: Vec<String> = running
                .iter()
                .map(|r| {
                    if r.total > 0 {
                        let n = count_lines(&r.metrics);
                        if n == 0 {
                            format!("{} warm start/eval", r.name)
                        } else {
                            format!("{} step {n}/{}", r.name, r.total)
                        }
                    } else {
                        // Warm start: its last progress line, e.g. `sft 170/1000`.
                        let last = tail(&r.log, 1);
                        let words: Vec<&str> = last.split_whitespace().take(2).collect();
                        format!("{} {}", r.name, words.join(" "))
                    }
                })
                .collect();
            let line = format!("{phase} [{done}/{total} done] {}", parts.join(" | "));
            if line != last_line {
                eprintln!("{line}  ({:.0}s)", t0.elapsed().as_secs_f64());
                last_line = line;
            }
            last_print = Instant::now();
        }
    }
    Ok(failed)
}

/// What `run` produced.
#[derive(Debug)]
pub struct CompareOutcome {
    /// The comparison written into the compare directory.
    pub comparison: crate::report::Comparison,
    /// Run directories that finished.
    pub run_dirs: Vec<PathBuf>,
    /// Wall time of the whole comparison.
    pub seconds: f64,
}

/// Runs the plan: warm starts (one per seed), then every run, then the report into `opts.out`.
pub fn run(plan: &Plan, opts: &CompareOptions) -> Result<CompareOutcome> {
    let t0 = Instant::now();
    let out = &opts.out;
    let mk = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|e| input_err!("{}: cannot create: {e}", p.display()))
    };
    mk(out)?;
    let (cfg_dir, log_dir) = (out.join("configs"), out.join("logs"));
    mk(&cfg_dir)?;
    mk(&log_dir)?;
    let mut cfg_paths = BTreeMap::new();
    for r in &plan.runs {
        let dir = out.join(&r.name);
        if !opts.resume && dir.join("metrics.jsonl").exists() {
            return Err(input_err!(
                "{}: already holds a run (use --resume, or another --out)",
                dir.display()
            ));
        }
        let p = cfg_dir.join(format!("{}.toml", r.name));
        crate::atomic::write(&p, r.config.to_toml()?.as_bytes())?;
        cfg_paths.insert(r.name.clone(), p);
    }

    // Phase 1: one warm start per seed, into the shared SFT cache (skipped when it is cached already).
    let mut warm = vec![];
    let mut seen = std::collections::BTreeSet::new();
    for r in &plan.runs {
        let c = &r.config;
        let Some(cache) = crate::train::sft::cache_path(c) else {
            continue;
        };
        if c.sft.steps == 0 || cache.exists() || !seen.insert(cache.clone()) {
            continue;
        }
        if opts.resume && out.join(&r.name).join("metrics.jsonl").exists() {
            continue;
        }
        let args = vec![
            "compare".into(),
            "--warm-start-only".into(),
            cfg_paths[&r.name].display().to_string(),
        ];
        let log = log_dir.join(format!("warm-s{}.log", r.seed));
        warm.push((format!("seed {}", r.seed), args, log, PathBuf::new(), 0));
    }
    if !warm.is_empty() && opts.verbose {
        eprintln!(
            "warm start: {} SFT run(s) of {} steps, {} at a time",
            warm.len(),
            plan.runs[0].config.sft.steps,
            opts.jobs
        );
    }
    let failed = run_pool(opts, "warm start", warm, t0, &mut |name, secs| {
        if opts.verbose {
            eprintln!("warm start {name}: done in {secs:.0}s");
        }
    })?;
    if !failed.is_empty() {
        return Err(input_err!(
            "warm start failed for {}; logs in {}",
            failed.join(", "),
            log_dir.display()
        ));
    }

    // Phase 2: the RL runs.
    let mut jobs = vec![];
    for r in &plan.runs {
        let dir = out.join(&r.name);
        if opts.resume && dir.join("summary.json").exists() {
            if opts.verbose {
                eprintln!("{}: finished already, kept", r.name);
            }
            continue;
        }
        let mut args = vec!["train".to_string()];
        if opts.resume && dir.join("metrics.jsonl").exists() {
            args.extend(["--resume".into(), "--out".into(), dir.display().to_string()]);
        } else {
            args.extend([
                "--config".into(),
                cfg_paths[&r.name].display().to_string(),
                "--out".into(),
                dir.display().to_string(),
            ]);
        }
        let log = log_dir.join(format!("{}.log", r.name));
        jobs.push((
            r.name.clone(),
            args,
            log,
            dir.join("metrics.jsonl"),
            r.config.train.steps,
        ));
    }
    if opts.verbose && !jobs.is_empty() {
        eprintln!(
            "rl: {} run(s) of {} steps, {} at a time; logs in {}",
            jobs.len(),
            plan.runs[0].config.train.steps,
            opts.jobs,
            log_dir.display()
        );
    }
    let failed = run_pool(opts, "rl", jobs, t0, &mut |name, secs| {
        if !opts.verbose {
            return;
        }
        let path = out.join(name).join("summary.json");
        let summary = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<crate::metrics::Summary>(&t).ok());
        match summary {
            Some(s) => eprintln!(
                "{name}: done in {secs:.0}s  eval accuracy {:.3} → {:.3}  mean length {:.1} → {:.1}",
                s.eval_accuracy_before, s.eval_accuracy_after, s.eval_response_length_before, s.eval_response_length_after
            ),
            None => eprintln!("{name}: done in {secs:.0}s"),
        }
    })?;
    let run_dirs: Vec<PathBuf> = plan
        .runs
        .iter()
        .map(|r| out.join(&r.name))
        .filter(|d| d.join("summary.json").exists())
        .collect();
    if !failed.is_empty() {
        if !run_dirs.is_empty() {
            let _ = crate::report::report_dirs(&run_dirs, out);
        }
        return Err(input_err!(
            "{} of {} runs failed ({}); logs in {}; rerun with --resume --out {}",
            failed.len(),
            plan.runs.len(),
            failed.join(", "),
            log_dir.display(),
            out.display()
        ));
    }
    let comparison = crate::report::report_dirs(&run_dirs, out)?;
    Ok(CompareOutcome {
        comparison,
        run_dirs,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The warm-start child (`luspo compare --warm-start-only CONFIG`): trains the SFT warm start of the run config in
/// `config` and stores it in the shared cache.
pub fn warm_start_only(config: &Path) -> Result<()> {
    let cfg = RunConfig::load(Some(config), &[])?;
    if crate::train::sft::cache_path(&cfg).is_none() {
        return Err(input_err!(
            "{}: sft.cache is off; nothing to warm",
            config.display()
        ));
    }
    let crate::train::bootstrap::Bootstrap {
        task, mut policy, ..
    } = crate::train::bootstrap::Bootstrap::new(&cfg)?;
    let rep = crate::train::sft::warm_start(
        &mut policy,
        task.as_ref(),
        &cfg,
        crate::train::progress::Mode::Lines,
    )?;
    eprintln!(
        "warm start: {} steps, final loss {:.4}, {:.1}s, cached {}",
        rep.steps, rep.final_loss, rep.seconds, rep.cached
    );
    Ok(())
}

fn pm(s: &Option<crate::report::Stat>, prec: usize) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.p$} ± {:.p$}", s.mean, s.std, p = prec),
        Some(s) => format!("{:.p$}", s.mean, p = prec),
        None => "–".into(),
    }
}

/// The final table: per arm (objective or method), seeds and held-out accuracy / mean length before → after
/// (mean ± std).
pub fn final_table(cmp: &crate::report::Comparison) -> String {
    let mut s = format!(
        "{:<11} {:>5}  {:>22}  {:>26}\n",
        "arm", "seeds", "eval acc before → after", "eval length before → after"
    );
    for o in &cmp.by_objective {
        s += &format!(
            "{:<11} {:>5}  {:>22}  {:>26}\n",
            o.arm,
            o.n_seeds,
            format!(
                "{} → {}",
                pm(&o.eval_accuracy_before, 3),
                pm(&o.eval_accuracy_after, 3)
            ),
            format!(
                "{} → {}",
                pm(&o.eval_response_length_before, 1),
                pm(&o.eval_response_length_after, 1)
            ),
        );
    }
    s
}
