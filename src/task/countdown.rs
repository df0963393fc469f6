//! CD: countdown with self-checked attempts (`research/data.md` §5.2).
//!
//! Prompt `C3,7,9>30:` (m numbers in 1..=9, a target reachable using every number exactly once with
//! `+ - * /` over non-negative exact integers). Style `a<k>` shows k failed attempts before the right one:
//! `9-7=2,2*3=6x|9+7=16,16+3=19x|7*3=21,21+9=30!####7*3+9`; `direct` writes only `####7*3+9`.
//! The gold answer is the puzzle `3,7,9>30`; [`Verifier::Countdown`] checks the expression.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use rand::seq::SliceRandom;
use rand::Rng;

use super::{
    draw_in_split, draw_many, filler_bound, style_mix_from, text_prompt, with_filler, Problem,
    Prompt, Split, Task, TaskConfig, TaskRng,
};
use crate::reward::verify::parse_countdown_gold;
use crate::reward::Verifier;
use crate::{input_err, Result};

const DEFAULT_STYLES: [&str; 4] = ["direct", "a0", "a1", "a2"];

/// One step `a op b = c` of a countdown chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountdownStep {
    /// Left operand.
    pub a: i64,
    /// `+`, `-`, `*` or `/`.
    pub op: char,
    /// Right operand.
    pub b: i64,
    /// Result.
    pub c: i64,
}

/// A number in play: its value, the expression that made it, and that expression's precedence.
#[derive(Clone)]
struct Item {
    v: i64,
    e: String,
    prec: u8, // 3 atom, 2 product, 1 sum
}

fn paren(it: &Item, min: u8) -> String {
    if it.prec >= min {
        it.e.clone()
    } else {
        format!("({})", it.e)
    }
}

/// All results of combining `x` and `y` (larger first for `-` and `/`, exact division only).
fn combine(x: &Item, y: &Item) -> Vec<(CountdownStep, Item)> {
    let (hi, lo) = if x.v >= y.v { (x, y) } else { (y, x) };
    let mut out = Vec::with_capacity(4);
    let mk = |op: char, c: i64, e: String, prec: u8| {
        (
            CountdownStep {
                a: hi.v,
                op,
                b: lo.v,
                c,
            },
            Item { v: c, e, prec },
        )
    };
    out.push(mk('+', hi.v + lo.v, format!("{}+{}", hi.e, lo.e), 1));
    out.push(mk(
        '-',
        hi.v - lo.v,
        format!("{}-{}", hi.e, paren(lo, 2)),
        1,
    ));
    out.push(mk(
        '*',
        hi.v * lo.v,
        format!("{}*{}", paren(hi, 2), paren(lo, 2)),
        2,
    ));
    if lo.v != 0 && hi.v % lo.v == 0 {
        out.push(mk(
            '/',
            hi.v / lo.v,
            format!("{}/{}", paren(hi, 2), paren(lo, 3)),
            2,
        ));
    }
    out
}

fn reachable(items: &[Item], out: &mut BTreeSet<i64>) {
    if items.len() == 1 {
        out.insert(items[0].v);
        return;
    }
    for i in 0..items.len() {
        for j in i + 1..items.len() {
            for (_, it) in combine(&items[i], &items[j]) {
                let mut next: Vec<Item> = items
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| *k != i && *k != j)
                    .map(|(_, x)| x.clone())
                    .collect();
                next.push(it);
                reachable(&next, out);
            }
        }
    }
}

/// Depth-first search for a chain that reaches `target` using every item; pair order shuffled by `rng` if given.
fn search(
    items: &[Item],
    target: i64,
    rng: &mut Option<&mut TaskRng>,
) -> Option<(Vec<CountdownStep>, String)> {
    if items.len() == 1 {
        return (items[0].v == target).then(|| (Vec::new(), items[0].e.clone()));
    }
    let mut pairs: Vec<(usize, usize)> = (0..items.len())
        .flat_map(|i| (i + 1..items.len()).map(move |j| (i, j)))
        .collect();
    if let Some(r) = rng.as_deref_mut() {
        pairs.shuffle(r);
    }
    for (i, j) in pairs {
        let mut combos = combine(&items[i], &items[j]);
        if let Some(r) = rng.as_deref_mut() {
            combos.shuffle(r);
        }
        for (step, it) in combos {
            let mut next: Vec<Item> = items
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != i && *k != j)
                .map(|(_, x)| x.clone())
                .collect();
            next.push(it);
            if let Some((mut steps, e)) = search(&next, target, rng) {
                steps.insert(0, step);
                return Some((steps, e));
            }
        }
    }
    None
}

