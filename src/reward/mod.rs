//! Rewards: verifiers (answer extraction and equivalence) and shaping terms (format, DAPO soft overlong penalty).
//!
//! CONTRACT (used by `train`): `RewardConfig` (serde) and
//! `score(&RewardConfig, verifier, response_text, answer, response_len_tokens, truncated) -> RewardBreakdown`.
//!
//! total = (correct ? `correct_reward` : `incorrect_reward`) + `format_weight`·[answer extracted]
//!       + overlong, with the DAPO soft overlong penalty (LUSPO eq. 11, verl `dapo` reward manager)
//!   overlong = min(0, ((L_max − L_buf) − |y|) / L_buf × factor).
//! `mode = "coin"` replaces the verifier's verdict by a Bernoulli(`coin_p`) draw independent of the text (the
//! length-bias probe); `flip_prob` then flips the verdict (of either mode) with that probability (label noise).
//! Both draw from a seeded RNG that the caller owns ([`score_noisy`]).
//! A truncated response (no end-of-sequence within the budget) gets accuracy 0 unless `score_truncated` is set;
//! its format and overlong terms are computed as usual.

pub mod verify;

pub use verify::{parse_number, Extractor, NumberForm, Verdict, Verifier};

use crate::{input_err, Result};

/// Reward shaping configuration (`[reward]` in the run TOML). Every key has a default; unknown keys are errors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    /// Reward of a correct answer. Default 1.0.
    pub correct_reward: f64,
    /// Reward of a wrong or missing answer (verl's DAPO math reward uses −1). Default 0.0.
    pub incorrect_reward: f64,
    /// Weight of the format term: added when the verifier could extract an answer. Default 0.0 (off).
    pub format_weight: f64,
    /// Turn on the DAPO soft overlong penalty. Default false.
    pub overlong: bool,
    /// L_max of the penalty in tokens; 0 = the rollout's `max_new_tokens` (see [`RewardConfig::resolved`]).
    /// Default 0.
    pub overlong_max_len: usize,
    /// L_buf: the penalty ramps from 0 at L_max − L_buf to −factor at L_max. Default 64 (DAPO: 4096 of 20480).
    pub overlong_buffer: usize,
    /// Penalty factor. Default 1.0.
    pub overlong_factor: f64,
    /// Score the answer of truncated responses too (default false: a truncated response has accuracy 0).
    pub score_truncated: bool,
    /// Where correctness comes from: `verify` (the task's verifier) or `coin` (a Bernoulli(`coin_p`) draw,
    /// independent of the response). Default `verify`.
    pub mode: RewardMode,
    /// Probability that a `coin` response is correct. Default 0.5.
    pub coin_p: f64,
    /// Label noise: probability that the correctness verdict is flipped (after `mode`). Default 0.0.
    pub flip_prob: f64,
}

/// Where a response's correctness comes from (`reward.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardMode {
    /// The task's verifier.
    #[default]
    Verify,
    /// A coin flip with probability `coin_p`, independent of the text.
    Coin,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig {
            correct_reward: 1.0,
            incorrect_reward: 0.0,
            format_weight: 0.0,
            overlong: false,
            overlong_max_len: 0,
            overlong_buffer: 64,
            overlong_factor: 1.0,
            score_truncated: false,
            mode: RewardMode::Verify,
            coin_p: 0.5,
            flip_prob: 0.0,
        }
    }
}

