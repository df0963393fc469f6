//! Config parsing: layering, `--set` overrides, and one-line errors that name the key.

use luspo::train::config::{RunConfig, Schedule, WarmupUnit};
use std::io::Write;
use std::path::Path;

fn err_of(file: Option<&str>, sets: &[&str]) -> String {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let path = file.map(|text| {
        let mut f = std::fs::File::create(tmp.path()).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        tmp.path().to_path_buf()
    });
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    match RunConfig::load(path.as_deref(), &sets) {
        Ok(_) => panic!("expected an error for {file:?} {sets:?}"),
        Err(e) => {
            assert!(
                matches!(e, luspo::Error::Input(_)),
                "not an input error: {e:?}"
            );
            let s = e.to_string();
            assert!(!s.contains('\n'), "error is not one line: {s}");
            s
        }
    }
}

#[test]
fn embedded_default_parses() {
    let cfg = RunConfig::load(None, &[]).unwrap();
    assert_eq!(cfg.objective.name, "luspo");
    assert!(cfg.sft.steps > 0, "the default run warm-starts");
    assert!(
        cfg.model.path.is_empty(),
        "the default run uses the tiny model"
    );
    // The resolved config round-trips through TOML.
    let text = cfg.to_toml().unwrap();
    let again = RunConfig::from_toml_str(&text, "config.toml").unwrap();
    assert_eq!(again.to_toml().unwrap(), text);
    assert_eq!(again.optim, cfg.optim);
    assert_eq!(again.rollout, cfg.rollout);
}

#[test]
fn set_overrides_parse_values_as_toml() {
    let sets: Vec<String> = [
        "optim.lr=2e-4",
        "optim.warmup_unit=optimizer",
        "optim.schedule=\"cosine\"",
        "train.steps=7",
        "rollout.dynamic_sampling=true",
        "rollout.stop=[\"\\n\\n\"]",
        "seed=42",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cfg = RunConfig::load(None, &sets).unwrap();
    assert_eq!(cfg.optim.lr, 2e-4);
    assert_eq!(cfg.optim.warmup_unit, WarmupUnit::Optimizer);
    assert_eq!(cfg.optim.schedule, Schedule::Cosine);
    assert_eq!(cfg.train.steps, 7);
    assert!(cfg.rollout.dynamic_sampling);
    assert_eq!(cfg.rollout.stop, vec!["\n\n".to_string()]);
    assert_eq!(cfg.seed, 42);
}

#[test]
fn file_layers_over_the_default_and_sets_over_the_file() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        tmp.path(),
        "[optim]\nlr = 5e-4\nbeta2 = 0.99\n[train]\nppo_epochs = 2\n",
    )
    .unwrap();
    let cfg = RunConfig::load(Some(tmp.path()), &["optim.lr=1e-5".into()]).unwrap();
    assert_eq!(cfg.optim.lr, 1e-5);
    assert_eq!(cfg.optim.beta2, 0.99);
    assert_eq!(cfg.train.ppo_epochs, 2);
    let default = RunConfig::load(None, &[]).unwrap();
    assert_eq!(
        cfg.sft, default.sft,
        "keys absent from the file keep the embedded default"
    );
}

#[test]
fn unknown_key_in_set_names_it() {
    let e = err_of(None, &["optim.lrr=1"]);
    assert_eq!(e, "--set optim.lrr=1: unknown key optim.lrr");
    let e = err_of(None, &["optimm.lr=1"]);
    assert_eq!(e, "--set optimm.lr=1: unknown key optimm");
    let e = err_of(None, &["nonsense=3"]);
    assert_eq!(e, "--set nonsense=3: unknown key nonsense");
}

#[test]
fn unknown_key_in_file_names_file_and_key() {
    let e = err_of(Some("[rollout]\ngroup_sise = 4\n"), &[]);
    assert!(e.ends_with(": unknown key rollout.group_sise"), "{e}");
    assert!(
        e.contains(".tmp") || e.contains("tmp"),
        "names the file: {e}"
    );
}

