//! Length analysis of one run's sampled responses (`rollouts.jsonl`) and small statistics helpers.
//!
//! Conventions: a "group" is the responses to one prompt at one RL step (what the advantage sees);
//! length spreads over responses or groups are population std (they describe the data); the spread
//! over seeds (`Stat`) is the sample std (n − 1), 0 for one seed. Percentiles interpolate linearly
//! (numpy's default). A figure with no data is `null` in JSON.

use crate::metrics::RolloutRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Mean of `v`; `None` when empty.
pub fn mean(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        None
    } else {
        Some(v.iter().sum::<f64>() / v.len() as f64)
    }
}

/// Population standard deviation of `v`; `None` when empty.
pub fn std_pop(v: &[f64]) -> Option<f64> {
    let m = mean(v)?;
    Some((v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt())
}

/// Sample standard deviation (n − 1) of `v`; 0 for one value, `None` when empty.
pub fn std_sample(v: &[f64]) -> Option<f64> {
    let m = mean(v)?;
    if v.len() < 2 {
        return Some(0.0);
    }
    Some((v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt())
}

/// The `q`-quantile (0..=1) of `v` with linear interpolation; `None` when empty.
pub fn percentile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(s[lo] + (s[hi] - s[lo]) * (pos - lo as f64))
}

/// Mean, spread and range of one figure over several seeds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Stat {
    /// Mean over seeds.
    pub mean: f64,
    /// Sample std over seeds (0 for one seed).
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Number of seeds with a value.
    pub n: usize,
}

impl Stat {
    /// Statistics of the known finite values; `None` when there are none.
    pub fn of(values: &[Option<f64>]) -> Option<Stat> {
        let v: Vec<f64> = values
            .iter()
            .flatten()
            .copied()
            .filter(|x| x.is_finite())
            .collect();
        Some(Stat {
            mean: mean(&v)?,
            std: std_sample(&v)?,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n: v.len(),
        })
    }
}

/// Count and mean length of a set of responses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LengthGroup {
    /// Number of responses.
    pub n: usize,
    /// Their mean length in tokens (`null` when none).
    pub mean_length: Option<f64>,
}

impl LengthGroup {
    fn of<'a>(rs: impl Iterator<Item = &'a RolloutRecord>) -> LengthGroup {
        let v: Vec<f64> = rs.map(|r| r.length as f64).collect();
        LengthGroup {
            n: v.len(),
            mean_length: mean(&v),
        }
    }
}

/// Distribution over groups (one prompt at one step) of the per-group mean length.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PerPromptLengths {
    /// Number of groups.
    pub n_groups: usize,
    /// Mean over groups of the group's mean length.
    pub mean: Option<f64>,
    /// Population std over groups of the group's mean length.
    pub std: Option<f64>,
    /// 10th percentile over groups of the group's mean length.
    pub p10: Option<f64>,
    /// Median over groups of the group's mean length.
    pub p50: Option<f64>,
    /// 90th percentile over groups of the group's mean length.
    pub p90: Option<f64>,
    /// Mean over groups of the within-group population std of length.
    pub mean_within_prompt_std: Option<f64>,
}

impl PerPromptLengths {
    fn of<'a>(rs: impl Iterator<Item = &'a RolloutRecord>) -> PerPromptLengths {
        let mut groups: BTreeMap<(u64, &str), Vec<f64>> = BTreeMap::new();
        for r in rs {
            groups
                .entry((r.step, r.prompt_id.as_str()))
                .or_default()
                .push(r.length as f64);
        }
        let means: Vec<f64> = groups.values().filter_map(|g| mean(g)).collect();
        let stds: Vec<f64> = groups.values().filter_map(|g| std_pop(g)).collect();
        PerPromptLengths {
            n_groups: groups.len(),
            mean: mean(&means),
            std: std_pop(&means),
            p10: percentile(&means, 0.1),
            p50: percentile(&means, 0.5),
            p90: percentile(&means, 0.9),
            mean_within_prompt_std: mean(&stds),
        }
    }
}

