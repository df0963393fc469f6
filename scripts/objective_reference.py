#!/usr/bin/env python3
"""Independent reference for `luspo loss`: numpy closed forms of GRPO, DAPO, Dr.GRPO, GSPO and LUSPO.

Written from research/luspo.md (sections 1-4 and 9), not from the Rust code. Loss = quantity to minimise (-J);
gradients are d loss / d (new per-token log-prob), in closed form (no autograd):

  token level (grpo, dapo, dr_grpo):  w_t = exp(clamp(logp - old, -20, 20))
      l_t = -A*w_t                     if the token is free
          = -A*clip(w_t, 1-el, 1+eh)   if (A>0 and w>1+eh) or (A<0 and w<1-el)     (gradient 0)
          = -A*c                       if dual clip c is set and A<0 and w>c       (gradient 0)
      d l_t / d logp_t = -A*w_t if free else 0
  sequence level (gspo, luspo):  s_i = exp(mean_t(logp - old)), same three cases on s_i;
      d l_i / d logp_t = -A*s_i/|y_i| if free else 0
  aggregation weights (B sequences, N tokens, H = norm_len):
      token-mean 1/N;  seq-mean-token-mean 1/(B|y_i|);  seq-mean-token-sum 1/B;  seq-mean-token-sum-norm 1/(B*H)
  a sequence-level unit loss l_i counts once per token, i.e. |y_i| * l_i inside the sum.

Checks itself against the luspo.md section 10 tables (assert), then draws seeded random ragged batches from
on-policy to heavily clipped and writes tests/fixtures/objective/reference.json (inputs in `luspo loss` format,
expected loss, gradients and statistics).  Run from the repository root:  python3 scripts/objective_reference.py
"""
import json
import math
import os

import numpy as np

PRESETS = {  # name: (level, aggregation, eps_low, eps_high)
    "grpo": ("token", "seq-mean-token-mean", 0.2, 0.2),
    "dapo": ("token", "token-mean", 0.2, 0.28),
    "dr_grpo": ("token", "seq-mean-token-sum-norm", 0.2, 0.2),
    "gspo": ("sequence", "seq-mean-token-mean", 3e-4, 4e-4),
    "luspo": ("sequence", "seq-mean-token-sum", 2e-3, 2.5e-3),
}


