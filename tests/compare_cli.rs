//! `luspo compare`: config layering per objective, one shared warm start, same prompts for every objective,
//! compare.json / plots / report written, and one-line errors for bad arguments.

use luspo::compare::plan;
use luspo::metrics::{EvalRecord, RolloutRecord, Summary};
use luspo::train::files::read_jsonl;
use std::path::Path;
use std::process::Command;

/// A comparison that takes seconds: 1-layer d=32 model, 40 SFT steps, 2 prompts × 4 samples, 2 RL steps.
fn tiny_sets(cache: &Path) -> Vec<String> {
    [
        "model.layers=1",
        "model.hidden=32",
        "model.heads=2",
        "model.max_position=64",
        "task.name=\"parity\"",
        "task.n_bits_min=3",
        "task.n_bits_max=5",
        "task.pad_max=4",
        "task.eval_size=8",
        "sft.steps=40",
        "sft.batch_size=16",
        "sft.lr=1e-2",
        "rollout.prompts_per_step=2",
        "rollout.group_size=4",
        "rollout.max_new_tokens=12",
        "train.steps=2",
        "train.mini_batch_size=4",
        "eval.every=1",
        "optim.lr=3e-3",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("sft.cache_dir={:?}", cache.display().to_string())])
    .collect()
}

/// Runs `luspo compare ARGS --out OUT` on the tiny settings (warm starts cached in `cache`), asserts it succeeded,
/// and returns its stdout.
fn run_compare(args: &[&str], out: &Path, cache: &Path) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_luspo"));
    c.arg("compare").args(args).arg("--out").arg(out);
    for s in tiny_sets(cache) {
        c.arg("--set").arg(s);
    }
    let o = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "stdout {stdout}\nstderr {}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

#[test]
fn plan_layers_overrides_and_sets() {
    let p = plan(
        None,
        &["objective.eps_high=0.5".to_string()],
        None,
        None,
        Some(2),
    )
    .unwrap();
    assert_eq!(p.objectives, vec!["grpo", "gspo", "luspo"]);
    assert_eq!(p.seeds, vec![0, 1]);
    assert_eq!(p.runs.len(), 6);
    let names: Vec<&str> = p.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["grpo-s0", "gspo-s0", "luspo-s0", "grpo-s1", "gspo-s1", "luspo-s1"]
    );
    for r in &p.runs {
        assert_eq!(r.config.objective.name, r.objective);
        assert_eq!(r.config.seed, r.seed);
        let o = r.config.objective.resolved().unwrap();
        // --set wins over the per-objective override of compare.toml.
        assert_eq!(o.eps_high, 0.5);
        // compare.toml: gspo runs with LUSPO's eps_low, grpo with Clip-Higher 0.2.
        let want_low = if r.objective == "grpo" { 0.2 } else { 2e-3 };
        assert_eq!(o.eps_low, want_low, "{}", r.name);
        // Off-policy mini-batches: several optimizer steps per rollout batch.
        assert!(r.config.optimizer_steps_per_rl_step() >= 2);
    }
    // Everything but the objective is identical between the runs of one seed.
    let strip = |c: &luspo::train::RunConfig| {
        let mut c = c.clone();
        c.objective = luspo::objective::ObjectiveConfig::preset("x");
        c.to_toml().unwrap()
    };
    assert_eq!(strip(&p.runs[0].config), strip(&p.runs[2].config));
    assert_ne!(strip(&p.runs[0].config), strip(&p.runs[3].config));
    let e = plan(None, &[], Some(&["grpo,foo".to_string()]), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown objective `foo`") && !e.contains('\n'),
        "{e}"
    );
}