/// CASTILLO (methods.md §21a) statistics of one prompt's response lengths at one RL step (its group): population
/// std and linearly interpolated percentiles, like numpy's defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CastilloPrompt {
    /// Problem id.
    pub prompt_id: String,
    /// RL step.
    pub step: u64,
    /// Responses.
    pub n: usize,
    /// Mean length.
    pub mean: f64,
    /// Population std of length (`np.std`).
    pub std: f64,
    /// Shortest response.
    pub min: f64,
    /// Longest response.
    pub max: f64,
    /// 25th percentile (`np.percentile`, linear).
    pub p25: f64,
    /// Median.
    pub p50: f64,
    /// 75th percentile.
    pub p75: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Some response is degenerate: it hit the length limit (`truncated`). CASTILLO's other criterion,
    /// repetition, needs the text, which `rollouts.jsonl` does not keep; it is not checked.
    pub degenerate: bool,
}

impl CastilloPrompt {
    /// The statistics of `lengths` (one per response; `truncated` says which hit the length limit); `None` when
    /// empty.
    pub fn of(
        prompt_id: &str,
        step: u64,
        lengths: &[f64],
        truncated: &[bool],
    ) -> Option<CastilloPrompt> {
        let q = |p| percentile(lengths, p);
        Some(CastilloPrompt {
            prompt_id: prompt_id.to_string(),
            step,
            n: lengths.len(),
            mean: mean(lengths)?,
            std: std_pop(lengths)?,
            min: lengths.iter().copied().fold(f64::INFINITY, f64::min),
            max: lengths.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            p25: q(0.25)?,
            p50: q(0.5)?,
            p75: q(0.75)?,
            p99: q(0.99)?,
            degenerate: truncated.iter().any(|&t| t),
        })
    }
}

/// CASTILLO statistics of every prompt (group) of one RL step, and their means over prompts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CastilloStep {
    /// RL step (`null` when there are no rollouts).
    pub step: Option<u64>,
    /// Prompts (groups).
    pub n_prompts: usize,
    /// Mean over prompts of the per-prompt mean length.
    pub mean: Option<f64>,
    /// Mean over prompts of the per-prompt std.
    pub std: Option<f64>,
    /// Mean over prompts of the per-prompt min.
    pub min: Option<f64>,
    /// Mean over prompts of the per-prompt max.
    pub max: Option<f64>,
    /// Mean over prompts of the per-prompt p25.
    pub p25: Option<f64>,
    /// Mean over prompts of the per-prompt median.
    pub p50: Option<f64>,
    /// Mean over prompts of the per-prompt p75.
    pub p75: Option<f64>,
    /// Mean over prompts of the per-prompt p99.
    pub p99: Option<f64>,
    /// Fraction of prompts flagged degenerate.
    pub degenerate_frac: Option<f64>,
    /// Every prompt, in prompt-id order.
    pub prompts: Vec<CastilloPrompt>,
}

impl CastilloStep {
    /// The statistics of the rollouts of `step` (`None`: empty).
    pub fn of(rollouts: &[RolloutRecord], step: Option<u64>) -> CastilloStep {
        let mut groups: BTreeMap<&str, (Vec<f64>, Vec<bool>)> = BTreeMap::new();
        for r in rollouts.iter().filter(|r| Some(r.step) == step) {
            let g = groups.entry(r.prompt_id.as_str()).or_default();
            g.0.push(r.length as f64);
            g.1.push(r.truncated);
        }
        let prompts: Vec<CastilloPrompt> = groups
            .iter()
            .filter_map(|(id, (l, t))| CastilloPrompt::of(id, step.unwrap_or(0), l, t))
            .collect();
        let m = |f: fn(&CastilloPrompt) -> f64| mean(&prompts.iter().map(f).collect::<Vec<_>>());
        CastilloStep {
            step,
            n_prompts: prompts.len(),
            mean: m(|p| p.mean),
            std: m(|p| p.std),
            min: m(|p| p.min),
            max: m(|p| p.max),
            p25: m(|p| p.p25),
            p50: m(|p| p.p50),
            p75: m(|p| p.p75),
            p99: m(|p| p.p99),
            degenerate_frac: frac(
                prompts.iter().filter(|p| p.degenerate).count(),
                prompts.len(),
            ),
            prompts,
        }
    }
}

