//! Request bodies and response parsing of the engines' HTTP APIs (pure functions: no I/O).
//!
//! - SGLang native `/generate` (`python/sglang/srt/managers/io_struct.py`, `GenerateReqInput`): `input_ids`,
//!   `sampling_params`, `return_logprob`; the answer's `meta_info.output_token_logprobs` is a list of
//!   `[logprob, token_id, text]` and `meta_info.finish_reason.type` is `stop` or `length`.
//! - OpenAI `/v1/completions` with a token-id `prompt` (vLLM and llama.cpp's `llama-server`): completion ids come
//!   from vLLM's `choices[0].token_ids` (`return_token_ids`) or `logprobs.tokens` as `token_id:N`
//!   (`return_tokens_as_token_ids`), or from llama.cpp's `logprobs.content[].id`; log-probs from
//!   `logprobs.token_logprobs` (vLLM) or `logprobs.content[].logprob` (llama.cpp).

use super::EngineKind;
use crate::rollout::SamplingParams;
use serde_json::{json, Value};

/// One completion as an engine returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineCompletion {
    /// Generated token ids (a final EOS included when the engine stopped on it).
    pub ids: Vec<u32>,
    /// The engine's log-prob of each generated token.
    pub logprobs: Vec<f32>,
    /// True when generation ended on EOS or a stop string, false when cut by the length limit.
    pub finished: bool,
}

/// The path (under the engine URL) that generation requests go to.
pub fn generate_path(kind: EngineKind) -> &'static str {
    match kind {
        EngineKind::Sglang => "/generate",
        _ => "/v1/completions",
    }
}

/// The JSON body asking for one completion of `prompt`.
pub fn request_body(
    kind: EngineKind,
    model: &str,
    prompt: &[u32],
    p: &SamplingParams,
    seed: u64,
) -> Value {
    // The engines take top_k = -1 (SGLang, vLLM) or 0 (llama.cpp) for "off"; -1 is accepted by all three.
    let top_k: i64 = if p.top_k == 0 { -1 } else { p.top_k as i64 };
    // Seeds are sent as 31-bit integers: llama.cpp stores them in a u32, vLLM in an i64.
    let seed = seed & 0x7fff_ffff;
    match kind {
        EngineKind::Sglang => json!({
            "input_ids": prompt,
            "sampling_params": {
                "temperature": p.temperature,
                "top_p": p.top_p,
                "top_k": top_k,
                "max_new_tokens": p.max_new_tokens,
                "stop": p.stop,
                "stop_token_ids": p.eos_token_ids,
                "skip_special_tokens": false,
                "sampling_seed": seed,
            },
            "return_logprob": true,
            "logprob_start_len": -1,
        }),
        _ => json!({
            "model": model,
            "prompt": prompt,
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": top_k,
            "n": 1,
            "logprobs": 1,
            "seed": seed,
            "stop": p.stop,
            "stop_token_ids": p.eos_token_ids,
            "skip_special_tokens": false,
            "return_token_ids": true,
            "return_tokens_as_token_ids": true,
            "stream": false,
        }),
    }
}

fn as_u32(v: &Value, what: &str) -> Result<u32, String> {
    v.as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| format!("{what}: expected a token id, got {v}"))
}

fn as_f32(v: &Value, what: &str) -> Result<f32, String> {
    v.as_f64()
        .map(|x| x as f32)
        .ok_or_else(|| format!("{what}: expected a number, got {v}"))
}

/// Parses one response body; the error (without the URL) says which field was wrong.
pub fn parse_response(kind: EngineKind, body: &Value) -> Result<EngineCompletion, String> {
    match kind {
        EngineKind::Sglang => parse_sglang(body),
        _ => parse_completions(body),
    }
}

