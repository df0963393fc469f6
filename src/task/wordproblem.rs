//! Word problems: GSM8K-style one/two-step arithmetic in English, as chat prompts for real tokenizers
//! (the SmolLM2 example). The answer is an integer given as `#### N` or `\boxed{N}`; the math verifier checks it.
//!
//! Styles: `direct` (only the final answer line) and `steps` (one sentence per step, then the answer line).

use rand::Rng;

use super::{
    draw_in_split, draw_many, stable_hash, style_mix_from, Message, Problem, Prompt, Split, Task,
    TaskConfig, TaskRng,
};
use crate::reward::Verifier;
use crate::{input_err, Result};

const NAMES: [&str; 8] = ["Tom", "Ana", "Ben", "Mia", "Sam", "Lea", "Max", "Zoe"];
const ITEMS: [&str; 8] = [
    "apples", "pencils", "marbles", "stickers", "cookies", "books", "stamps", "shells",
];
const TEMPLATES: usize = 6;

/// The word-problem family.
pub struct WordProblem {
    max_value: u32,
    boxed: bool,
    eval_fraction: f64,
    extractors: Vec<crate::reward::Extractor>,
    mix: Vec<(String, f64)>,
}

impl WordProblem {
    /// Validates the config's word-problem knobs.
    pub fn new(cfg: &TaskConfig) -> Result<Self> {
        if !(4..=100_000).contains(&cfg.wp_max_value) {
            return Err(input_err!(
                "task.wp_max_value = {} must be in 4..=100000",
                cfg.wp_max_value
            ));
        }
        let boxed = match cfg.wp_answer_format.as_str() {
            "hash" => false,
            "boxed" => true,
            o => {
                return Err(input_err!(
                    "task.wp_answer_format = `{o}` must be `hash` or `boxed`"
                ))
            }
        };
        let mix = style_mix_from(cfg, &["direct", "steps"], &|s| {
            s == "direct" || s == "steps"
        })?;
        Ok(WordProblem {
            max_value: cfg.wp_max_value,
            boxed,
            eval_fraction: cfg.eval_fraction,
            extractors: cfg.extractors.clone(),
            mix,
        })
    }

    fn final_line(&self, n: i64) -> String {
        if self.boxed {
            format!("The answer is \\boxed{{{n}}}.")
        } else {
            format!("#### {n}")
        }
    }

    fn generate(&self, rng: &mut TaskRng) -> Problem {
        let t = rng.random_range(0..TEMPLATES);
        let name = NAMES[rng.random_range(0..NAMES.len())];
        let other = NAMES[(NAMES.iter().position(|n| *n == name).unwrap_or(0)
            + 1
            + rng.random_range(0..NAMES.len() - 1))
            % NAMES.len()];
        let item = ITEMS[rng.random_range(0..ITEMS.len())];
        let m = self.max_value as i64;
        let small = (m / 4).clamp(2, 12);
        let (q, answer) = match t {
            0 => {
                let (a, b) = (rng.random_range(1..=m), rng.random_range(1..=m));
                (format!("{name} has {a} {item}. {name} buys {b} more. How many {item} does {name} have now?"), a + b)
            }
            1 => {
                let a = rng.random_range(2..=m);
                let b = rng.random_range(1..a);
                (format!("{name} had {a} {item} and gave {b} of them to {other}. How many {item} does {name} have left?"), a - b)
            }
            2 => {
                let (a, b) = (rng.random_range(2..=small), rng.random_range(2..=small));
                (
                    format!("Each box holds {a} {item}. How many {item} are in {b} boxes?"),
                    a * b,
                )
            }
            3 => {
                let (a, b) = (rng.random_range(2..=small), rng.random_range(2..=small));
                (format!("{name} shares {} {item} equally among {b} friends. How many {item} does each friend get?", a * b), a)
            }
            4 => {
                let (a, b) = (rng.random_range(2..=small), rng.random_range(2..=small));
                let c = rng.random_range(1..a * b);
                (format!("{name} buys {b} packs of {item} with {a} {item} in each pack, then gives away {c}. How many {item} does {name} have left?"), a * b - c)
            }
            _ => {
                let (a, b) = (rng.random_range(1..=m), rng.random_range(1..=m));
                (format!("{name} has {a} {item}. {other} has {b} more {item} than {name}. How many {item} do they have together?"), a + a + b)
            }
        };
        let instruction = if self.boxed {
            "Solve the problem step by step and put the final answer in \\boxed{}."
        } else {
            "Solve the problem step by step and write the final answer on the last line as \"#### N\"."
        };
        let id = format!("wp{t}-{:016x}", stable_hash(&q));
        Problem {
            id,
            prompt: Prompt::Messages(vec![Message {
                role: "user".into(),
                content: format!("{q}\n{instruction}"),
            }]),
            answer: answer.to_string(),
        }
    }

