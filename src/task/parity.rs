//! PAR: parity (running sum mod q) with a chunked chain of thought (`research/data.md` §5.3).
//!
//! Prompt `P1011001110100101:`; style `g<k>` writes the running state after every k digits (and after the
//! last, partial chunk), so its last state is the answer: g1 `1101110100111001####1`, g4 `1111####1`;
//! `direct` writes only `####1`.

use rand::Rng;

use super::{
    draw_in_split, draw_many, filler_bound, parse_g, style_mix_from, text_prompt, with_filler,
    with_pad, Problem, Prompt, Split, Task, TaskConfig, TaskRng,
};
use crate::reward::Verifier;
use crate::{input_err, Result};

const DEFAULT_STYLES: [&str; 4] = ["direct", "g4", "g2", "g1"];

/// The parity / running-sum family.
pub struct Parity {
    n_min: usize,
    n_max: usize,
    q: u32,
    eval_fraction: f64,
    filler_prob: f64,
    pad: (usize, usize),
    mix: Vec<(String, f64)>,
}

impl Parity {
    /// Validates the config's PAR knobs.
    pub fn new(cfg: &TaskConfig) -> Result<Self> {
        if cfg.n_bits_min < 1 || cfg.n_bits_min > cfg.n_bits_max || cfg.n_bits_max > 512 {
            return Err(input_err!(
                "task.n_bits_min/max = {}/{} must satisfy 1 <= min <= max <= 512",
                cfg.n_bits_min,
                cfg.n_bits_max
            ));
        }
        if !(2..=10).contains(&cfg.modulus) {
            return Err(input_err!(
                "task.modulus = {} must be in 2..=10",
                cfg.modulus
            ));
        }
        let mix = style_mix_from(cfg, &DEFAULT_STYLES, &|s| {
            s == "direct" || parse_g(s).is_some()
        })?;
        Ok(Parity {
            n_min: cfg.n_bits_min,
            n_max: cfg.n_bits_max,
            q: cfg.modulus,
            eval_fraction: cfg.eval_fraction,
            filler_prob: cfg.filler_prob,
            pad: (cfg.pad_min, cfg.pad_max),
            mix,
        })
    }

    fn generate(&self, rng: &mut TaskRng) -> Problem {
        let n = rng.random_range(self.n_min..=self.n_max);
        let digits: Vec<u32> = (0..n).map(|_| rng.random_range(0..self.q)).collect();
        let body: String = digits.iter().map(|d| char::from(b'0' + *d as u8)).collect();
        let answer = digits.iter().sum::<u32>() % self.q;
        let prompt = format!("P{body}:");
        Problem {
            id: prompt.clone(),
            prompt: Prompt::Text(prompt),
            answer: answer.to_string(),
        }
    }

    /// The digits of a PAR prompt.
    fn digits(&self, p: &Problem) -> Result<Vec<u32>> {
        let t = text_prompt(p, "parity")?;
        let body = t
            .strip_prefix('P')
            .and_then(|s| s.strip_suffix(':'))
            .ok_or_else(|| input_err!("problem `{}` is not a parity prompt `P<digits>:`", p.id))?;
        body.chars()
            .map(|c| c.to_digit(10).filter(|d| *d < self.q))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| input_err!("problem `{}` has a digit outside 0..{}", p.id, self.q))
    }
}

impl Task for Parity {
    fn name(&self) -> &str {
        "parity"
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
    fn demo(&self, problem: &Problem, style: &str, rng: &mut TaskRng) -> Result<String> {
        let digits = self.digits(problem)?;
        let answer = digits.iter().sum::<u32>() % self.q;
        let work = if style == "direct" {
            String::new()
        } else {
            let g = parse_g(style).ok_or_else(|| input_err!("parity: unknown style `{style}`"))?;
            let mut s = 0;
            let mut out = String::new();
            for (i, d) in digits.iter().enumerate() {
                s = (s + d) % self.q;
                if (i + 1) % g == 0 || i + 1 == digits.len() {
                    out.push(char::from(b'0' + s as u8));
                }
            }
            out
        };
        let text = with_filler(&work, &answer.to_string(), self.filler_prob, rng);
        Ok(with_pad(text, self.pad.0, self.pad.1, rng))
    }
    fn style_of(&self, problem: &Problem, response: &str) -> Option<String> {
        let n = self.digits(problem).ok()?.len();
        let clean: String = response.chars().filter(|c| *c != '.').collect();
        let (body, _) = clean.rsplit_once("####")?;
        if !body.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let m = body.len();
        if m == 0 {
            return Some("direct".into());
        }
        let fits = |g: usize| n.div_ceil(g) == m;
        for (s, _) in &self.mix {
            if parse_g(s).is_some_and(fits) {
                return Some(s.clone());
            }
        }
        (1..=n).find(|g| fits(*g)).map(|g| format!("g{g}"))
    }
    fn verifier(&self) -> Verifier {
        Verifier::Integer
    }
    fn alphabet(&self) -> Option<String> {
        let digits: String = (0..self.q).map(|d| char::from(b'0' + d as u8)).collect();
        Some(format!("{digits}P:#."))
    }
    fn max_response_len_hint(&self) -> usize {
        let longest = self
            .mix
            .iter()
            .map(|(s, _)| match parse_g(s) {
                Some(g) => self.n_max.div_ceil(g),
                None => 0,
            })
            .max()
            .unwrap_or(0);
        filler_bound(longest, self.filler_prob) + self.pad.1 + 4 + 1
    }
    fn difficulty_of(&self, problem: &Problem) -> Option<usize> {
        self.digits(problem).ok().map(|d| d.len())
    }
}
