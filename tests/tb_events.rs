//! TensorBoard event files of a run, read back: every numeric field of every metrics.jsonl and eval.jsonl line
//! is a scalar at its step (as f32), nothing else is there, and after a kill and `--resume` the events still
//! equal the logs exactly once.

use luspo::tb::{event_files, read_scalars, Scalar};
use luspo::train::config::RunConfig;
use luspo::train::files::read_jsonl;
use luspo::train::progress::Mode;
use luspo::train::{train, Outcome, TrainOptions};
use serde_json::Value;
use std::path::Path;

mod common;

fn cfg(cache: &Path, extra: &[&str]) -> RunConfig {
    let mut sets = common::tiny_model_sets();
    sets.extend(
        [
            "task.eval_size=8",
            "sft.steps=50",
            "sft.batch_size=16",
            "rollout.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=12",
            "train.steps=4",
            "eval.every=2",
            "checkpoint.every=1",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    sets.push(format!("sft.cache_dir={:?}", cache.display().to_string()));
    sets.extend(extra.iter().map(|s| s.to_string()));
    RunConfig::load(None, &sets).unwrap()
}

fn run(cfg: &RunConfig, out: &Path, resume: bool) -> Outcome {
    let opts = TrainOptions {
        out: out.to_path_buf(),
        resume,
        mode: Mode::Quiet,
        interrupt: None,
    };
    train(cfg, &opts).unwrap()
}

/// The scalars the logs say should be there, in log order.
fn expected(out: &Path) -> Vec<Scalar> {
    let mut v = vec![];
    for (prefix, file) in [("eval", "eval.jsonl"), ("train", "metrics.jsonl")] {
        for line in read_jsonl::<Value>(&out.join(file)).unwrap() {
            let step = line["step"].as_i64().unwrap();
            for (k, x) in line.as_object().unwrap() {
                if let (Some(x), true) = (x.as_f64(), k != "step") {
                    v.push(Scalar {
                        step,
                        tag: format!("{prefix}/{k}"),
                        value: x as f32,
                    });
                }
            }
        }
    }
    v
}

fn sorted(mut v: Vec<Scalar>) -> Vec<Scalar> {
    v.sort_by(|a, b| (a.step, &a.tag).cmp(&(b.step, &b.tag)));
    v
}

fn actual(out: &Path) -> Vec<Scalar> {
    let files = event_files(&out.join("tb")).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    read_scalars(&files[0]).unwrap()
}

#[test]
fn events_hold_every_logged_metric_also_after_resume() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let c = cfg(cache.path(), &[]);
    assert!(matches!(run(&c, &out, false), Outcome::Finished(_)));
    let want = expected(&out);
    assert!(want
        .iter()
        .any(|s| s.tag == "train/reward_mean" && s.step == 4));
    assert!(want.iter().any(|s| s.tag == "eval/accuracy" && s.step == 0));
    assert_eq!(sorted(actual(&out)), sorted(want));

    // Killed after 3 steps (the hook writes no checkpoint past step 3's), then resumed.
    let out2 = dir.path().join("resumed");
    let stop = cfg(cache.path(), &["train.stop_after_steps=3"]);
    assert!(matches!(run(&stop, &out2, false), Outcome::Stopped(3)));
    assert!(matches!(run(&c, &out2, true), Outcome::Finished(_)));
    let want2 = expected(&out2);
    assert_eq!(
        want2
            .iter()
            .filter(|s| s.tag == "train/reward_mean")
            .count(),
        4
    );
    assert_eq!(sorted(actual(&out2)), sorted(want2));
}

#[test]
fn a_corrupt_event_file_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = luspo::tb::TbWriter::create(dir.path()).unwrap();
    w.scalars("train", 1, &serde_json::json!({"step": 1, "loss": 0.5}))
        .unwrap();
    w.flush().unwrap();
    drop(w);
    let f = event_files(dir.path()).unwrap().remove(0);
    let got = read_scalars(&f).unwrap();
    assert_eq!(
        got,
        vec![Scalar {
            step: 1,
            tag: "train/loss".into(),
            value: 0.5
        }]
    );
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n - 6] ^= 0xff;
    std::fs::write(&f, &bytes).unwrap();
    let err = read_scalars(&f).unwrap_err().to_string();
    assert!(err.contains(&f.display().to_string()) && err.contains("CRC") && !err.contains('\n'));
}
