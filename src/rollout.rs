//! Batched sampling with a KV cache, and scoring (per-token log-probs and entropies) with the training forward.
//!
//! CONTRACT (used by `train` and the CLI):
//! - `generate(&Transformer, prompts, &SamplingParams, &mut rng) -> Vec<Completion>`; stop strings need a decoder:
//!   `generate_with_stop(.., Some(&checker))` where `checker(generated_ids) -> bool` says a stop string has appeared
//!   (see [`stop_string_checker`]).
//! - `score(&Transformer, sequences, batch_size) -> Vec<Vec<f32>>` (no grad): a row of n ids gives n−1 log-probs.
//! - `token_logprobs(&Transformer, &Batch) -> (logp, entropy)` tensors WITH gradient at every position;
//!   `response_token_logprobs` the same at the response positions only (0 elsewhere), for the train step.
//! - `Batch::from_pairs(&[(prompt, response)], pad_id, dtype, device)` builds the right-padded training batch.
//!
//! Log-probs everywhere are `log_softmax(logits)` of the model at temperature 1 (the raw policy), whatever the
//! sampling temperature/top-k/top-p: the quantity the trainer's objective uses for importance ratios.

use crate::model::{KvCache, Transformer};
use candle_core::{DType, Device, Tensor};
use rand::Rng;

/// Sampling settings.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 = greedy.
    pub temperature: f64,
    /// Nucleus sampling mass (1 = off).
    pub top_p: f64,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Maximum number of new tokens.
    pub max_new_tokens: usize,
    /// Token ids that end a completion (included in the completion).
    pub eos_token_ids: Vec<u32>,
    /// Strings that end a completion (the completion is cut after the stop string).
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 64,
            eos_token_ids: vec![],
            stop: vec![],
        }
    }
}

impl SamplingParams {
    /// Checks the values; a bad one is an `Error::Input` naming the key.
    pub fn validate(&self) -> crate::Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(crate::input_err!(
                "sampling.temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(crate::input_err!(
                "sampling.top_p must be in (0, 1], got {}",
                self.top_p
            ));
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(crate::input_err!(
                "sampling.stop: stop strings must not be empty"
            ));
        }
        Ok(())
    }
}

/// A stop test on a row's generated ids (true = a stop string has appeared).
pub type StopChecker<'a> = &'a dyn Fn(&[u32]) -> bool;

/// One sampled completion.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Generated token ids (a final EOS included when generation stopped on it).
    pub ids: Vec<u32>,
    /// Log-prob of each generated token under the sampling distribution's model (temperature 1, before top-p/k).
    pub logprobs: Vec<f32>,
    /// True when the completion ended on EOS or a stop string, false when cut by `max_new_tokens`.
    pub finished: bool,
}

/// A right-padded training batch: prompt + response per row.
pub struct Batch {
    /// Token ids `(B, T)` u32, right-padded.
    pub ids: Tensor,
    /// 1 where `ids` holds a real token, `(B, T)`.
    pub attention_mask: Tensor,
    /// 1 where position t+1 is a response token whose log-prob is trained, `(B, T-1)`.
    pub response_mask: Tensor,
}

impl Batch {
    /// Builds a right-padded batch from `(prompt ids, response ids)` pairs; masks have dtype `dtype`.
    ///
    /// Row `b` holds `prompt ++ response` then `pad_id`; `response_mask[b, t] = 1` iff token `t+1` is a response token.
    /// Every prompt needs at least one token (the first response token is predicted from it); `T ≥ 2`.
    pub fn from_pairs(
        pairs: &[(Vec<u32>, Vec<u32>)],
        pad_id: u32,
        dtype: DType,
        device: &Device,
    ) -> crate::Result<Batch> {
        if pairs.is_empty() {
            return Err(crate::input_err!("batch: no sequences"));
        }
        if let Some(i) = pairs.iter().position(|(p, _)| p.is_empty()) {
            return Err(crate::input_err!(
                "batch: prompt {i} is empty (needs at least one token)"
            ));
        }
        let t = pairs
            .iter()
            .map(|(p, r)| p.len() + r.len())
            .max()
            .unwrap_or(0)
            .max(2);
        let b = pairs.len();
        let mut ids = vec![pad_id; b * t];
        let mut am = vec![0f32; b * t];
        let mut rm = vec![0f32; b * (t - 1)];
        for (bi, (p, r)) in pairs.iter().enumerate() {
            for (j, &id) in p.iter().chain(r.iter()).enumerate() {
                ids[bi * t + j] = id;
                am[bi * t + j] = 1.0;
            }
            for j in p.len()..p.len() + r.len() {
                rm[bi * (t - 1) + j - 1] = 1.0;
            }
        }
        Ok(Batch {
            ids: Tensor::from_vec(ids, (b, t), device)?,
            attention_mask: Tensor::from_vec(am, (b, t), device)?.to_dtype(dtype)?,
            response_mask: Tensor::from_vec(rm, (b, t - 1), device)?.to_dtype(dtype)?,
        })
    }
}

