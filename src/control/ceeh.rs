//! CEEH (Compress the Easy, Explore the Hard; methods.md §11). Per prompt it keeps the accuracy EMA `acc_h`
//! (Acc_h ← Acc_h + η·(Acc − Acc_h), η = `eta_up` when Acc_h < Acc, else `eta_down`) and the shortest correct
//! length `l_x`. A prompt is hard when Acc_h < the mean Acc_h over all prompts in the history, else easy.
//! - Easy and improving (Acc > Acc_h): R = r − β·clip((L − l_x)/l_x, −0.9, 1)·1[correct].
//! - Advantages R − mean_G (no std); on hard prompts the entropy advantage Â_t = A + ψ_t,
//!   ψ_t = min(α·H_t, |A|/κ), carried as per-token loss weights Â_t/A (exact for token-level PPO-clip losses:
//!   ψ ≥ 0 and ψ ≤ |A|/κ keep the sign of A when κ > 1).
//!
//! - The difficulty-aware entropy regulariser: loss −= λ(x, t)·H with λ = `lambda_hard`·λ0·cos(πt/T) on hard
//!   prompts and λ0·cos(πt/T) on easy ones (t = step − 1, T = `train.steps`), carried as per-response entropy
//!   coefficients ([`Advantages::entropy_coefs`]) and aggregated like the objective's entropy term.
//!
//! UNVERIFIED: a prompt's first Acc_h is its first group accuracy; a prompt without history gets none of the three
//! terms; λ is clamped at 0 after T/2 (`lambda_clamp`: the formula as written turns negative there).

use super::{check_range, Advantages, Group, History, Method, StepInfo};
use crate::advantage::Estimator;
use crate::Result;
use serde::{Deserialize, Serialize};

/// History key of the accuracy EMA.
pub const ACC_H: &str = "acc_h";
/// History key of the shortest correct length.
pub const L_X: &str = "l_x";

/// `[control.ceeh]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CeehParams {
    /// β: weight of the easy-prompt length penalty. Default 0.1 (paper).
    pub beta: f64,
    /// α: entropy-advantage scale. Default 0.4 (paper); 0 turns the entropy advantage off.
    pub alpha: f64,
    /// κ: the entropy advantage is at most |A|/κ. Default 2 (paper).
    pub kappa: f64,
    /// η when the EMA rises (Acc_h < Acc). Default 0.2 (paper).
    pub eta_up: f64,
    /// η otherwise. Default 0.05 (paper).
    pub eta_down: f64,
    /// λ0 of the entropy regulariser λ(x, t) = k·λ0·cos(πt/T). Default 0.001 (paper); 0 turns it off.
    pub lambda0: f64,
    /// k of hard prompts in λ(x, t) (easy prompts: 1). Default 5 (paper).
    pub lambda_hard: f64,
    /// Clamp λ(x, t) at 0 (after T/2). Default true (UNVERIFIED intent).
    pub lambda_clamp: bool,
}

impl Default for CeehParams {
    fn default() -> Self {
        CeehParams {
            beta: 0.1,
            alpha: 0.4,
            kappa: 2.0,
            eta_up: 0.2,
            eta_down: 0.05,
            lambda0: 0.001,
            lambda_hard: 5.0,
            lambda_clamp: true,
        }
    }
}

/// A prompt's difficulty under the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difficulty {
    /// Acc_h below the mean.
    Hard,
    /// Acc_h at or above the mean.
    Easy,
    /// No history yet.
    Unknown,
}

impl CeehParams {
    /// Checks β, α ≥ 0, κ > 1, 0 ≤ η ≤ 1.
    pub fn validate(&self) -> Result<()> {
        check_range("ceeh.beta", self.beta, 0.0, f64::MAX)?;
        check_range("ceeh.alpha", self.alpha, 0.0, f64::MAX)?;
        check_range("ceeh.kappa", self.kappa, 1.0 + 1e-9, f64::MAX)?;
        check_range("ceeh.eta_up", self.eta_up, 0.0, 1.0)?;
        check_range("ceeh.eta_down", self.eta_down, 0.0, 1.0)?;
        check_range("ceeh.lambda0", self.lambda0, 0.0, f64::MAX)?;
        check_range("ceeh.lambda_hard", self.lambda_hard, 0.0, f64::MAX)
    }

