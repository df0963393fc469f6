//! The token masks, regularisers and surrogate of the objective-side methods (formulas and sources:
//! docs/objectives.md and ../shared/research/methods.md): SPINE §13, UloRL §17, LLDS §16, DRPO §5, ΔL §22.

use candle_core::{DType, Tensor};

use super::{scalar, PolicyInputs, ResolvedObjective};
use crate::{input_err, Result};

/// Row-wise f64 copy of a `(B, T)` tensor.
fn rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(t.to_dtype(DType::F64)?.to_vec2()?)
}

/// A `(B, T)` boolean tensor (u8) from rows of flags.
fn mask_tensor(m: &[Vec<bool>], like: &Tensor) -> Result<Tensor> {
    let t = m.first().map_or(0, |r| r.len());
    let v: Vec<u8> = m.iter().flatten().map(|&x| u8::from(x)).collect();
    Ok(Tensor::from_vec(v, (m.len(), t), like.device())?)
}

/// ΔL per-sequence factors L_i^−α / mean_j L_j^−α over the sequences with tokens (0 for empty ones).
pub fn delta_l_factors(lens: &[f64], alpha: f64) -> Vec<f64> {
    let w: Vec<f64> = lens
        .iter()
        .map(|&l| if l > 0.0 { l.powf(-alpha) } else { 0.0 })
        .collect();
    let n = lens.iter().filter(|&&l| l > 0.0).count().max(1) as f64;
    let mean = w.iter().sum::<f64>() / n;
    w.iter().map(|x| x / mean).collect()
}

/// Linear-interpolation quantile of sorted values (numpy's default); 0 for an empty slice.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n => {
            let pos = q * (n - 1) as f64;
            let (i, f) = (pos.floor() as usize, pos - pos.floor());
            let j = (i + 1).min(n - 1);
            sorted[i] + f * (sorted[j] - sorted[i])
        }
    }
}

/// SPINE forking tokens: in each row the ⌈frac·L⌉ valid tokens of highest entropy (ties: the earlier token).
pub fn forking_tokens(entropy: &[Vec<f64>], valid: &[Vec<bool>], frac: f64) -> Vec<Vec<bool>> {
    entropy
        .iter()
        .zip(valid)
        .map(|(e, v)| {
            let mut idx: Vec<usize> = (0..e.len()).filter(|&t| v[t]).collect();
            let k = (frac * idx.len() as f64 - 1e-9).ceil().max(0.0) as usize;
            idx.sort_by(|&a, &b| e[b].total_cmp(&e[a]).then(a.cmp(&b)));
            let mut out = vec![false; e.len()];
            for &t in idx.iter().take(k) {
                out[t] = true;
            }
            out
        })
        .collect()
}

/// UloRL mastered tokens: I(i,t) = A_i > 0 ∧ exp(old_logp) > τ ∧ (mean entropy of row i) < σ.
pub fn mastered_tokens(
    old: &[Vec<f64>],
    entropy: &[Vec<f64>],
    valid: &[Vec<bool>],
    adv: &[f64],
    tau: f64,
    sigma: f64,
) -> Vec<Vec<bool>> {
    (0..old.len())
        .map(|i| {
            let n = valid[i].iter().filter(|&&x| x).count();
            let h: f64 = (0..old[i].len())
                .filter(|&t| valid[i][t])
                .map(|t| entropy[i][t])
                .sum::<f64>()
                / n.max(1) as f64;
            let low_entropy = n > 0 && h < sigma && adv[i] > 0.0;
            (0..old[i].len())
                .map(|t| low_entropy && valid[i][t] && old[i][t].exp() > tau)
                .collect()
        })
        .collect()
}

/// The token masks the configured methods ask for, as `(B, T)` u8 tensors.
pub struct TokenMasks {
    /// SPINE: 1 on forking tokens.
    pub forking: Option<Tensor>,
    /// SPINE entropy band per row: (H_low, H_high) as `(B, 1)` tensors.
    band: Option<(Tensor, Tensor)>,
    /// UloRL: 1 on masked (mastered) tokens.
    pub mastered: Option<Tensor>,
}