/// A stop-string checker from a decoder: true once the decoded completion contains any of `stop`.
///
/// Decodes only the tail of the completion (enough tokens for the longest stop string, counting ≥ 1 byte per token,
/// plus slack), so each call costs O(longest stop string), not O(completion).
pub fn stop_string_checker<'a, F>(decode: F, stop: &'a [String]) -> impl Fn(&[u32]) -> bool + 'a
where
    F: Fn(&[u32]) -> String + 'a,
{
    let window = stop.iter().map(|s| s.len()).max().unwrap_or(0) + 4;
    move |ids: &[u32]| {
        if stop.is_empty() {
            return false;
        }
        let tail = &ids[ids.len().saturating_sub(window)..];
        let text = decode(tail);
        stop.iter().any(|s| text.contains(s.as_str()))
    }
}

/// Samples one completion per prompt (prompts are token ids, ragged). Errors if `params.stop` is non-empty:
/// stop strings need a decoder, use [`generate_with_stop`].
pub fn generate(
    model: &Transformer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> crate::Result<Vec<Completion>> {
    if !params.stop.is_empty() {
        return Err(crate::input_err!(
            "sampling.stop: stop strings need a decoder; call rollout::generate_with_stop with a stop checker"
        ));
    }
    generate_with_stop(model, prompts, params, rng, None)
}

/// Samples one completion per prompt, left-padding the ragged prompts into one batch with a KV cache.
///
/// Each step pulls only the last position's logits to the host and samples there: temperature (0 = greedy argmax),
/// then top-k, then top-p (as HF's warpers, in that order), with one uniform draw per active row from `rng`, rows in
/// order; so a seed gives the same completions. A row finishes on an id in `eos_token_ids` (kept) or when
/// `stop_checker(generated ids)` returns true (the completion ends with the token that completed the stop string;
/// cutting the text is the caller's job); finished rows are fed pads afterwards. Generation ends when every row
/// finished or after `max_new_tokens`. `logprobs` are temperature-1 log-softmax values of the raw logits.
pub fn generate_with_stop(
    model: &Transformer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    rng: &mut rand_chacha::ChaCha8Rng,
    stop_checker: Option<StopChecker>,
) -> crate::Result<Vec<Completion>> {
    params.validate()?;
    let b = prompts.len();
    if b == 0 {
        return Ok(vec![]);
    }
    let vocab = model.vocab_size();
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(crate::input_err!(
                "generate: prompt {i} is empty (needs at least one token)"
            ));
        }
        if let Some(&bad) = p.iter().find(|&&id| id as usize >= vocab) {
            return Err(crate::input_err!(
                "generate: prompt {i} has token id {bad} >= vocab_size {vocab}"
            ));
        }
    }
    let mut out: Vec<Completion> = (0..b)
        .map(|_| Completion {
            ids: vec![],
            logprobs: vec![],
            finished: false,
        })
        .collect();
    if params.max_new_tokens == 0 {
        return Ok(out);
    }
    let device = model.device().clone();
    let lmax = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let capacity = lmax + params.max_new_tokens;
    let mut cache = KvCache::new(model, b, capacity)?;
    // Prefill: left-padded prompts.
    let mut ids = vec![0u32; b * lmax];
    let mut pos = vec![0u32; b * lmax];
    let mut key_mask = vec![0u8; b * capacity]; // row-major (B, capacity); a prefix of each row is passed each step
    for (bi, p) in prompts.iter().enumerate() {
        let off = lmax - p.len();
        for (j, &id) in p.iter().enumerate() {
            ids[bi * lmax + off + j] = id;
            pos[bi * lmax + off + j] = j as u32;
            key_mask[bi * capacity + off + j] = 1;
        }
    }
    let mask_tensor = |key_mask: &[u8], len: usize| -> crate::Result<Tensor> {
        let mut m = Vec::with_capacity(b * len);
        for bi in 0..b {
            m.extend_from_slice(&key_mask[bi * capacity..bi * capacity + len]);
        }
        Ok(Tensor::from_vec(m, (b, len), &device)?)
    };
    let mut next_pos: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    let logits = model.forward_cached(
        &Tensor::from_vec(ids, (b, lmax), &device)?,
        &Tensor::from_vec(pos, (b, lmax), &device)?,
        &mask_tensor(&key_mask, lmax)?,
        &mut cache,
        true,
    )?;
    let mut sampler = Sampler::new(params);
    // After the prefill, CPU f32 models decode on host buffers (same math, no per-op tensors).
    let mut fast = crate::model::DecodeState::from_cache(model, &cache)?;
    let mut host: Vec<f32> = logits
        .squeeze(1)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    for step in 0..params.max_new_tokens {
        let mut feed = vec![0u32; b];
        let filled = fast.as_ref().map_or(cache.len(), |s| s.len());
        for bi in 0..b {
            let c = &mut out[bi];
            if c.finished {
                continue;
            }
            let (tok, lp) = sampler.sample(&host[bi * vocab..(bi + 1) * vocab], rng);
            c.ids.push(tok);
            c.logprobs.push(lp);
            if params.eos_token_ids.contains(&tok) || stop_checker.is_some_and(|f| f(&c.ids)) {
                c.finished = true;
            } else {
                feed[bi] = tok;
                key_mask[bi * capacity + filled] = 1;
            }
        }
        if step + 1 == params.max_new_tokens || out.iter().all(|c| c.finished) {
            break;
        }
        let pos: Vec<u32> = next_pos.clone();
        for p in next_pos.iter_mut() {
            *p += 1;
        }
        if let Some(st) = fast.as_mut() {
            st.step(model, &feed, &pos, &key_mask, &mut host)?;
            continue;
        }
        let len = cache.len() + 1;
        let logits = model.forward_cached(
            &Tensor::from_vec(feed, (b, 1), &device)?,
            &Tensor::from_vec(pos, (b, 1), &device)?,
            &mask_tensor(&key_mask, len)?,
            &mut cache,
            true,
        )?;
        host = logits
            .squeeze(1)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
    }
    Ok(out)
}

