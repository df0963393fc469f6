//! A real engine: llama.cpp's `llama-server` (built by scripts/install_llama_server.sh) on the CPU, serving GGUF
//! files written by `luspo export` from SmolLM2-135M (scripts/fetch_smollm2.sh). Greedy tokens through the engine
//! equal luspo's own on the same weights (f32 and f16 exports; the f16 one made from an HF directory, so both
//! tokenizer-metadata paths are loaded by llama.cpp); the engine's log-probs agree with luspo's (the measured
//! gap is printed); a 3-step `luspo train` with `engine = "openai"` syncs its weights by GGUF export + restart,
//! loses its engine, resumes for 2 more steps (restarting the engine on the checkpoint's weights), and the engine
//! then serves the updated model. Each test skips (with a note) when the binary or model is missing.

use luspo::engine::{Engine, EngineKind};
use luspo::export::{export_gguf, GgufDType};
use luspo::metrics::StepMetrics;
use luspo::model::io::{self, LoadedModel};
use luspo::rollout::{self, Completion, SamplingParams};
use luspo::train::config::RunConfig;
use luspo::train::files::read_jsonl;
use luspo::train::progress::Mode;
use luspo::train::{train, Outcome, TrainOptions};
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The llama-server binary and the SmolLM2 GGUF, or `None` (with a note) when either is missing.
fn setup() -> Option<(PathBuf, PathBuf)> {
    let bin = std::env::var_os("LUSPO_LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".llama/bin/llama-server"));
    let model = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    for p in [&bin, &model] {
        if !p.exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{} is missing with CI=true: .ci/run must have built/fetched it",
                p.display()
            );
            eprintln!(
                "note: {} not found (scripts/install_llama_server.sh, scripts/fetch_smollm2.sh); skipping",
                p.display()
            );
            return None;
        }
    }
    Some((bin, model))
}

/// The tests take turns: two servers and a training run at once overload a 2-core CI machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server's command line (shared by the tests and the restart script).
fn server_args(port: u16) -> String {
    format!(
        "--host 127.0.0.1 --port {port} -t 2 -np 2 -c 2048 --no-warmup -ctk f32 -ctv f32 -fa off"
    )
}

/// An `openai` client of the server on `port` (one retry, 300 s timeout).
fn client(port: u16, concurrency: usize) -> Engine {
    Engine::new(
        EngineKind::Openai,
        &format!("http://127.0.0.1:{port}"),
        "luspo",
        concurrency,
        300.0,
        1,
    )
    .unwrap()
}

/// A running llama-server, killed on drop.
struct Server {
    child: Child,
    engine: Engine,
}

impl Server {
    fn start(bin: &Path, gguf: &Path) -> Self {
        let port = free_port();
        let child = Command::new(bin)
            .arg("-m")
            .arg(gguf)
            .args(server_args(port).split_whitespace())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Self {
            child,
            engine: client(port, 2),
        };
        s.engine.wait_healthy(300.0).unwrap();
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prompts(m: &LoadedModel) -> Vec<Vec<u32>> {
    [
        "What is the capital of France?",
        "Tom has 3 apples and buys 4 more. How many apples does he have?",
        "Write one sentence about the sea.",
    ]
    .iter()
    .map(|t| m.prompt_ids(t, true).unwrap())
    .collect()
}

fn greedy(m: &LoadedModel, n: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: n,
        eos_token_ids: m.tokenizer.eos_ids.clone(),
        stop: vec![],
    }
}

/// Greedy completions of luspo and of the engine serving `gguf` (luspo runs the same file, loaded back).
fn both(bin: &Path, gguf: &Path) -> (Vec<Completion>, Vec<Completion>) {
    let m = io::load(gguf, &candle_core::Device::Cpu).unwrap();
    let ps = prompts(&m);
    let params = greedy(&m, 24);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let ours = rollout::generate(&m.model, &ps, &params, &mut rng).unwrap();
    let server = Server::start(bin, gguf);
    let theirs = server.engine.complete(&ps, &params, &mut rng).unwrap();
    (ours, theirs)
}

/// Largest |Δ log p| over the tokens both sides generated.
fn max_gap(a: &[Completion], b: &[Completion]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.logprobs.iter().zip(&y.logprobs))
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max)
}