#[test]
fn compare_two_objectives_from_one_warm_start() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("cmp");
    let stdout = run_compare(
        &[
            "--objectives",
            "grpo,luspo",
            "--seeds",
            "1",
            "--jobs",
            "2",
            "--quiet",
        ],
        &out,
        &cache,
    );
    assert!(
        stdout.contains("grpo") && stdout.contains("luspo"),
        "{stdout}"
    );

    // One warm start in the cache, shared by both runs.
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");

    let mut evals0 = vec![];
    let mut prompts = vec![];
    for name in ["grpo-s0", "luspo-s0"] {
        let dir = out.join(name);
        let s: Summary =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(s.steps, 2);
        assert_eq!(s.objective, &name[..name.len() - 3]);
        let evals: Vec<EvalRecord> = read_jsonl(&dir.join("eval.jsonl")).unwrap();
        assert_eq!(
            evals.iter().map(|e| e.step).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        evals0.push(serde_json::to_string(&evals[0]).unwrap());
        let r: Vec<RolloutRecord> = read_jsonl(&dir.join("rollouts.jsonl")).unwrap();
        assert_eq!(r.len(), 2 * 2 * 4);
        prompts.push(
            r.iter()
                .map(|x| (x.step, x.prompt_id.clone()))
                .collect::<Vec<_>>(),
        );
    }
    // Same warm start → the same step-0 evaluation; same data order → the same prompts at every step.
    assert_eq!(evals0[0], evals0[1]);
    assert_eq!(prompts[0], prompts[1]);

    let cmp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    let runs = cmp["runs"].as_array().unwrap();
    let objs: Vec<&str> = runs
        .iter()
        .map(|r| r["objective"].as_str().unwrap())
        .collect();
    assert_eq!(objs.len(), 2);
    assert!(
        objs.contains(&"grpo") && objs.contains(&"luspo"),
        "{objs:?}"
    );
    assert_eq!(
        runs[0]["eval_accuracy_before"],
        runs[1]["eval_accuracy_before"]
    );
    assert_eq!(
        runs[0]["eval_response_length_before"],
        runs[1]["eval_response_length_before"]
    );
    for f in luspo::report::output_files(&out) {
        assert!(f.exists(), "missing {}", f.display());
    }
    assert!(out.join("configs/grpo-s0.toml").exists() && out.join("logs/luspo-s0.log").exists());

    // --resume keeps finished runs and only rewrites the report.
    let mut r = Command::new(env!("CARGO_BIN_EXE_luspo"));
    r.args([
        "compare",
        "--objectives",
        "grpo,luspo",
        "--seeds",
        "1",
        "--quiet",
        "--resume",
        "--out",
    ])
    .arg(&out);
    for s in tiny_sets(&cache) {
        r.arg("--set").arg(s);
    }
    let o = r.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again: Vec<RolloutRecord> = read_jsonl(&out.join("grpo-s0/rollouts.jsonl")).unwrap();
    assert_eq!(again.len(), 16);
}

fn one_line_error(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_luspo"))
        .args(args)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{args:?}");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let o = out.to_str().unwrap();
    let e = one_line_error(&["compare", "--objectives", "grpo,nope", "--out", o]);
    assert!(
        e.contains("unknown objective `nope`") && e.contains("luspo"),
        "{e}"
    );
    let e = one_line_error(&["compare", "--objectives", "gspo,gspo", "--out", o]);
    assert!(e.contains("twice"), "{e}");
    let e = one_line_error(&["compare", "--methods", "none,nope", "--out", o]);
    assert!(
        e.contains("unknown method `nope`") && e.contains("hapo"),
        "{e}"
    );
    let e = one_line_error(&["compare", "--seeds", "0", "--out", o]);
    assert!(e.contains("--seeds"), "{e}");
    let e = one_line_error(&["compare", "--set", "train.nope=1", "--out", o]);
    assert!(e.contains("train.nope"), "{e}");
    assert!(
        !out.exists(),
        "nothing is written before the arguments are checked"
    );
}

/// `[compare.overrides.GSPO]` (any spelling `Preset::from_name` accepts) is applied to the `gspo` runs.
#[test]
fn override_keys_are_matched_by_preset_not_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[compare.overrides.GSPO]\nobjective.eps_high = 0.77\n",
    )
    .unwrap();
    let objs = ["grpo,gspo".to_string()];
    let p = plan(Some(&path), &[], Some(&objs), None, Some(1)).unwrap();
    for r in &p.runs {
        let o = r.config.objective.resolved().unwrap();
        if r.objective == "gspo" {
            assert_eq!(o.eps_high, 0.77, "{}", r.name);
        } else {
            assert_ne!(o.eps_high, 0.77, "{}", r.name);
        }
    }
    // Two tables for one preset is an error naming the table.
    std::fs::write(
        &path,
        "[compare.overrides.GSPO]\nseed = 1\n[compare.overrides.gspo]\nseed = 2\n",
    )
    .unwrap();
    let e = plan(Some(&path), &[], Some(&objs), None, Some(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("compare.overrides"), "{e}");
}