/// Length figures of one RL step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepLengths {
    /// RL step.
    pub step: u64,
    /// Responses sampled at this step.
    pub n: usize,
    /// Mean length.
    pub mean_length: Option<f64>,
    /// Fraction of correct responses.
    pub accuracy: Option<f64>,
    /// Mean length of correct responses.
    pub correct_mean_length: Option<f64>,
    /// Mean length of incorrect responses.
    pub incorrect_mean_length: Option<f64>,
    /// Mean length of responses with advantage > 0.
    pub positive_advantage_mean_length: Option<f64>,
    /// Mean length of responses with advantage < 0.
    pub negative_advantage_mean_length: Option<f64>,
    /// Change of `positive_advantage_mean_length` since the previous step (`null` at the first step).
    pub positive_advantage_change: Option<f64>,
    /// Change of `negative_advantage_mean_length` since the previous step.
    pub negative_advantage_change: Option<f64>,
    /// Mean over groups with both signs of (mean length A>0 − mean length A<0).
    pub advantage_length_gap: Option<f64>,
    /// Fraction truncated by the length limit.
    pub truncated_frac: Option<f64>,
    /// Mean within-group population std of length.
    pub mean_within_prompt_std: Option<f64>,
}

/// Length analysis of one run (from `rollouts.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LengthAnalysis {
    /// Responses analysed.
    pub n_responses: usize,
    /// Distinct RL steps.
    pub n_steps: usize,
    /// Per-prompt (per-group) distribution over all steps.
    pub per_prompt: PerPromptLengths,
    /// The same at the first step.
    pub per_prompt_first_step: PerPromptLengths,
    /// The same at the last step.
    pub per_prompt_last_step: PerPromptLengths,
    /// Correct responses.
    pub correct: LengthGroup,
    /// Incorrect responses.
    pub incorrect: LengthGroup,
    /// Responses with advantage > 0.
    pub positive_advantage: LengthGroup,
    /// Responses with advantage < 0.
    pub negative_advantage: LengthGroup,
    /// Responses with advantage = 0.
    pub zero_advantage: LengthGroup,
    /// Mean over steps of `positive_advantage_change`.
    pub mean_step_change_positive: Option<f64>,
    /// Mean over steps of `negative_advantage_change`.
    pub mean_step_change_negative: Option<f64>,
    /// Mean over groups with both signs of (mean length A>0 − mean length A<0), all steps.
    pub advantage_length_gap: Option<f64>,
    /// Truncated responses.
    pub truncated: LengthGroup,
    /// Fraction of responses truncated.
    pub truncated_frac: Option<f64>,
    /// Per-step figures, by increasing step.
    pub by_step: Vec<StepLengths>,
    /// CASTILLO per-prompt length statistics at the first RL step.
    pub castillo_first_step: CastilloStep,
    /// The same at the last RL step.
    pub castillo_last_step: CastilloStep,
}

/// Lengths of the A>0 and A<0 responses of each (step, prompt) group.
type SignedGroups<'a> = BTreeMap<(u64, &'a str), (Vec<f64>, Vec<f64>)>;

/// Mean over groups (step, prompt) having both signs of (mean len A>0 − mean len A<0).
fn advantage_gap<'a>(rs: impl Iterator<Item = &'a RolloutRecord>) -> Option<f64> {
    let mut groups: SignedGroups = BTreeMap::new();
    for r in rs {
        let g = groups.entry((r.step, r.prompt_id.as_str())).or_default();
        if r.advantage > 0.0 {
            g.0.push(r.length as f64);
        } else if r.advantage < 0.0 {
            g.1.push(r.length as f64);
        }
    }
    let gaps: Vec<f64> = groups
        .values()
        .filter_map(|(p, n)| Some(mean(p)? - mean(n)?))
        .collect();
    mean(&gaps)
}

