//! `luspo loss`: one objective evaluated on given numbers, with d loss / d logp by autograd (f64).
//!
//! Input (one JSON object on stdin):
//! `{"objective": "luspo", "eps_low": 0.002, "norm_len": 16, "sequences": [{"logp": [..], "old_logp": [..],
//! "advantage": 0.57}, ..]}`. Any `ObjectiveConfig` override key may appear at the top level; per sequence,
//! `ref_logp` (for `kl_beta`) and `entropy` are optional, and `advantage` may be replaced by `reward`
//! (+ optional `group`, default 0) with a top-level `advantage_estimator` (grpo | dr_grpo | rloo | batch).
//! `group` is also the prompt DRPO groups by; `token_weight` (optional, per token) multiplies the policy-gradient
//! term (a 0/1 mask is a weight).
//! Output (one JSON object on stdout): loss, grad_logp (ragged like the input), clip_frac_low, clip_frac_high,
//! ratio_mean, approx_kl, pg_loss, advantages, resolved config, kl / entropy / grad_entropy when used, and
//! reg_loss / pg_token_frac / token_weights (the weights after SPINE's and UloRL's masks) when a method uses them.

use std::io::Read;

use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde_json::{json, Map, Value};

use crate::advantage::{self, Estimator};
use crate::objective::{policy_loss_resolved, ObjectiveConfig, PolicyInputs, Preset};

/// Arguments of `luspo loss`.
#[derive(clap::Args, Debug)]
pub struct LossArgs {}

/// Runs `luspo loss`: reads the batch JSON from stdin, prints the result JSON on stdout.
pub fn run(_args: LossArgs) -> anyhow::Result<()> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| anyhow!("stdin: cannot read: {e}"))?;
    let out = evaluate_json(&text)?;
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// Keys of one sequence.
const SEQ_KEYS: [&str; 8] = [
    "logp",
    "old_logp",
    "advantage",
    "ref_logp",
    "entropy",
    "token_weight",
    "reward",
    "group",
];
/// Top-level keys besides the objective knobs (`ObjectiveConfig::KEYS`).
const TOP_KEYS: [&str; 3] = ["objective", "sequences", "advantage_estimator"];

fn numbers(v: &Value, at: &str) -> Result<Vec<f64>> {
    let arr = v
        .as_array()
        .ok_or_else(|| anyhow!("{at}: expected an array of numbers"))?;
    arr.iter()
        .enumerate()
        .map(|(t, x)| {
            let f = x
                .as_f64()
                .ok_or_else(|| anyhow!("{at}[{t}]: expected a number, got {x}"))?;
            if !f.is_finite() {
                bail!("{at}[{t}]: not a finite number");
            }
            Ok(f)
        })
        .collect()
}

fn finite(v: &Value, at: &str) -> Result<f64> {
    let f = v
        .as_f64()
        .ok_or_else(|| anyhow!("{at}: expected a number, got {v}"))?;
    if !f.is_finite() {
        bail!("{at}: not a finite number");
    }
    Ok(f)
}

/// One parsed sequence.
struct Seq {
    logp: Vec<f64>,
    old: Vec<f64>,
    adv: Option<f64>,
    reference: Option<Vec<f64>>,
    entropy: Option<Vec<f64>>,
    token_weight: Option<Vec<f64>>,
    reward: Option<f64>,
    group: usize,
}