#[test]
fn exported_gguf_gives_luspos_greedy_tokens_and_logprobs() {
    let Some((bin, src)) = setup() else { return };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let m = io::load(&src, &candle_core::Device::Cpu).unwrap();

    // f32 from the GGUF-loaded model (tokenizer metadata copied from the source GGUF).
    let f32_path = dir.path().join("smollm2-f32.gguf");
    export_gguf(&m, &f32_path, GgufDType::F32).unwrap();
    let (ours, theirs) = both(&bin, &f32_path);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a.ids, b.ids, "prompt {i}: greedy tokens differ (f32)");
        assert_eq!(a.finished, b.finished, "prompt {i}");
    }
    let gap32 = max_gap(&ours, &theirs);
    eprintln!(
        "f32: max |luspo − llama.cpp| log-prob over {} tokens = {gap32:.2e}",
        ours.iter().map(|c| c.ids.len()).sum::<usize>()
    );
    assert!(gap32 < 2e-3, "f32 log-prob gap {gap32}");

    // f16 from an HF directory (tokenizer metadata built from tokenizer.json).
    let hf = dir.path().join("hf");
    io::save_hf(&hf, &m).unwrap();
    let m_hf = io::load(&hf, &candle_core::Device::Cpu).unwrap();
    let f16_path = dir.path().join("smollm2-f16.gguf");
    export_gguf(&m_hf, &f16_path, GgufDType::F16).unwrap();
    let (ours, theirs) = both(&bin, &f16_path);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a.ids, b.ids, "prompt {i}: greedy tokens differ (f16)");
    }
    let gap16 = max_gap(&ours, &theirs);
    eprintln!("f16: max |luspo − llama.cpp| log-prob = {gap16:.2e}");
    assert!(gap16 < 2e-2, "f16 log-prob gap {gap16}");

    // q8_0 is written in llama.cpp's block layout: candle reads back what was written, within its step.
    let q8 = dir.path().join("smollm2-q8_0.gguf");
    export_gguf(&m, &q8, GgufDType::Q8_0).unwrap();
    let back = io::load(&q8, &candle_core::Device::Cpu).unwrap();
    let w = |m: &LoadedModel| {
        m.varmap.data().lock().unwrap()["model.layers.0.mlp.up_proj.weight"]
            .as_tensor()
            .clone()
    };
    let diff = (w(&m) - w(&back))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = w(&m)
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff <= scale / 127.0 + 1e-6,
        "q8_0 round trip {diff} vs max {scale}"
    );
}

