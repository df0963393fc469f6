//! ADD: carry-chain addition with a scratchpad (`research/data.md` §5.1).
//!
//! Prompt `A4729+386:`; style `g<k>` adds k digits per step, least significant first, each step
//! `x+y+carry=sum;` with operands zero-padded to k digits and the sum to k+1 digits:
//! g2 `29+86+0=115;47+03+1=051;####5115`, g1 `9+6+0=15;2+8+1=11;7+3+1=11;4+0+1=05;####5115`;
//! `direct` writes only `####5115`.

use rand::Rng;

use super::{
    draw_in_split, draw_many, filler_bound, parse_g, style_mix_from, text_prompt, with_filler,
    Problem, Prompt, Split, Task, TaskConfig, TaskRng,
};
use crate::reward::Verifier;
use crate::{input_err, Result};

const DEFAULT_STYLES: [&str; 3] = ["direct", "g2", "g1"];

/// The addition family.
pub struct Addition {
    d_min: usize,
    d_max: usize,
    k: usize,
    p_long: f64,
    eval_fraction: f64,
    filler_prob: f64,
    mix: Vec<(String, f64)>,
}

fn random_number(rng: &mut TaskRng, len: usize) -> u128 {
    let mut v: u128 = if len == 1 {
        rng.random_range(0..10)
    } else {
        rng.random_range(1..10)
    };
    for _ in 1..len {
        v = v * 10 + rng.random_range(0..10) as u128;
    }
    v
}

impl Addition {
    /// Validates the config's ADD knobs.
    pub fn new(cfg: &TaskConfig) -> Result<Self> {
        if cfg.digits_min < 1 || cfg.digits_min > cfg.digits_max || cfg.digits_max > 30 {
            return Err(input_err!(
                "task.digits_min/max = {}/{} must satisfy 1 <= min <= max <= 30",
                cfg.digits_min,
                cfg.digits_max
            ));
        }
        if !(2..=3).contains(&cfg.operands) {
            return Err(input_err!(
                "task.operands = {} must be 2 or 3",
                cfg.operands
            ));
        }
        if !(0.0..=1.0).contains(&cfg.p_long_carry) {
            return Err(input_err!(
                "task.p_long_carry = {} must be in [0, 1]",
                cfg.p_long_carry
            ));
        }
        let mix = style_mix_from(cfg, &DEFAULT_STYLES, &|s| {
            s == "direct" || parse_g(s).is_some()
        })?;
        Ok(Addition {
            d_min: cfg.digits_min,
            d_max: cfg.digits_max,
            k: cfg.operands,
            p_long: cfg.p_long_carry,
            eval_fraction: cfg.eval_fraction,
            filler_prob: cfg.filler_prob,
            mix,
        })
    }

    fn generate(&self, rng: &mut TaskRng) -> Problem {
        let len = rng.random_range(self.d_min..=self.d_max);
        let mut ops = Vec::with_capacity(self.k);
        if len >= 2 && rng.random::<f64>() < self.p_long {
            // A leading digit then 9s: any second operand ending in 1..9 carries through all of them.
            let lead: u128 = rng.random_range(1..10);
            let nines = 10u128.pow(len as u32 - 1) - 1;
            ops.push(lead * 10u128.pow(len as u32 - 1) + nines);
            for _ in 1..self.k {
                let l2 = rng.random_range(1..=len);
                let v = random_number(rng, l2);
                ops.push(v - v % 10 + rng.random_range(1..10) as u128);
            }
        } else {
            ops.push(random_number(rng, len));
            for _ in 1..self.k {
                let l2 = rng.random_range(1..=len);
                ops.push(random_number(rng, l2));
            }
        }
        let text = ops
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join("+");
        let prompt = format!("A{text}:");
        let sum: u128 = ops.iter().sum();
        Problem {
            id: prompt.clone(),
            prompt: Prompt::Text(prompt),
            answer: sum.to_string(),
        }
    }