impl TokenMasks {
    /// Builds the masks from detached entropies, old log-probs and advantages.
    pub fn build(
        obj: &ResolvedObjective,
        inp: &PolicyInputs,
        valid: &Tensor,
        adv: &Tensor,
        old: &Tensor,
    ) -> Result<Self> {
        let mut m = TokenMasks {
            forking: None,
            band: None,
            mastered: None,
        };
        if obj.spine_frac <= 0.0 && obj.ulorl_sigma <= 0.0 {
            return Ok(m);
        }
        let e = inp.entropy.ok_or_else(|| {
            input_err!(
                "entropy: spine_frac / ulorl_sigma need per-token entropies, none were given"
            )
        })?;
        super::check_shape("entropy", e, valid.dims())?;
        let ent = rows(&e.detach())?;
        let vrows: Vec<Vec<bool>> = rows(valid)?
            .into_iter()
            .map(|r| r.into_iter().map(|x| x != 0.0).collect())
            .collect();
        if obj.spine_frac > 0.0 {
            let fork = forking_tokens(&ent, &vrows, obj.spine_frac);
            let (mut lo, mut hi) = (vec![], vec![]);
            for (er, fr) in ent.iter().zip(&fork) {
                let mut f: Vec<f64> = er.iter().zip(fr).filter(|p| *p.1).map(|p| *p.0).collect();
                f.sort_by(f64::total_cmp);
                lo.push(quantile(&f, obj.spine_q_low));
                hi.push(quantile(&f, obj.spine_q_high));
            }
            let col = |v: Vec<f64>| -> Result<Tensor> {
                let n = v.len();
                Ok(Tensor::from_vec(v, (n, 1), e.device())?.to_dtype(e.dtype())?)
            };
            m.band = Some((col(lo)?, col(hi)?));
            m.forking = Some(mask_tensor(&fork, e)?);
        }
        if obj.ulorl_sigma > 0.0 {
            let a: Vec<f64> = adv.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
            let mastered = mastered_tokens(
                &rows(old)?,
                &ent,
                &vrows,
                &a,
                obj.ulorl_tau,
                obj.ulorl_sigma,
            );
            m.mastered = Some(mask_tensor(&mastered, e)?);
        }
        Ok(m)
    }
}

/// The product of the caller's token weights, the forking mask and 1 − the mastered mask (`None` = all ones).
pub fn combine(
    given: Option<&Tensor>,
    masks: &TokenMasks,
    valid: &Tensor,
    dt: DType,
) -> Result<Option<Tensor>> {
    let mut w: Option<Tensor> = None;
    if let Some(g) = given {
        super::check_shape("token_weights", g, valid.dims())?;
        w = Some(g.to_dtype(dt)?.detach());
    }
    let mut mul = |m: Tensor| -> Result<()> {
        w = Some(match w.take() {
            Some(x) => x.mul(&m)?,
            None => m,
        });
        Ok(())
    };
    if let Some(f) = &masks.forking {
        mul(f.to_dtype(dt)?)?;
    }
    if let Some(u) = &masks.mastered {
        mul(u.to_dtype(dt)?.affine(-1.0, 1.0)?)?;
    }
    Ok(w)
}

/// SPINE band penalty coef · (1/B) Σ_i Σ_{t forking} [relu(H_t − H_high,i) + relu(H_low,i − H_t)].
pub fn spine_band(
    obj: &ResolvedObjective,
    masks: &TokenMasks,
    entropy: &Tensor,
    zeros: &Tensor,
    n_seq: f64,
) -> Result<Option<Tensor>> {
    let (Some(fork), Some((lo, hi))) = (&masks.forking, &masks.band) else {
        return Ok(None);
    };
    if obj.spine_band_coef == 0.0 {
        return Ok(None);
    }
    let above = entropy.broadcast_sub(hi)?.relu()?;
    let below = entropy.neg()?.broadcast_add(lo)?.relu()?;
    let pen = fork.where_cond(&(above + below)?, zeros)?;
    Ok(Some(
        pen.sum_all()?.affine(obj.spine_band_coef / n_seq, 0.0)?,
    ))
}

/// LLDS (R-gate = A-gate for one action chunk): λ · Σ_{i: A_i ≥ 0, Σ_t(old − logp) > 0} Σ_t relu(old − logp) / N_tok.
/// `d` is the masked `logp − old` (carries gradient).
pub fn llds(
    lambda: f64,
    d: &Tensor,
    valid: &Tensor,
    zeros: &Tensor,
    adv: &Tensor,
    n_tok: f64,
) -> Result<Tensor> {
    let drop = d.neg()?; // old − logp
    let net: Vec<f64> = drop.detach().sum(1)?.to_dtype(DType::F64)?.to_vec1()?;
    let a: Vec<f64> = adv.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let gate: Vec<u8> = net
        .iter()
        .zip(&a)
        .map(|(&n, &ai)| u8::from(n > 0.0 && ai >= 0.0))
        .collect();
    let gate = Tensor::from_vec(gate, (a.len(), 1), d.device())?.broadcast_as(d.shape())?;
    let on = gate.mul(valid)?;
    let pen = on.where_cond(&drop.relu()?, zeros)?;
    Ok(pen.sum_all()?.affine(lambda / n_tok, 0.0)?)
}

