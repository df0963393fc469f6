//! Tasks: procedural families with verifiable answers (and worked solutions of varying length), and dataset readers.
//!
//! CONTRACT (used by `train`):
//! - `Problem { id, prompt, answer, .. }` with `prompt` either plain text or chat messages.
//! - `TaskConfig` (serde) selects a family or a file; `build(&TaskConfig) -> Box<dyn Task>`.
//! - `Task::problems(split, n, seed)`: deterministic problems; `Task::demo(problem, style, rng)`: a worked solution
//!   (varying length) for the SFT warm start; `Task::verifier()`: the reward's verifier for this task.
//!
//! Families (char-level formats of `research/data.md` §5; every response ends `####<answer>`):
//! - `parity` (PAR): prompt `P1011:`, styles `g<k>` (running state after every k bits) and `direct`.
//! - `addition` (ADD): prompt `A4729+386:`, styles `g<k>` (k digits per scratchpad step) and `direct`.
//! - `countdown` (CD): prompt `C3,7,9>30:`, styles `a<k>` (k failed attempts shown before the right one)
//!   and `direct`; the answer is an expression checked by [`crate::reward::Verifier::Countdown`].
//! - `wordproblem`: English one/two-step arithmetic word problems as chat messages (for real tokenizers),
//!   answers `#### N` or `\boxed{N}`, checked by the math verifier.
//! - `arith`: `What is 23 + 48?` as a chat message (real instruct models, free-text answers, no demos).
//! - `jsonl` / `parquet`: files (see [`files`]); the math verifier.
//!
//! Train/eval disjointness for procedural families: a problem belongs to the eval split iff a fixed 64-bit hash
//! (FNV-1a + fmix64) of its id falls below `eval_fraction`; generators draw until the problem lands in the asked split,
//! so the same problem never appears in both splits, whatever the seeds.

mod addition;
mod arith;
mod countdown;
pub mod files;
mod parity;
mod wordproblem;

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};

use crate::reward::{Extractor, Verifier};
use crate::{input_err, Result};

pub use countdown::{solve_countdown, CountdownStep};

/// The random number generator used by tasks (seeded, portable, reproducible).
pub type TaskRng = rand_chacha::ChaCha8Rng;

/// A prompt: plain text, or chat messages to render with a chat template.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Plain text given to the model as is.
    Text(String),
    /// Chat messages (`role`, `content`).
    Messages(Vec<Message>),
}