/// `--methods`: one arm per `[control]` method under the config's one objective, `[compare.overrides.<method>]`
/// layered per arm, run directories and labels by method.
#[test]
fn plan_over_methods() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[objective]\nname = \"grpo\"\n[compare]\nmethods = [\"none\", \"hapo\"]\n\
         [compare.overrides.HAPO.control.hapo]\nw = 0.25\n",
    )
    .unwrap();
    let p = plan(Some(&path), &[], None, None, Some(2)).unwrap();
    assert_eq!(p.objectives, vec!["grpo"]);
    assert_eq!(p.methods, vec!["none", "hapo"]);
    assert_eq!(p.arms(), ["none", "hapo"]);
    let names: Vec<&str> = p.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["none-s0", "hapo-s0", "none-s1", "hapo-s1"]);
    for r in &p.runs {
        assert_eq!(r.config.objective.name, "grpo", "{}", r.name);
        assert_eq!(r.arm, r.method);
        let want = if r.method == "hapo" {
            luspo::control::MethodName::Hapo
        } else {
            luspo::control::MethodName::None
        };
        assert_eq!(r.config.control.method, want, "{}", r.name);
        // compare.toml's GRPO override (Clip-Higher) reaches every arm, the HAPO table only the hapo arm.
        assert_eq!(r.config.objective.resolved().unwrap().eps_high, 0.28);
        let w = if r.method == "hapo" { 0.25 } else { 1.0 };
        assert_eq!(r.config.control.hapo.w, w, "{}", r.name);
    }
    // Everything but [control] is identical between the arms of one seed.
    let strip = |c: &luspo::train::RunConfig| {
        let mut c = c.clone();
        c.control = Default::default();
        c.to_toml().unwrap()
    };
    assert_eq!(strip(&p.runs[0].config), strip(&p.runs[1].config));
    assert_ne!(strip(&p.runs[0].config), strip(&p.runs[2].config));
    // --methods wins over [compare] methods; --objectives with one name picks the objective; --set too.
    let m = ["dler,none".to_string()];
    let o = ["luspo".to_string()];
    let p = plan(Some(&path), &[], Some(&o), Some(&m), Some(1)).unwrap();
    assert_eq!(p.arms(), ["dler", "none"]);
    assert!(p.runs.iter().all(|r| r.config.objective.name == "luspo"));
    let sets = ["objective.name=\"gspo\"".to_string()];
    let p = plan(Some(&path), &sets, None, Some(&m), Some(1)).unwrap();
    assert_eq!(p.objectives, vec!["gspo"]);
    // Errors: unknown or repeated method, two objectives, an override table of an unknown name.
    for (objs, methods, want) in [
        (None, "none,nope", "unknown method `nope`"),
        (None, "hapo,HAPO", "listed twice"),
        (Some("grpo,gspo"), "none,hapo", "one objective"),
    ] {
        let objs = objs.map(|o| vec![o.to_string()]);
        let e = plan(
            Some(&path),
            &[],
            objs.as_deref(),
            Some(&[methods.to_string()]),
            Some(1),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(want) && !e.contains('\n'), "{e}");
    }
    std::fs::write(&path, "[compare.overrides.nope]\nseed = 1\n").unwrap();
    let e = plan(Some(&path), &[], None, Some(&m), Some(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown objective or method `nope`"), "{e}");
}

#[test]
fn compare_two_methods_from_one_warm_start() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("cmp");
    let stdout = run_compare(
        &[
            "--methods",
            "none,hapo",
            "--seeds",
            "1",
            "--jobs",
            "2",
            "--quiet",
            "--set",
            "objective.name=\"grpo\"",
        ],
        &out,
        &cache,
    );
    assert!(
        stdout.contains("none") && stdout.contains("hapo"),
        "{stdout}"
    );
    let cached = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(cached, 1);
    let mut evals0 = vec![];
    let mut prompts = vec![];
    for name in ["none-s0", "hapo-s0"] {
        let dir = out.join(name);
        let cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        let cfg = luspo::train::RunConfig::from_toml_str(&cfg, name).unwrap();
        assert_eq!(cfg.objective.name, "grpo");
        let m = serde_json::to_value(cfg.control.method).unwrap();
        assert_eq!(m.as_str(), Some(&name[..name.len() - 3]));
        let evals: Vec<EvalRecord> = read_jsonl(&dir.join("eval.jsonl")).unwrap();
        evals0.push(serde_json::to_string(&evals[0]).unwrap());
        let r: Vec<RolloutRecord> = read_jsonl(&dir.join("rollouts.jsonl")).unwrap();
        prompts.push(
            r.iter()
                .map(|x| (x.step, x.prompt_id.clone()))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(evals0[0], evals0[1]);
    assert_eq!(prompts[0], prompts[1]);
    let cmp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    let arms: Vec<(&str, &str, &str)> = cmp["by_objective"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["arm"].as_str().unwrap(),
                o["objective"].as_str().unwrap(),
                o["method"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(arms, [("none", "grpo", "none"), ("hapo", "grpo", "hapo")]);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("| hapo |") && report.contains("| none |"),
        "{report}"
    );
}