    fn worked(&self, p: &Problem) -> Result<String> {
        let bad = || input_err!("problem `{}` is not a word problem of this task", p.id);
        let t: usize =
            p.id.strip_prefix("wp")
                .and_then(|s| s.split('-').next())
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)?;
        let q = match &p.prompt {
            Prompt::Messages(m) => m.last().map(|m| m.content.clone()).ok_or_else(bad)?,
            Prompt::Text(s) => s.clone(),
        };
        let nums: Vec<i64> = q
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        let need = [2, 2, 2, 2, 3, 2][t.min(5)];
        if nums.len() < need {
            return Err(bad());
        }
        let (a, b) = (nums[0], nums[1]);
        Ok(match t {
            0 => format!("We start with {a} and add {b}: {a} + {b} = {}.", a + b),
            1 => format!(
                "We start with {a} and take away {b}: {a} - {b} = {}.",
                a - b
            ),
            2 => format!("There are {b} boxes of {a}: {a} * {b} = {}.", a * b),
            3 => format!("We split {a} into {b} equal parts: {a} / {b} = {}.", a / b),
            4 => {
                let c = nums[2];
                // The prompt says "{b} packs ... with {a} in each": nums = [b, a, c].
                format!(
                    "The packs hold {a} * {b} = {}. After giving away {c}: {} - {c} = {}.",
                    a * b,
                    a * b,
                    a * b - c
                )
            }
            _ => format!(
                "The second person has {a} + {b} = {}. Together: {a} + {} = {}.",
                a + b,
                a + b,
                a + a + b
            ),
        })
    }
}

impl Task for WordProblem {
    fn name(&self) -> &str {
        "wordproblem"
    }
    fn problems(&self, split: Split, n: usize, seed: u64) -> Result<Vec<Problem>> {
        draw_many(split, n, seed, self.eval_fraction, &|r| self.generate(r))
    }
    fn sample_train(&self, rng: &mut TaskRng) -> Result<Problem> {
        draw_in_split(Split::Train, self.eval_fraction, rng, &|r| self.generate(r))
    }
    fn style_mix(&self) -> Vec<(String, f64)> {
        self.mix.clone()
    }
    fn demo(&self, problem: &Problem, style: &str, _rng: &mut TaskRng) -> Result<String> {
        let n: i64 = problem
            .answer
            .parse()
            .map_err(|_| input_err!("problem `{}`: answer is not an integer", problem.id))?;
        match style {
            "direct" => Ok(self.final_line(n)),
            "steps" => Ok(format!("{}\n{}", self.worked(problem)?, self.final_line(n))),
            o => Err(input_err!("wordproblem: unknown style `{o}`")),
        }
    }
    fn style_of(&self, _problem: &Problem, response: &str) -> Option<String> {
        let t = response.trim();
        let last = t.lines().last()?;
        let before = t[..t.len() - last.len()].trim();
        let has_answer = last.contains("####") || last.contains("\\boxed");
        has_answer.then(|| {
            if before.is_empty() {
                "direct".into()
            } else {
                "steps".into()
            }
        })
    }
    fn verifier(&self) -> Verifier {
        Verifier::Math {
            extractors: self.extractors.clone(),
            percent_lenient: true,
        }
    }
    fn alphabet(&self) -> Option<String> {
        None
    }
    fn max_response_len_hint(&self) -> usize {
        128
    }
    fn difficulty_of(&self, problem: &Problem) -> Option<usize> {
        let t: usize = problem
            .id
            .strip_prefix("wp")?
            .split('-')
            .next()?
            .parse()
            .ok()?;
        Some(if t >= 4 { 2 } else { 1 })
    }
}