fn parse_seq(i: usize, v: &Value) -> Result<Seq> {
    let at = format!("sequences[{i}]");
    let obj = v
        .as_object()
        .ok_or_else(|| anyhow!("{at}: expected an object"))?;
    if let Some(k) = obj.keys().find(|k| !SEQ_KEYS.contains(&k.as_str())) {
        bail!(
            "{at}: unknown key `{k}` (expected one of: {})",
            SEQ_KEYS.join(", ")
        );
    }
    let get = |k: &str| obj.get(k).ok_or_else(|| anyhow!("{at}: missing key `{k}`"));
    let logp = numbers(get("logp")?, &format!("{at}.logp"))?;
    let old = numbers(get("old_logp")?, &format!("{at}.old_logp"))?;
    if logp.is_empty() {
        bail!("{at}: logp is empty (a sequence needs at least one token)");
    }
    if logp.len() != old.len() {
        bail!(
            "{at}: logp has {} values but old_logp has {}",
            logp.len(),
            old.len()
        );
    }
    let opt_vec = |k: &str| -> Result<Option<Vec<f64>>> {
        match obj.get(k) {
            None => Ok(None),
            Some(v) => {
                let x = numbers(v, &format!("{at}.{k}"))?;
                if x.len() != logp.len() {
                    bail!(
                        "{at}: logp has {} values but {k} has {}",
                        logp.len(),
                        x.len()
                    );
                }
                Ok(Some(x))
            }
        }
    };
    let adv = obj
        .get("advantage")
        .map(|v| finite(v, &format!("{at}.advantage")))
        .transpose()?;
    let reward = obj
        .get("reward")
        .map(|v| finite(v, &format!("{at}.reward")))
        .transpose()?;
    let group = match obj.get("group") {
        None => 0,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| anyhow!("{at}.group: expected a non-negative integer, got {v}"))?
            as usize,
    };
    if adv.is_none() && reward.is_none() {
        bail!("{at}: missing key `advantage` (or `reward` to compute it)");
    }
    let reference = opt_vec("ref_logp")?;
    let entropy = opt_vec("entropy")?;
    let token_weight = opt_vec("token_weight")?;
    Ok(Seq {
        logp,
        old,
        adv,
        reference,
        entropy,
        token_weight,
        reward,
        group,
    })
}

fn padded(rows: &[&[f64]], t: usize) -> Result<Tensor> {
    let mut v = vec![0.0f64; rows.len() * t];
    for (i, r) in rows.iter().enumerate() {
        v[i * t..i * t + r.len()].copy_from_slice(r);
    }
    Ok(Tensor::from_vec(v, (rows.len(), t), &Device::Cpu)?)
}

fn ragged(g: &Tensor, lens: &[usize]) -> Result<Vec<Vec<f64>>> {
    let rows: Vec<Vec<f64>> = g.to_dtype(DType::F64)?.to_vec2()?;
    Ok(rows
        .into_iter()
        .zip(lens)
        .map(|(r, &n)| r[..n].to_vec())
        .collect())
}