impl Prompt {
    /// The prompt as one string: the text, or the messages' contents joined by newlines (for logs and ids).
    pub fn flat(&self) -> String {
        match self {
            Prompt::Text(t) => t.clone(),
            Prompt::Messages(m) => m
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A problem with its ground-truth answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Stable id (used for grouping and per-prompt analysis).
    pub id: String,
    /// The prompt.
    pub prompt: Prompt,
    /// The ground-truth answer as a string.
    pub answer: String,
}

/// Which split a problem comes from; held-out problems never appear in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training problems.
    Train,
    /// Held-out evaluation problems.
    Eval,
}

/// Task configuration (`[task]` in the run TOML). Every key has a default; unknown keys are errors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskConfig {
    /// Family or reader: `parity`, `addition`, `countdown`, `wordproblem`, `arith`, `jsonl`, `parquet`. Default `parity`.
    pub name: String,
    /// Share of the procedural problem space held out for evaluation (by hash of the problem id), or of a file's rows
    /// when no `eval_path` is given. Default 0.1.
    pub eval_fraction: f64,
    /// Number of eval problems `train` draws for its fixed eval set. Default 200.
    pub eval_size: usize,
    /// Style weights for the SFT demo mix (`direct`, `g1`, `g2`, `a0`, ...); empty = uniform over the family's
    /// default styles. Keys name the styles used; unknown style names are errors. Default empty.
    pub style_weights: BTreeMap<String, f64>,
    /// Probability of inserting a `.` filler token after each character of a demo's work (not of its answer).
    /// Default 0.0.
    pub filler_prob: f64,
    /// PAR: fewest `.` pad characters before a demo's work (a correctness-irrelevant scratchpad). Default 0.
    pub pad_min: usize,
    /// PAR: most `.` pad characters; each demo draws its count uniformly in `pad_min..=pad_max`, so the warm
    /// start's responses spread in length while correctness does not depend on it. Default 0.
    pub pad_max: usize,
    /// PAR: fewest bits. Default 8.
    pub n_bits_min: usize,
    /// PAR: most bits. Default 16.
    pub n_bits_max: usize,
    /// PAR: modulus q of the running sum (2 = parity; up to 10, digits 0..q-1). Default 2.
    pub modulus: u32,
    /// ADD: fewest digits of the longest operand. Default 2.
    pub digits_min: usize,
    /// ADD: most digits of the longest operand. Default 6.
    pub digits_max: usize,
    /// ADD: number of operands (2 or 3). Default 2.
    pub operands: usize,
    /// ADD: share of problems forced to have a long carry chain (e.g. 99995+7). Default 0.2.
    pub p_long_carry: f64,
    /// CD: how many numbers (3..=5), each in 1..=9. Default 3.
    pub cd_numbers: usize,
    /// CD: smallest target. Default 10.
    pub cd_target_min: i64,
    /// CD: largest target. Default 50.
    pub cd_target_max: i64,
    /// CD: the answer must use every number exactly once (else at most once). Default true.
    pub cd_exactly_once: bool,
    /// Word problems: largest quantity in a problem. Default 50.
    pub wp_max_value: u32,
    /// Word problems: how the answer must be given, `hash` (`#### N`) or `boxed` (`\boxed{N}`). Default `hash`.
    pub wp_answer_format: String,
    /// Arith: smallest operand. Default 10.
    pub arith_min: u64,
    /// Arith: largest operand. Default 99.
    pub arith_max: u64,
    /// Files: the train file (format from `name`: `jsonl` or `parquet`). Default empty.
    pub path: String,
    /// Files: a separate eval file; when set, all of `path` is train and all of `eval_path` is eval. Default empty.
    pub eval_path: String,
    /// Files: key of the prompt (dotted paths allowed); empty = auto (`prompt`, `messages`, `question`).
    pub prompt_key: String,
    /// Files: key of the answer; empty = auto (`answer`, `reward_model.ground_truth`, `ground_truth`).
    pub answer_key: String,
    /// Files: key of the id; empty = auto (`id`, `extra_info.index`, `index`), else the line/row number.
    pub id_key: String,
    /// Files: text appended to the (last user message of the) prompt, e.g. GSM8K's
    /// `Let's think step by step and output the final answer after "####".` Default empty.
    pub prompt_suffix: String,
    /// Files: a system message put first (text prompts become a user message). Default empty (none).
    pub system_prompt: String,
    /// Math verifier extractors in priority order (`hash`, `boxed`, `answer_line`, `tag`); the first that finds
    /// an answer wins. Default all four in that order.
    pub extractors: Vec<Extractor>,
    /// Math verifier: accept `p%` against gold `p` or `p/100` (math-verify behaviour). Default true.
    pub percent_lenient: bool,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            name: "parity".into(),
            eval_fraction: 0.1,
            eval_size: 200,
            style_weights: BTreeMap::new(),
            filler_prob: 0.0,
            pad_min: 0,
            pad_max: 0,
            n_bits_min: 8,
            n_bits_max: 16,
            modulus: 2,
            digits_min: 2,
            digits_max: 6,
            operands: 2,
            p_long_carry: 0.2,
            cd_numbers: 3,
            cd_target_min: 10,
            cd_target_max: 50,
            cd_exactly_once: true,
            wp_max_value: 50,
            wp_answer_format: "hash".into(),
            arith_min: 10,
            arith_max: 99,
            path: String::new(),
            eval_path: String::new(),
            prompt_key: String::new(),
            answer_key: String::new(),
            id_key: String::new(),
            prompt_suffix: String::new(),
            system_prompt: String::new(),
            extractors: vec![
                Extractor::Hash,
                Extractor::Boxed,
                Extractor::AnswerLine,
                Extractor::Tag,
            ],
            percent_lenient: true,
        }
    }
}