/// DRPO positive weights: w_i = softmax over a group's positives (A > 0) of (1 − L_i/L_max)/λ, 0 elsewhere;
/// and, per group with both positives and negatives (A < 0), the indices of its negatives.
pub fn drpo_weights(
    lens: &[f64],
    adv: &[f64],
    groups: &[usize],
    l_max: f64,
    lambda: f64,
) -> (Vec<f64>, Vec<Vec<usize>>) {
    let mut ids: Vec<usize> = groups.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut w = vec![0.0; lens.len()];
    let mut negatives = vec![];
    for g in ids {
        let members: Vec<usize> = (0..lens.len())
            .filter(|&i| groups[i] == g && lens[i] > 0.0)
            .collect();
        let pos: Vec<usize> = members.iter().copied().filter(|&i| adv[i] > 0.0).collect();
        let neg: Vec<usize> = members.iter().copied().filter(|&i| adv[i] < 0.0).collect();
        if pos.is_empty() || neg.is_empty() {
            continue;
        }
        let z: Vec<f64> = pos
            .iter()
            .map(|&i| (1.0 - lens[i] / l_max) / lambda)
            .collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|x| (x - m).exp()).collect();
        let s: f64 = e.iter().sum();
        for (k, &i) in pos.iter().enumerate() {
            w[i] = e[k] / s;
        }
        negatives.push(neg);
    }
    (w, negatives)
}

/// DRPO loss −(1/Q) Σ_q [Σ_P w_i s_i − τ log Σ_N exp(s_j/τ)], s_i = Σ_t m·logp / L_i, and its trust region
/// sg(max(β(KL − δ), 0))·KL with KL = Σ(old − logp)/N_tok. Returns (policy part, trust-region part).
#[allow(clippy::too_many_arguments)]
pub fn drpo(
    obj: &ResolvedObjective,
    lp: &Tensor,
    weights: Option<&Tensor>,
    lens: &[f64],
    adv: &Tensor,
    groups: &[usize],
    d: &Tensor,
    n_tok: f64,
) -> Result<(Tensor, Tensor)> {
    let b = lens.len();
    if groups.len() != b {
        return Err(input_err!(
            "groups: expected one group per sequence ({b}), got {}",
            groups.len()
        ));
    }
    let lpw = match weights {
        Some(w) => lp.mul(w)?,
        None => lp.clone(),
    };
    let dt = lp.dtype();
    let dev = lp.device();
    let inv_len: Vec<f64> = lens.iter().map(|&l| 1.0 / l.max(1.0)).collect();
    let s = lpw
        .sum_keepdim(1)?
        .mul(&Tensor::from_vec(inv_len, (b, 1), dev)?.to_dtype(dt)?)?; // (B, 1)
    let a: Vec<f64> = adv.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let l_max = obj
        .drpo_l_max
        .unwrap_or_else(|| lens.iter().cloned().fold(1.0, f64::max));
    let (w, negatives) = drpo_weights(lens, &a, groups, l_max, obj.drpo_lambda);
    let q = negatives.len();
    let mut j = (s.sum_all()? * 0.0)?; // keeps the graph when no prompt counts
    if q > 0 {
        let wt = Tensor::from_vec(w, (b, 1), dev)?.to_dtype(dt)?;
        j = (j + s.mul(&wt)?.sum_all()?)?;
        let tau = obj.drpo_tau;
        for neg in &negatives {
            let idx: Vec<u32> = neg.iter().map(|&i| i as u32).collect();
            let n = idx.len();
            let x = s
                .index_select(&Tensor::from_vec(idx, n, dev)?, 0)?
                .affine(1.0 / tau, 0.0)?;
            let m = scalar(&x.max_keepdim(0)?.squeeze(0)?.squeeze(0)?)?;
            let lse = x
                .affine(1.0, -m)?
                .exp()?
                .sum_all()?
                .log()?
                .affine(tau, tau * m)?;
            j = (j - lse)?;
        }
        j = j.affine(1.0 / q as f64, 0.0)?;
    }
    let kl = d.neg()?.sum_all()?.affine(1.0 / n_tok, 0.0)?;
    let c = (obj.drpo_beta * (scalar(&kl)? - obj.drpo_delta)).max(0.0);
    Ok((j.neg()?, kl.affine(c, 0.0)?))
}