    /// The operands of an ADD prompt.
    fn operands(&self, p: &Problem) -> Result<Vec<String>> {
        let t = text_prompt(p, "addition")?;
        let body = t
            .strip_prefix('A')
            .and_then(|s| s.strip_suffix(':'))
            .ok_or_else(|| {
                input_err!("problem `{}` is not an addition prompt `A<a>+<b>:`", p.id)
            })?;
        let ops: Vec<String> = body.split('+').map(str::to_string).collect();
        if ops.len() < 2
            || ops
                .iter()
                .any(|o| o.is_empty() || o.len() > 30 || !o.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(input_err!(
                "problem `{}` is not an addition prompt `A<a>+<b>:`",
                p.id
            ));
        }
        Ok(ops)
    }
}

/// The scratchpad of `ops` (decimal strings) with `g` digits per step.
pub(crate) fn scratchpad(ops: &[String], g: usize) -> String {
    let len = ops.iter().map(|o| o.len()).max().unwrap_or(0);
    let digit = |o: &str, i: usize| -> u32 {
        // i-th digit from the right, 0 beyond the operand's length.
        if i < o.len() {
            (o.as_bytes()[o.len() - 1 - i] - b'0') as u32
        } else {
            0
        }
    };
    let mut out = String::new();
    let mut carry: u128 = 0;
    let mut j = 0;
    while j * g < len {
        let mut sum = carry;
        let mut terms = Vec::new();
        for o in ops {
            let mut chunk: u128 = 0;
            for i in (j * g..(j + 1) * g).rev() {
                chunk = chunk * 10 + digit(o, i) as u128;
            }
            sum += chunk;
            terms.push(format!("{chunk:0g$}"));
        }
        out.push_str(&terms.join("+"));
        out.push_str(&format!("+{carry}={sum:0w$};", w = g + 1));
        carry = sum / 10u128.pow(g as u32);
        j += 1;
    }
    out
}

impl Task for Addition {
    fn name(&self) -> &str {
        "addition"
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
        let ops = self.operands(problem)?;
        let sum: u128 = ops.iter().map(|o| o.parse::<u128>().unwrap_or(0)).sum();
        let work = if style == "direct" {
            String::new()
        } else {
            let g =
                parse_g(style).ok_or_else(|| input_err!("addition: unknown style `{style}`"))?;
            if g > 30 {
                return Err(input_err!(
                    "addition: style `{style}` has more than 30 digits per step"
                ));
            }
            scratchpad(&ops, g)
        };
        Ok(with_filler(&work, &sum.to_string(), self.filler_prob, rng))
    }
    fn style_of(&self, problem: &Problem, response: &str) -> Option<String> {
        let ops = self.operands(problem).ok()?;
        let len = ops.iter().map(|o| o.len()).max()?;
        let clean: String = response.chars().filter(|c| *c != '.').collect();
        let (body, _) = clean.rsplit_once("####")?;
        if body.is_empty() {
            return Some("direct".into());
        }
        let steps: Vec<&str> = body.strip_suffix(';')?.split(';').collect();
        let g = steps[0].split('+').next()?.len();
        if g == 0 || len.div_ceil(g) != steps.len() {
            return None;
        }
        Some(format!("g{g}"))
    }
    fn verifier(&self) -> Verifier {
        Verifier::Integer
    }
    fn alphabet(&self) -> Option<String> {
        Some("0123456789A+:=;#.".into())
    }
    fn max_response_len_hint(&self) -> usize {
        let k = self.k;
        let work = self
            .mix
            .iter()
            .map(|(s, _)| match parse_g(s) {
                Some(g) => self.d_max.div_ceil(g) * ((k + 1) * g + k + 4),
                None => 0,
            })
            .max()
            .unwrap_or(0);
        filler_bound(work, self.filler_prob) + 4 + self.d_max + 1
    }
    fn difficulty_of(&self, problem: &Problem) -> Option<usize> {
        self.operands(problem)
            .ok()
            .and_then(|o| o.iter().map(|x| x.len()).max())
    }
}
