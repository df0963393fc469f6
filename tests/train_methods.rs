//! The objective-side length-control methods in the real RL loop (tiny model, parity): every new preset trains
//! with finite metrics, and SIRI's schedule (methods.md §14) caps each step's responses at L(t), cut responses
//! counting as wrong.

use luspo::metrics::{RolloutRecord, StepMetrics};
use luspo::train::config::RunConfig;
use luspo::train::files::read_jsonl;
use luspo::train::length_schedule::{siri_cap, SiriShape};
use luspo::train::progress::Mode;
use luspo::train::{train, TrainOptions};
use std::path::Path;

mod common;

/// 1-layer d=32 model, 60 SFT steps, 2 prompts × 4 samples, 3 RL steps.
fn run(dir: &Path, extra: &[&str]) -> (Vec<StepMetrics>, Vec<RolloutRecord>) {
    let mut sets = common::tiny_model_sets();
    sets.extend(
        [
            "task.eval_size=4",
            "sft.steps=60",
            "sft.batch_size=16",
            "sft.lr=1e-2",
            "rollout.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=16",
            "train.steps=3",
            "eval.every=0",
            "optim.lr=3e-3",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    sets.push(format!(
        "sft.cache_dir={:?}",
        dir.join("cache").display().to_string()
    ));
    sets.extend(extra.iter().map(|s| s.to_string()));
    let cfg = RunConfig::load(None, &sets).unwrap();
    let out = dir.join("run");
    let opts = TrainOptions {
        out: out.clone(),
        resume: false,
        mode: Mode::Quiet,
        interrupt: None,
    };
    train(&cfg, &opts).unwrap();
    (
        read_jsonl(&out.join("metrics.jsonl")).unwrap(),
        read_jsonl(&out.join("rollouts.jsonl")).unwrap(),
    )
}

#[test]
fn siri_cosine_and_stair_by_hand() {
    let c = |t| siri_cap(SiriShape::Cosine, t, 16384, 8192, 640);
    assert_eq!((c(0), c(320), c(640), c(160)), (16384, 8192, 16384, 12288));
    assert!(
        (1..320).all(|t| c(t) <= c(t - 1)),
        "descends over the first half"
    );
    let s = |t| siri_cap(SiriShape::Stair, t, 100, 20, 80);
    // ϕ = 2π t/80: L_max for t < 10 and t ≥ 70, L_min on [30, 50), ramps between.
    assert!((0..10).chain(70..80).all(|t| s(t) == 100));
    assert!((30..50).all(|t| s(t) == 20));
    assert_eq!(
        (s(20), s(60), s(80)),
        (60, 60, 100),
        "ramp midpoints and the next period"
    );
    assert!((10..30).all(|t| s(t) >= s(t + 1)) && (50..70).all(|t| s(t) <= s(t + 1)));
}

#[test]
fn siri_caps_each_step_and_cut_responses_score_zero() {
    let dir = tempfile::tempdir().unwrap();
    let sets = [
        "rollout.length_schedule=\"siri\"",
        "rollout.siri_l_min=2",
        "rollout.siri_period=4",
        "rollout.max_new_tokens=16",
        "train.steps=4",
    ];
    let cfg = RunConfig::load(None, &sets.map(String::from)).unwrap();
    let caps: Vec<usize> = (1..=4).map(|s| cfg.rollout.max_new_tokens_at(s)).collect();
    // Cosine with period 4 on [2, 16]: steps 1..4 are t = 0..3.
    assert_eq!(caps, vec![16, 9, 2, 9]);
    let (metrics, rollouts) = run(dir.path(), &sets);
    assert_eq!(metrics.len(), 4);
    for r in &rollouts {
        let cap = caps[r.step as usize - 1] as u32;
        assert!(
            r.length <= cap,
            "step {}: length {} > cap {cap}",
            r.step,
            r.length
        );
        if r.truncated {
            assert!(!r.correct, "a cut response counts as wrong");
        }
    }
    assert!(
        rollouts.iter().any(|r| r.step == 1 && r.length > 2),
        "step 1 is not capped at L_min"
    );
}

#[test]
fn every_objective_side_method_trains() {
    for name in ["dispo", "drpo", "delta_l", "spine", "llds", "ulorl"] {
        let dir = tempfile::tempdir().unwrap();
        let obj = format!("objective.name=\"{name}\"");
        let (metrics, _) = run(dir.path(), &[&obj, "train.ppo_epochs=2"]);
        assert_eq!(metrics.len(), 3, "{name}");
        for m in &metrics {
            assert!(
                m.loss.is_finite() && m.grad_norm.is_finite() && m.skipped_updates == 0,
                "{name} step {}: {m:?}",
                m.step
            );
        }
    }
    let err = RunConfig::load(
        None,
        &["objective.name=\"drpo\"", "train.micro_batch_size=2"].map(String::from),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("train.micro_batch_size: drpo"), "{err}");
}

#[test]
fn every_control_config_loads_and_names_its_method() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/control");
    let mut seen = vec![];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        if stem.starts_with("compare_") {
            let plan = luspo::compare::plan(Some(&p), &[], None, None, None)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(!plan.runs.is_empty(), "{}", p.display());
            continue;
        }
        let cfg = RunConfig::load(Some(&p), &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        if stem == "siri" {
            assert_eq!(
                cfg.rollout.length_schedule,
                luspo::train::length_schedule::LengthSchedule::Siri
            );
        } else if cfg.control.method != luspo::control::MethodName::None {
            // A reward/advantage-side method (`[control]`): its config names it there.
            let name = serde_json::to_value(cfg.control.method).unwrap();
            assert_eq!(name.as_str(), Some(stem.as_str()), "{}", p.display());
        } else {
            assert_eq!(cfg.objective.name, stem, "{}", p.display());
        }
        seen.push(stem);
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "canon",
            "ceeh",
            "da_dler",
            "delta_l",
            "dispo",
            "dler",
            "dot",
            "drpo",
            "grpo_lambda",
            "hapo",
            "l_grpo",
            "llds",
            "pear",
            "siri",
            "spine",
            "ttrl",
            "ulorl"
        ]
    );
}