def grpo_advantages(rewards, groups, eps=1e-6):
    """verl compute_grpo_outcome_advantage: Bessel std, +1e-6; group of one: mean 0, std 1."""
    rewards = np.asarray(rewards, dtype=np.float64)
    adv = np.zeros_like(rewards)
    for g in dict.fromkeys(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        r = rewards[idx]
        if len(r) == 1:
            adv[idx] = r / (1.0 + eps)
        elif np.all(r == r[0]):
            adv[idx] = 0.0
        else:
            adv[idx] = (r - r.mean()) / (r.std(ddof=1) + eps)
    return adv


def unit_loss(a, rho, el, eh, c):
    """Loss of one unit (token or sequence) and whether its gradient flows."""
    if c is not None and a < 0 and rho > c:
        return -a * c, False
    if (a > 0 and rho > 1 + eh) or (a < 0 and rho < 1 - el):
        return -a * min(max(rho, 1 - el), 1 + eh), False
    return -a * rho, True


def reference(name, logp, old, adv, eps_low=None, eps_high=None, dual_clip=None, norm_len=None):
    """Closed-form loss, per-token gradient and statistics of preset `name` on a ragged batch."""
    level, agg, el, eh = PRESETS[name]
    el = el if eps_low is None else eps_low
    eh = eh if eps_high is None else eps_high
    lens = [len(r) for r in logp]
    B, N = len(lens), sum(lens)
    H = norm_len if norm_len is not None else max(lens)
    loss, grads = 0.0, []
    units = clip_lo = clip_hi = 0
    ratio_sum = 0.0
    for i, (lp, ol) in enumerate(zip(logp, old)):
        lp, ol, a, n = np.asarray(lp), np.asarray(ol), adv[i], lens[i]
        w = {"token-mean": 1.0 / N, "seq-mean-token-mean": 1.0 / (B * n),
             "seq-mean-token-sum": 1.0 / B, "seq-mean-token-sum-norm": 1.0 / (B * H)}[agg]
        d = lp - ol
        if level == "token":
            g = []
            for dt in d:
                rho = math.exp(min(max(dt, -20.0), 20.0))
                l, free = unit_loss(a, rho, el, eh, dual_clip)
                loss += w * l
                g.append(-w * a * rho if free and abs(dt) <= 20 else 0.0)
                units += 1
                ratio_sum += rho
                clip_hi += a > 0 and rho > 1 + eh
                clip_lo += a < 0 and rho < 1 - el
        else:
            s = math.exp(d.sum() / n)
            l, free = unit_loss(a, s, el, eh, dual_clip)
            loss += w * n * l
            g = [(-w * a * s if free else 0.0)] * n
            units += 1
            ratio_sum += s
            clip_hi += a > 0 and s > 1 + eh
            clip_lo += a < 0 and s < 1 - el
        grads.append([float(x) for x in g])
    approx_kl = -sum(float(np.sum(np.asarray(lp) - np.asarray(ol))) for lp, ol in zip(logp, old)) / N
    stats = {"clip_frac_low": clip_lo / units, "clip_frac_high": clip_hi / units,
             "ratio_mean": ratio_sum / units, "approx_kl": approx_kl}
    return float(loss), grads, stats


# ---------------------------------------------------------------------------------------------------------------
# Self-check against research/luspo.md section 10 (tables rounded to 10 / 8 decimals).
OLD = [[-1.0, -0.5], [-2.0, -0.1, -0.7], [-0.3, -1.2, -0.8, -0.05, -1.5]]


def plus(a, b):
    return [[x + y for x, y in zip(r, s)] for r, s in zip(a, b)]


def check(name, logp, old, adv, loss, grad_rows, **kw):
    got, g, _ = reference(name, logp, old, adv, **kw)
    assert abs(got - loss) < 1e-8, (name, kw, got, loss)
    for r, s in zip(g, grad_rows):
        for x, y in zip(r, s):
            assert abs(x - y) < 1e-8, (name, kw, g, grad_rows)


def self_check():
    A = grpo_advantages([1, 0, 1], [0, 0, 0])
    assert np.allclose(A, [0.5773492692, -1.1546985384, 0.5773492692], atol=1e-10)
    tok = dict(eps_low=0.2, eps_high=0.28)
    seq = dict(eps_low=2e-3, eps_high=2.5e-3)
    # A: on-policy
    check("grpo", OLD, OLD, A, 0.0, [[-0.09622488] * 2, [0.12829984] * 3, [-0.03848995] * 5], **tok)
    check("luspo", OLD, OLD, A, -0.1924497564, [[-0.19244976] * 2, [0.38489951] * 3, [-0.19244976] * 5])
    check("dr_grpo", OLD, OLD, A, -0.0384899513, [[-0.03848995] * 2, [0.07697990] * 3, [-0.03848995] * 5],
          norm_len=5, **tok)
    # B: small drift
    lp = plus(OLD, [[0.004, 0.002], [-0.003, -0.001, -0.005], [0.001, -0.002, 0.003, 0, 0.0005]])
    check("grpo", lp, OLD, A, -0.0018272685,
          [[-0.09661055, -0.09641752], [0.12791551, 0.12817160, 0.12765994],
           [-0.03852846, -0.03841305, -0.03860559, -0.03848995, -0.03850920]], **tok)
    check("dapo", lp, OLD, A, -0.0592638743,
          [[-0.05796633, -0.05785051], [0.11512396, 0.11535444, 0.11489395],
           [-0.05779269, -0.05761957, -0.05790839, -0.05773493, -0.05776380]], dual_clip=3.0)
    check("gspo", lp, OLD, A, -0.0013471724, [[0, 0], [0, 0, 0], [-0.03850920] * 5], **seq)
    check("luspo", lp, OLD, A, -0.1962026469, [[0, 0], [0, 0, 0], [-0.19254601] * 5])
    # C: large drift, eps (0.2, 0.28) everywhere
    lp = plus(OLD, [[0.3, -0.1], [0.1, -0.3, 1.2], [0, 0.2, -0.25, 0.4, 0.1]])
    y3 = [-0.03848995, -0.04701173, -0.02997600, 0, -0.04253797]
    check("grpo", lp, OLD, A, 0.2528850664, [[0, -0.08706787], [0.14179325, 0, 0.42597046], y3], **tok)
    check("grpo", lp, OLD, A, 0.2118141172, [[0, -0.08706787], [0.14179325, 0, 0], y3], dual_clip=3.0, **tok)
    check("dapo", lp, OLD, A, 0.1293337395,
          [[0, -0.05224072], [0.12761392, 0, 0], [-0.05773493, -0.07051760, -0.04496401, 0, -0.06380696]],
          dual_clip=3.0)
    check("dr_grpo", lp, OLD, A, 0.0862224930, [[0, -0.03482715], [0.08507595, 0, 0], y3],
          dual_clip=3.0, norm_len=5, **tok)
    check("gspo", lp, OLD, A, 0.1139070941, [[-0.10634494] * 2, [0.17905685] * 3, [-0.04211471] * 5], **tok)
    check("luspo", lp, OLD, A, 0.1332640077, [[-0.21268987] * 2, [0.53717054] * 3, [-0.21057357] * 5], **tok)
    # D: G = 4, partial credit, on-policy
    old4 = OLD + [[-0.9, -0.4, -0.6, -1.1]]
    A4 = grpo_advantages([1.5, 0.5, 1.2, 0.0], [0] * 4)
    assert np.allclose(A4, [1.0320921713, -0.4423252163, 0.5897669551, -1.1795339101], atol=1e-10)
    check("luspo", old4, old4, A4, 0.2580230428,
          [[-0.25802304] * 2, [0.11058130] * 3, [-0.14744174] * 5, [0.29488348] * 4])
    check("dapo", old4, old4, A4, 0.0737208694,
          [[-0.07372087] * 2, [0.03159466] * 3, [-0.04212621] * 5, [0.08425242] * 4])
    # E: two prompts, second group zero-variance
    oldE = [[-0.2, -1.0], [-0.6, -0.3, -2.0, -0.4], [-1.3, -0.2, -0.9], [-0.05]]
    lpE = plus(oldE, [[0.002, 0.001], [-0.001, 0, -0.002, 0.001], [0.001, 0, -0.001], [0.003]])
    AE = grpo_advantages([1, 0, 1, 1], [0, 0, 1, 1])
    assert AE[2] == 0.0 and AE[3] == 0.0
    check("dr_grpo", lpE, oldE, AE, 0.0881672741,
          [[-0.04428259, -0.04423833], [0.04414994, 0.04419411, 0.04410581, 0.04423833], [0] * 3, [0]],
          norm_len=4, **tok)
    check("gspo", lpE, oldE, AE, -0.0003537298, [[-0.08852090] * 2, [0.04417202] * 4, [0] * 3, [0]], **seq)
    check("luspo", lpE, oldE, AE, 0.3526686988, [[-0.17704181] * 2, [0.17668808] * 4, [0] * 3, [0]])


# ---------------------------------------------------------------------------------------------------------------
def draw_case(rng, name, scale, k):
    n_groups = int(rng.integers(1, 4))
    logp, old, rewards, groups = [], [], [], []
    for g in range(n_groups):
        size = int(rng.integers(1, 5))
        zero_var = rng.random() < 0.2
        for _ in range(size):
            n = int(rng.integers(1, 13))
            o = -rng.uniform(0.01, 4.0, n)
            old.append([float(x) for x in o])
            logp.append([float(x) for x in o + scale * rng.uniform(-1.0, 1.0, n)])
            rewards.append(1.0 if zero_var else float(rng.choice([0.0, 0.5, 1.0, 1.5])))
            groups.append(g)
    adv = grpo_advantages(rewards, groups)
    kw = {}
    if name in ("grpo", "dapo", "dr_grpo") and k % 2 == 1:
        kw["dual_clip"] = 3.0
    if name == "dr_grpo" and k % 3 == 0:
        kw["norm_len"] = 16
    if name in ("gspo", "luspo") and k % 3 == 2:
        kw["eps_low"], kw["eps_high"] = 0.05, 0.1
    inp = {"objective": name, **kw, "sequences": []}
    use_rewards = k % 4 == 3  # let `luspo loss` compute the advantages itself
    for i in range(len(logp)):
        s = {"logp": logp[i], "old_logp": old[i]}
        if use_rewards:
            s["reward"], s["group"] = rewards[i], groups[i]
        else:
            s["advantage"] = float(adv[i])
        inp["sequences"].append(s)
    loss, grads, stats = reference(name, logp, old, adv, **kw)
    return {"name": f"{name}-{k}-scale{scale:g}", "input": inp,
            "expected": {"loss": loss, "grad_logp": grads, **stats}}


def main():
    self_check()
    rng = np.random.default_rng(20260205)
    scales = [0.0, 1e-4, 1e-3, 0.01, 0.1, 0.5, 1.5, 3.0]
    cases = [draw_case(rng, name, scales[k], k) for name in PRESETS for k in range(len(scales))]
    out = {"generator": "scripts/objective_reference.py (numpy closed forms, self-checked on luspo.md §10)",
           "cases": cases}
    path = os.path.join("tests", "fixtures", "objective", "reference.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    os.replace(tmp, path)
    print(f"self-check passed; wrote {len(cases)} cases to {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
