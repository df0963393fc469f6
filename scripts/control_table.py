#!/usr/bin/env python3
"""Per-method deltas against the `none` arm of a `luspo compare --methods` directory (docs/length_control.md).

    python3 scripts/control_table.py runs/control-methods [baseline]

Δ = method − baseline, paired by seed; mean ± sample std over seeds, then the per-seed values. Columns: held-out
(greedy) mean length after RL, sampled (training rollout) mean length averaged over all RL steps and at the last
step, held-out accuracy after RL (points) and sampled accuracy averaged over all steps (points).
"""
import json
import statistics
import sys


def main():
    d = sys.argv[1]
    base = sys.argv[2] if len(sys.argv) > 2 else "none"
    cmp = json.load(open(f"{d}/compare.json"))
    runs = {}
    for r in cmp["runs"]:
        c = r["curves"]
        runs[(r["arm"], r["seed"])] = {
            "held_len": r["eval_response_length_after"],
            "samp_len": statistics.fmean(c["response_length_mean"]),
            "last_len": c["response_length_mean"][-1],
            "held_acc": 100 * r["eval_accuracy_after"],
            "samp_acc": 100 * statistics.fmean(c["accuracy"]),
            "trunc": 100 * statistics.fmean(c["truncated_frac"]),
        }
    arms = [o["arm"] for o in cmp["by_objective"]]
    seeds = sorted({s for (_, s) in runs})
    keys = ["held_len", "samp_len", "last_len", "held_acc", "samp_acc"]
    print("| arm | " + " | ".join(keys) + " | (absolute, mean over seeds) |")
    for a in arms:
        vals = [statistics.fmean(runs[(a, s)][k] for s in seeds) for k in keys]
        print(f"| {a} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    print()
    print("| method | Δ held-out length | Δ sampled length (all steps) | Δ sampled length (last step) | "
          "Δ held-out accuracy, points | Δ sampled accuracy, points | per seed s0 / s1 / s2: Δ held-out length; Δ held-out acc |")
    print("|---|---|---|---|---|---|---|")
    for a in arms:
        if a == base:
            continue
        cells = []
        per = {}
        for k in keys:
            ds = [runs[(a, s)][k] - runs[(base, s)][k] for s in seeds]
            per[k] = ds
            sd = statistics.stdev(ds) if len(ds) > 1 else 0.0
            cells.append(f"{statistics.fmean(ds):+.2f} ± {sd:.2f}")
        ps = " / ".join(f"{x:+.2f}" for x in per["held_len"]) + "; " + " / ".join(
            f"{x:+.1f}" for x in per["held_acc"])
        print(f"| {a} | " + " | ".join(cells) + f" | {ps} |")


if __name__ == "__main__":
    main()
