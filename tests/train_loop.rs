//! The RL loop end to end on a very small model: determinism, kill-and-resume exactly once (hook and real SIGKILL),
//! mini-batches with several optimizer steps, KL to a frozen reference, dynamic sampling, the SFT cache, errors.

use luspo::metrics::{EvalRecord, RolloutRecord, Summary};
use luspo::train::checkpoint;
use luspo::train::config::RunConfig;
use luspo::train::files::read_jsonl;
use luspo::train::{train, Outcome};
use std::path::{Path, PathBuf};

mod common;

use common::{opts, untimed};

/// A run that takes a few seconds: 1-layer d=32 model, 100 SFT steps, 2 prompts × 4 samples, 4 RL steps.
fn tiny_sets(cache_dir: &Path) -> Vec<String> {
    let mut sets = common::tiny_model_sets();
    sets.extend(
        [
            "task.eval_size=8",
            "sft.steps=100",
            "sft.batch_size=16",
            "sft.lr=1e-2",
            "rollout.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=12",
            "train.steps=4",
            "eval.every=2",
            "optim.lr=3e-3",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    sets.push(format!(
        "sft.cache_dir={:?}",
        cache_dir.display().to_string()
    ));
    sets
}

fn cfg_with(cache: &Path, extra: &[&str]) -> RunConfig {
    let mut sets = tiny_sets(cache);
    sets.extend(extra.iter().map(|s| s.to_string()));
    RunConfig::load(None, &sets).unwrap()
}

fn rollouts(dir: &Path) -> Vec<RolloutRecord> {
    read_jsonl(&dir.join("rollouts.jsonl")).unwrap()
}

fn evals(dir: &Path) -> Vec<EvalRecord> {
    read_jsonl(&dir.join("eval.jsonl")).unwrap()
}

fn assert_same_run(a: &Path, b: &Path) {
    let (ma, mb) = (untimed(a), untimed(b));
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x, y, "step {} differs", x.step);
    }
    assert_eq!(rollouts(a), rollouts(b));
    assert_eq!(evals(a), evals(b));
}

fn steps_of(dir: &Path) -> Vec<u64> {
    untimed(dir).iter().map(|m| m.step).collect()
}

#[test]
fn same_seed_same_metrics_and_resume_is_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cfg = cfg_with(&cache, &[]);

    // Uninterrupted reference run.
    let a = tmp.path().join("a");
    let out = train(&cfg, &opts(&a, false)).unwrap();
    let Outcome::Finished(sa) = out else {
        panic!("run a did not finish")
    };
    assert_eq!(steps_of(&a), vec![1, 2, 3, 4]);
    let ev: Vec<u64> = evals(&a).iter().map(|e| e.step).collect();
    assert_eq!(
        ev,
        vec![0, 2, 4],
        "eval at step 0 (after warm start), every 2 steps"
    );
    assert_eq!(rollouts(&a).len(), 4 * 8);
    for m in untimed(&a) {
        assert!(m.grad_norm >= 0.0 && m.grad_norm.is_finite(), "{m:?}");
        assert!(m.lr > 0.0 && m.response_length_mean > 0.0 && m.entropy > 0.0);
        assert_eq!(m.kl, None, "no KL term in the default objective");
        assert_eq!(m.skipped_updates, 0);
    }
    assert!(
        untimed(&a).iter().any(|m| m.grad_norm > 0.0),
        "some step had a learning signal"
    );
    let summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(a.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.steps, 4);
    assert_eq!(summary.eval_accuracy_before, evals(&a)[0].accuracy);
    assert_eq!(summary.eval_accuracy_after, evals(&a)[2].accuracy);
    assert_eq!(sa.eval_accuracy_after, summary.eval_accuracy_after);
    assert!(
        a.join("final").join("model.safetensors").exists()
            && a.join("final").join("config.json").exists()
    );
    let cks = checkpoint::list(&a).unwrap();
    assert_eq!(cks.len(), 1, "only the newest checkpoint is kept");
    assert_eq!(cks[0].0, 4);

    // Same seed again (warm start from the cache this time): identical metrics.
    let b = tmp.path().join("b");
    train(&cfg, &opts(&b, false)).unwrap();
    assert_same_run(&a, &b);

    // Stopped after 3 steps with checkpoints every 2: step 3's lines are written but not checkpointed.
    let c = tmp.path().join("c");
    let cfg_c = cfg_with(&cache, &["train.stop_after_steps=3", "checkpoint.every=2"]);
    let out = train(&cfg_c, &opts(&c, false)).unwrap();
    assert!(matches!(out, Outcome::Stopped(3)));
    assert_eq!(steps_of(&c), vec![1, 2, 3]);
    assert_eq!(checkpoint::latest(&c).unwrap().unwrap().0, 2);
    // Resume: step 3 is redone once, and the whole run equals the uninterrupted one.
    let cfg_r =
        RunConfig::load_run(&c.join("config.toml"), &["train.stop_after_steps=0".into()]).unwrap();
    let out = train(&cfg_r, &opts(&c, true)).unwrap();
    assert!(matches!(out, Outcome::Finished(_)));
    assert_eq!(steps_of(&c), vec![1, 2, 3, 4]);
    assert_same_run(&a, &c);

    // A different seed gives a different run.
    let d = tmp.path().join("d");
    train(&cfg_with(&cache, &["seed=1"]), &opts(&d, false)).unwrap();
    assert_ne!(rollouts(&a), rollouts(&d));

    // A finished run directory is not silently reused.
    let e = train(&cfg, &opts(&a, false)).unwrap_err().to_string();
    assert!(e.contains("already holds a run"), "{e}");
}