fn atoms(numbers: &[i64]) -> Vec<Item> {
    numbers
        .iter()
        .map(|n| Item {
            v: *n,
            e: n.to_string(),
            prec: 3,
        })
        .collect()
}

/// A solution of a countdown puzzle (every number used once): its steps and expression, or `None`.
pub fn solve_countdown(numbers: &[i64], target: i64) -> Option<(Vec<CountdownStep>, String)> {
    search(&atoms(numbers), target, &mut None)
}

fn render(steps: &[CountdownStep]) -> String {
    steps
        .iter()
        .map(|s| format!("{}{}{}={}", s.a, s.op, s.b, s.c))
        .collect::<Vec<_>>()
        .join(",")
}

/// The countdown family.
pub struct Countdown {
    m: usize,
    t_min: i64,
    t_max: i64,
    exactly_once: bool,
    eval_fraction: f64,
    filler_prob: f64,
    mix: Vec<(String, f64)>,
    /// Reachable values per sorted multiset of numbers (at most C(13,5) = 1287 entries).
    reach_cache: Mutex<HashMap<Vec<i64>, Vec<i64>>>,
}

fn parse_a(style: &str) -> Option<usize> {
    style
        .strip_prefix('a')
        .and_then(|k| k.parse::<usize>().ok())
        .filter(|k| *k <= 8)
}

impl Countdown {
    /// Validates the config's CD knobs.
    pub fn new(cfg: &TaskConfig) -> Result<Self> {
        if !(2..=5).contains(&cfg.cd_numbers) {
            return Err(input_err!(
                "task.cd_numbers = {} must be in 2..=5",
                cfg.cd_numbers
            ));
        }
        if cfg.cd_target_min < 0 || cfg.cd_target_min > cfg.cd_target_max {
            return Err(input_err!(
                "task.cd_target_min/max = {}/{} must satisfy 0 <= min <= max",
                cfg.cd_target_min,
                cfg.cd_target_max
            ));
        }
        let mix = style_mix_from(cfg, &DEFAULT_STYLES, &|s| {
            s == "direct" || parse_a(s).is_some()
        })?;
        Ok(Countdown {
            m: cfg.cd_numbers,
            t_min: cfg.cd_target_min,
            t_max: cfg.cd_target_max,
            exactly_once: cfg.cd_exactly_once,
            eval_fraction: cfg.eval_fraction,
            filler_prob: cfg.filler_prob,
            mix,
            reach_cache: Mutex::new(HashMap::new()),
        })
    }

    fn generate(&self, rng: &mut TaskRng) -> Problem {
        loop {
            let nums: Vec<i64> = (0..self.m).map(|_| rng.random_range(1..=9)).collect();
            let targets: Vec<i64> = self
                .reachable_sorted(&nums)
                .into_iter()
                .filter(|t| (self.t_min..=self.t_max).contains(t))
                .collect();
            if targets.is_empty() {
                continue;
            }
            let t = targets[rng.random_range(0..targets.len())];
            let list = nums
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let prompt = format!("C{list}>{t}:");
            return Problem {
                id: prompt.clone(),
                prompt: Prompt::Text(prompt),
                answer: format!("{list}>{t}"),
            };
        }
    }