fn parse_sglang(body: &Value) -> Result<EngineCompletion, String> {
    let body = match body {
        Value::Array(a) if a.len() == 1 => &a[0],
        b => b,
    };
    let meta = body
        .get("meta_info")
        .ok_or("no `meta_info` in the response")?;
    let entries = meta
        .get("output_token_logprobs")
        .and_then(Value::as_array)
        .ok_or("no `meta_info.output_token_logprobs` (was return_logprob honoured?)")?;
    let mut ids = Vec::with_capacity(entries.len());
    let mut logprobs = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let what = format!("meta_info.output_token_logprobs[{i}]");
        let e = e
            .as_array()
            .filter(|e| e.len() >= 2)
            .ok_or_else(|| format!("{what}: expected [logprob, token_id, text]"))?;
        logprobs.push(as_f32(&e[0], &what)?);
        ids.push(as_u32(&e[1], &what)?);
    }
    let reason = meta
        .get("finish_reason")
        .and_then(|f| f.get("type").or(Some(f)))
        .and_then(Value::as_str)
        .ok_or("no `meta_info.finish_reason.type`")?;
    Ok(EngineCompletion {
        ids,
        logprobs,
        finished: finished(reason)?,
    })
}

fn finished(reason: &str) -> Result<bool, String> {
    match reason {
        "stop" | "eos" => Ok(true),
        "length" => Ok(false),
        r => Err(format!("unexpected finish_reason `{r}`")),
    }
}

fn parse_completions(body: &Value) -> Result<EngineCompletion, String> {
    if let Some(e) = body.get("error") {
        return Err(format!("the engine answered an error: {e}"));
    }
    let choice = body
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or("no `choices[0]` in the response")?;
    let lp = choice
        .get("logprobs")
        .filter(|v| !v.is_null())
        .ok_or("no `choices[0].logprobs` (does the server support logprobs?)")?;
    let (ids, logprobs) = if let Some(content) = lp.get("content").and_then(Value::as_array) {
        // llama.cpp: [{"id": N, "token": "...", "logprob": x, ...}]
        let mut ids = vec![];
        let mut lps = vec![];
        for (i, c) in content.iter().enumerate() {
            let what = format!("choices[0].logprobs.content[{i}]");
            ids.push(as_u32(c.get("id").unwrap_or(&Value::Null), &what)?);
            lps.push(as_f32(c.get("logprob").unwrap_or(&Value::Null), &what)?);
        }
        (ids, lps)
    } else {
        let lps = lp
            .get("token_logprobs")
            .and_then(Value::as_array)
            .ok_or("no `choices[0].logprobs.token_logprobs`")?
            .iter()
            .enumerate()
            .map(|(i, v)| as_f32(v, &format!("choices[0].logprobs.token_logprobs[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let ids = match choice.get("token_ids").and_then(Value::as_array) {
            Some(ids) => ids
                .iter()
                .enumerate()
                .map(|(i, v)| as_u32(v, &format!("choices[0].token_ids[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
            None => lp
                .get("tokens")
                .and_then(Value::as_array)
                .ok_or("neither `choices[0].token_ids` nor `choices[0].logprobs.tokens`")?
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .and_then(|s| s.strip_prefix("token_id:"))
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| {
                            format!(
                                "choices[0].logprobs.tokens[{i}]: expected \"token_id:N\", got {v}"
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        (ids, lps)
    };
    if ids.len() != logprobs.len() {
        return Err(format!(
            "{} token ids but {} log-probs",
            ids.len(),
            logprobs.len()
        ));
    }
    let reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .ok_or("no `choices[0].finish_reason`")?;
    Ok(EngineCompletion {
        ids,
        logprobs,
        finished: finished(reason)?,
    })
}

/// The JSON body of SGLang's `/update_weights_from_disk` (`UpdateWeightFromDiskReqInput`).
pub fn sglang_update_body(model_path: &str) -> Value {
    json!({ "model_path": model_path, "load_format": "auto" })
}

/// Checks SGLang's `/update_weights_from_disk` answer (`{"success": bool, "message": str}`).
pub fn parse_sglang_update(body: &Value) -> Result<(), String> {
    match body.get("success").and_then(Value::as_bool) {
        Some(true) => Ok(()),
        Some(false) => Err(format!(
            "weight update refused: {}",
            body.get("message").and_then(Value::as_str).unwrap_or("")
        )),
        None => Err("no `success` in the weight-update answer".into()),
    }
}
