//! Rollouts from an inference engine over HTTP (SGLang, vLLM, any OpenAI-compatible server such as llama.cpp's
//! `llama-server`): token-id prompts in, completion ids and per-token log-probs out. Requests go out
//! concurrently (`concurrency` in flight), each with a timeout and retries; a failure is one line naming the URL.

pub mod protocol;
pub mod sync;

use crate::rollout::{Completion, SamplingParams};
use crate::train::config::RolloutConfig;
use crate::{input_err, Result};
pub use protocol::EngineCompletion;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Which generation backend a run uses (`rollout.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The in-process model (`Policy::generate`).
    #[default]
    Local,
    /// SGLang's native `/generate`.
    Sglang,
    /// vLLM's OpenAI-compatible `/v1/completions` with its token-id extensions.
    Vllm,
    /// Any server speaking OpenAI's `/v1/completions` with token-id prompts (llama.cpp's `llama-server`).
    Openai,
}

/// An HTTP engine client.
pub struct Engine {
    kind: EngineKind,
    url: String,
    model: String,
    concurrency: usize,
    retries: usize,
    agent: ureq::Agent,
}

impl Engine {
    /// A client for `kind` at `url` (e.g. `http://127.0.0.1:8080`); `model` is the OpenAI `model` field.
    pub fn new(
        kind: EngineKind,
        url: &str,
        model: &str,
        concurrency: usize,
        timeout_s: f64,
        retries: usize,
    ) -> Result<Self> {
        if kind == EngineKind::Local {
            return Err(input_err!("rollout.engine = local has no HTTP client"));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(input_err!(
                "rollout.engine_url: expected http://host:port, got {url:?}"
            ));
        }
        if !(timeout_s.is_finite() && timeout_s > 0.0) {
            return Err(input_err!(
                "rollout.engine_timeout_s: must be > 0, got {timeout_s}"
            ));
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs_f64(timeout_s.min(10.0)))
            .timeout(Duration::from_secs_f64(timeout_s))
            .build();
        Ok(Self {
            kind,
            url: url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            concurrency: concurrency.max(1),
            retries,
            agent,
        })
    }

    /// The client `[rollout]` asks for (`None` with `engine = "local"`).
    pub fn from_config(r: &RolloutConfig) -> Result<Option<Self>> {
        if r.engine == EngineKind::Local {
            return Ok(None);
        }
        Self::new(
            r.engine,
            &r.engine_url,
            &r.engine_model,
            r.engine_concurrency,
            r.engine_timeout_s,
            r.engine_retries,
        )
        .map(Some)
    }

    /// One completion per prompt, each request seeded from `rng` (one draw per prompt, in prompt order).
    pub fn complete(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        rng: &mut impl RngCore,
    ) -> Result<Vec<Completion>> {
        let seeds: Vec<u64> = prompts.iter().map(|_| rng.next_u64()).collect();
        Ok(self
            .generate(prompts, params, &seeds)?
            .into_iter()
            .map(|c| Completion {
                ids: c.ids,
                logprobs: c.logprobs,
                finished: c.finished,
            })
            .collect())
    }

    /// The engine's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// POSTs `body` to `path`, retrying transport errors and 5xx answers; the error names the URL.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.url);
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt.min(5)));
            }
            match self.agent.post(&url).send_json(body.clone()) {
                Ok(resp) => {
                    return resp
                        .into_json::<serde_json::Value>()
                        .map_err(|e| input_err!("{url}: the answer is not JSON: {e}"));
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    let text: String = text.chars().take(200).collect();
                    last = format!("HTTP {code}: {}", text.replace('\n', " "));
                    if code < 500 {
                        break;
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(input_err!(
            "{url}: {last} (after {} attempts)",
            self.retries + 1
        ))
    }

    /// Waits until `GET /health` answers 200, for at most `timeout_s` seconds.
    pub fn wait_healthy(&self, timeout_s: f64) -> Result<()> {
        let url = format!("{}/health", self.url);
        let deadline = std::time::Instant::now() + Duration::from_secs_f64(timeout_s);
        loop {
            let err = match self.agent.get(&url).call() {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if std::time::Instant::now() >= deadline {
                return Err(input_err!(
                    "{url}: the engine did not become healthy in {timeout_s} s: {err}"
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// One completion per prompt (prompt i sampled with `seeds[i]`), `concurrency` requests in flight.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        seeds: &[u64],
    ) -> Result<Vec<EngineCompletion>> {
        if seeds.len() != prompts.len() {
            return Err(input_err!(
                "engine: {} prompts but {} seeds",
                prompts.len(),
                seeds.len()
            ));
        }
        let path = protocol::generate_path(self.kind);
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<EngineCompletion>>>> =
            Mutex::new((0..prompts.len()).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..self.concurrency.min(prompts.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= prompts.len() {
                        break;
                    }
                    let body = protocol::request_body(
                        self.kind,
                        &self.model,
                        &prompts[i],
                        params,
                        seeds[i],
                    );
                    let r = self.post(path, &body).and_then(|v| {
                        protocol::parse_response(self.kind, &v)
                            .map_err(|e| input_err!("{}{path}: unexpected answer: {e}", self.url))
                    });
                    results.lock().expect("no panics while holding the lock")[i] = Some(r);
                });
            }
        });
        results
            .into_inner()
            .expect("no panics while holding the lock")
            .into_iter()
            .map(|r| r.expect("every index was served"))
            .collect()
    }
}

/// Mismatch between engine and trainer log-probs of the same tokens: (mean |Δ log p|, KL(engine‖trainer)),
/// the KL estimated on the engine's own samples with the non-negative k3 estimator `r − 1 − log r`,
/// `r = p_trainer / p_engine`.
pub fn mismatch(engine: &[Vec<f32>], trainer: &[Vec<f32>]) -> (f64, f64) {
    let (mut abs, mut kl, mut n) = (0f64, 0f64, 0usize);
    for (e, t) in engine.iter().zip(trainer) {
        for (&a, &b) in e.iter().zip(t) {
            let d = b as f64 - a as f64;
            abs += d.abs();
            kl += d.exp() - 1.0 - d;
            n += 1;
        }
    }
    if n == 0 {
        (0.0, 0.0)
    } else {
        (abs / n as f64, kl / n as f64)
    }
}

/// Sequence-level truncated importance-sampling weight `min(exp(Σ_t trainer_t − engine_t), cap)` (verl's
/// sequence-level TIS, TRL's `sequence_truncate`): the sampler was the engine, the objective's old policy the
/// trainer.
pub fn tis_weight(engine: &[f32], trainer: &[f32], cap: f64) -> f64 {
    let log_ratio: f64 = engine
        .iter()
        .zip(trainer)
        .map(|(&e, &t)| t as f64 - e as f64)
        .sum();
    log_ratio.min(cap.ln()).exp()
}

/// How the engine-vs-trainer importance weight corrects the loss; the names are TRL's
/// `vllm_importance_sampling_mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TisMode {
    /// One weight per sequence, exp(Σ_t trainer_t − engine_t) capped at `tis_cap` (verl's sequence-level TIS).
    #[default]
    SequenceTruncate,
    /// One weight per sequence, the same ratio set to 0 where it exceeds `tis_cap`.
    SequenceMask,
    /// One weight per token, min(exp(trainer_t − engine_t), `tis_cap`) (verl's token-level TIS).
    TokenTruncate,
    /// One weight per token, the ratio set to 0 where it exceeds `tis_cap`.
    TokenMask,
}

impl TisMode {
    /// Whether each token gets its own weight (else one weight per sequence).
    pub fn per_token(self) -> bool {
        matches!(self, Self::TokenTruncate | Self::TokenMask)
    }

    /// The importance weights of one response: one per token for the token modes, one for the sequence modes.
    pub fn weights(self, engine: &[f32], trainer: &[f32], cap: f64) -> Vec<f64> {
        let d = engine
            .iter()
            .zip(trainer)
            .map(|(&e, &t)| t as f64 - e as f64);
        let log_ratios: Vec<f64> = if self.per_token() {
            d.collect()
        } else {
            vec![d.sum()]
        };
        let truncate = matches!(self, Self::SequenceTruncate | Self::TokenTruncate);
        log_ratios
            .into_iter()
            .map(|l| match (truncate, l > cap.ln()) {
                (true, true) => cap,
                (false, true) => 0.0,
                _ => l.exp(),
            })
            .collect()
    }
}
