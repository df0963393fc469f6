//! Checkpoint round trip, pruning, atomicity (leftover temp dirs are ignored), NaN refusal, JSONL truncation.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarMap};
use luspo::train::checkpoint::{self, TrainState};
use luspo::train::files::{truncate_lines, JsonlLog};
use luspo::train::optim::{AdamW, AdamWParams, Grads};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn varmap() -> VarMap {
    let vm = VarMap::new();
    vm.get(
        (2, 3),
        "a.weight",
        Init::Const(0.5),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    vm.get(3, "b.norm", Init::Const(1.0), DType::F32, &Device::Cpu)
        .unwrap();
    vm
}

fn state(step: u64) -> TrainState {
    let mut r = ChaCha8Rng::seed_from_u64(7);
    r.next_u64();
    TrainState {
        step,
        optimizer_steps: 3 * step,
        skipped_updates: 1,
        rng_rollout: r.clone(),
        rng_data: ChaCha8Rng::seed_from_u64(8),
        rng_shuffle: ChaCha8Rng::seed_from_u64(9),
        prompts_drawn: 16 * step,
        metrics_lines: step,
        rollouts_lines: 64 * step,
        history: Default::default(),
        eval_lines: 1,
        eval_before: None,
        eval_last: None,
        wall_seconds: 1.5,
    }
}

fn step_once(opt: &mut AdamW) {
    let grads = Grads(
        opt.vars()
            .iter()
            .map(|v| Some((v.as_tensor().ones_like().unwrap() * 0.3).unwrap()))
            .collect(),
    );
    opt.step(&grads, 0.01, 1.0).unwrap();
}

#[test]
fn round_trip_restores_weights_moments_and_rngs() {
    let dir = tempfile::tempdir().unwrap();
    let vm = varmap();
    let params = AdamWParams {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut opt = AdamW::new(&vm, params).unwrap();
    step_once(&mut opt);
    let st = state(2);
    checkpoint::save(dir.path(), &vm, &opt, &st, 1).unwrap();

    let mut vm2 = varmap();
    let mut opt2 = AdamW::new(&vm2, params).unwrap();
    let (n, path) = checkpoint::latest(dir.path()).unwrap().unwrap();
    assert_eq!(n, 2);
    let st2 = checkpoint::load(&path, &mut vm2, &mut opt2).unwrap();
    assert_eq!(st2, st);
    let mut a = st.rng_rollout.clone();
    let mut b = st2.rng_rollout.clone();
    assert_eq!(
        a.next_u64(),
        b.next_u64(),
        "the RNG continues where it stopped"
    );
    assert_eq!(opt2.t, opt.t);
    // Same next update on both.
    step_once(&mut opt);
    step_once(&mut opt2);
    let w1 = checkpoint::snapshot(&vm).unwrap();
    let w2 = checkpoint::snapshot(&vm2).unwrap();
    for (k, t) in &w1 {
        let d = (t - &w2[k])
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{k}");
    }
}

#[test]
fn keeps_only_the_newest_and_ignores_partial_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let vm = varmap();
    let opt = AdamW::new(
        &vm,
        AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )
    .unwrap();
    for s in 1..=4 {
        checkpoint::save(dir.path(), &vm, &opt, &state(s), 2).unwrap();
    }
    let steps: Vec<u64> = checkpoint::list(dir.path())
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps, vec![3, 4]);
    // A half-written checkpoint (as after SIGKILL during a save) is never picked.
    let partial = dir.path().join("checkpoints").join(".tmp-step-000005-1");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("model.safetensors"), b"garbage").unwrap();
    let no_state = dir.path().join("checkpoints").join("step-000009");
    std::fs::create_dir_all(&no_state).unwrap();
    assert_eq!(checkpoint::latest(dir.path()).unwrap().unwrap().0, 4);
}

#[test]
fn refuses_to_checkpoint_nan_weights() {
    let dir = tempfile::tempdir().unwrap();
    let vm = varmap();
    let opt = AdamW::new(
        &vm,
        AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )
    .unwrap();
    checkpoint::save(dir.path(), &vm, &opt, &state(1), 1).unwrap();
    vm.data().lock().unwrap()["a.weight"]
        .set(&Tensor::new(&[[1f32, f32::NAN, 0.0], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap())
        .unwrap();
    assert!(!checkpoint::weights_finite(&vm).unwrap());
    let e = checkpoint::save(dir.path(), &vm, &opt, &state(2), 1).unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
    assert_eq!(
        checkpoint::latest(dir.path()).unwrap().unwrap().0,
        1,
        "the last good checkpoint stays"
    );
}

#[test]
fn unwritable_run_dir_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let vm = varmap();
    let opt = AdamW::new(
        &vm,
        AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )
    .unwrap();
    let e = checkpoint::save(&blocker, &vm, &opt, &state(1), 1).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("checkpoints") && !s.contains('\n'), "{s}");
}

#[test]
fn jsonl_logs_cut_back_to_a_line_count() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.jsonl");
    let mut log = JsonlLog::open_truncated(&p, 0).unwrap();
    for i in 0..5 {
        log.append(&serde_json::json!({ "step": i })).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    // A torn last line (killed mid-write) plus two complete extra lines: cut to 3.
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    std::io::Write::write_all(&mut f, b"{\"step\": 9").unwrap();
    drop(f);
    let mut log = JsonlLog::open_truncated(&p, 3).unwrap();
    log.append(&serde_json::json!({ "step": 3 })).unwrap();
    drop(log);
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(
        text,
        "{\"step\":0}\n{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n"
    );
    assert!(
        truncate_lines(&p, 10).is_err(),
        "fewer lines than the checkpoint says is an error"
    );
    truncate_lines(&p, 0).unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "");
}
