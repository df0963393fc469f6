//! Arith: `What is 23 + 48?` / `What is 71 - 36?` as one chat message, for real instruct models answering in
//! free text (the SmolLM2 length experiment). The answer is checked by the math verifier with the task's
//! extractors (`last_number` for models that follow no answer format). No worked solutions: RL only.
//! Correctness does not depend on the length of the explanation, so the task is length-neutral.

use rand::Rng;

use super::{
    draw_in_split, draw_many, stable_hash, Message, Problem, Prompt, Split, Task, TaskConfig,
    TaskRng,
};
use crate::reward::{Extractor, Verifier};
use crate::{input_err, Result};

/// The arith family: two operands in `arith_min..=arith_max`, `+` or `-` (the difference is never negative).
pub struct Arith {
    lo: i64,
    hi: i64,
    eval_fraction: f64,
    extractors: Vec<Extractor>,
}

impl Arith {
    /// Validates the config's arith knobs.
    pub fn new(cfg: &TaskConfig) -> Result<Self> {
        if cfg.arith_min > cfg.arith_max || cfg.arith_max > 1_000_000_000 {
            return Err(input_err!(
                "task.arith_min/max = {}/{} must satisfy 0 <= min <= max <= 1e9",
                cfg.arith_min,
                cfg.arith_max
            ));
        }
        Ok(Arith {
            lo: cfg.arith_min as i64,
            hi: cfg.arith_max as i64,
            eval_fraction: cfg.eval_fraction,
            extractors: cfg.extractors.clone(),
        })
    }

    fn generate(&self, rng: &mut TaskRng) -> Problem {
        let a = rng.random_range(self.lo..=self.hi);
        let b = rng.random_range(self.lo..=self.hi);
        let (q, answer) = if rng.random_bool(0.5) {
            (format!("What is {a} + {b}?"), a + b)
        } else {
            let (x, y) = (a.max(b), a.min(b));
            (format!("What is {x} - {y}?"), x - y)
        };
        Problem {
            id: format!("ar-{:016x}", stable_hash(&q)),
            prompt: Prompt::Messages(vec![Message {
                role: "user".into(),
                content: q,
            }]),
            answer: answer.to_string(),
        }
    }
}

impl Task for Arith {
    fn name(&self) -> &str {
        "arith"
    }
    fn problems(&self, split: Split, n: usize, seed: u64) -> Result<Vec<Problem>> {
        draw_many(split, n, seed, self.eval_fraction, &|r| self.generate(r))
    }
    fn sample_train(&self, rng: &mut TaskRng) -> Result<Problem> {
        draw_in_split(Split::Train, self.eval_fraction, rng, &|r| self.generate(r))
    }
    fn style_mix(&self) -> Vec<(String, f64)> {
        vec![]
    }
    fn demo(&self, _problem: &Problem, _style: &str, _rng: &mut TaskRng) -> Result<String> {
        Err(input_err!("task `arith` has no worked solutions for SFT"))
    }
    fn style_of(&self, _problem: &Problem, _response: &str) -> Option<String> {
        None
    }
    fn verifier(&self) -> Verifier {
        Verifier::Math {
            extractors: self.extractors.clone(),
            percent_lenient: false,
        }
    }
    fn alphabet(&self) -> Option<String> {
        None
    }
    fn max_response_len_hint(&self) -> usize {
        128
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn answers_match_the_question() {
        let cfg = TaskConfig {
            name: "arith".into(),
            arith_min: 10,
            arith_max: 99,
            ..TaskConfig::default()
        };
        let t = Arith::new(&cfg).unwrap();
        let mut rng = TaskRng::seed_from_u64(1);
        let (mut plus, mut minus) = (0, 0);
        for _ in 0..200 {
            let p = t.sample_train(&mut rng).unwrap();
            let q = p.prompt.flat();
            let body = q
                .strip_prefix("What is ")
                .unwrap()
                .strip_suffix('?')
                .unwrap();
            let parts: Vec<&str> = body.split(' ').collect();
            let (a, b): (i64, i64) = (parts[0].parse().unwrap(), parts[2].parse().unwrap());
            assert!((10..=99).contains(&a) && (10..=99).contains(&b), "{q}");
            let want = if parts[1] == "+" {
                plus += 1;
                a + b
            } else {
                minus += 1;
                assert!(a >= b, "{q}");
                a - b
            };
            assert_eq!(p.answer, want.to_string(), "{q}");
        }
        assert!(plus > 60 && minus > 60, "{plus} / {minus}");
    }
}