/// Samples one token from a row of raw logits with `params` (temperature, top-k, top-p; EOS/stop not applied);
/// returns the token and its temperature-1 log-prob. The per-step sampler of [`generate`].
pub fn sample_token(
    logits: &[f32],
    params: &SamplingParams,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> (u32, f32) {
    Sampler::new(params).sample(logits, rng)
}

/// Host-side sampler with reusable scratch buffers.
struct Sampler<'a> {
    params: &'a SamplingParams,
    scratch: Vec<(u32, f32)>,
}

impl<'a> Sampler<'a> {
    fn new(params: &'a SamplingParams) -> Self {
        Self {
            params,
            scratch: vec![],
        }
    }

    /// Samples one token from a row of raw logits; returns it with its temperature-1 log-prob.
    fn sample(&mut self, logits: &[f32], rng: &mut rand_chacha::ChaCha8Rng) -> (u32, f32) {
        let p = self.params;
        let tok = if p.temperature == 0.0 {
            argmax(logits)
        } else {
            self.draw(logits, rng)
        };
        (tok, logprob_of(logits, tok as usize))
    }

    fn draw(&mut self, logits: &[f32], rng: &mut rand_chacha::ChaCha8Rng) -> u32 {
        let p = self.params;
        let inv_t = 1.0 / p.temperature;
        let cand = &mut self.scratch;
        cand.clear();
        cand.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, (l as f64 * inv_t) as f32)),
        );
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        // top-k: keep every logit >= the k-th largest (ties kept, as HF).
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, desc);
            let thr = cand[p.top_k - 1].1;
            cand.retain(|c| c.1 >= thr);
        }
        let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = cand.iter().map(|c| ((c.1 - max) as f64).exp()).sum();
        // top-p: keep the most likely tokens while the mass of strictly more likely ones is < top_p (HF's rule).
        if p.top_p < 1.0 {
            let mut k = 64.min(cand.len());
            loop {
                if k < cand.len() {
                    cand.select_nth_unstable_by(k - 1, desc);
                }
                cand[..k].sort_unstable_by(desc);
                let mut mass = 0.0;
                let mut keep = None;
                for (r, c) in cand[..k].iter().enumerate() {
                    if mass >= p.top_p {
                        keep = Some(r);
                        break;
                    }
                    mass += ((c.1 - max) as f64).exp() / z;
                }
                if keep.is_none() && mass >= p.top_p {
                    keep = Some(k);
                }
                if let Some(r) = keep {
                    cand.truncate(r.max(1));
                    break;
                }
                if k == cand.len() {
                    break;
                }
                k = (k * 4).min(cand.len());
            }
        }
        let weights: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
        let total: f64 = weights.iter().sum();
        let u: f64 = rng.random::<f64>() * total;
        let mut acc = 0.0;
        for (c, w) in cand.iter().zip(&weights) {
            acc += w;
            if u < acc {
                return c.0;
            }
        }
        // Rounding left u at the very top: take the last kept token with nonzero weight.
        cand.iter()
            .zip(&weights)
            .rev()
            .find(|(_, w)| **w > 0.0)
            .map(|(c, _)| c.0)
            .unwrap_or(cand[0].0)
    }
}