#[test]
fn bad_values_name_the_key() {
    let e = err_of(None, &["optim.lr=fast"]);
    assert!(
        e.starts_with("--set optim.lr=fast: bad value for optim.lr"),
        "{e}"
    );
    let e = err_of(None, &["optim.warmup_unit=epochs"]);
    assert!(e.contains("bad value for optim.warmup_unit"), "{e}");
    let e = err_of(None, &["optim.lr=-1"]);
    assert_eq!(e, "optim.lr: must be > 0");
    let e = err_of(None, &["rollout.top_p=0"]);
    assert_eq!(e, "rollout.top_p: must be in (0, 1]");
    let e = err_of(None, &["train.mini_batch_size=100000"]);
    assert!(
        e.starts_with("train.mini_batch_size: 100000 is larger than the rollout batch"),
        "{e}"
    );
    let e = err_of(None, &["optim.lr"]);
    assert!(e.contains("expected section.key=value"), "{e}");
    let e = err_of(Some("[optim\nlr = 1"), &[]);
    assert!(!e.is_empty());
}

#[test]
fn derived_sizes() {
    let cfg = RunConfig::load(
        None,
        &[
            "rollout.prompts_per_step=4".into(),
            "rollout.group_size=4".into(),
            "train.mini_batch_size=6".into(),
            "train.ppo_epochs=2".into(),
        ],
    )
    .unwrap();
    assert_eq!(cfg.batch_size(), 16);
    assert_eq!(cfg.mini_batch_size(), 6);
    assert_eq!(cfg.optimizer_steps_per_rl_step(), 6); // 2 epochs × ceil(16/6)
}

#[test]
fn every_shipped_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut names = vec![];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        // Files with a `[compare]` section are `luspo compare` configs: planned (and so validated) instead.
        let is_compare = std::fs::read_to_string(&p).is_ok_and(|t| t.contains("\n[compare]"));
        if is_compare && !p.ends_with("compare.toml") {
            luspo::compare::plan(Some(&p), &[], None, None, None)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
        if p.extension().is_some_and(|e| e == "toml") && !is_compare {
            let cfg =
                RunConfig::load(Some(&p), &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            if [
                "grpo",
                "dapo",
                "dr_grpo",
                "gspo",
                "gspo_token",
                "luspo",
                "cispo",
            ]
            .contains(&stem.as_str())
            {
                assert_eq!(cfg.objective.name, stem, "{}", p.display());
            }
            names.push(stem);
        }
    }
    for want in [
        "default",
        "grpo",
        "dapo",
        "dr_grpo",
        "gspo",
        "gspo_token",
        "luspo",
        "cispo",
        "smollm2_wordproblem",
        "smollm2_lora",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "configs/{want}.toml is missing"
        );
    }
}

#[test]
fn task_and_reward_keys_are_checked() {
    let e = err_of(None, &["task.n_bits_mx=3"]);
    assert_eq!(e, "--set task.n_bits_mx=3: unknown key task.n_bits_mx");
    let e = err_of(None, &["reward.overlong=maybe"]);
    assert!(
        e.starts_with("--set reward.overlong=maybe: bad value for reward.overlong"),
        "{e}"
    );
    let e = err_of(None, &["objective.name=ppo"]);
    assert!(e.contains("objective.name") && e.contains("ppo"), "{e}");
    let e = err_of(None, &["objective.eps_lo=0.1"]);
    assert_eq!(
        e,
        "--set objective.eps_lo=0.1: unknown key objective.eps_lo"
    );
}

/// A config naming another task starts its `[task]` section afresh (parity's style mix must not leak into it).
#[test]
fn another_task_replaces_the_task_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wp.toml");
    std::fs::write(&path, "[task]\nname = \"wordproblem\"\n").unwrap();
    let cfg = luspo::train::config::RunConfig::load(Some(&path), &[]).unwrap();
    assert_eq!(cfg.task.name, "wordproblem");
    assert!(cfg.task.style_weights.is_empty(), "{:?}", cfg.task);
    // The same task keeps layering key by key.
    std::fs::write(&path, "[task]\nname = \"parity\"\nn_bits_max = 9\n").unwrap();
    let cfg = luspo::train::config::RunConfig::load(Some(&path), &[]).unwrap();
    assert_eq!(cfg.task.n_bits_max, 9);
    assert_eq!(cfg.task.n_bits_min, 4);
}
