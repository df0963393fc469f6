//! Mechanism metrics of the length bias (docs/length_theory.md): where each objective puts its gradient, by
//! advantage sign and by response length, and what clipping removes.
//!
//! A response token's weight is w_t = −∂loss/∂logp_t of the policy-gradient term (KL and entropy off), taken by
//! autograd on the objective itself, so it includes the importance ratio, the clip and the aggregation:
//! GRPO A·r_t/(B·|y|), GSPO s·A/(B·|y|), LUSPO s·A/B, DAPO A·r_t/ΣL, Dr.GRPO A·r_t/(B·H), CISPO
//! clip(r_t)·A/ΣL. A response's coefficient c_i = mean_t w_it is the weight its score ∇log π(y_i) gets.
//!
//! Length push: to first order, a gradient step on Σ_i c_i·log π(y_i) moves the mean length by a multiple of
//! Σ_i c_i·(L_i − L̄) (score function). `len_push` is that sum over Σ_i |c_i^u| (tokens), where c^u are the
//! coefficients with the clip switched off (eps_low = 1, eps_high = ∞), and it splits exactly into three parts:
//! - reward: m̄·Σ A_i (L_i − L̄), m̄ = Σ|c^u| / Σ|A| (longer responses have higher or lower advantage);
//! - weighting: Σ (c_i^u − m̄·A_i)(L_i − L̄) (the objective's per-response scale depends on length, e.g. GSPO's
//!   1/|y|; zero mean when A is independent of L and the advantages of a batch sum to zero);
//! - clip: Σ (c_i − c_i^u)(L_i − L̄) (what the clip removes, e.g. more A<0 responses than A>0 ones, which
//!   leaves a positive mean coefficient that 1/|y| turns into a push towards short responses).

use crate::objective::{self, PolicyInputs, ResolvedObjective};
use crate::Result;
use candle_core::{DType, Device, Tensor, Var};

/// Net and absolute weight of one response under one objective evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeqWeight {
    /// g = Σ_t w_t (signed; > 0 pushes the response up).
    pub net: f64,
    /// Σ_t |w_t| (gradient mass).
    pub mass: f64,
    /// Response tokens with w_t = 0 (clipped away).
    pub zero_tokens: usize,
}

/// Per-response weights of one mini-batch, for the same inputs the objective trains on (the KL term and the
/// entropy bonus are left out); `unclipped` switches the clip off. Rows with an empty mask get zeros.
pub fn seq_weights(
    obj: &ResolvedObjective,
    inputs: &PolicyInputs,
    unclipped: bool,
) -> Result<Vec<SeqWeight>> {
    let mut o = obj.clone();
    o.kl_beta = 0.0;
    o.entropy_coef = 0.0;
    if unclipped {
        o.eps_low = 1.0;
        o.eps_high = f64::MAX;
        o.dual_clip = None;
    }
    let cpu = Device::Cpu;
    let f =
        |t: &Tensor| -> Result<Tensor> { Ok(t.detach().to_dtype(DType::F64)?.to_device(&cpu)?) };
    let lp = Var::from_tensor(&f(inputs.logp)?)?;
    let (old, mask, adv) = (f(inputs.old_logp)?, f(inputs.mask)?, f(inputs.advantages)?);
    let token_weights = inputs.token_weights.map(f).transpose()?;
    // Detached: SPINE and UloRL select tokens by entropy; the entropy bonus itself is off here.
    let entropy = inputs.entropy.map(f).transpose()?;
    let out = objective::policy_loss_resolved(
        &o,
        &PolicyInputs {
            logp: lp.as_tensor(),
            old_logp: &old,
            mask: &mask,
            advantages: &adv,
            ref_logp: None,
            entropy: entropy.as_ref(),
            groups: inputs.groups,
            token_weights: token_weights.as_ref(),
            entropy_coefs: None,
            global_counts: inputs.global_counts,
        },
    )?;
    let grads = out.loss.backward()?;
    let g: Vec<Vec<f64>> = match grads.get(lp.as_tensor()) {
        Some(g) => g.to_vec2()?,
        None => vec![vec![0.0; mask.dims2()?.1]; mask.dims2()?.0],
    };
    let m: Vec<Vec<f64>> = mask.to_vec2()?;
    Ok(g.iter()
        .zip(&m)
        .map(|(gr, mr)| {
            let mut s = SeqWeight {
                net: 0.0,
                mass: 0.0,
                zero_tokens: 0,
            };
            for (&x, &k) in gr.iter().zip(mr) {
                if k != 0.0 {
                    s.net -= x;
                    s.mass += x.abs();
                    s.zero_tokens += usize::from(x == 0.0);
                }
            }
            s
        })
        .collect())
}

/// The mechanism metrics of one RL step (fields of [`crate::metrics::StepMetrics`]); NaN-free: 0 where a
/// figure is undefined (no clipped response on a side, fewer than 2 responses carrying gradient).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MechanismStats {
    /// Gradient mass Σ|w| on A>0 responses, mean per optimizer step.
    pub grad_mass_pos: f64,
    /// Gradient mass on A<0 responses, mean per optimizer step.
    pub grad_mass_neg: f64,
    /// Share of the gradient mass on each quartile of the step's response lengths (shortest first).
    pub grad_share_len_q: [f64; 4],
    /// Mean length of clipped / kept A<0 responses (a response counts by its share of zero-weight tokens); 0
    /// when there are none.
    pub clip_len_low: [f64; 2],
    /// Mean length of clipped / kept A>0 responses; 0 when there are none.
    pub clip_len_high: [f64; 2],
    /// Covariance of length and advantage over the responses that carry gradient (0 when fewer than 2).
    pub len_adv_cov: f64,
    /// Length push (tokens): total, reward, weighting and clip parts (see the module doc).
    pub len_push: [f64; 4],
}