/// Index of the largest logit (the first one on ties, as torch.argmax).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// `log_softmax(logits)[tok]` in f64.
fn logprob_of(logits: &[f32], tok: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    (logits[tok] as f64 - lse) as f32
}

/// Log-prob of every next token and the entropy of every next-token distribution, `(B, T-1)` each, with gradient.
///
/// `logp[b,t] = log_softmax(logits[b,t])[ids[b,t+1]]`, `entropy[b,t] = −Σ p log p` of that distribution
/// (temperature 1). Values at padded positions are finite but meaningless: mask them with `response_mask`.
pub fn token_logprobs(model: &Transformer, batch: &Batch) -> crate::Result<(Tensor, Tensor)> {
    let (b, t) = check_len(batch)?;
    let h = model.hidden_states(&batch.ids, &batch.attention_mask)?;
    let (rows, targets) = next_token_rows(&h, &batch.ids)?;
    let (lp, ent) = model.head_logprob_entropy(&rows, &targets)?;
    Ok((lp.reshape((b, t - 1))?, ent.reshape((b, t - 1))?))
}

/// [`token_logprobs`] at the response positions only (`response_mask` = 1), 0 elsewhere, `(B, T-1)` each, with
/// gradient: the prompt and padding positions skip the LM head, whose product over the vocabulary is the largest
/// one of a small model. What the trainers use.
pub fn response_token_logprobs(
    model: &Transformer,
    batch: &Batch,
) -> crate::Result<(Tensor, Tensor)> {
    let (b, t) = check_len(batch)?;
    let mask: Vec<f32> = batch
        .response_mask
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let ids: Vec<u32> = batch.ids.flatten_all()?.to_vec1()?;
    // flat index of position (r, c) among the (B, T-1) outputs and among the (B, T) hidden rows
    let out_idx: Vec<u32> = (0..mask.len() as u32)
        .filter(|&i| mask[i as usize] != 0.0)
        .collect();
    let t1 = (t - 1) as u32;
    let h_idx: Vec<u32> = out_idx.iter().map(|&i| i + i / t1).collect();
    let targets: Vec<u32> = h_idx.iter().map(|&i| ids[i as usize + 1]).collect();
    let device = batch.ids.device();
    let n = out_idx.len();
    let out_idx = Tensor::from_vec(out_idx, n, device)?;
    let h_idx = Tensor::from_vec(h_idx, n, device)?;
    let targets = Tensor::from_vec(targets, n, device)?;
    let h = model.hidden_states(&batch.ids, &batch.attention_mask)?;
    let d = h.dim(2)?;
    let rows = h.reshape((b * t, d))?.index_select(&h_idx, 0)?;
    let (lp, ent) = model.head_logprob_entropy(&rows, &targets)?;
    let zeros = Tensor::zeros(b * (t - 1), lp.dtype(), device)?;
    let place = |x: &Tensor| -> crate::Result<Tensor> {
        Ok(zeros
            .index_add(&out_idx, &x.contiguous()?, 0)?
            .reshape((b, t - 1))?)
    };
    Ok((place(&lp)?, place(&ent)?))
}