impl RewardConfig {
    /// Fills `overlong_max_len = 0` with the rollout's `max_new_tokens` and validates the config.
    pub fn resolved(&self, max_new_tokens: usize) -> Result<RewardConfig> {
        let mut c = self.clone();
        if c.overlong_max_len == 0 {
            c.overlong_max_len = max_new_tokens;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the values (finite rewards; with `overlong`, 0 < L_buf ≤ L_max).
    pub fn validate(&self) -> Result<()> {
        for (k, v) in [
            ("correct_reward", self.correct_reward),
            ("incorrect_reward", self.incorrect_reward),
            ("format_weight", self.format_weight),
            ("overlong_factor", self.overlong_factor),
        ] {
            if !v.is_finite() {
                return Err(input_err!("reward.{k} = {v} must be finite"));
            }
        }
        for (k, v) in [("coin_p", self.coin_p), ("flip_prob", self.flip_prob)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(input_err!("reward.{k} = {v} must be in [0, 1]"));
            }
        }
        if self.overlong {
            if self.overlong_buffer == 0 {
                return Err(input_err!(
                    "reward.overlong_buffer must be > 0 when reward.overlong = true"
                ));
            }
            if self.overlong_max_len == 0 || self.overlong_buffer > self.overlong_max_len {
                return Err(input_err!(
                    "reward.overlong_buffer = {} must be <= reward.overlong_max_len = {} (0 means unresolved)",
                    self.overlong_buffer,
                    self.overlong_max_len
                ));
            }
        }
        Ok(())
    }
}

/// The reward of one response, term by term.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct RewardBreakdown {
    /// 1 if the extracted answer is correct, else 0.
    pub accuracy: f64,
    /// Format term (0 when off).
    pub format: f64,
    /// DAPO soft overlong penalty (≤ 0; 0 when off).
    pub overlong: f64,
    /// Sum of the terms.
    pub total: f64,
    /// Whether the verifier extracted an answer (whatever the format weight).
    pub format_ok: bool,
    /// Which extractor found the answer (`None` if none did).
    pub extractor: Option<Extractor>,
    /// The equivalence fell back to string comparison (non-numeric answers).
    pub approximate: bool,
}

/// DAPO soft overlong penalty: min(0, ((L_max − L_buf) − len) / L_buf × factor); 0 for `l_buf` = 0.
pub fn overlong_penalty(len: usize, l_max: usize, l_buf: usize, factor: f64) -> f64 {
    if l_buf == 0 {
        return 0.0;
    }
    let expected = l_max as f64 - l_buf as f64;
    ((expected - len as f64) / l_buf as f64 * factor).min(0.0)
}

/// Scores one response against its gold `answer` (see the module docs for the formula).
pub fn score(
    cfg: &RewardConfig,
    verifier: &Verifier,
    response_text: &str,
    answer: &str,
    response_len_tokens: usize,
    truncated: bool,
) -> RewardBreakdown {
    let v = verifier.check(response_text, answer);
    let correct = v.correct && (!truncated || cfg.score_truncated);
    with_correctness(cfg, v, correct, response_len_tokens)
}

/// [`score`] with `mode` and `flip_prob` applied: one `coin_p` draw (coin mode) and one `flip_prob` draw
/// (when `flip_prob > 0`) from `rng` per response, in that order, so a seeded `rng` gives the same rewards.
#[allow(clippy::too_many_arguments)]
pub fn score_noisy(
    cfg: &RewardConfig,
    verifier: &Verifier,
    response_text: &str,
    answer: &str,
    response_len_tokens: usize,
    truncated: bool,
    rng: &mut impl rand::Rng,
) -> RewardBreakdown {
    let v = verifier.check(response_text, answer);
    let mut correct = match cfg.mode {
        RewardMode::Verify => v.correct && (!truncated || cfg.score_truncated),
        RewardMode::Coin => rng.random_bool(cfg.coin_p),
    };
    if cfg.flip_prob > 0.0 && rng.random_bool(cfg.flip_prob) {
        correct = !correct;
    }
    with_correctness(cfg, v, correct, response_len_tokens)
}

fn with_correctness(
    cfg: &RewardConfig,
    v: Verdict,
    correct: bool,
    response_len_tokens: usize,
) -> RewardBreakdown {
    let accuracy = if correct { 1.0 } else { 0.0 };
    let format_ok = v.extracted.is_some();
    let format = if format_ok { cfg.format_weight } else { 0.0 };
    let overlong = if cfg.overlong {
        overlong_penalty(
            response_len_tokens,
            cfg.overlong_max_len,
            cfg.overlong_buffer,
            cfg.overlong_factor,
        )
    } else {
        0.0
    };
    let acc_reward = if correct {
        cfg.correct_reward
    } else {
        cfg.incorrect_reward
    };
    RewardBreakdown {
        accuracy,
        format,
        overlong,
        total: acc_reward + format + overlong,
        format_ok,
        extractor: v.extractor,
        approximate: v.approximate,
    }
}