fn frac(n: usize, total: usize) -> Option<f64> {
    (total > 0).then(|| n as f64 / total as f64)
}

/// Analyses the sampled responses of one run.
pub fn analyse_lengths(rollouts: &[RolloutRecord]) -> LengthAnalysis {
    let mut by_step_recs: BTreeMap<u64, Vec<&RolloutRecord>> = BTreeMap::new();
    for r in rollouts {
        by_step_recs.entry(r.step).or_default().push(r);
    }
    let mut by_step: Vec<StepLengths> = Vec::with_capacity(by_step_recs.len());
    for (&step, rs) in &by_step_recs {
        let it = || rs.iter().copied();
        let pos = LengthGroup::of(it().filter(|r| r.advantage > 0.0)).mean_length;
        let neg = LengthGroup::of(it().filter(|r| r.advantage < 0.0)).mean_length;
        let prev = by_step.last();
        let change = |cur: Option<f64>, prev: Option<f64>| Some(cur? - prev?);
        by_step.push(StepLengths {
            step,
            n: rs.len(),
            mean_length: LengthGroup::of(it()).mean_length,
            accuracy: frac(it().filter(|r| r.correct).count(), rs.len()),
            correct_mean_length: LengthGroup::of(it().filter(|r| r.correct)).mean_length,
            incorrect_mean_length: LengthGroup::of(it().filter(|r| !r.correct)).mean_length,
            positive_advantage_mean_length: pos,
            negative_advantage_mean_length: neg,
            positive_advantage_change: change(
                pos,
                prev.and_then(|p| p.positive_advantage_mean_length),
            ),
            negative_advantage_change: change(
                neg,
                prev.and_then(|p| p.negative_advantage_mean_length),
            ),
            advantage_length_gap: advantage_gap(it()),
            truncated_frac: frac(it().filter(|r| r.truncated).count(), rs.len()),
            mean_within_prompt_std: PerPromptLengths::of(it()).mean_within_prompt_std,
        });
    }
    let pos_changes: Vec<f64> = by_step
        .iter()
        .filter_map(|s| s.positive_advantage_change)
        .collect();
    let neg_changes: Vec<f64> = by_step
        .iter()
        .filter_map(|s| s.negative_advantage_change)
        .collect();
    let first = by_step_recs.keys().next().copied();
    let last = by_step_recs.keys().next_back().copied();
    let at = |s: Option<u64>| rollouts.iter().filter(move |r| Some(r.step) == s);
    let truncated = LengthGroup::of(rollouts.iter().filter(|r| r.truncated));
    LengthAnalysis {
        n_responses: rollouts.len(),
        n_steps: by_step.len(),
        per_prompt: PerPromptLengths::of(rollouts.iter()),
        per_prompt_first_step: PerPromptLengths::of(at(first)),
        per_prompt_last_step: PerPromptLengths::of(at(last)),
        correct: LengthGroup::of(rollouts.iter().filter(|r| r.correct)),
        incorrect: LengthGroup::of(rollouts.iter().filter(|r| !r.correct)),
        positive_advantage: LengthGroup::of(rollouts.iter().filter(|r| r.advantage > 0.0)),
        negative_advantage: LengthGroup::of(rollouts.iter().filter(|r| r.advantage < 0.0)),
        zero_advantage: LengthGroup::of(rollouts.iter().filter(|r| r.advantage == 0.0)),
        mean_step_change_positive: mean(&pos_changes),
        mean_step_change_negative: mean(&neg_changes),
        advantage_length_gap: advantage_gap(rollouts.iter()),
        truncated,
        truncated_frac: frac(truncated.n, rollouts.len()),
        by_step,
        castillo_first_step: CastilloStep::of(rollouts, first),
        castillo_last_step: CastilloStep::of(rollouts, last),
    }
}