/// A source of problems with a verifier, and (for procedural families) worked solutions.
pub trait Task: Send + Sync {
    /// The family name (`parity`, ...).
    fn name(&self) -> &str;
    /// `n` deterministic problems of `split` for `seed` (files: at most `n`; eval in file order, train shuffled).
    fn problems(&self, split: Split, n: usize, seed: u64) -> Result<Vec<Problem>>;
    /// One fresh training problem.
    fn sample_train(&self, rng: &mut TaskRng) -> Result<Problem>;
    /// The styles of worked solutions this task can write, in `style_mix` order (empty: no demos).
    fn styles(&self) -> Vec<String> {
        self.style_mix()
            .into_iter()
            .map(|(style, _)| style)
            .collect()
    }
    /// A worked solution of `problem` in `style` (filler `.` inserted with `filler_prob` using `rng`).
    fn demo(&self, problem: &Problem, style: &str, rng: &mut TaskRng) -> Result<String>;
    /// The style a response's shape matches (`None` if it matches none, or the task has no styles).
    fn style_of(&self, problem: &Problem, response: &str) -> Option<String>;
    /// The verifier that scores this task's responses.
    fn verifier(&self) -> Verifier;
    /// Every character prompts and responses can contain (for a char-level tokenizer); `None` for text tasks.
    fn alphabet(&self) -> Option<String>;
    /// A response length (characters for char-level tasks, tokens roughly for text tasks) that demos do not
    /// exceed (with filler: a 4-sigma bound on the inserted `.`, so exceeded by well under 1 demo in 10^4).
    fn max_response_len_hint(&self) -> usize;
    /// The difficulty of a problem for per-difficulty accuracy (PAR: digits, ADD: digits of the longest operand,
    /// CD: how many numbers, word problems: steps); `None` where the task has no such notion.
    fn difficulty_of(&self, _problem: &Problem) -> Option<usize> {
        None
    }
    /// The style sampler of the SFT mix: (style, weight) pairs with weights summing to 1.
    fn style_mix(&self) -> Vec<(String, f64)>;
    /// A demo in a style drawn from `style_mix`: returns (style, text).
    fn sample_demo(&self, problem: &Problem, rng: &mut TaskRng) -> Result<(String, String)> {
        let mix = self.style_mix();
        if mix.is_empty() {
            return Err(input_err!(
                "task `{}` has no worked solutions for SFT",
                self.name()
            ));
        }
        let u: f64 = rng.random::<f64>();
        let mut acc = 0.0;
        let mut chosen = &mix[mix.len() - 1].0;
        for (s, w) in &mix {
            acc += w;
            if u < acc {
                chosen = s;
                break;
            }
        }
        let text = self.demo(problem, chosen, rng)?;
        Ok((chosen.clone(), text))
    }
}

/// Builds the task a config names (validating its knobs).
pub fn build(cfg: &TaskConfig) -> Result<Box<dyn Task>> {
    if !(0.0..1.0).contains(&cfg.eval_fraction) {
        return Err(input_err!(
            "task.eval_fraction = {} must be in [0, 1)",
            cfg.eval_fraction
        ));
    }
    if cfg.pad_min > cfg.pad_max || cfg.pad_max > 4096 {
        return Err(input_err!(
            "task.pad_min/max = {}/{} must satisfy 0 <= min <= max <= 4096",
            cfg.pad_min,
            cfg.pad_max
        ));
    }
    if !(0.0..1.0).contains(&cfg.filler_prob) {
        return Err(input_err!(
            "task.filler_prob = {} must be in [0, 1)",
            cfg.filler_prob
        ));
    }
    match cfg.name.as_str() {
        "parity" => Ok(Box::new(parity::Parity::new(cfg)?)),
        "addition" => Ok(Box::new(addition::Addition::new(cfg)?)),
        "countdown" => Ok(Box::new(countdown::Countdown::new(cfg)?)),
        "wordproblem" => Ok(Box::new(wordproblem::WordProblem::new(cfg)?)),
        "arith" => Ok(Box::new(arith::Arith::new(cfg)?)),
        "jsonl" | "parquet" => Ok(Box::new(files::FileTask::load(cfg)?)),
        other => Err(input_err!(
            "task.name = `{other}` is unknown (expected parity, addition, countdown, wordproblem, arith, jsonl, parquet)"
        )),
    }
}

/// FNV-1a 64-bit hash with a murmur3 `fmix64` finaliser (fixed across platforms and versions; used for split
/// membership). The finaliser matters: plain FNV-1a barely moves its top bits for ids that differ in the last
/// character (`100`..`104` all land within 1e-6 of each other).
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ceb9fe1a85ec53);
    h ^ (h >> 33)
}

/// The split a problem id belongs to when `eval_fraction` of the space is held out.
pub fn split_of(id: &str, eval_fraction: f64) -> Split {
    // Top 53 bits → uniform in [0, 1).
    let u = (stable_hash(id) >> 11) as f64 / (1u64 << 53) as f64;
    if u < eval_fraction {
        Split::Eval
    } else {
        Split::Train
    }
}

/// Salt that makes the RNG streams of the two splits differ for the same seed.
fn split_salt(split: Split) -> u64 {
    match split {
        Split::Train => 0x7472_6169_6e00_0000,
        Split::Eval => 0x6576_616c_0000_0000,
    }
}