/// Evaluates one `luspo loss` request given as JSON text; the error is one line naming the problem.
pub fn evaluate_json(text: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(text).map_err(|e| anyhow!("stdin: invalid JSON: {e}"))?;
    let top: &Map<String, Value> = v
        .as_object()
        .ok_or_else(|| anyhow!("stdin: expected one JSON object"))?;
    if let Some(k) = top
        .keys()
        .find(|k| !TOP_KEYS.contains(&k.as_str()) && !ObjectiveConfig::KEYS.contains(&k.as_str()))
    {
        bail!(
            "unknown key `{k}` (expected one of: {}, {})",
            TOP_KEYS.join(", "),
            ObjectiveConfig::KEYS.join(", ")
        );
    }
    let name = top
        .get("objective")
        .ok_or_else(|| anyhow!("missing key `objective`"))?;
    let name = name
        .as_str()
        .ok_or_else(|| anyhow!("objective: expected a string, got {name}"))?;
    if Preset::from_name(name).is_none() {
        return Err(Preset::unknown("objective", name).into());
    }
    let mut cfg = ObjectiveConfig::preset(name);
    for (k, x) in top {
        if !TOP_KEYS.contains(&k.as_str()) {
            cfg.set_json(k, x).map_err(|e| anyhow!("{k}: {e}"))?;
        }
    }
    let obj = cfg.resolve_at("")?;
    let estimator: Estimator = match top.get("advantage_estimator") {
        None => Estimator::default(),
        Some(x) => serde_json::from_value(x.clone()).map_err(|_| {
            anyhow!(
                "advantage_estimator: unknown estimator {x} (expected grpo, dr_grpo, rloo, batch)"
            )
        })?,
    };
    let seqs = top
        .get("sequences")
        .ok_or_else(|| anyhow!("missing key `sequences`"))?;
    let seqs = seqs
        .as_array()
        .ok_or_else(|| anyhow!("sequences: expected an array of objects"))?;
    if seqs.is_empty() {
        bail!("sequences: the list is empty");
    }
    let seqs: Vec<Seq> = seqs
        .iter()
        .enumerate()
        .map(|(i, s)| parse_seq(i, s))
        .collect::<Result<_>>()?;

    // Advantages: given, or computed from rewards (all sequences must then carry a reward).
    let advs: Vec<f64> = if seqs.iter().all(|s| s.adv.is_some()) {
        seqs.iter().map(|s| s.adv.unwrap_or(0.0)).collect()
    } else {
        let mut rewards = Vec::with_capacity(seqs.len());
        for (i, s) in seqs.iter().enumerate() {
            match s.reward {
                Some(r) => rewards.push(r),
                None => bail!("sequences[{i}]: missing key `reward` (other sequences compute advantages from rewards)"),
            }
        }
        let groups: Vec<usize> = seqs.iter().map(|s| s.group).collect();
        advantage::compute(estimator, &rewards, &groups)
    };

    let b = seqs.len();
    let lens: Vec<usize> = seqs.iter().map(|s| s.logp.len()).collect();
    let t = lens.iter().copied().max().unwrap_or(1);
    let rows = |f: &dyn Fn(&Seq) -> &[f64]| -> Vec<&[f64]> { seqs.iter().map(f).collect() };
    let logp = Var::from_tensor(&padded(&rows(&|s| &s.logp), t)?)?;
    let old = padded(&rows(&|s| &s.old), t)?;
    let mask_rows: Vec<Vec<f64>> = lens.iter().map(|&n| vec![1.0; n]).collect();
    let mask = padded(
        &mask_rows.iter().map(|r| r.as_slice()).collect::<Vec<_>>(),
        t,
    )?;
    let advantages = Tensor::from_vec(advs.clone(), b, &Device::Cpu)?;
    let reference = if seqs.iter().any(|s| s.reference.is_some()) {
        let mut rs = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            match &s.reference {
                Some(r) => rs.push(r.as_slice()),
                None => bail!("sequences[{i}]: missing key `ref_logp` (other sequences have one)"),
            }
        }
        Some(padded(&rs, t)?)
    } else {
        None
    };
    let entropy = if seqs.iter().any(|s| s.entropy.is_some()) {
        let mut es = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            match &s.entropy {
                Some(e) => es.push(e.as_slice()),
                None => bail!("sequences[{i}]: missing key `entropy` (other sequences have one)"),
            }
        }
        Some(Var::from_tensor(&padded(&es, t)?)?)
    } else {
        None
    };
    let token_weights = if seqs.iter().any(|s| s.token_weight.is_some()) {
        let mut ws = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            match &s.token_weight {
                Some(w) => ws.push(w.as_slice()),
                None => {
                    bail!("sequences[{i}]: missing key `token_weight` (other sequences have one)")
                }
            }
        }
        Some(padded(&ws, t)?)
    } else {
        None
    };
    let groups: Vec<usize> = seqs.iter().map(|s| s.group).collect();
    let inputs = PolicyInputs {
        logp: logp.as_tensor(),
        old_logp: &old,
        mask: &mask,
        advantages: &advantages,
        ref_logp: reference.as_ref(),
        entropy: entropy.as_ref().map(|e| e.as_tensor()),
        groups: Some(&groups),
        token_weights: token_weights.as_ref(),
        entropy_coefs: None,
        global_counts: None,
    };
    let out = policy_loss_resolved(&obj, &inputs)?;
    let grads = out.loss.backward()?;
    let zeros = logp.zeros_like()?;
    let g_logp = grads.get(logp.as_tensor()).unwrap_or(&zeros);
    let mut res = json!({
        "loss": out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        "grad_logp": ragged(g_logp, &lens)?,
        "clip_frac_low": out.stats.clip_frac_low,
        "clip_frac_high": out.stats.clip_frac_high,
        "ratio_mean": out.stats.ratio_mean,
        "approx_kl": out.stats.approx_kl,
        "pg_loss": out.stats.pg_loss,
        "advantages": advs,
        "resolved": obj,
    });
    if let Some(kl) = out.stats.kl {
        res["kl"] = json!(kl);
    }
    if let Some(e) = out.stats.entropy {
        res["entropy"] = json!(e);
    }
    if let Some(r) = out.stats.reg_loss {
        res["reg_loss"] = json!(r);
    }
    if let Some(f) = out.stats.pg_token_frac {
        res["pg_token_frac"] = json!(f);
    }
    if let Some(w) = &out.token_weights {
        res["token_weights"] = json!(ragged(w, &lens)?);
    }
    if let Some(e) = &entropy {
        let g = grads.get(e.as_tensor()).unwrap_or(&zeros);
        res["grad_entropy"] = json!(ragged(g, &lens)?);
    }
    Ok(res)
}