/// The hidden rows `(B·(T−1), d)` that predict a next token, and those tokens `(B·(T−1))`, from hidden states
/// `(B, T, d)` and ids `(B, T)`.
fn next_token_rows(h: &Tensor, ids: &Tensor) -> crate::Result<(Tensor, Tensor)> {
    let (b, t, d) = h.dims3()?;
    let rows = h.narrow(1, 0, t - 1)?.reshape((b * (t - 1), d))?;
    Ok((rows, ids.narrow(1, 1, t - 1)?.flatten_all()?))
}

/// `(B, T)` of a batch, which needs `T ≥ 2`.
fn check_len(batch: &Batch) -> crate::Result<(usize, usize)> {
    let (b, t) = batch.ids.dims2()?;
    if t < 2 {
        return Err(crate::input_err!(
            "batch: sequences need at least 2 tokens, got T = {t}"
        ));
    }
    Ok((b, t))
}

/// Per-token log-probs of whole sequences, no gradient: a row of n ids gives n−1 values (`log p(id_t | id_<t)`).
///
/// Rows are sorted by length and scored `batch_size` at a time, right-padded; results come back in input order.
pub fn score(
    model: &Transformer,
    sequences: &[Vec<u32>],
    batch_size: usize,
) -> crate::Result<Vec<Vec<f32>>> {
    let vocab = model.vocab_size();
    for (i, s) in sequences.iter().enumerate() {
        if let Some(&bad) = s.iter().find(|&&id| id as usize >= vocab) {
            return Err(crate::input_err!(
                "score: sequence {i} has token id {bad} >= vocab_size {vocab}"
            ));
        }
    }
    let mut out: Vec<Vec<f32>> = vec![vec![]; sequences.len()];
    let mut order: Vec<usize> = (0..sequences.len())
        .filter(|&i| sequences[i].len() >= 2)
        .collect();
    order.sort_by_key(|&i| sequences[i].len());
    let device = model.device().clone();
    for chunk in order.chunks(batch_size.max(1)) {
        let b = chunk.len();
        let t = chunk.iter().map(|&i| sequences[i].len()).max().unwrap_or(2);
        let mut ids = vec![0u32; b * t];
        let mut am = vec![0f32; b * t];
        for (bi, &i) in chunk.iter().enumerate() {
            for (j, &id) in sequences[i].iter().enumerate() {
                ids[bi * t + j] = id;
                am[bi * t + j] = 1.0;
            }
        }
        let ids = Tensor::from_vec(ids, (b, t), &device)?;
        let am = Tensor::from_vec(am, (b, t), &device)?;
        let h = model.hidden_states_no_grad(&ids, &am)?;
        let (rows, targets) = next_token_rows(&h, &ids)?;
        let logp: Vec<Vec<f32>> = model
            .head_logprob_entropy_no_grad(&rows, &targets)?
            .0
            .reshape((b, t - 1))?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        for (bi, &i) in chunk.iter().enumerate() {
            out[i] = logp[bi][..sequences[i].len() - 1].to_vec();
        }
    }
    Ok(out)
}