#[test]
fn sigkill_and_resume_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cfg = cfg_with(&cache, &["train.steps=6"]);
    let cfg_path = tmp.path().join("run.toml");
    std::fs::write(&cfg_path, cfg.to_toml().unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_luspo");
    let run = |out: &PathBuf, resume: bool| {
        let mut c = std::process::Command::new(bin);
        c.arg("train").arg("--out").arg(out).arg("--quiet");
        if resume {
            c.arg("--resume");
        } else {
            c.arg("--config").arg(&cfg_path);
        }
        c.env("RAYON_NUM_THREADS", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    let a = tmp.path().join("a");
    assert!(run(&a, false).status().unwrap().success());
    assert_eq!(steps_of(&a), vec![1, 2, 3, 4, 5, 6]);

    // Kill -9 as soon as step 2 is logged (possibly in the middle of writing a checkpoint).
    let b = tmp.path().join("b");
    let mut child = run(&b, false).spawn().unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let lines = std::fs::read_to_string(b.join("metrics.jsonl"))
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if lines >= 2 {
            break;
        }
        assert!(t0.elapsed().as_secs() < 120, "the child made no progress");
        if let Some(st) = child.try_wait().unwrap() {
            panic!("child exited early: {st}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(run(&b, true).status().unwrap().success());
    assert_eq!(
        steps_of(&b),
        vec![1, 2, 3, 4, 5, 6],
        "every step exactly once"
    );
    assert_same_run(&a, &b);
}

#[test]
fn mini_batches_kl_and_dynamic_sampling() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // 8 sequences, mini-batches of 3 (+ micro-batches of 2), 2 epochs: 2 × ceil(8/3) = 6 optimizer steps per RL step.
    let cfg = cfg_with(
        &cache,
        &[
            "train.steps=2",
            "train.mini_batch_size=3",
            "train.micro_batch_size=2",
            "train.ppo_epochs=2",
            "objective.kl_beta=0.1",
            "optim.warmup_steps=12",
            "optim.warmup_unit=\"optimizer\"",
            "objective.name=\"grpo\"",
        ],
    );
    let a = tmp.path().join("a");
    train(&cfg, &opts(&a, false)).unwrap();
    let ms = untimed(&a);
    let st = checkpoint::read_state(&checkpoint::latest(&a).unwrap().unwrap().1).unwrap();
    assert_eq!(st.optimizer_steps, 12);
    // lr reported = lr of the step's last optimizer step: warm-up over optimizer steps 6/12 and 12/12.
    assert!((ms[0].lr - 3e-3 * 6.0 / 12.0).abs() < 1e-12, "{}", ms[0].lr);
    assert!((ms[1].lr - 3e-3).abs() < 1e-12, "{}", ms[1].lr);
    for m in &ms {
        let kl = m.kl.expect("kl is logged when kl_beta > 0");
        assert!(kl.is_finite() && kl >= 0.0);
        // Off-policy mini-batches: the ratio moved away from 1.
        assert!(
            (m.ratio_mean - 1.0).abs() > 1e-7 || m.approx_kl.abs() > 1e-9,
            "{m:?}"
        );
    }
    assert!(a.join("reference.safetensors").exists());

    // Dynamic sampling: groups with equal rewards are dropped and refilled (at most 3 rounds).
    let b = tmp.path().join("b");
    train(
        &cfg_with(
            &cache,
            &[
                "train.steps=2",
                "rollout.dynamic_sampling=true",
                "rollout.max_sampling_rounds=3",
                // Pairs: about half the groups have equal rewards, so groups are dropped and refilled.
                "rollout.group_size=2",
            ],
        ),
        &opts(&b, false),
    )
    .unwrap();
    let rs = rollouts(&b);
    let ms = untimed(&b);
    let mut saw_refill = false;
    for step in 1..=2u64 {
        let recs: Vec<&RolloutRecord> = rs.iter().filter(|r| r.step == step).collect();
        assert!(
            recs.len().is_multiple_of(2) && recs.len() >= 4 && recs.len() <= 12,
            "{}",
            recs.len()
        );
        // Groups with unequal rewards are the kept ones: each has a non-zero advantage. Groups with equal rewards
        // are dropped (advantage exactly 0). P = 2 groups are kept unless the 3 rounds ran out.
        let groups: Vec<&[&RolloutRecord]> = recs.chunks(2).collect();
        let mut kept = 0;
        let mut equal_groups = 0;
        for g in &groups {
            assert!(g.iter().all(|r| r.prompt_id == g[0].prompt_id));
            if g.iter().all(|r| r.reward == g[0].reward) {
                equal_groups += 1;
                assert!(g.iter().all(|r| r.advantage == 0.0), "{g:?}");
            } else {
                kept += 1;
                assert!(g.iter().any(|r| r.advantage != 0.0), "{g:?}");
                let sum: f64 = g.iter().map(|r| r.advantage).sum();
                assert!(sum.abs() < 1e-9, "group-centred advantages: {g:?}");
            }
        }
        assert!(
            kept == 2 || recs.len() == 12,
            "kept {kept} of {}",
            groups.len()
        );
        saw_refill |= groups.len() > 2;
        let m = &ms[step as usize - 1];
        assert_eq!(
            m.frac_reward_zero_std,
            equal_groups as f64 / groups.len() as f64,
            "step {step}"
        );
    }
    assert!(saw_refill, "some step dropped and refilled a group");
}

/// `rollout.mask_truncated`: truncated responses carry no gradient. With a 2-token budget every response is cut,
/// so a masked run has no token to train on and takes no optimizer step; the unmasked run steps as usual.
#[test]
fn mask_truncated_drops_truncated_responses_from_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    for (mask, out) in [(true, "masked"), (false, "plain")] {
        let dir = tmp.path().join(out);
        let cfg = cfg_with(
            &cache,
            &[
                "train.steps=2",
                "rollout.max_new_tokens=2",
                &format!("rollout.mask_truncated={mask}"),
            ],
        );
        train(&cfg, &opts(&dir, false)).unwrap();
        let ms = untimed(&dir);
        assert!(ms.iter().all(|m| m.truncated_frac == 1.0), "{ms:?}");
        let st = checkpoint::read_state(&checkpoint::latest(&dir).unwrap().unwrap().1).unwrap();
        if mask {
            assert_eq!(st.optimizer_steps, 0, "nothing left to train on");
            assert!(ms.iter().all(|m| m.grad_norm == 0.0 && m.loss == 0.0));
        } else {
            assert_eq!(st.optimizer_steps, 2, "one mini-batch per step");
        }
    }
}

/// A method with per-prompt history (HAPO's shortest correct length): the history is saved in checkpoints, and a
/// run stopped between checkpoints and resumed equals the uninterrupted run.
#[test]
fn history_is_checkpointed_and_resume_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // Few distinct prompts (3-bit parity) so that prompts repeat and the history is read, not only written.
    let hapo = [
        "control.method=\"hapo\"",
        "task.n_bits_max=3",
        "train.steps=4",
    ];
    let a = tmp.path().join("a");
    train(&cfg_with(&cache, &hapo), &opts(&a, false)).unwrap();
    let st = checkpoint::read_state(&checkpoint::latest(&a).unwrap().unwrap().1).unwrap();
    assert!(
        !st.history.0.is_empty(),
        "some prompt was answered correctly"
    );
    for (id, h) in &st.history.0 {
        let shortest = rollouts(&a)
            .iter()
            .filter(|r| &r.prompt_id == id && r.correct)
            .map(|r| r.length as f64)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(h.get("h"), Some(&shortest), "{id}");
    }
    // The shaped rewards are not plain 0/1 once a prompt has history.
    assert!(
        rollouts(&a)
            .iter()
            .any(|r| r.reward != 0.0 && r.reward != 1.0),
        "HAPO shaped some reward"
    );

    let mut stop = hapo.to_vec();
    stop.extend(["train.stop_after_steps=3", "checkpoint.every=2"]);
    let c = tmp.path().join("c");
    assert!(matches!(
        train(&cfg_with(&cache, &stop), &opts(&c, false)).unwrap(),
        Outcome::Stopped(3)
    ));
    let cfg_r =
        RunConfig::load_run(&c.join("config.toml"), &["train.stop_after_steps=0".into()]).unwrap();
    train(&cfg_r, &opts(&c, true)).unwrap();
    assert_same_run(&a, &c);
}

#[test]
fn warm_start_cache_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cfg = cfg_with(&cache, &["train.steps=1", "checkpoint.save_final=false"]);
    let key = luspo::train::sft::cache_path(&cfg).unwrap();
    assert!(!key.exists());
    train(&cfg, &opts(&tmp.path().join("a"), false)).unwrap();
    assert!(key.exists(), "the warm start is cached");
    // Another SFT setting is another cache entry.
    let other = cfg_with(&cache, &["sft.steps=101"]);
    assert_ne!(luspo::train::sft::cache_path(&other).unwrap(), key);

    // Unwritable --out: one clear line.
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let e = train(&cfg, &opts(&blocker.join("run"), false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("file/run") && !e.contains('\n'), "{e}");
    // Resume without a checkpoint.
    let e = train(&cfg, &opts(&tmp.path().join("nothing"), true))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no checkpoint"), "{e}");
}

/// Every shipped `configs/control/*.toml` of a `[control]` method loads and trains end to end (2 steps of the tiny run), logging finite
/// shaped rewards and advantages.
#[test]
fn every_control_config_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/control");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let mut sets = tiny_sets(&cache);
        sets.push("train.steps=2".into());
        // The compare configs and the objective-side methods are covered by tests/train_methods.rs.
        if name.starts_with("compare_") {
            continue;
        }
        let cfg = RunConfig::load(Some(&path), &sets).unwrap();
        if cfg.control.method == luspo::control::MethodName::None {
            continue;
        }
        assert_eq!(
            serde_json::to_value(cfg.control.method).unwrap(),
            name.as_str(),
            "{name}"
        );
        let out = tmp.path().join(&name);
        train(&cfg, &opts(&out, false)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let rs = rollouts(&out);
        assert_eq!(rs.len(), 2 * 8, "{name}");
        assert!(
            rs.iter()
                .all(|r| r.reward.is_finite() && r.advantage.is_finite()),
            "{name}"
        );
        n += 1;
    }
    assert_eq!(n, 10);
}

#[test]
fn on_policy_step_takes_old_logprobs_from_its_training_forward() {
    // One epoch over one mini-batch: the old log-probs come from the training forward itself (detached), so the
    // ratio is exactly 1 and nothing is clipped, while the policy still learns and the entropy is still measured.
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cfg = cfg_with(
        &cache,
        &[
            "train.steps=2",
            "train.mini_batch_size=8",
            "train.micro_batch_size=3",
            "train.ppo_epochs=1",
            "objective.name=\"gspo\"",
        ],
    );
    let a = tmp.path().join("a");
    train(&cfg, &opts(&a, false)).unwrap();
    for m in untimed(&a) {
        assert_eq!(m.ratio_mean, 1.0, "{m:?}");
        assert_eq!((m.clip_frac_low, m.clip_frac_high), (0.0, 0.0), "{m:?}");
        assert_eq!(m.approx_kl, 0.0, "{m:?}");
        assert!(m.entropy > 0.0 && m.entropy.is_finite(), "{m:?}");
    }
}