#[test]
fn train_with_openai_engine_syncs_weights_by_export_and_restart() {
    let Some((bin, src)) = setup() else { return };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pidfile = dir.path().join("server.pid");
    // The restart hook: stop the running server (if any), start one on the new file, return at once; luspo then
    // waits for /health.
    let script = dir.path().join("restart.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\nif [ -f {pid} ]; then kill $(cat {pid}) 2>/dev/null || true; \
             while kill -0 $(cat {pid}) 2>/dev/null; do sleep 0.1; done; fi\n\
             {bin} -m \"$LUSPO_WEIGHTS\" {args} >/dev/null 2>&1 &\necho $! > {pid}\n",
            pid = pidfile.display(),
            bin = bin.display(),
            args = server_args(port)
        ),
    )
    .unwrap();
    let out = dir.path().join("run");
    let sets: Vec<String> = [
        format!("model.path={:?}", src.display().to_string()),
        "model.chat_template=true".into(),
        "task.name=\"wordproblem\"".into(),
        "task.wp_answer_format=\"hash\"".into(),
        "task.eval_size=2".into(),
        "sft.steps=0".into(),
        "rollout.prompts_per_step=2".into(),
        "rollout.group_size=2".into(),
        "rollout.max_new_tokens=16".into(),
        "rollout.engine=\"openai\"".into(),
        format!("rollout.engine_url=\"http://127.0.0.1:{port}\""),
        format!("rollout.sync_command=\"sh {}\"", script.display()),
        "rollout.tis_cap=2.0".into(),
        "train.steps=3".into(),
        // Rewards of 16-token answers are usually all 0 (no advantage): the entropy bonus makes sure the weights move.
        "objective.entropy_coef=0.01".into(),
        "optim.lr=1e-4".into(),
        "optim.warmup_steps=0".into(),
        "eval.every=0".into(),
        "eval.max_new_tokens=8".into(),
        "checkpoint.every=3".into(),
        "checkpoint.save_final=false".into(),
    ]
    .to_vec();
    let cfg = RunConfig::load(None, &sets).unwrap();
    let opts = TrainOptions {
        out: out.clone(),
        resume: false,
        mode: Mode::Quiet,
        interrupt: None,
    };
    let kill = || {
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            let _ = Command::new("kill").arg(pid.trim()).status();
            // The hook's next start waits for this one to exit; a kill here must not leave a stale pid behind.
            let _ = std::fs::remove_file(&pidfile);
        }
    };
    let first = train(&cfg, &opts);
    // The run "crashes" with its engine (the server goes away), then resumes from the step-3 checkpoint for 2 more
    // steps: the resumed trainer must start an engine on the checkpoint's weights before its first rollout.
    kill();
    let mut cfg5 = cfg.clone();
    cfg5.train.steps = 5;
    // The resumed steps correct per token (verl's token-level TIS) rather than per sequence.
    cfg5.rollout.tis_mode = luspo::engine::TisMode::TokenTruncate;
    let res = train(
        &cfg5,
        &TrainOptions {
            resume: true,
            ..opts.clone()
        },
    );
    let engine = client(port, 1);
    let check = || {
        assert!(matches!(first.as_ref().unwrap(), Outcome::Finished(_)));
        assert!(matches!(res.as_ref().unwrap(), Outcome::Finished(_)));
        let ms: Vec<StepMetrics> = read_jsonl(&out.join("metrics.jsonl")).unwrap();
        assert_eq!(
            ms.iter().map(|m| m.step).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5],
            "each step logged exactly once across the resume"
        );
        // Step 4's sync time is the resumed run's first push (the checkpoint's weights, before any rollout; the
        // next push is before step 5), and its engine log-probs match the trainer's: the new engine serves them.
        for m in &ms {
            let d = m.engine_logprob_diff.expect("engine_logprob_diff");
            assert!(m.weight_sync_seconds.expect("weight_sync_seconds") > 0.0);
            assert!(m.engine_kl.unwrap() >= 0.0 && m.tis_weight_mean.unwrap() > 0.0);
            eprintln!(
                "step {}: engine vs trainer mean |Δ log p| {d:.2e}, KL {:.2e}, sync {:.2} s",
                m.step,
                m.engine_kl.unwrap(),
                m.weight_sync_seconds.unwrap()
            );
            assert!(
                d < 5e-3,
                "step {}: engine and trainer disagree: {d}",
                m.step
            );
        }
        // The engine now serves the last synced weights (after 4 optimizer steps), not the original model.
        let synced = out.join("engine_weights/step-000004.gguf");
        let updated = io::load(&synced, &candle_core::Device::Cpu).unwrap();
        let original = io::load(&src, &candle_core::Device::Cpu).unwrap();
        let ps = prompts(&original);
        let params = greedy(&original, 12);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let served = engine.complete(&ps, &params, &mut rng).unwrap();
        let score = |m: &LoadedModel| -> Vec<Completion> {
            served
                .iter()
                .zip(&ps)
                .map(|(c, p)| {
                    let seq: Vec<u32> = p.iter().chain(&c.ids).copied().collect();
                    let lp = rollout::score(&m.model, &[seq], 1).unwrap().remove(0);
                    Completion {
                        ids: c.ids.clone(),
                        logprobs: lp[lp.len() - c.ids.len()..].to_vec(),
                        finished: c.finished,
                    }
                })
                .collect()
        };
        let to_updated = max_gap(&served, &score(&updated));
        let to_original = max_gap(&served, &score(&original));
        eprintln!("after sync: max |Δ log p| engine vs updated {to_updated:.2e}, vs original {to_original:.2e}");
        assert!(to_updated < 2e-3, "{to_updated}");
        assert!(
            to_original > 10.0 * to_updated.max(1e-4),
            "{to_original} vs {to_updated}"
        );
        let tb = luspo::tb::event_files(&out.join("tb")).unwrap();
        assert_eq!(tb.len(), 1, "{tb:?}");
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    kill();
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}