    /// The entropy coefficient λ(x, t) of a prompt of `difficulty` at `at` (0 without history): k·λ0·cos(πt/T),
    /// k = `lambda_hard` (hard) or 1 (easy), t = step − 1, T = `at.total_steps` (T = 0: cos term 1).
    pub fn entropy_coef(&self, difficulty: Difficulty, at: StepInfo) -> f64 {
        let k = match difficulty {
            Difficulty::Hard => self.lambda_hard,
            Difficulty::Easy => 1.0,
            Difficulty::Unknown => return 0.0,
        };
        let cos = if at.total_steps == 0 {
            1.0
        } else {
            let t = at.step.saturating_sub(1) as f64;
            (std::f64::consts::PI * t / at.total_steps as f64).cos()
        };
        let l = k * self.lambda0 * cos;
        if self.lambda_clamp {
            l.max(0.0)
        } else {
            l
        }
    }

    /// The difficulty of prompt `id` against the mean Acc_h of all prompts in `history`.
    pub fn difficulty(history: &History, id: &str) -> Difficulty {
        let all: Vec<f64> = history
            .0
            .values()
            .filter_map(|m| m.get(ACC_H).copied())
            .collect();
        let Some(acc_h) = history.get(id, ACC_H) else {
            return Difficulty::Unknown;
        };
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        if acc_h < mean {
            Difficulty::Hard
        } else {
            Difficulty::Easy
        }
    }

    /// The entropy advantage ψ of a token with entropy `h` in a response with advantage `a`.
    pub fn psi(&self, a: f64, h: f64) -> f64 {
        (self.alpha * h).min(a.abs() / self.kappa)
    }
}

impl Method for CeehParams {
    fn needs_entropies(&self) -> bool {
        self.alpha > 0.0
    }

    fn shape(&self, groups: &[Group], history: &History, _: StepInfo) -> Vec<Vec<f64>> {
        groups
            .iter()
            .map(|g| {
                let id = &g.prompt_id;
                let improving = history.get(id, ACC_H).is_some_and(|h| g.accuracy() > h);
                let l_x = history
                    .get(id, L_X)
                    .filter(|_| improving && Self::difficulty(history, id) == Difficulty::Easy);
                g.responses
                    .iter()
                    .map(|r| match l_x {
                        Some(lx) if r.correct && lx > 0.0 => {
                            let rel = ((r.length as f64 - lx) / lx).clamp(-0.9, 1.0);
                            r.base_reward() - self.beta * rel
                        }
                        _ => r.base_reward(),
                    })
                    .collect()
            })
            .collect()
    }

    fn update(&self, groups: &[Group], history: &mut History) {
        for g in groups {
            let acc = g.accuracy();
            let next = match history.get(&g.prompt_id, ACC_H) {
                None => acc,
                Some(h) => {
                    let eta = if h < acc { self.eta_up } else { self.eta_down };
                    h + eta * (acc - h)
                }
            };
            history.set(&g.prompt_id, ACC_H, next);
            super::hapo::update_shortest(g, history, L_X);
        }
    }

    fn estimator(&self) -> Option<Estimator> {
        Some(Estimator::DrGrpo)
    }

    fn advantages(
        &self,
        groups: &[Group],
        rewards: &[Vec<f64>],
        history: &History,
        estimator: Estimator,
        at: StepInfo,
    ) -> Advantages {
        let seq = super::estimator_advantages(rewards, estimator);
        let difficulty: Vec<Difficulty> = groups
            .iter()
            .map(|g| Self::difficulty(history, &g.prompt_id))
            .collect();
        let hard: Vec<bool> = difficulty.iter().map(|&d| d == Difficulty::Hard).collect();
        let entropy_coefs = (self.lambda0 > 0.0).then(|| {
            groups
                .iter()
                .zip(&difficulty)
                .map(|(g, &d)| vec![self.entropy_coef(d, at); g.responses.len()])
                .collect()
        });
        if self.alpha == 0.0 || !hard.contains(&true) {
            return Advantages {
                seq,
                token_weights: None,
                entropy_coefs,
            };
        }
        let weights = groups
            .iter()
            .zip(&seq)
            .zip(&hard)
            .map(|((g, adv), &hard)| {
                g.responses
                    .iter()
                    .zip(adv)
                    .map(|(r, &a)| {
                        let e = r.entropies.as_deref().unwrap_or(&[]);
                        (0..r.length)
                            .map(|t| {
                                let h = e.get(t).copied().unwrap_or(0.0) as f64;
                                if hard && a != 0.0 {
                                    ((a + self.psi(a, h)) / a) as f32
                                } else {
                                    1.0
                                }
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Advantages {
            seq,
            token_weights: Some(weights),
            entropy_coefs,
        }
    }
}