/// Accumulates [`MechanismStats`] over the optimizer steps of one RL step.
#[derive(Debug, Clone)]
pub struct Mechanism {
    cuts: [f64; 3],
    mean_len: f64,
    opt_steps: usize,
    mass: [f64; 2],
    mass_q: [f64; 4],
    // [side][clipped, kept] × (weight, weighted length); side 0 = A<0, 1 = A>0.
    clip: [[(f64, f64); 2]; 2],
    carried: Vec<(f64, f64)>,
    push: [f64; 3],
    push_norm: f64,
}

impl Mechanism {
    /// Starts a step whose responses have these lengths (quartile cuts and L̄ come from them).
    pub fn new(lengths: &[f64]) -> Self {
        let mut s = lengths.to_vec();
        s.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            if s.is_empty() {
                return 0.0;
            }
            let k = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
            s[k - 1]
        };
        Mechanism {
            cuts: [at(0.25), at(0.5), at(0.75)],
            mean_len: s.iter().sum::<f64>() / s.len().max(1) as f64,
            opt_steps: 0,
            mass: [0.0; 2],
            mass_q: [0.0; 4],
            clip: [[(0.0, 0.0); 2]; 2],
            carried: vec![],
            push: [0.0; 3],
            push_norm: 0.0,
        }
    }

    /// Quartile of a length: 0 up to the 25th percentile (nearest rank), .. 3 above the 75th.
    fn quartile(&self, len: f64) -> usize {
        self.cuts.iter().filter(|&&c| len > c).count()
    }

    /// Adds one evaluation (a mini-batch or one micro-batch of it): per response its length, advantage, weights
    /// and weights without the clip.
    pub fn add(&mut self, lens: &[f64], advs: &[f64], w: &[SeqWeight], wu: &[SeqWeight]) {
        let mut abs_a = 0.0;
        let mut abs_gu = 0.0;
        for ((&l, &a), (x, u)) in lens.iter().zip(advs).zip(w.iter().zip(wu)) {
            if l == 0.0 {
                continue;
            }
            abs_a += a.abs();
            abs_gu += u.net.abs() / l;
            if a != 0.0 {
                let side = usize::from(a > 0.0);
                self.mass[side] += x.mass;
                let c = x.zero_tokens as f64 / l;
                for (k, share) in [(0, c), (1, 1.0 - c)] {
                    self.clip[side][k].0 += share;
                    self.clip[side][k].1 += share * l;
                }
            }
            self.mass_q[self.quartile(l)] += x.mass;
            if x.mass > 0.0 {
                self.carried.push((l, a));
            }
        }
        let m_bar = if abs_a > 0.0 { abs_gu / abs_a } else { 0.0 };
        for ((&l, &a), (x, u)) in lens.iter().zip(advs).zip(w.iter().zip(wu)) {
            if l == 0.0 {
                continue;
            }
            let d = l - self.mean_len;
            let (c, cu) = (x.net / l, u.net / l);
            self.push[0] += m_bar * a * d;
            self.push[1] += (cu - m_bar * a) * d;
            self.push[2] += (c - cu) * d;
        }
        self.push_norm += abs_gu;
    }

    /// Marks the end of one optimizer step.
    pub fn end_optimizer_step(&mut self) {
        self.opt_steps += 1;
    }

    /// The step's metrics.
    pub fn finish(&self) -> MechanismStats {
        let n = self.opt_steps.max(1) as f64;
        let total: f64 = self.mass_q.iter().sum();
        let share = |x: f64| if total > 0.0 { x / total } else { 0.0 };
        let ratio = |(w, wl): (f64, f64)| if w > 0.0 { wl / w } else { 0.0 };
        let cov = if self.carried.len() >= 2 {
            let k = self.carried.len() as f64;
            let ml = self.carried.iter().map(|p| p.0).sum::<f64>() / k;
            let ma = self.carried.iter().map(|p| p.1).sum::<f64>() / k;
            self.carried
                .iter()
                .map(|(l, a)| (l - ml) * (a - ma))
                .sum::<f64>()
                / k
        } else {
            0.0
        };
        let push = if self.push_norm > 0.0 {
            let p = self.push.map(|x| x / self.push_norm);
            [p[0] + p[1] + p[2], p[0], p[1], p[2]]
        } else {
            [0.0; 4]
        };
        MechanismStats {
            grad_mass_pos: self.mass[1] / n,
            grad_mass_neg: self.mass[0] / n,
            grad_share_len_q: self.mass_q.map(share),
            clip_len_low: [ratio(self.clip[0][0]), ratio(self.clip[0][1])],
            clip_len_high: [ratio(self.clip[1][0]), ratio(self.clip[1][1])],
            len_adv_cov: cov,
            len_push: push,
        }
    }
}