    /// Every value reachable from `nums` (each used once), sorted; cached per multiset.
    fn reachable_sorted(&self, nums: &[i64]) -> Vec<i64> {
        let mut key = nums.to_vec();
        key.sort_unstable();
        if let Some(v) = self
            .reach_cache
            .lock()
            .ok()
            .and_then(|c| c.get(&key).cloned())
        {
            return v;
        }
        let mut all = BTreeSet::new();
        reachable(&atoms(&key), &mut all);
        let v: Vec<i64> = all.into_iter().collect();
        if let Ok(mut c) = self.reach_cache.lock() {
            c.insert(key, v.clone());
        }
        v
    }

    fn puzzle(&self, p: &Problem) -> Result<(Vec<i64>, i64)> {
        let t = text_prompt(p, "countdown")?;
        t.strip_prefix('C')
            .and_then(|s| s.strip_suffix(':'))
            .and_then(parse_countdown_gold)
            .ok_or_else(|| {
                input_err!(
                    "problem `{}` is not a countdown prompt `C<a>,<b>,..><target>:`",
                    p.id
                )
            })
    }

    /// A random complete chain over `nums` that does not reach `target` (`None` if every chain does).
    fn failed_attempt(
        &self,
        nums: &[i64],
        target: i64,
        rng: &mut TaskRng,
    ) -> Option<Vec<CountdownStep>> {
        for _ in 0..64 {
            let mut items = atoms(nums);
            let mut steps = Vec::new();
            while items.len() > 1 {
                let i = rng.random_range(0..items.len());
                let x = items.swap_remove(i);
                let j = rng.random_range(0..items.len());
                let y = items.swap_remove(j);
                let mut combos = combine(&x, &y);
                let (step, it) = combos.swap_remove(rng.random_range(0..combos.len()));
                steps.push(step);
                items.push(it);
            }
            if items[0].v != target {
                return Some(steps);
            }
        }
        None
    }
}

impl Task for Countdown {
    fn name(&self) -> &str {
        "countdown"
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
        let (nums, target) = self.puzzle(problem)?;
        let (steps, expr) = search(&atoms(&nums), target, &mut Some(&mut *rng))
            .ok_or_else(|| input_err!("countdown problem `{}` has no solution", problem.id))?;
        let work = if style == "direct" {
            String::new()
        } else {
            let k =
                parse_a(style).ok_or_else(|| input_err!("countdown: unknown style `{style}`"))?;
            // k distinct failed attempts where the puzzle has that many (a few retries against repeats).
            let mut attempts: Vec<String> = Vec::new();
            let mut tries = 0;
            while attempts.len() < k && tries < 8 * (k + 1) {
                tries += 1;
                if let Some(f) = self.failed_attempt(&nums, target, rng) {
                    let a = format!("{}x", render(&f));
                    if !attempts.contains(&a) || tries >= 4 * (k + 1) {
                        attempts.push(a);
                    }
                }
            }
            attempts.push(format!("{}!", render(&steps)));
            attempts.join("|")
        };
        Ok(with_filler(&work, &expr, self.filler_prob, rng))
    }
    fn style_of(&self, _problem: &Problem, response: &str) -> Option<String> {
        let clean: String = response.chars().filter(|c| *c != '.').collect();
        let (body, _) = clean.rsplit_once("####")?;
        if body.is_empty() {
            return Some("direct".into());
        }
        if !body.ends_with('!') {
            return None;
        }
        Some(format!("a{}", body.matches('|').count()))
    }
    fn verifier(&self) -> Verifier {
        Verifier::Countdown {
            exactly_once: self.exactly_once,
        }
    }
    fn alphabet(&self) -> Option<String> {
        Some("0123456789C,>:+-*/()=x!|#.".into())
    }
    fn max_response_len_hint(&self) -> usize {
        let kmax = self.mix.iter().filter_map(|(s, _)| parse_a(s)).max();
        let digits = 9f64.powi(self.m as i32).log10().floor() as usize + 1;
        let step = 3 * digits + 3;
        let work = match kmax {
            Some(k) => (k + 1) * (step * (self.m - 1) + 1) + k,
            None => 0,
        };
        filler_bound(work, self.filler_prob) + 4 + 4 * self.m
    }
    fn difficulty_of(&self, problem: &Problem) -> Option<usize> {
        self.puzzle(problem).ok().map(|(n, _)| n.len())
    }
}