/// Draws a problem from `generate` until it lands in `split` (shared by the procedural families).
pub(crate) fn draw_in_split(
    split: Split,
    eval_fraction: f64,
    rng: &mut TaskRng,
    generate: &dyn Fn(&mut TaskRng) -> Problem,
) -> Result<Problem> {
    if split == Split::Eval && eval_fraction <= 0.0 {
        return Err(input_err!(
            "task.eval_fraction = 0: there are no eval problems"
        ));
    }
    for _ in 0..100_000 {
        let p = generate(rng);
        if split_of(&p.id, eval_fraction) == split {
            return Ok(p);
        }
    }
    Err(input_err!("could not draw a {split:?} problem in 100000 tries: problem space too small for eval_fraction"))
}

/// `n` problems of a split for a seed, distinct where the space allows (shared by the procedural families).
pub(crate) fn draw_many(
    split: Split,
    n: usize,
    seed: u64,
    eval_fraction: f64,
    generate: &dyn Fn(&mut TaskRng) -> Problem,
) -> Result<Vec<Problem>> {
    let mut rng = TaskRng::seed_from_u64(seed ^ split_salt(split));
    let mut out = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::new();
    let mut dup_budget = 20 * n + 100;
    while out.len() < n {
        let p = draw_in_split(split, eval_fraction, &mut rng, generate)?;
        if seen.insert(p.id.clone()) || dup_budget == 0 {
            out.push(p);
        } else {
            dup_budget -= 1;
        }
    }
    Ok(out)
}

/// Normalised style mix from the config's weights (validated against `known`) or uniform over `defaults`.
pub(crate) fn style_mix_from(
    cfg: &TaskConfig,
    defaults: &[&str],
    known: &dyn Fn(&str) -> bool,
) -> Result<Vec<(String, f64)>> {
    let pairs: Vec<(String, f64)> = if cfg.style_weights.is_empty() {
        defaults.iter().map(|s| (s.to_string(), 1.0)).collect()
    } else {
        for (s, w) in &cfg.style_weights {
            if !known(s) {
                return Err(input_err!(
                    "task.style_weights: style `{s}` is unknown for task `{}`",
                    cfg.name
                ));
            }
            if !(w.is_finite() && *w >= 0.0) {
                return Err(input_err!(
                    "task.style_weights.{s} = {w} must be finite and >= 0"
                ));
            }
        }
        cfg.style_weights
            .iter()
            .filter(|(_, w)| **w > 0.0)
            .map(|(s, w)| (s.clone(), *w))
            .collect()
    };
    let total: f64 = pairs.iter().map(|p| p.1).sum();
    if pairs.is_empty() || total <= 0.0 {
        return Err(input_err!("task.style_weights: all weights are zero"));
    }
    Ok(pairs.into_iter().map(|(s, w)| (s, w / total)).collect())
}

/// Inserts `.` after each character of `work` with probability `p`, then appends `####answer`.
pub(crate) fn with_filler(work: &str, answer: &str, p: f64, rng: &mut TaskRng) -> String {
    let mut out = String::with_capacity(work.len() * 2 + answer.len() + 4);
    for c in work.chars() {
        out.push(c);
        if p > 0.0 && rng.random::<f64>() < p {
            out.push('.');
        }
    }
    out.push_str("####");
    out.push_str(answer);
    out
}

/// `text` after `k` `.` characters, `k` uniform in `lo..=hi` (no draw when `hi` is 0).
pub(crate) fn with_pad(text: String, lo: usize, hi: usize, rng: &mut TaskRng) -> String {
    if hi == 0 {
        return text;
    }
    let k = rng.random_range(lo..=hi);
    ".".repeat(k) + &text
}

/// Length bound of `work` characters after filler insertion with probability `p` (mean + 4 sd, at most 2×).
pub(crate) fn filler_bound(work: usize, p: f64) -> usize {
    if p <= 0.0 || work == 0 {
        return work;
    }
    let w = work as f64;
    let b = w * (1.0 + p) + 4.0 * (w * p * (1.0 - p)).sqrt() + 1.0;
    (b.ceil() as usize).min(2 * work)
}

/// Parses a `g<k>` style name (k ≥ 1).
pub(crate) fn parse_g(style: &str) -> Option<usize> {
    style
        .strip_prefix('g')
        .and_then(|k| k.parse::<usize>().ok())
        .filter(|k| *k >= 1)
}

/// The text of a char-level prompt (`Prompt::Text`), or an error naming the problem.
pub(crate) fn text_prompt<'a>(p: &'a Problem, family: &str) -> Result<&'a str> {
    match &p.prompt {
        Prompt::Text(t) => Ok(t),
        Prompt::Messages(_) => Err(input_err!(
            "problem `{}` is not a {family} problem (chat prompt)",
            p.id
        )),
    }
}
